/* onelora bench: training on a random model and random tokens, then a report of throughput
 * against this machine's measured sgemm rate (FLOP/s and sgemm rates summed over the ranks) and
 * of the largest rank's peak memory against the analytic minimum and the planner's prediction. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/train/plan.h"
#include "onelora/train/state.h"
#include "onelora/io/metrics.h"
#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

/* Best time over a few repetitions of C(M,N) = X(M,K) op(W): f32 W (K,N) by gemm, or 2-byte
 * W (N,K) of `dtype` by gemm_half (y = x W^T, as a linear's forward), on backend buffers
 * (waiting for a device to finish). */
static double gemm_seconds(size_t M, size_t N, size_t K, ol_dtype dtype) {
  float *x = ol_bk->alloc(M * K * sizeof(float)), *c = ol_bk->alloc(M * N * sizeof(float));
  void *w = ol_bk->alloc(N * K * (dtype == OL_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t)));
  // (M, K), (M, N), (N, K); any normal values time the same (2-byte W: zeros)
  ol_bk->fill(x, 0.3f, M * K);
  if (dtype == OL_DTYPE_F32) ol_bk->fill(w, 0.7f, N * K);
  const size_t scratch_floats = dtype == OL_DTYPE_F32 ? 0 : ol_bk->gemm_half_scratch_floats(N, K);
  float *scratch = scratch_floats ? ol_bk->alloc(scratch_floats * sizeof(float)) : NULL;
  double best = 0.0;
  for (int rep = 0; rep < 4; rep++) {
    ol_bk->sync();
    double t0 = ol_now();
    if (dtype == OL_DTYPE_F32)
      ol_bk->gemm(0, 0, M, N, K, 1.0f, x, K, w, N, 0.0f, c, N);
    else
      ol_bk->gemm_half(1, M, N, K, 1.0f, x, K, w, K, dtype == OL_DTYPE_BF16, 0.0f, c, N, scratch);
    ol_bk->sync();
    const double t = ol_now() - t0;
    if (rep == 0 || t < best) best = t;
  }
  ol_bk->free(x), ol_bk->free(c), ol_bk->free(w), ol_bk->free(scratch);
  return best;
}

/* Best rate of an n x n x n sgemm, in FLOP/s (the cpu's reference). */
static double sgemm_rate(size_t n) {
  return 2.0 * (double)n * (double)n * (double)n / gemm_seconds(n, n, n, OL_DTYPE_F32);
}

/* A device's reference: the rate of the GEMMs of one layer's forward (q, k, v, o, gate, up,
 * down at N tokens, this rank's shards) and the LM head, in the weights' dtype, as one
 * FLOP-weighted rate: their FLOPs over their summed best times. */
static double model_gemm_rate(const ol_config *c, int tp, size_t N, ol_dtype dtype) {
  const size_t D = (size_t)c->dim, hd = D / (size_t)c->n_heads, F = (size_t)c->ffn_dim / (size_t)tp;
  const size_t qD = (size_t)c->n_heads / (size_t)tp * hd, kvD = (size_t)c->n_kv_heads / (size_t)tp * hd;
  const size_t shapes[][2] = {{D, qD}, {D, kvD}, {D, kvD}, {qD, D}, {D, F}, {D, F}, {F, D},
                              {D, (size_t)c->vocab_size / (size_t)tp}};  // (in, out)
  double flops = 0.0, seconds = 0.0;
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    flops += 2.0 * (double)N * (double)shapes[i][0] * (double)shapes[i][1];
    seconds += gemm_seconds(N, shapes[i][1], shapes[i][0], dtype);
  }
  return flops / seconds;
}

/* --checkpoint-only: write, read back and verify the method's trainable state in o's layout,
 * and set it against the ideal time of a training step at this machine's sgemm rate. */
