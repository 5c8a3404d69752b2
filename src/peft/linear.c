/* The linear layer: a frozen (or, for full fine-tuning, trainable) weight, an optional frozen
 * bias, and its adapters. A frozen weight gets no gradient, so its backward needs only W
 * (dx = dy W) and the layer keeps its input alive only when W itself is trainable (DESIGN §4).
 *
 * Additive adapters and the bias run first and the GEMM last with beta = 1, so their writes
 * replace the pass in which BLAS would otherwise zero or scale the output. A rescaling adapter
 * (DoRA) works on z = x W^T + additive terms in the scratch lin->work.
 *
 * Under TP a linear owns its region (core/tp.h): a row-parallel layer's reduce_from_tp sums its
 * partial output in forward (Megatron's RowParallelLinear), so that a rescaling adapter sees the
 * whole z; column-parallel layers sharing one input share one copy_to_tp, whose backward sums
 * their partial dx once (ol_linears_backward: one collective for q, k and v). */
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

size_t ol_adapter_param(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx, const char *suffix,
                        int ndim, const size_t *shape, ol_placement place) {
  char name[160];
  snprintf(name, sizeof name, "%s.%s", lin->name, suffix);
  const size_t start = place == OL_PLACE_ROWS ? lin->out_start : lin->in_start;
  const size_t count = place == OL_PLACE_ROWS ? lin->out : lin->in;
  OL_CHECK(a->n_param < 4);
  a->param[a->n_param] = ol_params_declare(ctx->params, name, ndim, shape, place, start, count);
  return a->param[a->n_param++];
}

size_t ol_linear_saved_per_token(const ol_linear *lin) {
  size_t n = lin->w_param >= 0 ? lin->in : 0;  /* x, for dW = dy^T x */
  for (int i = 0; i < lin->n_adapters; i++)
    n += lin->adapters[i].ops->saved_per_token(&lin->adapters[i], lin);
  return n;
}

/* C(N, cols) = x(N, K) op(W) + beta * C: y = x W^T (trans_w) or dx = dy W, with W in f32 or
 * kept at 2 bytes (widened in tiles into lin->wide). */
static void gemm_w(const ol_linear *lin, int trans_w, size_t N, const float *x, float beta,
                   float *C) {
  const size_t cols = trans_w ? lin->out : lin->in, K = trans_w ? lin->in : lin->out;
  if (lin->W16)
    ol_bk->gemm_half(trans_w, N, cols, K, 1.0f, x, K, lin->W16, lin->ldw, lin->w_bf16, beta, C,
                     cols, lin->wide);
  else
    ol_bk->gemm(0, trans_w, N, cols, K, 1.0f, x, K, lin->W, lin->ldw, beta, C, cols);
}

/* The index of lin's rescaling adapter (DoRA), or -1 when none */
static int rescaler(const ol_linear *lin) {
  for (int i = 0; i < lin->n_adapters; i++)
    if (lin->adapters[i].ops->rescale_forward) return i;
  return -1;
}

/* What lin keeps, packed in saved (N, ol_linear_saved_per_token) in this order: x (N, in)
 * first when W is trainable, then each adapter's (N, its saved_per_token). slots[i] = adapter
 * i's part (NULL when saved is: nothing is kept). The one place that knows the packing. */
static void saved_slots(const ol_linear *lin, float *saved, size_t N,
                        float *slots[OL_MAX_ADAPTERS]) {
  size_t off = lin->w_param >= 0 ? N * lin->in : 0;  // floats
  for (int i = 0; i < lin->n_adapters; i++) {
    slots[i] = saved ? saved + off : NULL;
    off += N * lin->adapters[i].ops->saved_per_token(&lin->adapters[i], lin);
  }
}

/* z(N,out) = beta*z + x W^T + adapters' additive terms, each keeping slots[i]; x (N, in) is
 * kept at the front of saved when W is trainable */
static void additive_forward(ol_linear *lin, const float *x, float *z, size_t N, float beta,
                             float *saved, float *const *slots) {
  if (lin->w_param >= 0) ol_bk->copy(saved, x, N * lin->in * sizeof(float));  // (N, in) for dW
  for (int i = 0; i < lin->n_adapters; i++, beta = 1.0f) {
    ol_adapter *a = &lin->adapters[i];
    a->ops->forward(a, lin, x, z, N, beta, slots[i]);
  }
  gemm_w(lin, 1, N, x, beta, z);
}

