/* onelora train: the training state (trainable values, Adam moments, generated frozen tensors)
 * saved to and restored from checkpoint files, whatever the layout (src/train/state.c; the file
 * format itself is io/checkpoint.c). */
#ifndef ONELORA_TRAIN_STATE_H
#define ONELORA_TRAIN_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/io/checkpoint.h"
#include "onelora/model/model.h"
#include "onelora/train/trainer.h"

/* Collective over every rank of g: writes the trainable state (params, adam_m, adam_v) and the
 * generated frozen tensors of the whole model as one checkpoint at path, every tensor at its
 * full logical shape, written by the ranks that hold it (parallel HDF5). Atomic: on any
 * failure, on any rank, the temporary file is removed and path is untouched. */
int ol_state_save(ol_grid *g, const ol_model *m, const ol_ckpt_meta *meta,
                       const char *path);
/* Reads this rank's slices of every tensor of the table (Adam moments too when `moments`) and
 * the generated frozen tensors from an open checkpoint, whatever layout wrote it. */
int ol_state_load(ol_params *p, ol_frozen *gen, ol_ckpt *c, int moments);
/* One process: checks that checkpoint `path` can resume the run described by `run` on model m:
 * the same model shape, method, targets, rank, alpha, seed, data order and global batch, and
 * exactly the tensors of m's method at their full shapes, each read whole so that every
 * checksum is verified. Fills *found with the file's attributes; *mismatch = 1 when the file
 * is a sound checkpoint of another run (as opposed to unreadable or corrupt). */
int ol_state_verify(const char *path, const ol_model *m, const ol_ckpt_meta *run,
                         ol_ckpt_meta *found, int *mismatch);

/* The checkpoint attributes of run o (grid laid out) on a model of shape cfg after `step` steps
 * with train loss `loss` (DESIGN §6). */
ol_ckpt_meta ol_state_meta(const ol_train_opts *o, const ol_config *cfg, int64_t step,
                                double loss);

/* The checkpoint benchmark: writes the trainable state of the method on a model of shape cfg
 * (values from a hash; no frozen weights are allocated, so any shape fits) from every rank of
 * o->grid in o's layout to path, reads it back per rank, verifies it on rank 0, and removes it. */
typedef struct {
  double write_s, read_s, verify_s;  /* collective write; per-rank slice reads; full verify */
  double bytes;                      /* file size */
  size_t trainable;
  double step_flops;                 /* FLOPs of one training step of o's global batch */
} ol_state_bench_result;
int ol_state_bench(const ol_train_opts *o, const ol_config *cfg, const char *path,
                        ol_state_bench_result *out);

#endif