static int bench_checkpoint(ol_train_opts *o, const ol_config *cfg) {
  if (!o->ckpt_dir) return ol_error("--checkpoint-only needs --ckpt-dir, where the file is written");
  OL_TRY(ol_io_make_dir(o->ckpt_dir));
  char path[4096];
  snprintf(path, sizeof path, "%s/bench-rank%d.h5", o->ckpt_dir, o->grid->world_rank);
  ol_grid_bcast_str(o->grid, path, sizeof path);  // rank 0's name, on every rank
  ol_state_bench_result b;
  OL_TRY(ol_state_bench(o, cfg, path, &b));
  double rate = o->grid->world_rank == 0 ? sgemm_rate(2048) : 0.0;
  double step_s = b.step_flops / (rate * o->grid->world_size);  // perfectly balanced ranks
  ol_info("bench checkpoint | method %s | layout tp %d pp %d dp %d | trainable %zu | file %.2f MiB "
          "| write %.3f s | read %.3f s | verify %.3f s | ideal step %.2f s (%.3g FLOP at %.1f "
          "GFLOP/s x %d ranks) | write/step %.2e",
          o->method.text, o->grid->tp, o->grid->pp, o->grid->dp, b.trainable, b.bytes / 1048576.0,
          b.write_s, b.read_s, b.verify_s, step_s, b.step_flops, rate / 1e9, o->grid->world_size,
          b.write_s / step_s);
  return OL_OK;
}

/* The report of a GPU run: throughput against cuBLAS on the model's own GEMM shapes (measured
 * after training, in the same process), the GPU's peak allocated memory against the plan. */
static int bench_gpu_report(const ol_train_opts *o, const ol_train_result *r, const ol_plan *plan,
                            const ol_config *cfg) {
  ol_grid *grid = o->grid;
  const size_t N = (size_t)(o->micro_batch * o->seq_len);
  double rates[2] = {r->flops_per_step / r->median_step_s,
                     model_gemm_rate(cfg, grid->tp, N, o->weights_dtype)};  // this rank's
  ol_grid_sum(grid, rates, 2);
  double peak = (double)r->peak_device_bytes;
  ol_grid_max(grid, &peak, 1);
  char ratio[32] = "n/a";
  int frozen_itself = !o->method.adapters && !o->method.norms && !o->method.full;
  if (o->time_frozen || frozen_itself) snprintf(ratio, sizeof ratio, "%.4f", r->step_over_frozen);
  ol_info("bench | device %s | method %s | layout tp %d pp %d dp %d | weights %s%s | trainable "
          "%zu | median step %.4f s | step/frozen %s | %.0f tok/s | %.1f TFLOP/s | cuBLAS %s GEMMs "
          "of the model's shapes %.1f TFLOP/s | ratio %.3f | peak GPU %.1f MiB | planned %.1f MiB "
          "| GPU/planned %.3f | kept %.2f MiB",
          ol_bk->name, o->method.text, grid->tp, grid->pp, grid->dp,
          ol_dtype_name(o->weights_dtype), o->recompute ? ", recompute" : "", r->trainable,
          r->median_step_s, ratio, r->tokens_per_step / r->median_step_s, rates[0] / 1e12,
          ol_dtype_name(o->weights_dtype), rates[1] / 1e12, rates[0] / rates[1],
          peak / 1048576.0, plan->total / 1048576.0, peak / plan->total,
          (double)r->kept_bytes / 1048576.0);
  return 0;
}

