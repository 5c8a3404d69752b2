/* onelora train: AdamW, the learning-rate schedule, the data order and the step loop. */
#ifndef ONELORA_TRAIN_H
#define ONELORA_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/config.h"
#include "onelora/parallel.h"
#include "onelora/peft.h"

typedef struct {
  float beta1, beta2, eps, weight_decay;
} ol_adamw;

/* PyTorch defaults: 0.9, 0.999, 1e-8, weight decay 0 */
ol_adamw ol_adamw_defaults(void);
/* One AdamW step over the whole flat buffer (step counted from 1). */
void ol_adamw_step(const ol_adamw *o, ol_params *p, float lr, int64_t step);
/* Global L2 norm of the flat gradient (over the pipeline stages of grid g, when given); scales
 * it to max_norm when above (PyTorch clip_grad_norm_: coefficient max_norm / (norm + 1e-6)).
 * max_norm <= 0 disables. Returns the norm. */
double ol_clip_grad_norm(ol_params *p, double max_norm, ol_grid *g);

typedef enum { OL_SCHED_COSINE = 0, OL_SCHED_CONSTANT = 1 } ol_sched_kind;
typedef struct {
  ol_sched_kind kind;
  double lr, min_lr;
  int64_t warmup, steps;
} ol_schedule;
int ol_schedule_parse(const char *s, ol_sched_kind *out);
/* LR for 0-based step s: linear warmup lr*(s+1)/warmup, then cosine to min_lr or constant. */
double ol_schedule_lr(const ol_schedule *s, int64_t step);

/* Start position in the token stream of global sample j of step s (DESIGN §6).
 * Unshuffled: ((s*G + j)*T) mod (n - T - 1). Shuffled: a counter-based hash of (seed, s*G + j),
 * so the order depends only on the seed, never on the layout. */
size_t ol_sample_position(uint64_t seed, int shuffle, int64_t step, size_t G, size_t j, size_t n,
                          size_t T);


/* Checkpoints (src/train/checkpoint.c, docs/FORMATS.md). */
#include "onelora/io.h"
#include "onelora/model.h"
/* Collective over every rank of g: writes the trainable state (params, adam_m, adam_v) and the
 * generated frozen tensors of the whole model as one checkpoint at path, every tensor at its
 * full logical shape, written by the ranks that hold it (parallel HDF5). Atomic: on any
 * failure, on any rank, the temporary file is removed and path is untouched. */
int ol_checkpoint_save(ol_grid *g, const ol_model *m, const ol_ckpt_meta *meta,
                       const char *path);
/* Reads this rank's slices of every tensor of the table (Adam moments too when `moments`) and
 * the generated frozen tensors from an open checkpoint, whatever layout wrote it. */
int ol_checkpoint_load(ol_params *p, ol_frozen *gen, ol_ckpt *c, int moments);
/* One process: checks that checkpoint `path` can resume the run described by `run` on model m:
 * the same model shape, method, targets, rank, alpha, seed, data order and global batch, and
 * exactly the tensors of m's method at their full shapes, each read whole so that every
 * checksum is verified. Fills *found with the file's attributes; *mismatch = 1 when the file
 * is a sound checkpoint of another run (as opposed to unreadable or corrupt). */
int ol_checkpoint_verify(const char *path, const ol_model *m, const ol_ckpt_meta *run,
                         ol_ckpt_meta *found, int *mismatch);

/* Exit status of a run stopped by SIGTERM or SIGUSR1 after writing its checkpoint, for job
 * scripts to requeue (EX_TEMPFAIL of sysexits.h: "try again later"). */
#define OL_EXIT_STOPPED 75

/* Everything `onelora train` needs, as parsed and checked by the CLI. */
typedef struct {
  const char *model_path, *data_path, *ckpt_dir, *log_path;
  const char *resume;      /* --resume: "auto", a checkpoint path, or NULL */
  const char *results_path;/* --results: CSV file that gets one row per run, or NULL */
  int64_t keep;            /* --keep: newest checkpoints kept, 0 = all */
  ol_method method;
  int64_t steps, micro_batch, micro_batches, seq_len;
  int64_t warmup, eval_every, eval_batches, ckpt_every;
  ol_schedule schedule;
  ol_adamw adamw;
  double clip;
  uint64_t seed;
  int shuffle;
  /* bench: when set, a random model of this shape and random tokens replace the files */
  const ol_config *synthetic;
  /* bench: before each step, time the same step with every adapter detached */
  int time_frozen;
  /* bench --memory-only: allocate everything a step uses, report the peak, run no step */
  int memory_only;
  int tp, pp;              /* layout; DP = ranks / (tp * pp) */
  int gpipe;               /* pipeline schedule: GPipe instead of 1F1B */
  ol_dtype weights_dtype;  /* frozen matrices in memory (--weights-dtype) */
  int map_weights;         /* map frozen matrices from the model file when it can (not --no-map) */
  int recompute;           /* --recompute: keep only each block's input, recompute in backward */
  ol_grid *grid;           /* the ranks this run spans */
} ol_train_opts;

