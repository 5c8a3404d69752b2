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

/* Best rate of an n x n x n sgemm over a few repetitions, in FLOP/s. */
static double sgemm_rate(size_t n) {
  float *a = ol_calloc(n * n, sizeof(float)), *b = ol_calloc(n * n, sizeof(float));
  float *c = ol_calloc(n * n, sizeof(float));  // (n, n) each
  ol_bk->fill(a, 0.3f, n * n), ol_bk->fill(b, 0.7f, n * n);  // any normal values time the same
  double best = 0;
  for (int rep = 0; rep < 4; rep++) {
    double t0 = ol_now();
    ol_bk->gemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double rate = 2.0 * (double)n * (double)n * (double)n / (ol_now() - t0);
    if (rate > best) best = rate;
  }
  ol_free(a), ol_free(b), ol_free(c);
  return best;
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
  ol_plan_inputs in = {&cfg, &o.method, grid->tp, grid->pp, grid->dp, o.micro_batch,
                       o.micro_batches, o.seq_len, o.weights_dtype, o.recompute, 0, o.gpipe};
  ol_plan plan;
  if (ol_plan_layout(&in, &plan) != OL_OK) return ol_cli_fail();
  if (memory_only) {
    double peak = (double)r.peak_rss_bytes;
    ol_grid_max(grid, &peak, 1);
    ol_info("bench memory | method %s | layout tp %d pp %d dp %d | weights %s%s | trainable %zu | "
            "peak RSS %.1f MiB (allocated, no step run) | planned %.1f MiB | RSS/planned %.3f",
            o.method.text, grid->tp, grid->pp, grid->dp, ol_dtype_name(o.weights_dtype),
            o.recompute ? ", recompute" : "", r.trainable, peak / 1048576.0,
            plan.total / 1048576.0, peak / plan.total);
    return 0;
  }
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
