/* onelora peft: the flat trainable state of a rank and its table (DESIGN §3). */
#ifndef ONELORA_PEFT_PARAMS_H
#define ONELORA_PEFT_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"

/* ---- the flat trainable state of a rank ------------------------------------------------ */
typedef struct {
  char name[128];        /* checkpoint name, e.g. "model.layers.3.self_attn.q_proj.onelora_b" */
  size_t offset;         /* into the flat buffers */
  size_t numel;          /* floats held by this rank */
  int ndim;
  size_t shape[2];       /* full logical shape */
  size_t start[2];       /* this rank's slice of it (all of it on one rank) */
  size_t count[2];       /* the slice's extent per dimension (numel = their product) */
  int tp_partial;        /* replicated value whose gradient is a partial sum over TP */
} ol_param_entry;

typedef struct {
  ol_param_entry *entries;
  size_t count, cap;
  size_t total;          /* floats in each flat buffer */
  float *data;           /* (total) values */
  float *grad;           /* (total) gradients, accumulated over micro-batches */
  float *m, *v;          /* (total) AdamW moments */
} ol_params;

/* Declares a tensor before allocation; returns its entry index. */
size_t ol_params_declare(ol_params *p, const char *name, int ndim, const size_t *shape);
/* Declares this rank's slice [start, start + count) of a tensor of full logical shape `shape`. */
size_t ol_params_declare_slice(ol_params *p, const char *name, int ndim, const size_t *shape,
                               const size_t *start, const size_t *count);
/* 1 when the entry holds only a slice of its logical tensor (a TP shard) */
int ol_param_sharded(const ol_param_entry *e);
void ol_params_alloc(ol_params *p);   /* allocates the four flat buffers, zeroed */
float *ol_params_value(const ol_params *p, size_t index);
float *ol_params_grad(const ol_params *p, size_t index);
void ol_params_free(ol_params *p);

#endif
