/* The step loop: data, the pipeline schedule over micro-batches, clip, AdamW, logging,
 * evaluation, checkpoints and resume, signals, and bench timing. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/io/metrics.h"
#include "onelora/io/files.h"
#include "onelora/model/acts.h"
#include "onelora/parallel/dp.h"
#include "onelora/parallel/tp.h"
#include "onelora/parallel/pipeline.h"
#include "onelora/train/data.h"
#include "onelora/backend/backend.h"
#include "onelora/train/trainer.h"
#include "onelora/train/state.h"

typedef struct {
  const ol_train_opts *o;
  ol_model model;
  ol_acts *acts;           /* (n_slots) activations of the micro-batches in flight */
  int n_slots;
  ol_pp_op *ops;           /* (2M) this stage's schedule of a step */
  size_t n_ops;
  ol_loader *data;         /* this replica's tokens: the data file's, or random ones (bench) */
  ol_metrics *log;
  size_t B, T, M, G;       /* micro-batch, seq len, micro-batches, global batch (sequences) */
  int32_t *tokens;         /* (M, B, T) inputs of the step's micro-batches */
  int32_t *targets;        /* (M, B, T) next-token targets */
  int32_t *tokens_bk;      /* (M, B, T) the inputs in backend memory (tokens itself on a
                              host-visible backend) */
  int32_t *targets_bk;     /* (M, B, T) the targets alike */
  double *step_s;          /* (steps) wall time of each step */
  double *frozen_step_s;   /* (steps) wall time of the same step with adapters detached */
  size_t trainable;        /* trainable values of the whole model (every rank's shard) */
} trainer;

/* Loads this replica's micro-batches of a step; all ranks agree on the outcome before any
 * message flows. */
static int load_step(trainer *t, ol_split s, int64_t step) {
  OL_TRY(ol_grid_agree(t->o->grid, ol_loader_step(t->data, s, step, t->tokens, t->targets)));
  const size_t bytes = t->M * t->B * t->T * sizeof(int32_t);
  ol_bk->to_device(t->tokens_bk, t->tokens, bytes);  // no copy when they are the same array
  ol_bk->to_device(t->targets_bk, t->targets, bytes);
  return OL_OK;
}

/* The pipeline executor's callbacks: micro-batch mb runs on activation slot `slot`. */
typedef struct {
  trainer *t;
  float grad_scale;  /* 0: forwards only (evaluation) */
} pass;

static double stage_forward(void *ctx, int mb, int slot) {
  const pass *p = ctx;
  trainer *t = p->t;
  const size_t N = t->B * t->T;
  return ol_model_forward(&t->model, &t->acts[slot], t->tokens_bk + (size_t)mb * N,
                          t->targets_bk + (size_t)mb * N, p->grad_scale);
}

static void stage_backward(void *ctx, int mb, int slot) {
  trainer *t = ((const pass *)ctx)->t;
  ol_model_backward(&t->model, &t->acts[slot], t->tokens_bk + (size_t)mb * t->B * t->T);
}

/* The residual stream at the stage's first block boundary: its input, (N, D) */
static float *stage_input(void *ctx, int slot) { return ((const pass *)ctx)->t->acts[slot].xs; }

/* The residual stream at the stage's last block boundary: its output, (N, D) */
static float *stage_output(void *ctx, int slot) {
  const trainer *t = ((const pass *)ctx)->t;
  const ol_acts *a = &t->acts[slot];
  return a->xs + t->model.stage.n_layers * a->N * (size_t)t->model.cfg.dim;
}

/* Backward reads d(output) from dres and leaves d(input) there: (N, D) */
static float *stage_dres(void *ctx, int slot) { return ((const pass *)ctx)->t->acts[slot].dres; }

/* Runs the stage's schedule over the loaded micro-batches: forwards only when grad_scale is 0.
 * Returns this stage's summed loss (nonzero on the last stage only). */
