/* The linear layer: a frozen (or, for full fine-tuning, trainable) weight plus its adapters.
 * A frozen weight gets no gradient, so its backward needs only W (dx = dy W) and the layer keeps
 * its input alive only when W itself is trainable (DESIGN §4). */
#include <string.h>

#include "onelora/backend.h"
#include "onelora/peft.h"

size_t ol_linear_saved_per_token(const ol_linear *lin) {
  size_t n = lin->w_param >= 0 ? lin->in : 0;  /* x, for dW = dy^T x */
  for (int i = 0; i < lin->n_adapters; i++)
    n += lin->adapters[i].ops->saved_per_token(&lin->adapters[i], lin);
  return n;
}

/* Adapters run first and the frozen GEMM last with beta = 1, so the adapters' writes replace
 * the pass in which BLAS would otherwise scale or zero the output. */
void ol_linear_forward(ol_linear *lin, const float *x, float *y, size_t N, float beta,
                       float *saved) {
  // x (N, in), y (N, out), W (out, in)
  float *slot = saved;
  if (lin->w_param >= 0) {
    memcpy(slot, x, N * lin->in * sizeof(float));  // (N, in) for dW
    slot += N * lin->in;
  }
  for (int i = 0; i < lin->n_adapters; i++, beta = 1.0f) {
    ol_adapter *a = &lin->adapters[i];
    a->ops->forward(a, lin, x, y, N, beta, slot);
    slot += N * a->ops->saved_per_token(a, lin);
  }
  ol_bk->gemm(0, 1, N, lin->out, lin->in, 1.0f, x, lin->in, lin->W, lin->in, beta, y, lin->out);
}

void ol_linear_backward(ol_linear *lin, const float *dy, float *dx, size_t N, float beta,
                        float *saved) {
  // dy (N, out), dx (N, in)
  float *slot = saved;
  if (lin->w_param >= 0) {
    // dW (out, in) += dy^T x
    ol_bk->gemm(1, 0, lin->out, lin->in, N, 1.0f, dy, lin->out, slot, lin->in, 1.0f, lin->dW,
                lin->in);
    slot += N * lin->in;
  }
  for (int i = 0; i < lin->n_adapters; i++, beta = 1.0f) {
    ol_adapter *a = &lin->adapters[i];
    a->ops->backward(a, lin, dy, dx, N, beta, slot);
    slot += N * a->ops->saved_per_token(a, lin);
  }
  ol_bk->gemm(0, 0, N, lin->in, lin->out, 1.0f, dy, lin->out, lin->W, lin->in, beta, dx, lin->in);
}