/* What a run measured, for the benchmark report. */
typedef struct {
  int stopped;                /* stopped early by SIGTERM/SIGUSR1 (exit OL_EXIT_STOPPED) */
  double median_step_s;       /* median wall time of a step, the first step excluded */
  double step_over_frozen;    /* median over steps of step time / the same step with adapters
                                 detached (time_frozen), else 1 */
  double tokens_per_step;
  double flops_per_step;      /* matrix-product FLOPs this rank issues per step (recompute too) */
  double final_loss;
  size_t peak_rss_bytes;      /* VmHWM at the end of the run */
  size_t frozen_bytes;        /* frozen weights, mapped ones included */
  size_t pss_bytes;           /* proportional set size at the end of the run: shared pages count
                               * a share each */
  double pss_sum_bytes;       /* PSS summed over every rank (the job's memory on one node) */
  size_t kept_bytes;          /* activations forward keeps for backward */
  size_t trainable;           /* trainable values this rank holds */
} ol_train_result;

/* The checkpoint attributes of run o (grid laid out) on a model of shape cfg after `step` steps
 * with train loss `loss` (DESIGN §6). */
ol_ckpt_meta ol_checkpoint_meta(const ol_train_opts *o, const ol_config *cfg, int64_t step,
                                double loss);

/* The checkpoint benchmark: writes the trainable state of the method on a model of shape cfg
 * (values from a hash; no frozen weights are allocated, so any shape fits) from every rank of
 * o->grid in o's layout to path, reads it back per rank, verifies it on rank 0, and removes it. */
typedef struct {
  double write_s, read_s, verify_s;  /* collective write; per-rank slice reads; full verify */
  double bytes;                      /* file size */
  size_t trainable;
  double step_flops;                 /* FLOPs of one training step of o's global batch */
} ol_ckpt_bench;
int ol_checkpoint_bench(const ol_train_opts *o, const ol_config *cfg, const char *path,
                        ol_ckpt_bench *out);

/* The planner (src/train/plan.c): a layout's per-rank memory, FLOPs and traffic, predicted. */
typedef struct {
  const ol_config *cfg;
  const ol_method *method;
  int tp, pp, dp;
  int64_t micro_batch, micro_batches, seq_len;
  ol_dtype weights_dtype;
  int recompute;           /* --recompute */
  int mapped;              /* frozen matrices mapped from the model file (its dtype = weights') */
  int gpipe;
} ol_plan_inputs;

typedef struct {
  int pp_rank, tp_rank;    /* the rank whose memory is the largest */
  /* its peak resident bytes, by part */
  double frozen_owned;     /* frozen weights in onelora's own memory */
  double frozen_mapped;    /* frozen matrices mapped from the file (file pages, shared by the
                            * ranks of a node) */
  double kept;             /* activations forward keeps for backward, every pipeline slot */
  double workspace;        /* transient activation workspace (the logits chunk excluded) */
  double logits;           /* the LM head's logits chunk */
  double trainable_state;  /* values, gradients, Adam m and v (+ generated frozen tensors) */
  double comm_buffers;     /* the pipeline inbox and MPI's reduction temporary */
  double library;          /* MPI, HDF5, OpenBLAS and the process image (measured constant) */
  double total;
  /* the largest over ranks, per optimizer step */
  double flops;            /* matrix-product FLOPs issued (recompute included) */
  double comm[OL_COMM_COUNT]; /* payload bytes sent, by kind, as the run's log counts them */
} ol_plan;

/* Plans every rank of the layout; fills the plan of the rank with the most memory, with the
 * largest FLOPs and traffic of any rank. */
int ol_plan_layout(const ol_plan_inputs *in, ol_plan *worst);

/* Runs training; returns OL_OK or an error recorded with ol_error. result may be NULL. */
int ol_train_run(const ol_train_opts *o, ol_train_result *result);

#endif
