/* onelora peft: the linear layer. Block code calls ol_linear_forward/ol_linear_backward and
 * never knows which method runs. */
#ifndef ONELORA_PEFT_LINEAR_H
#define ONELORA_PEFT_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"
#include "onelora/core/tp.h"
#include "onelora/peft/adapter.h"

/* ---- the linear layer ---------------------------------------------------------------------- */
typedef struct ol_linear {
  char name[96];            /* HF module, e.g. "model.layers.3.self_attn.q_proj" */
  size_t out, in;           /* this rank's shard: d, k */
  size_t out_full, out_start; /* the full logical d and where this rank's rows start */
  size_t in_full, in_start;   /* the full logical k and where this rank's columns start */
  const ol_tp *tp;          /* the TP group's regions (NULL alone), bound by the model */
  ol_par_kind par;
  float *W;                 /* (out, in) frozen or trainable f32 weight shard, or NULL when W16 */
  const uint16_t *W16;      /* (out, in) a frozen shard kept at 2 bytes (--weights-dtype) */
  size_t ldw;               /* row stride of W or W16: in, or in_full when mapped from a file */
  int w_bf16;               /* W16 is bf16 (else IEEE f16) */
  float *wide;              /* scratch for widening W16 (gemm_half), from ol_acts */
  long w_param;             /* entry index when W is trainable, else -1 */
  float *dW;                /* (out, in) its gradient when trainable, else NULL */
  float *bias;              /* (out) bias when the model file has one, else NULL */
  float *dbias;             /* (out) its gradient when trainable (full), else NULL */
  float *work;              /* (N, out) scratch for a rescaling adapter (DoRA), from ol_acts */
  ol_adapter adapters[OL_MAX_ADAPTERS];
  int n_adapters;
  int n_detached;           /* adapters set aside by ol_model_attach_adapters */
} ol_linear;

/* The full logical d and k of the layer (its shard's when the layer was made without them) */
static inline size_t ol_linear_out_full(const ol_linear *lin) { return lin->out_full ? lin->out_full : lin->out; }
static inline size_t ol_linear_in_full(const ol_linear *lin) { return lin->in_full ? lin->in_full : lin->in; }
/* A tensor along the layer's outputs (d) is split like W's rows where the layer splits them
 * (column-parallel), else it is whole, placed `otherwise`; the same along the inputs (k, split
 * on row-parallel layers). */
static inline ol_placement ol_split_out(const ol_linear *lin, ol_placement otherwise) {
  return lin->par == OL_PAR_COLUMN ? OL_PLACE_ROWS : otherwise;
}
static inline ol_placement ol_split_in(const ol_linear *lin, ol_placement otherwise) {
  return lin->par == OL_PAR_ROW ? OL_PLACE_COLS : otherwise;
}
/* Declares the trainable tensor "<module>.<suffix>" of adapter a at its full logical shape and
 * placement (a ROWS tensor's rows follow W's output rows on this rank, a COLS tensor's columns
 * its input columns), as a's next parameter; returns its entry index. */
size_t ol_adapter_param(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx, const char *suffix,
                        int ndim, const size_t *shape, ol_placement place);

/* floats per token this linear keeps between its forward and its backward */
size_t ol_linear_saved_per_token(const ol_linear *lin);
/* y(N,out) = beta*y + x(N,in) W^T + adapters; saved (N, saved_per_token). A row-parallel layer
 * under TP sums its output over the TP ranks (one all-reduce of y); y must then be the same on
 * every rank on entry (the residual stream is). */
void ol_linear_forward(ol_linear *lin, const float *x, float *y, size_t N, float beta,
                       float *saved);
/* dx(N,in) = beta*dx + dy(N,out) W + adapters; accumulates trainable gradients. A row-parallel
 * layer's dx is this rank's columns, complete (reduce_from_tp's backward is the identity). */
void ol_linear_backward(ol_linear *lin, const float *dy, float *dx, size_t N, float beta,
                        float *saved);

/* The n column-parallel linears lins[0..n) that read one replicated input x(N,in) (q, k, v;
 * gate, up) inside one copy_to_tp region: ys[i](N, lins[i].out) = x W_i^T + adapters, each
 * keeping saved[i]. */
void ol_linears_forward(ol_linear *lins, int n, const float *x, float *const *ys, size_t N,
                        float *const *saved);
/* Their backward: dx(N,in) = sum_i dys[i] W_i + adapters (trainable gradients accumulated),
 * then summed over TP once (copy_to_tp's backward): one collective for q, k and v together. */
void ol_linears_backward(ol_linear *lins, int n, const float *const *dys, float *dx, size_t N,
                         float *const *saved);

#endif
