/* onelora train: the options and results of a run, and the step loop. */
#ifndef ONELORA_TRAIN_TRAINER_H
#define ONELORA_TRAIN_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/io/weights.h"
#include "onelora/parallel/grid.h"
#include "onelora/peft/method.h"
#include "onelora/train/optim.h"

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
  const char *device;      /* --device: cpu | cuda (the CLI selects it before the run) */
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
  size_t peak_device_bytes;   /* a device backend's peak allocated bytes (0 on the cpu) */
  size_t frozen_bytes;        /* frozen weights, mapped ones included */
  size_t pss_bytes;           /* proportional set size at the end of the run: shared pages count
                               * a share each */
  double pss_sum_bytes;       /* PSS summed over every rank (the job's memory on one node) */
  size_t kept_bytes;          /* activations forward keeps for backward */
  size_t trainable;           /* trainable values this rank holds */
} ol_train_result;

/* Runs training; returns OL_OK or an error recorded with ol_error. result may be NULL. */
int ol_train_run(const ol_train_opts *o, ol_train_result *result);

#endif