void ol_linear_forward(ol_linear *lin, const float *x, float *y, size_t N, float beta,
                       float *saved) {
  // x (N, in), y (N, out), W (out, in)
  float *slots[OL_MAX_ADAPTERS];
  saved_slots(lin, saved, N, slots);
  const int r = rescaler(lin);
  // a row-parallel layer holds the input columns [in_start, in_start + in): its output is a
  // partial sum, summed over TP (a no-op without TP)
  const int row = lin->par == OL_PAR_ROW;
  if (r < 0) {
    // the partials are summed in y itself: the shard of the first input columns carries
    // beta*y and the bias, the others their product alone
    const int first = lin->in_start == 0;
    if (row && !first) beta = 0.0f;
    if (lin->bias && (!row || first))
      ol_bk->add_bias(y, lin->bias, N, lin->out, beta), beta = 1.0f;
    additive_forward(lin, x, y, N, beta, saved, slots);
    if (row) ol_reduce_from_tp_forward(lin->tp, y, N * lin->out);
    return;
  }
  // rescaling (DoRA): the rescale needs the whole z, so a row-parallel layer sums z over TP
  // before it; z, and then y, are the same on every rank
  ol_adapter *scale = &lin->adapters[r];
  float *z = beta == 0.0f ? y : lin->work;  // (N, out)
  additive_forward(lin, x, z, N, 0.0f, saved, slots);
  if (row) ol_reduce_from_tp_forward(lin->tp, z, N * lin->out);
  scale->ops->rescale_forward(scale, lin, z, N, slots[r]);
  if (z != y) ol_bk->axpy(y, z, 1.0f, N * lin->out);
  if (lin->bias) ol_bk->add_bias(y, lin->bias, N, lin->out, 1.0f);
}

void ol_linear_backward(ol_linear *lin, const float *dy, float *dx, size_t N, float beta,
                        float *saved) {
  // dy (N, out), dx (N, in)
  if (lin->par == OL_PAR_ROW) ol_reduce_from_tp_backward(lin->tp, dy, N * lin->out);
  float *slots[OL_MAX_ADAPTERS];
  saved_slots(lin, saved, N, slots);
  const int r = rescaler(lin);
  if (r >= 0) {
    ol_adapter *scale = &lin->adapters[r];
    float *dz = lin->work;  // (N, out)
    scale->ops->rescale_backward(scale, lin, dy, dz, N, slots[r]);
    dy = dz;
  }
  if (lin->dbias) ol_bk->col_sums(lin->dbias, dy, N, lin->out);  // d(bias) (out) += sum of dy rows
  if (lin->w_param >= 0)  // dW (out, in) += dy^T x, x (N, in) at the front of saved
    ol_bk->gemm(1, 0, lin->out, lin->in, N, 1.0f, dy, lin->out, saved, lin->in, 1.0f, lin->dW,
                lin->in);
  for (int i = 0; i < lin->n_adapters; i++, beta = 1.0f) {
    ol_adapter *a = &lin->adapters[i];
    a->ops->backward(a, lin, dy, dx, N, beta, slots[i]);
  }
  gemm_w(lin, 0, N, dy, beta, dx);
}

void ol_linears_forward(ol_linear *lins, int n, const float *x, float *const *ys, size_t N,
                        float *const *saved) {
  ol_copy_to_tp_forward(lins[0].tp, x, N * lins[0].in);
  for (int i = 0; i < n; i++) {
    OL_CHECK(lins[i].par == OL_PAR_COLUMN && lins[i].in == lins[0].in);
    ol_linear_forward(&lins[i], x, ys[i], N, 0.0f, saved[i]);
  }
}

void ol_linears_backward(ol_linear *lins, int n, const float *const *dys, float *dx, size_t N,
                         float *const *saved) {
  for (int i = 0; i < n; i++) ol_linear_backward(&lins[i], dys[i], dx, N, i ? 1.0f : 0.0f, saved[i]);
  ol_copy_to_tp_backward(lins[0].tp, dx, N * lins[0].in);
}