static double run_schedule(trainer *t, float grad_scale) {
  const ol_stage *st = &t->model.stage;
  const ol_pp_step step = {
      .forward = stage_forward, .backward = stage_backward,
      .input = stage_input, .output = stage_output, .d_output = stage_dres, .d_input = stage_dres,
      .has_prev = !st->has_embed, .has_next = !st->has_head,
      .n = t->B * t->T * (size_t)t->model.cfg.dim};
  pass p = {t, grad_scale};
  return ol_pp_run(t->o->grid, t->ops, t->n_ops, t->n_slots, grad_scale != 0.0f, &step, &p);
}

/* Mean validation loss over eval_batches global batches, in unshuffled order. */
static int evaluate(trainer *t, double *out) {
  double sum = 0.0;
  for (int64_t e = 0; e < t->o->eval_batches; e++) {
    OL_TRY(load_step(t, OL_SPLIT_VAL, e));
    sum += run_schedule(t, 0.0f);
  }
  ol_pp_sum(t->o->grid, &sum, 1);
  ol_dp_sum(t->o->grid, &sum, 1);
  *out = sum / ((double)t->o->eval_batches * (double)(t->G * t->T));
  return OL_OK;
}

/* Writes DIR/step-%08d.h5 from every rank (the directory was made at start-up), then keeps the
 * newest --keep; all ranks agree. */
static int write_checkpoint(trainer *t, int64_t step, double loss) {
  const ol_train_opts *o = t->o;
  ol_grid *g = o->grid;
  int rc = OL_OK;
  char path[4096];
  ol_ckpt_path(path, sizeof path, o->ckpt_dir, step);
  ol_ckpt_meta meta = ol_state_meta(t->o, &t->model.cfg, step, loss);
  double t0 = ol_now();
  OL_TRY(ol_state_save(g, &t->model, &meta, path));
  double seconds = ol_now() - t0;
  if (g->world_rank == 0) {
    size_t size;
    double bytes = ol_file_size(path, &size) == OL_OK ? (double)size : 0.0;
    ol_info("checkpoint %s | %.2f MiB written in %.2f s", path, bytes / 1048576.0, seconds);
    const char *k[] = {"step", "write_s", "bytes"};
    double v[] = {(double)step, seconds, bytes};
    rc = ol_metrics_write(t->log, "checkpoint", 3, k, v);
    if (rc == OL_OK && o->keep > 0) rc = ol_ckpt_prune(o->ckpt_dir, (size_t)o->keep);
  }
  return ol_grid_agree(g, rc);
}

/* World rank 0 picks the checkpoint to resume from: --resume PATH, or with "auto" the newest
 * one in --ckpt-dir that verifies. A corrupt or truncated file is skipped with a warning; a
 * sound checkpoint of another run (model, method, data order) is an error, so that a mistaken
 * --ckpt-dir never starts afresh and prunes that run's checkpoints. "" = start afresh. */
static int pick_checkpoint(trainer *t, char *path, size_t size) {
  const ol_train_opts *o = t->o;
  ol_ckpt_meta run = ol_state_meta(o, &t->model.cfg, 0, 0.0), found;
  int mismatch;
  path[0] = '\0';
  if (strcmp(o->resume, "auto") != 0) {
    if (ol_state_verify(o->resume, &t->model, &run, &found, &mismatch) != OL_OK)
      return ol_error("--resume %s", ol_last_error());
    ol_strlcpy(path, o->resume, size);
    return OL_OK;
  }
  int64_t *steps;
  size_t n;
  OL_TRY(ol_ckpt_list(o->ckpt_dir, &steps, &n));
  int rc = OL_OK;
  for (size_t i = n; i-- > 0 && !path[0] && rc == OL_OK;) {
    char candidate[4096];
    ol_ckpt_path(candidate, sizeof candidate, o->ckpt_dir, steps[i]);
    if (ol_state_verify(candidate, &t->model, &run, &found, &mismatch) == OL_OK)
      ol_strlcpy(path, candidate, size);
    else if (mismatch)
      rc = ol_error("--resume auto: %s (use another --ckpt-dir for another run)", ol_last_error());
    else
      ol_warn("--resume auto: skipping %s", ol_last_error());
  }
  ol_free(steps);
  if (rc == OL_OK && !path[0])
    ol_info("--resume auto: no valid checkpoint in %s, starting from step 0", o->ckpt_dir);
  return rc;
}

