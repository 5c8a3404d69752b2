/* onelora plan: what a method trains on a model and what a layout needs per rank, before running
 * it. Counts only layouts (nothing is allocated), so it answers for 7B-70B shapes on a laptop. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "onelora/train/plan.h"
#include "onelora/parallel/dp.h"
#include "onelora/model/model.h"
#include "onelora/core/core.h"

/* "1234567" -> "1,234,567" */
static const char *grouped(size_t v, char *buf, size_t size) {
  char raw[32];
  int n = snprintf(raw, sizeof raw, "%zu", v), j = 0;
  for (int i = 0; i < n && (size_t)j + 2 < size; i++) {
    if (i && (n - i) % 3 == 0) buf[j++] = ',';
    buf[j++] = raw[i];
  }
  buf[j] = '\0';
  return buf;
}

static int plan(const ol_config *cfg, const char *what, const ol_method *method, int csv) {
  ol_model m;
  OL_TRY(ol_model_layout(&m, cfg, method, 0));
  size_t weights = 0;
  for (size_t i = 0; i < m.n_tensors; i++)
    weights += m.tensors[i]->shape[0] * (m.tensors[i]->ndim == 2 ? m.tensors[i]->shape[1] : 1);
  size_t adapters = 0;  // trainables that are not model weights: the adapters' own tensors
  for (size_t l = 0; l < (size_t)cfg->n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      for (int i = 0; i < m.blocks[l].lin[p].n_adapters; i++) {
        const ol_adapter *a = &m.blocks[l].lin[p].adapters[i];
        for (int j = 0; j < a->n_param; j++) adapters += m.params.entries[a->param[j]].numel;
      }
  size_t generated = 0;
  for (size_t i = 0; i < m.generated.count; i++) {
    const ol_frozen_entry *e = &m.generated.entries[i];
    generated += e->shape[0] * (e->ndim == 2 ? e->shape[1] : 1);
  }
  size_t trainable = ol_model_trainable(&m);
  if (csv) {
    printf("model,dim,n_layers,n_heads,n_kv_heads,ffn_dim,vocab_size,method,targets,rank,"
           "trainable,adapter_values,generated_frozen,model_weights,dp_bytes_per_step\n");
    printf("%s,%lld,%lld,%lld,%lld,%lld,%lld,\"%s\",\"%s\",%lld,%zu,%zu,%zu,%zu,%.0f\n", what,
           (long long)cfg->dim, (long long)cfg->n_layers, (long long)cfg->n_heads,
           (long long)cfg->n_kv_heads, (long long)cfg->ffn_dim, (long long)cfg->vocab_size,
           method->text, method->targets_text, (long long)method->rank, trainable, adapters,
           generated, weights, ol_dp_step_bytes(&m.params));
  } else {
    char a[32], b[32], c[32], e[32];
    printf("plan | model %s (D=%lld L=%lld H=%lld Hkv=%lld F=%lld V=%lld) | method %s | targets %s "
           "| rank %lld\n", what, (long long)cfg->dim, (long long)cfg->n_layers,
           (long long)cfg->n_heads, (long long)cfg->n_kv_heads, (long long)cfg->ffn_dim,
           (long long)cfg->vocab_size, method->text, method->targets_text,
           (long long)method->rank);
    printf("trainable %s (%.4f%% of %s model weights); adapter values %s; generated frozen %s\n",
           grouped(trainable, a, sizeof a), 100.0 * (double)trainable / (double)weights,
           grouped(weights, b, sizeof b), grouped(adapters, c, sizeof c),
           grouped(generated, e, sizeof e));
    printf("data-parallel traffic: %.2f MiB per step per replica (one all-reduce of the gradients)\n",
           ol_dp_step_bytes(&m.params) / 1048576.0);
  }
  ol_model_free(&m);
  return OL_OK;
}

/* "24G", "80GiB", "1.5T", "4096" -> bytes (binary units); 0 on a bad value */
static double parse_bytes(const char *s) {
  char *end;
  double v = strtod(s, &end);
  const char *units = "KMGT";
  const char *u = *end ? strchr(units, *end) : NULL;
  if (u && *u) {
    v *= pow(1024.0, (double)(u - units + 1));
    end++;
    if (*end == 'i') end++;
    if (*end == 'B') end++;
  } else if (*end == 'B') {
    end++;
  }
  return *end || !(v > 0) || !isfinite(v) ? 0.0 : v;
}

static double mib(double b) { return b / 1048576.0; }

/* The predicted step time of a plan: its largest rank's FLOPs at `gflops`, stretched by the
 * pipeline bubble ((M + pp - 1) / M for 1F1B and GPipe alike), plus its traffic at `gbps`
 * (collectives on a node and across nodes alike: an upper bound for TP on one node). */
static double step_time(const ol_plan *p, const ol_plan_inputs *in, double gflops, double gbps) {
  double bubble = (double)(in->micro_batches + in->pp - 1) / (double)in->micro_batches;
  double bytes = 0.0;
  for (int k = 0; k < OL_COMM_COUNT; k++) bytes += p->comm[k];
  return p->flops / (gflops * 1e9) * bubble + bytes / (gbps * 1e9);
}

static void print_plan(const ol_plan *p, const ol_plan_inputs *in, double gflops, double gbps) {
  const double t = step_time(p, in, gflops, gbps);
  const double tokens = (double)(in->micro_batch * in->micro_batches * in->seq_len * in->dp);
  printf("layout tp %d pp %d dp %d | micro-batch %lld x %lld, seq %lld | weights %s%s%s\n", in->tp,
         in->pp, in->dp, (long long)in->micro_batch, (long long)in->micro_batches,
         (long long)in->seq_len, ol_dtype_name(in->weights_dtype), in->mapped ? " mapped" : "",
         in->recompute ? " | recompute" : "");
  printf("peak %smemory per rank (the largest: pp rank %d, tp rank %d): %.1f MiB%s\n",
         in->device ? "GPU " : "", p->pp_rank, p->tp_rank, mib(p->total),
         in->device ? " (onelora's allocations; the CUDA context and cuBLAS's workspace, a few "
                      "hundred MiB, come on top)" : "");
  const struct { const char *name; double v; } parts[] = {
      {"frozen weights, owned", p->frozen_owned}, {"frozen weights, mapped", p->frozen_mapped},
      {"activations kept", p->kept}, {"activation workspace", p->workspace},
      {"logits chunk", p->logits}, {"trainable state + AdamW", p->trainable_state},
      {"communication buffers", p->comm_buffers}, {"backend workspaces", p->backend_workspace},
      {"libraries (measured)", p->library}};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
    if (in->device ? parts[i].v != 0.0 : i != 7)  // the cpu has no backend workspaces
      printf("  %-26s %12.1f MiB\n", parts[i].name, mib(parts[i].v));
  printf("per step (the largest rank): %.3g FLOP; sent: TP fwd %.1f MiB, TP bwd %.1f MiB, PP %.1f "
         "MiB, DP %.2f MiB\n", p->flops, mib(p->comm[OL_COMM_TP_FWD]), mib(p->comm[OL_COMM_TP_BWD]),
         mib(p->comm[OL_COMM_PP]), mib(p->comm[OL_COMM_DP]));
  printf("predicted step %.3f s, %.0f tokens/s (at %.0f GFLOP/s and %.0f GB/s per rank)\n", t,
         tokens / t, gflops, gbps);
}

/* Every layout of `ranks` ranks the model divides, whose largest rank fits in `budget` bytes,
 * best predicted throughput first. */
static int fit(ol_plan_inputs in, int ranks, double budget, double gflops, double gbps) {
  typedef struct { ol_plan_inputs in; ol_plan plan; double tok_s; } row;
  row *rows = ol_calloc((size_t)ranks * (size_t)ranks, sizeof *rows);
  size_t n = 0, tried = 0;
  const ol_config *c = in.cfg;
  for (int tp = 1; tp <= ranks; tp++)
    for (int pp = 1; tp * pp <= ranks; pp++) {
      if (ranks % (tp * pp) || c->n_heads % tp || c->n_kv_heads % tp || c->ffn_dim % tp ||
          c->vocab_size % tp || pp > c->n_layers)
        continue;
      in.tp = tp, in.pp = pp, in.dp = ranks / (tp * pp);
      ol_plan p;
      OL_TRY(ol_plan_layout(&in, &p));
      tried++;
      if (p.total > budget) continue;
      double tokens = (double)(in.micro_batch * in.micro_batches * in.seq_len * in.dp);
      row r = {in, p, tokens / step_time(&p, &in, gflops, gbps)};
      size_t at = n++;
      while (at > 0 && rows[at - 1].tok_s < r.tok_s) rows[at] = rows[at - 1], at--;
      rows[at] = r;
    }
  printf("layouts of %d ranks that fit in %.1f GiB per rank: %zu of the %zu the model divides "
         "(best predicted throughput first)\n", ranks, budget / 1073741824.0, n, tried);
  printf("%4s %4s %4s %12s %14s %12s\n", "tp", "pp", "dp", "peak MiB", "tokens/s", "step s");
  for (size_t i = 0; i < n; i++)
    printf("%4d %4d %4d %12.1f %14.0f %12.3f\n", rows[i].in.tp, rows[i].in.pp, rows[i].in.dp,
           mib(rows[i].plan.total), rows[i].tok_s,
           step_time(&rows[i].plan, &rows[i].in, gflops, gbps));
  ol_free(rows);
  return OL_OK;
}

int ol_cmd_plan(int argc, char **argv) {
  const char *model = NULL, *method_s = "1lora", *targets = "all";
  int64_t rank = 1;
  double alpha = 1.0;
  int csv = 0, recompute = 0, mapped = 0, gpipe = 0;
  int64_t tp = 1, pp = 1, dp = 1, mb = 4, mbs = 1, seq = 256, ranks = 0;
  const char *wdtype = "f32", *fit_s = NULL, *device = "cpu";
  double gflops = 100.0, gbps = 10.0;
  ol_shape_args shape;
  char method_help[600];  // the registry's methods
  snprintf(method_help, sizeof method_help, "%s; comma-combined (1lora)", ol_method_names());
  ol_arg args[21 + OL_SHAPE_NARGS] = {
      {"--model", OL_ARG_STR, &model, "M.h5|DIR", "read the shape from a model file or HF directory instead of --preset"},
      {"--method", OL_ARG_STR, &method_s, "LIST", method_help},
      {"--targets", OL_ARG_STR, &targets, "LIST", "all | attn | mlp | q,k,v,o,gate,up,down (all)"},
      {"--rank", OL_ARG_INT, &rank, "R", "adapter rank (1)"},
      {"--alpha", OL_ARG_FLOAT, &alpha, "A", "adapter scaling numerator (1)"},
      {"--csv", OL_ARG_FLAG, &csv, NULL, "one CSV header line and one row (counts only)"},
      {"--tp", OL_ARG_INT, &tp, "N", "tensor-parallel ranks (1)"},
      {"--pp", OL_ARG_INT, &pp, "N", "pipeline stages (1)"},
      {"--dp", OL_ARG_INT, &dp, "N", "data-parallel replicas (1)"},
      {"--micro-batch", OL_ARG_INT, &mb, "B", "sequences per micro-batch (4)"},
      {"--micro-batches", OL_ARG_INT, &mbs, "M", "micro-batches per step (1)"},
      {"--seq-len", OL_ARG_INT, &seq, "T", "tokens per sequence (256)"},
      {"--weights-dtype", OL_ARG_STR, &wdtype, "T", "frozen weights in memory: f32 | f16 | bf16"},
      {"--recompute", OL_ARG_FLAG, &recompute, NULL, "keep only each block's input"},
      {"--mapped", OL_ARG_FLAG, &mapped, NULL,
       "frozen matrices mapped from a file of --weights-dtype (train's default for such files)"},
      {"--gpipe", OL_ARG_FLAG, &gpipe, NULL, "GPipe pipeline schedule instead of 1F1B"},
      {"--fit", OL_ARG_STR, &fit_s, "BYTES", "list the layouts of --ranks whose largest rank fits, "
       "e.g. 24G"},
      {"--ranks", OL_ARG_INT, &ranks, "N", "ranks for --fit"},
      {"--gflops", OL_ARG_FLOAT, &gflops, "R", "a rank's GEMM rate for the time prediction (100)"},
      {"--gbps", OL_ARG_FLOAT, &gbps, "R", "a rank's link bandwidth, GB/s, for it (10)"},
      {"--device", OL_ARG_STR, &device, "D", "cpu | cuda: the memory predicted is the host's or "
       "a GPU's (cpu)"},
  };
  ol_shape_flags(&shape, args + 21);
  int help;
  if (ol_args_parse("plan", "[--preset P | --model M] --method LIST [layout and batch flags] "
                    "[--fit BYTES --ranks N]\n\nCounts what a method trains on a model and "
                    "predicts, per rank of the layout, peak memory by part, FLOPs and traffic per "
                    "step (nothing is allocated:\n7B-70B shapes answer at once). With --fit, "
                    "lists the layouts of N ranks that fit, best predicted throughput first.",
                    argc, argv, args, sizeof args / sizeof args[0], &help, NULL, 0, NULL) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  ol_config cfg;
  ol_method method;
  int rc = ol_method_parse(method_s, targets, rank, alpha, &method);
  if (rc == OL_OK && model) {
    ol_weights *f;
    rc = ol_weights_open(model, &f, &cfg);
    if (rc == OL_OK) ol_weights_close(f);
  } else if (rc == OL_OK) {
    rc = ol_shape_config(&shape, &cfg);
  }
  if (rc == OL_OK) rc = plan(&cfg, model ? model : shape.preset, &method, csv);
  ol_plan_inputs in = {&cfg, &method, (int)tp, (int)pp, (int)dp, mb, mbs, seq, OL_DTYPE_F32,
                       recompute, mapped, gpipe, strcmp(device, "cuda") == 0};
  double budget = fit_s ? parse_bytes(fit_s) : 0.0;
  if (rc != OL_OK || csv) {
  } else if (strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0) {
    rc = ol_error("--device %s: expected cpu or cuda", device);
  } else if (in.device && mapped) {
    rc = ol_error("--mapped --device cuda: a GPU cannot map the model file (drop --mapped)");
  } else if (ol_dtype_parse(wdtype, &in.weights_dtype) != OL_OK) {
    rc = ol_error("--weights-dtype: expected f32, f16 or bf16, got '%s'", wdtype);
  } else if (tp < 1 || pp < 1 || dp < 1 || mb < 1 || mbs < 1 || seq < 1) {
    rc = ol_error("--tp, --pp, --dp, --micro-batch, --micro-batches and --seq-len must be positive");
  } else if (!(gflops > 0) || !(gbps > 0)) {
    rc = ol_error("--gflops and --gbps must be positive");
  } else if (fit_s && budget == 0.0) {
    rc = ol_error("--fit %s: expected bytes such as 24G, 80GiB or 1.5e10", fit_s);
  } else if (fit_s && ranks < 1) {
    rc = ol_error("--fit needs --ranks N, the ranks to lay out");
  } else if (fit_s) {
    rc = fit(in, (int)ranks, budget, gflops, gbps);
  } else {
    ol_plan p;
    rc = ol_plan_layout(&in, &p);
    if (rc == OL_OK) print_plan(&p, &in, gflops, gbps);
  }
  return rc == OL_OK ? 0 : ol_cli_fail();
}
