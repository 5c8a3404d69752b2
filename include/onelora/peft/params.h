/* onelora peft: the flat trainable state of a rank and its table (DESIGN §3). */
#ifndef ONELORA_PEFT_PARAMS_H
#define ONELORA_PEFT_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"

/* How a trainable tensor lies across the TP ranks (DESIGN §5). Every tensor declares one, and
 * everything tensor parallelism does with it is derived from it: this rank's slice (the start
 * and count below), the gradient reduction over TP (ol_tp_reduce_partial_grads sums PARTIAL),
 * the gradient norm (split tensors summed over TP, whole ones counted once), the checkpoint's
 * writers (every rank its slice of a split tensor, TP rank 0 a whole one) and elastic resharding
 * (a resumed run reads its own slice of the full tensor). */
typedef enum {
  OL_PLACE_REPLICATED = 0, /* whole on every rank, with the same gradient on every rank */
  OL_PLACE_PARTIAL,        /* whole on every rank; each rank's gradient is a partial sum over
                            * TP (1LoRA's b on a row-parallel layer: its local columns' share) */
  OL_PLACE_ROWS,           /* dimension 0 split: this rank holds rows [start, start + count) */
  OL_PLACE_COLS,           /* dimension 1 split: this rank holds columns [start, start + count) */
} ol_placement;

/* ---- the flat trainable state of a rank ------------------------------------------------ */
typedef struct {
  char name[128];        /* checkpoint name, e.g. "model.layers.3.self_attn.q_proj.onelora_b" */
  size_t offset;         /* into the flat buffers */
  size_t numel;          /* floats held by this rank */
  int ndim;
  size_t shape[2];       /* full logical shape */
  size_t start[2];       /* this rank's slice of it (all of it on one rank) */
  size_t count[2];       /* the slice's extent per dimension (numel = their product) */
  ol_placement place;    /* how it lies across TP; start and count follow from it */
} ol_param_entry;

typedef struct {
  ol_param_entry *entries;
  size_t count, cap;
  size_t total;          /* floats in each flat buffer */
  float *data;           /* (total) values */
  float *grad;           /* (total) gradients, accumulated over micro-batches */
  float *m, *v;          /* (total) AdamW moments */
} ol_params;

/* Declares a tensor of full logical shape `shape` before allocation; returns its entry index.
 * A ROWS or COLS tensor's slice is [start, start + count) along its split dimension (whole
 * without TP); start and count are ignored for the others, which this rank holds whole. */
size_t ol_params_declare(ol_params *p, const char *name, int ndim, const size_t *shape,
                         ol_placement place, size_t start, size_t count);
/* 1 when the entry is split over TP (ROWS or COLS): each rank holds and writes its own slice */
int ol_param_sharded(const ol_param_entry *e);
void ol_params_alloc(ol_params *p);   /* allocates the four flat buffers, zeroed */
float *ol_params_value(const ol_params *p, size_t index);
float *ol_params_grad(const ol_params *p, size_t index);
void ol_params_free(ol_params *p);

#endif
