/* VeRA (Kopiczko et al. 2024): y = W x + lambda_b * B_d (lambda_d * (A_k x)).
 *
 * A (r, k_max) and B (d_max, r) are frozen, generated once from --seed and shared by every
 * adapted layer (checkpoint group `frozen`, "vera_A" and "vera_B"); a layer of shape (d, k)
 * uses the slices A_k = A[:, :k] (row stride k_max) and B_d = B[:d, :]. Each layer trains two
 * vectors, lambda_b (d) = 0 and lambda_d (r) = 0.1 at init. It keeps u = A_k x, r floats per
 * token.
 *
 * Both scalings fold into one (d, r) matrix B~ = diag(lambda_b) B_d diag(lambda_d), so that
 * delta W = B~ A_k:
 *   forward:  y += u B~^T
 *   backward: P = dy^T u (d, r);  dlambda_b_i += sum_j P_ij B_ij lambda_d_j;
 *             dlambda_d_j += sum_i P_ij B_ij lambda_b_i;  dx += (dy B~) A_k
 * This is the arithmetic of h = lambda_d * u, g = h B_d^T, dlambda_b = sum_t dy * g,
 * e = (dy * lambda_b) B_d, dlambda_d = sum_t e * u, dx += (e * lambda_d) A_k, at the same
 * O(N r (k + d)) cost, but with no (N, d) temporary: B~ and P are built a block of VERA_ROWS
 * output rows at a time in the layer's scratch (VERA_ROWS x r floats), which grows with neither
 * d nor the number of tokens. */
#include <math.h>
#include <stdio.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

enum { VERA_ROWS = 256 };  /* output rows per block of B~ or P */

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

/* Creates the shared frozen matrix `name` (rows, cols) ~ U(-bound, bound), bound = sqrt(6 /
 * fan_in) with fan_in = cols (kaiming-uniform), or finds it when an earlier layer (or a loaded
 * checkpoint) already has it. */
static const float *shared_uniform(ol_peft_ctx *ctx, const char *name, size_t rows, size_t cols) {
  size_t shape[2] = {rows, cols};
  float *w = ol_frozen_add(ctx->frozen, name, 2, shape);  // (rows, cols)
  if (!w) {
    ol_frozen_entry *e = ol_frozen_find(ctx->frozen, name);
    OL_CHECK(e->ndim == 2 && e->shape[0] == rows && e->shape[1] == cols);
    return e->data;
  }
  const float bound = (float)sqrt(6.0 / (double)cols);
  // drawn here, on the host, from one sequential stream (ol_rng has no counter form to hand to
  // a kernel), then copied to the backend: set-up data written once, never a step's work
  ol_rng rng;
  ol_rng_seed(&rng, ctx->seed ^ name_hash(name));
  float *host = ol_calloc(rows * cols, sizeof(float));  // (rows, cols)
  for (size_t i = 0; i < rows * cols; i++) host[i] = bound * (2.0f * ol_rng_uniform(&rng) - 1.0f);
  ol_bk->to_device(w, host, rows * cols * sizeof(float));
  ol_free(host);
  return w;
}

/* Under TP (docs/PARALLEL.md) every rank holds the whole shared A and B and uses the slices of
 * its shard: on a column-parallel layer lambda_b and B's rows follow W's rows, u = A x is the
 * same everywhere and dx's partial sum joins the layer's all-reduce; on a row-parallel layer
 * lambda_b is replicated, A's columns follow the input slice, so u is partial and each rank's
 * u B~^T is summed by the forward all-reduce. lambda_d is replicated, and its gradient (a sum
 * over this rank's rows, or over a partial u) is summed over TP, as is lambda_b's on
 * row-parallel layers. No new collective. */
static void vera_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  const size_t d = lin->out, r = (size_t)ctx->method->rank;
  const size_t d_full = lin->out_full ? lin->out_full : d;
  OL_CHECK(lin->in_start + lin->in <= ctx->k_max && lin->out_start + d <= ctx->d_max);
  const size_t shape_b[1] = {d_full}, shape_d[1] = {r};
  ol_adapter_param(a, lin, ctx, "vera_lambda_b", 1, shape_b, ol_split_out(lin, OL_PLACE_PARTIAL));
  ol_adapter_param(a, lin, ctx, "vera_lambda_d", 1, shape_d, OL_PLACE_PARTIAL);
  // (r, k_max) from this rank's first input column; (d_max, r) from its first output row
  a->frozen[0] = shared_uniform(ctx, "vera_A", r, ctx->k_max) + lin->in_start;
  a->frozen[1] = shared_uniform(ctx, "vera_B", ctx->d_max, r) + lin->out_start * r;
  a->rank = r;
  a->k_max = ctx->k_max;
  a->state_floats = (d < VERA_ROWS ? d : VERA_ROWS) * r;        // one block of B~ or of P
}