/* Creates --ckpt-dir at start-up, so that an unusable directory fails before any training. A
 * run that does not resume must not mix its checkpoints with another run's (--keep would
 * delete the wrong ones, and --resume auto would later pick the wrong one). */
static int prepare_ckpt_dir(const ol_train_opts *o) {
  int64_t *steps;
  size_t n;
  if (ol_io_make_dir(o->ckpt_dir) != OL_OK || ol_ckpt_list(o->ckpt_dir, &steps, &n) != OL_OK)
    return ol_error("--ckpt-dir %s: %s", o->ckpt_dir, ol_last_error());
  int64_t newest = n ? steps[n - 1] : 0;
  ol_free(steps);
  if (n && !o->resume)
    return ol_error("--ckpt-dir %s already holds %zu checkpoint(s), the newest of step %lld: pass "
                    "--resume auto to continue that run, or choose another directory", o->ckpt_dir,
                    n, (long long)newest);
  return OL_OK;
}

/* --resume: every rank reads its own slices of the chosen checkpoint. *start = its step. */
static int resume(trainer *t, int64_t *start) {
  ol_grid *g = t->o->grid;
  char path[4096];
  *start = 0;
  int rc = g->world_rank == 0 ? pick_checkpoint(t, path, sizeof path) : OL_OK;
  OL_TRY(ol_grid_agree(g, rc));
  ol_grid_bcast_str(g, path, sizeof path);
  if (!path[0]) return OL_OK;
  ol_ckpt *c;
  ol_ckpt_meta meta;
  rc = ol_ckpt_open(path, &c, &meta);
  if (rc == OL_OK) {
    rc = ol_state_load(&t->model.params, &t->model.generated, c, 1);
    ol_ckpt_close(c);
  }
  OL_TRY(ol_grid_agree(g, rc));
  *start = meta.step;
  const char *k[] = {"step", "from_tp", "from_pp", "from_dp"};
  double v[] = {(double)meta.step, (double)meta.tp, (double)meta.pp, (double)meta.dp};
  OL_TRY(ol_metrics_write(t->log, "resume", 4, k, v));
  ol_info("resumed from %s at step %lld (written by layout tp %lld pp %lld dp %lld; loss %.4f)",
          path, (long long)meta.step, (long long)meta.tp, (long long)meta.pp, (long long)meta.dp,
          meta.loss);
  return OL_OK;
}