int ol_cmd_bench(int argc, char **argv, ol_grid *grid) {
  ol_shape_args shape;
  ol_arg extra[OL_SHAPE_NARGS + 2];
  ol_shape_flags(&shape, extra);
  int ckpt_only = 0, memory_only = 0;
  extra[OL_SHAPE_NARGS] = (ol_arg){"--checkpoint-only", OL_ARG_FLAG, &ckpt_only, NULL,
                                   "only time a checkpoint write and read of the trainable state "
                                   "(no weights: any shape fits), in --ckpt-dir"};
  extra[OL_SHAPE_NARGS + 1] = (ol_arg){"--memory-only", OL_ARG_FLAG, &memory_only, NULL,
                                       "allocate (and touch) everything a step uses, report the "
                                       "largest rank's peak RSS beside the plan, run no step"};
  ol_train_opts o;
  int help;
  if (ol_train_flags("bench", "[options]\n\nTrains on a random model of the given shape with random "
                     "tokens, then reports tokens/s,\nachieved FLOP/s over a 2048^3 sgemm measured "
                     "in the same run, and peak RSS over the\nanalytic minimum (weights + "
                     "trainable state + the activations backward keeps).",
                     argc, argv, extra, OL_SHAPE_NARGS + 2, 1, &o, &help) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  ol_config cfg;
  if (ol_shape_config(&shape, &cfg) != OL_OK) return ol_cli_fail();
  if (o.seq_len > cfg.max_seq_len) {
    ol_error("--seq-len %lld exceeds max_seq_len %lld", (long long)o.seq_len, (long long)cfg.max_seq_len);
    return ol_cli_fail();
  }
  o.synthetic = &cfg;
  o.grid = grid;
  if (ol_cli_use_device(grid, o.device) != OL_OK) return ol_cli_fail();
  if (ckpt_only) return bench_checkpoint(&o, &cfg) == OL_OK ? 0 : ol_cli_fail();
  // adapters can be detached to time the frozen twin of each step; trainable norms or weights
  // cannot, so those runs report no ratio (compare their median step with a `none` run)
  o.time_frozen = o.method.adapters != 0 && !o.method.full && !o.method.norms;
  o.model_path = "synthetic";
  o.memory_only = memory_only;
  ol_train_result r = {0};
  if (ol_train_run(&o, &r) != OL_OK) return ol_cli_fail();
  const int gpu = strcmp(ol_bk->name, "cuda") == 0;  // its memory is the device's, not RSS
  ol_plan_inputs in = {&cfg, &o.method, grid->tp, grid->pp, grid->dp, o.micro_batch,
                       o.micro_batches, o.seq_len, o.weights_dtype, o.recompute, 0, o.gpipe, gpu};
  ol_plan plan;
  if (ol_plan_layout(&in, &plan) != OL_OK) return ol_cli_fail();
  if (memory_only) {
    double peak = (double)(gpu ? r.peak_device_bytes : r.peak_rss_bytes);
    ol_grid_max(grid, &peak, 1);
    ol_info("bench memory | method %s | layout tp %d pp %d dp %d | weights %s%s | trainable %zu | "
            "peak %s %.1f MiB (allocated, no step run) | planned %.1f MiB | %s/planned %.3f",
            o.method.text, grid->tp, grid->pp, grid->dp, ol_dtype_name(o.weights_dtype),
            o.recompute ? ", recompute" : "", r.trainable, gpu ? "GPU" : "RSS", peak / 1048576.0,
            plan.total / 1048576.0, gpu ? "GPU" : "RSS", peak / plan.total);
    return 0;
  }
  if (gpu) return bench_gpu_report(&o, &r, &plan, &cfg);
  // measured after training, so its buffers do not count in the run's peak RSS; every rank
  // measures at once, so ranks sharing cores share them here too
  double rates[2] = {r.flops_per_step / r.median_step_s, sgemm_rate(2048)};  // this rank's
  ol_grid_sum(grid, rates, 2);  // achieved and sgemm FLOP/s of all ranks together
  // frozen weights, the four trainable buffers (values, gradients, Adam m and v), and the
  // activations backward keeps
  size_t minimum = r.frozen_bytes + 4 * r.trainable * sizeof(float) + r.kept_bytes;
  double mem[2] = {(double)r.peak_rss_bytes, (double)minimum};  // the largest rank's
  ol_grid_max(grid, mem, 2);
  char ratio[32] = "n/a";
  int frozen_itself = !o.method.adapters && !o.method.norms && !o.method.full;
  if (o.time_frozen || frozen_itself) snprintf(ratio, sizeof ratio, "%.4f", r.step_over_frozen);
  ol_info("bench | method %s | layout tp %d pp %d dp %d | weights %s%s | trainable %zu | median "
          "step %.4f s | step/frozen %s | %.0f tok/s | %.1f GFLOP/s | sgemm 2048^3 %.1f GFLOP/s | "
          "ratio %.3f | peak RSS %.1f MiB | minimum %.1f MiB | RSS/minimum %.3f | planned %.1f MiB "
          "| RSS/planned %.3f | kept %.2f MiB",
          o.method.text, grid->tp, grid->pp, grid->dp, ol_dtype_name(o.weights_dtype),
          o.recompute ? ", recompute" : "", r.trainable, r.median_step_s, ratio,
          r.tokens_per_step / r.median_step_s, rates[0] / 1e9, rates[1] / 1e9, rates[0] / rates[1],
          mem[0] / 1048576.0, mem[1] / 1048576.0, mem[0] / mem[1], plan.total / 1048576.0,
          mem[0] / plan.total, (double)r.kept_bytes / 1048576.0);
  return 0;
}