static void vera_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  (void)rng;
  // lambda_b (d) = 0, the identity: the parameter buffer starts zeroed (ol_params_alloc)
  ol_bk->fill(a->value[1], 0.1f, a->rank);  // lambda_d (r)
}

static size_t vera_saved(const ol_adapter *a, const ol_linear *lin) { return a->rank; }

/* S (n, r) = diag(lambda_b[i0:i0+n]) B[i0:i0+n, :] diag(lambda_d): rows i0.. of the layer's
 * whole low-rank update B~ = diag(lambda_b) B_d diag(lambda_d), so that delta W = B~ A_k */
static void scaled_rows(const ol_adapter *a, size_t i0, size_t n, float *S) {
  const size_t r = a->rank;
  const float *B = a->frozen[1] + i0 * r;  // (n, r) rows of the shared B
  ol_bk->diag_scale(S, a->value[0] + i0, B, a->value[1], n, r);  // lambda_b (n), lambda_d (r)
}

static void vera_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y, size_t N,
                         float beta, float *saved) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float *A = a->frozen[0];  // (r, k_max): A_k is its first k columns
  float *u = saved;               // (N, r) u = x A_k^T, kept for backward
  float *S = a->state;            // (VERA_ROWS, r) one block of rows of B~
  ol_bk->gemm(0, 1, N, r, k, 1.0f, x, k, A, a->k_max, 0.0f, u, r);
  for (size_t i0 = 0; i0 < d; i0 += VERA_ROWS) {
    const size_t n = d - i0 < VERA_ROWS ? d - i0 : VERA_ROWS;
    scaled_rows(a, i0, n, S);
    // y[:, i0:i0+n] (N, n) = beta y + u S^T
    ol_bk->gemm(0, 1, N, n, r, 1.0f, u, r, S, r, beta, y + i0, d);
  }
}

static void vera_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                          size_t N, float beta, float *saved) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float *A = a->frozen[0];                        // (r, k_max)
  const float *B = a->frozen[1];                        // (d_max, r): B_d is its first d rows
  const float *lambda_b = a->value[0], *lambda_d = a->value[1];  // (d), (r)
  float *dlambda_b = a->grad[0], *dlambda_d = a->grad[1];        // (d), (r)
  float *u = saved;        // (N, r) from forward; then v = dy B~
  float *P = a->state;     // (VERA_ROWS, r) one block of rows of dy^T u, then of B~
  // pass 1: P = dy^T u (d, r), a block of rows at a time, gives both gradients:
  // dlambda_b_i = sum_j P_ij B_ij lambda_d_j,  dlambda_d_j = sum_i P_ij B_ij lambda_b_i
  for (size_t i0 = 0; i0 < d; i0 += VERA_ROWS) {
    const size_t n = d - i0 < VERA_ROWS ? d - i0 : VERA_ROWS;
    ol_bk->gemm(1, 0, n, r, N, 1.0f, dy + i0, d, u, r, 0.0f, P, r);
    ol_bk->diag_scale_backward(dlambda_b + i0, dlambda_d, P, B + i0 * r, lambda_b + i0,
                               lambda_d, n, r);
  }
  // pass 2: v (N, r) = dy B~ = (dy * lambda_b) B_d * lambda_d, over u's dead slot
  float *v = saved;
  for (size_t i0 = 0; i0 < d; i0 += VERA_ROWS) {
    const size_t n = d - i0 < VERA_ROWS ? d - i0 : VERA_ROWS;
    scaled_rows(a, i0, n, P);
    ol_bk->gemm(0, 0, N, r, n, 1.0f, dy + i0, d, P, r, i0 == 0 ? 0.0f : 1.0f, v, r);
  }
  // dx (N, k) = beta dx + v A_k
  ol_bk->gemm(0, 0, N, k, r, 1.0f, v, r, A, a->k_max, beta, dx, k);
}

/* W (d, k) += B~ A_k, a block of rows of B~ at a time */
static void vera_merge(const ol_adapter *a, ol_linear *lin) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  float *S = a->state;  // (VERA_ROWS, r)
  for (size_t i0 = 0; i0 < d; i0 += VERA_ROWS) {
    const size_t n = d - i0 < VERA_ROWS ? d - i0 : VERA_ROWS;
    scaled_rows(a, i0, n, S);
    ol_bk->gemm(0, 0, n, k, r, 1.0f, S, r, a->frozen[0], a->k_max, 1.0f, lin->W + i0 * k, k);
  }
}

const ol_adapter_ops ol_vera_ops = {
    .name = "vera", .supports_tp = 1, .uses_rank = 1,
    .declare = vera_declare, .init = vera_init, .saved_per_token = vera_saved,
    .forward = vera_forward, .backward = vera_backward, .merge = vera_merge,
};