static void format_eta(double seconds, char *buf, size_t size) {
  long s = (long)(seconds + 0.5);
  if (s >= 3600) snprintf(buf, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else if (s >= 60) snprintf(buf, size, "%ldm%02lds", s / 60, s % 60);
  else snprintf(buf, size, "%lds", s);
}

/* Zeroes the gradients, runs forward and backward over this replica's micro-batches, then sums
 * the gradients and the loss over the DP replicas. loss_sum is the global sum. */
static int forward_backward(trainer *t, int64_t step, float grad_scale, double *loss_sum) {
  ol_model *m = &t->model;
  ol_bk->fill(m->params.grad, 0.0f, m->params.total);
  OL_TRY(load_step(t, OL_SPLIT_TRAIN, step));
  *loss_sum = run_schedule(t, grad_scale);
  ol_tp_reduce_partial_grads(t->o->grid, &m->params);  // row-parallel 1LoRA's db
  ol_dp_allreduce_grads(t->o->grid, &m->params);
  ol_pp_sum(t->o->grid, loss_sum, 1);  // the loss lives on the last stage
  ol_dp_sum(t->o->grid, loss_sum, 1);
  return OL_OK;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median of x[1..n) (the first step warms up), or x[0] when n == 1; sorts in place. */
static double median_after_first(double *x, size_t n) {
  size_t skip = n > 1 ? 1 : 0;
  qsort(x + skip, n - skip, sizeof(double), cmp_double);
  return x[skip + (n - skip) / 2];
}

/* Evaluates, logs and prints the validation loss after `step` steps. */
static int eval_and_log(trainer *t, int64_t step, double *val) {
  OL_TRY(evaluate(t, val));
  ol_info("eval step %lld | val_loss %.4f", (long long)step, *val);
  const char *k[] = {"step", "val_loss"};
  double v[] = {(double)step, *val};
  return ol_metrics_write(t->log, "eval", 2, k, v);
}

/* --results: world rank 0 appends one CSV row summarising the run (jobs/ collect them). The
 * peak memory and the bytes a rank sends per step are maxima over the ranks. */
static int append_results(trainer *t, const char *status, double train_loss, double val,
                          double median_step_s, double wall_s) {
  const ol_train_opts *o = t->o;
  ol_grid *g = o->grid;
  double worst[1 + OL_COMM_COUNT] = {(double)ol_peak_rss_bytes() / 1048576.0};
  memcpy(worst + 1, g->bytes, sizeof g->bytes);  // the last step's
  ol_grid_max(g, worst, 1 + OL_COMM_COUNT);
  if (!o->results_path || g->world_rank != 0) return OL_OK;
  static const char header[] =
      "model,method,targets,rank,tp,pp,dp,ranks,steps,global_batch,seq_len,trainable,"
      "tokens_per_s,step_s,peak_rss_mib,bytes_dp,bytes_tp_fwd,bytes_tp_bwd,bytes_pp,train_loss,"
      "val_loss,wall_s,status";
  char val_s[32] = "";
  if (isfinite(val)) snprintf(val_s, sizeof val_s, "%.6f", val);
  char row[2048];
  snprintf(row, sizeof row,
           "\"%s\",\"%s\",\"%s\",%lld,%d,%d,%d,%d,%lld,%zu,%zu,%zu,%.1f,%.6f,%.1f,%.0f,%.0f,%.0f,"
           "%.0f,%.6f,%s,%.3f,%s",
           o->synthetic ? "synthetic" : o->model_path, o->method.text, o->method.targets_text,
           (long long)o->method.rank, g->tp, g->pp, g->dp, g->world_size, (long long)o->steps,
           t->G, t->T, t->trainable, (double)(t->G * t->T) / median_step_s,
           median_step_s, worst[0], worst[1 + OL_COMM_DP], worst[1 + OL_COMM_TP_FWD],
           worst[1 + OL_COMM_TP_BWD], worst[1 + OL_COMM_PP], train_loss, val_s, wall_s, status);
  return ol_csv_append(o->results_path, header, row);
}

/* A signal handler may only set a flag: the one piece of global mutable state besides the
 * backend table and the logger. Every rank checks it, agreed, after each step. */
static volatile sig_atomic_t stop_signal;
static void on_stop_signal(int sig) { stop_signal = sig; }

static int train_loop(trainer *t, int64_t start, double t_run, ol_train_result *res) {
  const ol_train_opts *o = t->o;
  ol_model *m = &t->model;
  const double tokens_per_step = (double)(t->G * t->T);
  const float grad_scale = (float)(1.0 / tokens_per_step);
  double t_start = ol_now(), val = NAN, val0 = NAN, loss = NAN;
  if (o->eval_every > 0 && start == 0) {
    OL_TRY(eval_and_log(t, 0, &val));
    val0 = val;
  }
  int64_t step = start;  // steps completed
  int stopped = 0;
  while (step < o->steps && !stopped) {
    if (o->time_frozen) {  // the same step with every adapter detached: --method none's work
      double t0 = ol_now();
      ol_model_attach_adapters(m, 0);
      double ignored;
      int rc = forward_backward(t, step, grad_scale, &ignored);
      ol_model_attach_adapters(m, 1);
      OL_TRY(rc);
      ol_bk->sync();  // a device's queued backward belongs to this step's time
      t->frozen_step_s[step] = ol_now() - t0;
    }
    double t0 = ol_now();
    double loss_sum;
    memset(o->grid->bytes, 0, sizeof o->grid->bytes);  // this step's communication
    OL_TRY(forward_backward(t, step, grad_scale, &loss_sum));
    loss = loss_sum / tokens_per_step;
    if (!isfinite(loss))
      return ol_error("non-finite loss (%g) at step %lld: stopping without writing a checkpoint "
                      "(lower --lr or set --clip)", loss, (long long)step + 1);
    double gnorm = ol_clip_grad_norm(&m->params, o->clip, o->grid);
    double lr = ol_schedule_lr(&o->schedule, step);
    ol_adamw_step(&o->adamw, &m->params, (float)lr, step + 1);
    step++;
    ol_bk->sync();  // the queued optimizer step too
    double dt = ol_now() - t0, elapsed = ol_now() - t_start;
    t->step_s[step - 1] = dt;
    double tok_s = tokens_per_step / dt;
    double peak_mib = (double)ol_peak_rss_bytes() / 1048576.0;
    char device_peak[48] = "";  // a device's own memory, beside the host's RSS
    if (!ol_bk->host_visible)
      snprintf(device_peak, sizeof device_peak, " | %s peak %.0f MiB", ol_bk->name,
               (double)ol_bk->peak_bytes() / 1048576.0);
    char eta[32];
    format_eta(elapsed / (double)(step - start) * (double)(o->steps - step), eta, sizeof eta);
    const double *comm = o->grid->bytes;  // payload bytes this rank sent, per purpose
    ol_info("step %lld/%lld | loss %.4f | lr %.3e | gnorm %.3f | %.0f tok/s | peak %.0f MiB%s | "
            "comm KiB tp %.1f+%.1f pp %.1f dp %.1f | eta %s",
            (long long)step, (long long)o->steps, loss, lr, gnorm, tok_s, peak_mib, device_peak,
            comm[OL_COMM_TP_FWD] / 1024, comm[OL_COMM_TP_BWD] / 1024, comm[OL_COMM_PP] / 1024,
            comm[OL_COMM_DP] / 1024, eta);
    const char *k[] = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_s", "peak_rss_mib",
                       "elapsed_s", "bytes_tp_fwd", "bytes_tp_bwd", "bytes_pp", "bytes_dp"};
    double v[] = {(double)step, loss, lr, gnorm, tok_s, dt, peak_mib, elapsed,
                  comm[OL_COMM_TP_FWD], comm[OL_COMM_TP_BWD], comm[OL_COMM_PP], comm[OL_COMM_DP]};
    OL_TRY(ol_metrics_write(t->log, "step", 12, k, v));
    int last = step == o->steps;
    if (o->eval_every > 0 && (step % o->eval_every == 0 || last)) OL_TRY(eval_and_log(t, step, &val));
    stopped = ol_grid_any(o->grid, stop_signal != 0);
    int due = o->ckpt_dir && (last || stopped || (o->ckpt_every > 0 && step % o->ckpt_every == 0));
    if (due) OL_TRY(write_checkpoint(t, step, loss));
    if (stopped)
      ol_info("stopped by a signal after step %lld: %s; exit status %d (rerun with --resume auto "
              "to continue)", (long long)step,
              o->ckpt_dir ? "checkpoint written" : "no --ckpt-dir, so no checkpoint",
              OL_EXIT_STOPPED);
  }
  const size_t done = (size_t)(step - start);
  double *paired = t->frozen_step_s + start;  // each step over its frozen twin: drift cancels
  for (size_t i = 0; o->time_frozen && i < done; i++) paired[i] = t->step_s[start + i] / paired[i];
  double median = median_after_first(t->step_s + start, done);
  char evals[96] = "";
  if (o->eval_every > 0 && isfinite(val0)) snprintf(evals, sizeof evals, " | val_loss %.4f -> %.4f", val0, val);
  else if (o->eval_every > 0) snprintf(evals, sizeof evals, " | val_loss %.4f", val);
  const size_t pss = ol_pss_bytes();
  double mem[3] = {(double)ol_peak_rss_bytes(), (double)pss, (double)ol_bk->peak_bytes()};
  double pss_sum = (double)pss;
  ol_grid_max(o->grid, mem, 3);
  ol_grid_sum(o->grid, &pss_sum, 1);
  char device_peak[64] = "";
  if (!ol_bk->host_visible)
    snprintf(device_peak, sizeof device_peak, " | %s peak %.0f MiB (max over ranks)", ol_bk->name,
             mem[2] / 1048576.0);
  ol_info("%s | %lld steps in %.1f s | loss %.4f%s | trainable %zu | %.0f tok/s (median step) | "
          "peak RSS %.0f MiB | PSS %.0f MiB (max over ranks), %.0f MiB (sum)%s",
          stopped ? "stopped" : "done", (long long)done, ol_now() - t_start, loss, evals,
          t->trainable, tokens_per_step / median, mem[0] / 1048576.0, mem[1] / 1048576.0,
          pss_sum / 1048576.0, device_peak);
  OL_TRY(ol_grid_agree(o->grid, append_results(t, stopped ? "stopped" : "done", loss, val, median,
                                               ol_now() - t_run)));
  if (res) {
    res->stopped = stopped;
    res->median_step_s = median;
    res->step_over_frozen = o->time_frozen ? median_after_first(paired, done) : 1.0;
    res->tokens_per_step = tokens_per_step;
    res->flops_per_step = ol_model_step_flops(m, t->B * t->M * t->T, t->T, o->recompute);
    res->final_loss = loss;
    res->peak_rss_bytes = ol_peak_rss_bytes();
    res->peak_device_bytes = ol_bk->peak_bytes();
    res->frozen_bytes = m->frozen_floats * sizeof(float) + m->frozen_halves * sizeof(uint16_t) +
                        m->mapped_bytes;
    res->pss_bytes = pss;
    res->pss_sum_bytes = pss_sum;
    res->kept_bytes = t->acts[0].bytes_kept * (size_t)t->n_slots;
    res->trainable = ol_model_trainable(m);  // this rank's share: the memory minimum
  }
  return OL_OK;
}

/* Rank 0's line on how its frozen matrices are held: mapped from the file or read into memory. */
static void log_weight_storage(const ol_model *m, const ol_train_opts *o) {
  size_t matrices = 0;
  for (size_t i = 0; i < m->n_tensors; i++) matrices += m->tensors[i]->ndim == 2 && m->tensors[i]->param < 0;
  const char *dtype = ol_dtype_name(o->weights_dtype);
  if (!ol_bk->host_visible)
    ol_info("frozen weights: %zu matrices copied to %s memory as %s (a device cannot map files)",
            matrices, ol_bk->name, dtype);
  else if (!o->map_weights)
    ol_info("frozen weights: %zu matrices read into memory as %s (--no-map)", matrices, dtype);
  else if (m->mapped_tensors == matrices)
    ol_info("frozen weights: all %zu matrices mapped read-only from %s as %s (%.1f MiB, shared "
            "by the ranks of a node)", matrices, o->model_path, dtype,
            (double)m->mapped_bytes / 1048576.0);
  else
    ol_info("frozen weights: %zu of %zu matrices mapped from %s (%.1f MiB), the rest read into "
            "memory as %s: %s", m->mapped_tensors, matrices, o->model_path,
            (double)m->mapped_bytes / 1048576.0, dtype, m->map_why);
}

int ol_train_run(const ol_train_opts *o, ol_train_result *result) {
  const double t_run = ol_now();
  trainer t = {0};
  t.o = o;
  t.B = (size_t)o->micro_batch, t.T = (size_t)o->seq_len, t.M = (size_t)o->micro_batches;
  ol_weights *mf = NULL;
  ol_config cfg;
  ol_grid *g = o->grid;
  int rc = ol_grid_layout(g, o->tp, o->pp);
  t.G = t.B * t.M * (size_t)g->dp;  // sequences per global batch
  ol_stage stage;
  if (rc != OL_OK) {
  } else if (o->synthetic) {
    cfg = *o->synthetic;
  } else {
    rc = ol_weights_open(o->model_path, &mf, &cfg);
    if (rc == OL_OK && o->seq_len > cfg.max_seq_len)
      rc = ol_error("--seq-len %lld exceeds max_seq_len %lld of model %s", (long long)o->seq_len,
                    (long long)cfg.max_seq_len, o->model_path);
  }
  if (rc == OL_OK) {  // bench (synthetic) draws random tokens instead of reading a file
    ol_loader_opts data = {.path = o->synthetic ? NULL : o->data_path, .seed = o->seed,
                           .shuffle = o->shuffle, .B = t.B, .T = t.T, .M = t.M, .dp = g->dp,
                           .dp_rank = g->dp_rank, .vocab_size = cfg.vocab_size,
                           .need_val = o->eval_every > 0};
    rc = ol_loader_open(&data, &t.data);
  }
  if (rc == OL_OK && cfg.n_layers < g->pp)
    rc = ol_error("--pp %d: the model has only %lld layers, fewer than the pipeline stages", g->pp,
                  (long long)cfg.n_layers);
  if (rc == OL_OK) rc = ol_method_check(&o->method, o->tp, o->weights_dtype);
  if (rc == OL_OK && mf && ol_weights_tied(mf) && o->method.full)
    rc = ol_error("--method full on %s: its embedding and LM head are tied "
                  "(tie_word_embeddings), which onelora trains as two tensors; use another method",
                  o->model_path);
  if (rc == OL_OK && (size_t)o->micro_batches > OL_PP_MAX_SLOTS)
    rc = ol_error("--micro-batches %lld: at most %d", (long long)o->micro_batches, OL_PP_MAX_SLOTS);
  if (rc == OL_OK) {
    stage = ol_pipeline_stage(&cfg, g->pp, g->pp_rank);
    stage.tp = g->tp, stage.tp_rank = g->tp_rank;
    stage.weights_dtype = o->weights_dtype;
    rc = ol_model_build_mapped(&t.model, &cfg, &o->method, o->seed, &stage,
                               o->map_weights && ol_bk->host_visible ? mf : NULL);
    if (rc == OL_OK) ol_model_bind_tp(&t.model, ol_grid_tp(g));  // a failed build has no blocks
  }
  // (memory_only: the allocation has touched every page already; the values do not matter)
  if (rc == OL_OK && o->synthetic && !o->memory_only) ol_model_randomize(&t.model, o->seed);
  if (rc == OL_OK && mf) rc = ol_model_load(&t.model, mf);
  if (rc == OL_OK && mf) log_weight_storage(&t.model, o);
  ol_weights_close(mf);
  rc = ol_grid_agree(o->grid, rc);  // every rank stops here when one could not set up
  ol_model whole = {0};  // the whole model's layout, for its trainable count
  if (rc == OL_OK) rc = ol_model_layout(&whole, &cfg, &o->method, o->seed);
  t.trainable = ol_model_trainable(&whole);
  ol_model_free(&whole);
  if (rc == OL_OK) {
    ol_model_init_adapters(&t.model, o->seed);
    t.n_slots = ol_pp_slots(g->pp, g->pp_rank, (int)t.M, o->gpipe);
    t.acts = ol_calloc((size_t)t.n_slots, sizeof *t.acts);
    for (int s = 0; s < t.n_slots; s++)
      ol_acts_alloc(&t.acts[s], &t.model, t.B, t.T, o->recompute);
    t.ops = ol_calloc(2 * t.M, sizeof *t.ops);
    t.n_ops = ol_pp_schedule(g->pp, g->pp_rank, (int)t.M, o->gpipe, t.ops);
    t.tokens = ol_calloc(t.M * t.B * t.T, sizeof(int32_t));
    t.targets = ol_calloc(t.M * t.B * t.T, sizeof(int32_t));
    const size_t token_bytes = t.M * t.B * t.T * sizeof(int32_t);
    t.tokens_bk = ol_bk->host_visible ? t.tokens : ol_bk->alloc(token_bytes);
    t.targets_bk = ol_bk->host_visible ? t.targets : ol_bk->alloc(token_bytes);
    t.step_s = ol_calloc((size_t)o->steps, sizeof(double));
    t.frozen_step_s = ol_calloc((size_t)o->steps, sizeof(double));
    ol_info("onelora train | model %s (D=%lld L=%lld H=%lld Hkv=%lld F=%lld V=%lld) | method %s | "
            "targets %s | trainable %zu | batch %zux%zux%zux%d tokens (MxBxTxDP) | layout tp %d pp %d "
            "dp %d | activations kept %.1f MiB%s",
            o->model_path, (long long)cfg.dim, (long long)cfg.n_layers, (long long)cfg.n_heads,
            (long long)cfg.n_kv_heads, (long long)cfg.ffn_dim, (long long)cfg.vocab_size,
            o->method.text, o->method.targets_text, t.trainable, t.M, t.B, t.T,
            g->dp, g->tp, g->pp, g->dp, (double)t.acts[0].bytes_kept * t.n_slots / 1048576.0,
            o->recompute ? " (--recompute: block inputs only)" : "");
    rc = o->grid->world_rank == 0 ? ol_metrics_open(o->log_path, o->resume != NULL, &t.log) : OL_OK;
    rc = ol_grid_agree(o->grid, rc);
  }
  int64_t start = 0;
  if (rc == OL_OK && o->ckpt_dir)
    rc = ol_grid_agree(g, g->world_rank == 0 ? prepare_ckpt_dir(o) : OL_OK);
  if (rc == OL_OK && o->resume) rc = resume(&t, &start);
  if (rc == OL_OK && o->memory_only) {  // everything a step uses is allocated and touched
    if (result) {
      result->peak_rss_bytes = ol_peak_rss_bytes();
      result->peak_device_bytes = ol_bk->peak_bytes();
      result->trainable = ol_model_trainable(&t.model);
    }
  } else if (rc == OL_OK && start >= o->steps) {
    ol_info("checkpoint step %lld >= --steps %lld: nothing left to train", (long long)start,
            (long long)o->steps);
  } else if (rc == OL_OK) {
    // SIGTERM (Slurm's time limit, scancel) and SIGUSR1 (--signal=B:USR1@T): stop after the
    // current step with a checkpoint
    struct sigaction stop = {0}, old_term, old_usr1;
    stop.sa_handler = on_stop_signal;
    sigemptyset(&stop.sa_mask);
    stop_signal = 0;
    sigaction(SIGTERM, &stop, &old_term);
    sigaction(SIGUSR1, &stop, &old_usr1);
    rc = train_loop(&t, start, t_run, result);
    sigaction(SIGTERM, &old_term, NULL);
    sigaction(SIGUSR1, &old_usr1, NULL);
  }
  ol_metrics_close(t.log);
  ol_loader_close(t.data);
  if (t.tokens_bk != t.tokens) {
    ol_bk->free(t.tokens_bk);
    ol_bk->free(t.targets_bk);
  }
  ol_free(t.tokens), ol_free(t.targets), ol_free(t.step_s), ol_free(t.frozen_step_s);
  for (int s = 0; s < t.n_slots; s++) ol_acts_free(&t.acts[s]);
  ol_free(t.acts), ol_free(t.ops);
  ol_model_free(&t.model);
  return rc;
}
