/* test-scalar: a method that exists only in the test build (ONELORA_TEST_HOOKS), to show what
 * adding a method takes: this one file and one line in methods.def. One trainable scalar c per
 * adapted layer, zero-initialised:
 *   forward:  y(N,d) += c s 1^T, s(N) = row sums of x (kept for backward, one float a token)
 *   backward: dc += sum over t, i of dy_ti s_t;  dx(N,k) += c (dy 1)(N) 1^T
 * i.e. 1LoRA with b tied to c 1. Under TP c is whole on every rank and dc is a partial sum (of
 * this rank's output rows, column-parallel, or of its columns' share of s, row-parallel), which
 * its placement declares; the TP regions do the rest. Every op is the backend's: state holds
 * cb (d) = c 1 and the per-row gradient g (d). */
#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

static void scalar_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  const size_t shape[1] = {1};
  ol_adapter_param(a, lin, ctx, "test_scalar_c", 1, shape, OL_PLACE_PARTIAL);
  a->state_floats = 2 * lin->out;  // cb, g
}

static void scalar_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {}  // c = 0: zeroed

static size_t scalar_saved(const ol_adapter *a, const ol_linear *lin) { return 1; }

static void scalar_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y, size_t N,
                           float beta, float *saved) {
  float *cb = a->state, *s = saved;                        // (d), (N)
  ol_bk->broadcast_rows(cb, a->value[0], 1, lin->out, 0.0f);  // cb = c 1
  ol_bk->row_sums(s, x, N, lin->in);                          // x (N, k)
  ol_bk->outer(y, s, cb, N, lin->out, beta);                  // y (N, d) = beta y + s cb^T
}

static void scalar_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                            size_t N, float beta, float *saved) {
  float *cb = a->state, *g = a->state + lin->out, *s = saved;  // (d), (d), (N)
  ol_bk->scale(g, 0.0f, lin->out);
  ol_bk->rowdot_accum(s, g, dy, s, cb, N, lin->out);  // s = dy cb (N); g (d) = dy^T s
  ol_bk->col_sums(a->grad[0], g, lin->out, 1);        // dc += sum of g
  ol_bk->broadcast_rows(dx, s, N, lin->in, beta);     // dx (N, k) = beta dx + (dy cb) 1^T
}

static void scalar_merge(const ol_adapter *a, ol_linear *lin) {
  float *cb = a->state;  // W (d, k) += c 1 1^T
  ol_bk->broadcast_rows(cb, a->value[0], 1, lin->out, 0.0f);
  ol_bk->broadcast_rows(lin->W, cb, lin->out, lin->in, 1.0f);
}

const ol_adapter_ops ol_test_scalar_ops = {
    .name = "test-scalar", .supports_tp = 1,
    .declare = scalar_declare, .init = scalar_init, .saved_per_token = scalar_saved,
    .forward = scalar_forward, .backward = scalar_backward, .merge = scalar_merge,
};
