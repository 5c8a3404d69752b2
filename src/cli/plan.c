/* onelora plan: what a method trains on a model, before running it. Counts only the layout
 * (nothing is allocated), so it answers for 7B and 13B shapes on a laptop. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/io.h"
#include "onelora/model.h"
#include "onelora/parallel.h"

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

int ol_cmd_plan(int argc, char **argv) {
  const char *model = NULL, *method_s = "1lora", *targets = "all";
  int64_t rank = 1;
  double alpha = 1.0;
  int csv = 0;
  ol_shape_args shape;
  ol_arg args[6 + OL_SHAPE_NARGS] = {
      {"--model", OL_ARG_STR, &model, "M.h5|DIR", "read the shape from a model file or HF directory instead of --preset"},
      {"--method", OL_ARG_STR, &method_s, "LIST", "PEFT method(s), comma-combined (1lora)"},
      {"--targets", OL_ARG_STR, &targets, "LIST", "all | attn | mlp | q,k,v,o,gate,up,down (all)"},
      {"--rank", OL_ARG_INT, &rank, "R", "adapter rank (1)"},
      {"--alpha", OL_ARG_FLOAT, &alpha, "A", "adapter scaling numerator (1)"},
      {"--csv", OL_ARG_FLAG, &csv, NULL, "one CSV header line and one row"},
  };
  ol_shape_flags(&shape, args + 6);
  int help;
  if (ol_args_parse("plan", "[--preset P | --model M.h5] --method LIST [--targets LIST] [--rank R]"
                    "\n\nCounts what a method trains on a model (nothing is allocated).",
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
  return rc == OL_OK ? 0 : ol_cli_fail();
}
