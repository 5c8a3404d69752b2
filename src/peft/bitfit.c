/* BitFit: y += beta, one trainable bias vector (d) per layer, zero-initialised. It keeps
 * nothing for backward: d(beta) = column sums of dy, and dx gets nothing. */
#include <stdio.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

static void bitfit_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  // sharded like W's rows on column-parallel layers; whole on row-parallel ones, where its
  // gradient, the column sums of the whole dy, is the same on every rank
  const size_t shape[1] = {ol_linear_out_full(lin)};
  ol_adapter_param(a, lin, ctx, "bias", 1, shape, ol_split_out(lin, OL_PLACE_REPLICATED));
}

static void bitfit_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  (void)rng;  // beta (d) = 0: the parameter buffer starts zeroed (ol_params_alloc)
}

static size_t bitfit_saved(const ol_adapter *a, const ol_linear *lin) { return 0; }

static void bitfit_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y,
                           size_t N, float beta, float *saved) {
  // a row-parallel layer's output is summed over TP: only the shard of the first input columns adds beta
  if (lin->par == OL_PAR_ROW && lin->in_start != 0) {
    if (beta == 0.0f) ol_bk->scale(y, 0.0f, N * lin->out);
    return;
  }
  ol_bk->add_bias(y, a->value[0], N, lin->out, beta);  // y (N, d) = beta y + 1 beta^T
}

static void bitfit_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                            size_t N, float beta, float *saved) {
  ol_bk->col_sums(a->grad[0], dy, N, lin->out);  // d(beta) (d) += column sums of dy (N, d)
  if (beta == 0.0f) ol_bk->scale(dx, 0.0f, N * lin->in);  // dx gets nothing from a bias
}

/* The merged layer carries the bias itself: merge adds beta to lin->bias, which the model
 * creates (zeroed) when it merges a bitfit checkpoint. */
static void bitfit_merge(const ol_adapter *a, ol_linear *lin) {
  OL_CHECK(lin->bias != NULL);
  ol_bk->axpy(lin->bias, a->value[0], 1.0f, lin->out);  // bias (d) += beta: 1 * beta_i is exact
}

const ol_adapter_ops ol_bitfit_ops = {
    .name = "bitfit", .supports_tp = 1, .merges_bias = 1,
    .declare = bitfit_declare, .init = bitfit_init, .saved_per_token = bitfit_saved,
    .forward = bitfit_forward, .backward = bitfit_backward, .merge = bitfit_merge,
};
