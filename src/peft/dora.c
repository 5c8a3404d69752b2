/* DoRA (Liu et al. 2024): y = (m / n) * (W x + s B A x), with n_i = |W_i + s (B A)_i|, the norm
 * of output row i over the k inputs, and s = alpha / r. Trainable: LoRA's A (r, k) and B (d, r)
 * with LoRA's init, and the magnitude m (d) = |W|_row at init, so training starts from the
 * frozen model. As in the paper (section 4.3) and Hugging Face PEFT, n is detached: backward
 * treats it as a constant, so it needs no gradient through the norm and no (d, k) temporary.
 *
 * The linear runs LoRA's additive forward (this adapter's `forward`), which writes
 * z = W x + s B A x, then rescale_forward scales z in place by g = m / n. In backward
 *   dz = g * dy                      (rescale_backward; then LoRA's backward on dz)
 *   dm += sum_t dy_t * z_t / n
 * where z is recomputed from the kept x and t = x A^T, z = x W^T + s t B^T, a chunk of
 * DORA_CHUNK tokens at a time inside the dz buffer itself, just before g * dy overwrites that
 * chunk. So z is never kept between forward and backward and needs no scratch of its own; the
 * price is one more frozen GEMM per layer in backward.
 *
 * The norms come from the expansion
 *   n_i^2 = |W_i|^2 + B_i . P_i,   P = 2s W A^T + s^2 B (A A^T)   (d, r)
 * which costs one (d, r, k) GEMM and one pass over W, and never forms W + s B A; the sums are
 * in double, and the expansion loses relative precision only when s B A nearly cancels W.
 *
 * Memory: DoRA keeps what LoRA keeps, x (k floats per token, for dA and for recomputing z) and
 * t (r floats per token), so 4 (k + r) bytes per token per layer, plus per-layer state
 * (a->state, allocated with the model, independent of the number of tokens):
 *   rn (d)      1/n from the last forward, read by backward   (tests rely on this slot coming first)
 *   g  (d)      m / n
 *   P  (d, r)   scratch for the norms
 *   AA (r, r)   scratch for the norms
 * i.e. 2d + dr + r^2 floats per layer.
 *
 * Under TP (docs/PARALLEL.md) DoRA is LoRA's layout plus m and the norms. Column-parallel: the
 * rank holds whole rows, so n, m, g and dm are local and m is sharded like W's rows.
 * Row-parallel: the rank holds the columns [in_start, in_start + k) of every row, so n_i^2 =
 * sum over the ranks of this rank's |W_i|^2 + B_i . P_i (with its A and W columns): one
 * all-reduce of d floats per forward; m is replicated; the linear sums z over TP before the
 * rescale; dy and dz = g * dy are the same on every rank, and the z that backward recomputes
 * from the kept x is this rank's partial z, so dm is a partial sum (summed over TP with the
 * other partial gradients). */
#include <stdio.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

extern const ol_adapter_ops ol_lora_ops;  /* lora.c: DoRA is LoRA's additive part plus a rescale */

enum { DORA_CHUNK = 64 };  /* tokens per chunk of the recomputed z in backward */

static void dora_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  ol_lora_ops.declare(a, lin, ctx);  // lora_A (r, k), lora_B (d, r), rank and scale
  // m (d) sharded like W's rows (column-parallel), whole on every rank (row-parallel) with a
  // partial gradient (from this rank's partial z)
  const size_t shape[1] = {ol_linear_out_full(lin)};
  ol_adapter_param(a, lin, ctx, "dora_m", 1, shape, ol_split_out(lin, OL_PLACE_PARTIAL));
  const size_t d = lin->out, r = a->rank;
  a->state_floats = 2 * d + d * r + r * r;  // rn, g, P, AA
}

static void dora_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  ol_lora_ops.init(a, lin, rng);  // A uniform, B = 0
  const size_t k = lin->in;
  float *m = a->value[2];  // (d) = |W|_row: with B = 0, m / n = 1
  // the squared norms rounded to f32 (a row-parallel rank's share, summed over TP), then sqrtf
  ol_bk->row_sumsq(m, lin->W, lin->out, k);
  if (lin->par == OL_PAR_ROW) ol_reduce_from_tp_forward(lin->tp, m, lin->out);
  ol_bk->sqrt_inplace(m, lin->out);
}

/* rn (d) = 1 / |W_i + s (B A)_i| for the current A and B; uses P and AA of the state. A
 * row-parallel rank computes its columns' share of the squared norms, summed over TP. */
static void inv_norms(const ol_adapter *a, const ol_linear *lin, float *rn) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float s = a->scale;
  const float *A = a->value[0];                // (r, k)
  const float *B = a->value[1];                // (d, r)
  float *P = a->state + 2 * d;                 // (d, r)
  float *AA = P + d * r;                       // (r, r)
  ol_bk->gemm(0, 1, r, r, k, 1.0f, A, k, A, k, 0.0f, AA, r);           // AA = A A^T
  ol_bk->gemm(0, 1, d, r, k, 2.0f * s, lin->W, k, A, k, 0.0f, P, r);   // P = 2s W A^T
  ol_bk->gemm(0, 0, d, r, r, s * s, B, r, AA, r, 1.0f, P, r);          // P += s^2 B AA
  ol_bk->dora_sq_norms(rn, lin->W, B, P, d, k, r);
  if (lin->par == OL_PAR_ROW) ol_reduce_from_tp_forward(lin->tp, rn, d);
  ol_bk->inv_sqrt(rn, d);
}

static size_t dora_saved(const ol_adapter *a, const ol_linear *lin) {
  return ol_lora_ops.saved_per_token(a, lin);  // x (k) and t (r)
}

static void dora_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y, size_t N,
                         float beta, float *saved) {
  ol_lora_ops.forward(a, lin, x, y, N, beta, saved);  // y (N, d) = beta y + s (x A^T) B^T
}

static void dora_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                          size_t N, float beta, float *saved) {
  ol_lora_ops.backward(a, lin, dy, dx, N, beta, saved);  // dy here is dz from rescale_backward
}

static void dora_rescale_forward(ol_adapter *a, const ol_linear *lin, float *z, size_t N,
                                 float *saved) {
  const size_t d = lin->out;
  float *rn = a->state;      // (d) 1/n, kept for backward
  float *g = a->state + d;   // (d) m / n
  inv_norms(a, lin, rn);
  ol_bk->scale_cols(g, a->value[2], rn, 1, d);
  ol_bk->scale_cols(z, z, g, N, d);  // z (N, d) *= g in every row
}

static void dora_rescale_backward(ol_adapter *a, const ol_linear *lin, const float *dy,
                                  float *dz, size_t N, float *saved) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float *B = a->value[1];          // (d, r)
  float *dm = a->grad[2];                // (d)
  const float *rn = a->state;            // (d) 1/n from forward
  float *g = a->state + d;               // (d) m / n
  const float *xs = saved;               // (N, k) the kept input
  const float *t = saved + N * k;        // (N, r) x A^T from forward
  ol_bk->scale_cols(g, a->value[2], rn, 1, d);
  for (size_t t0 = 0; t0 < N; t0 += DORA_CHUNK) {
    const size_t n = N - t0 < DORA_CHUNK ? N - t0 : DORA_CHUNK;
    const float *dyc = dy + t0 * d;  // (n, d)
    float *zc = dz + t0 * d;  // (n, d) z recomputed here (row-parallel: its TP partial), then dz
    ol_bk->gemm(0, 1, n, d, k, 1.0f, xs + t0 * k, k, lin->W, k, 0.0f, zc, d);    // x W^T
    ol_bk->gemm(0, 1, n, d, r, a->scale, t + t0 * r, r, B, r, 1.0f, zc, d);     // + s t B^T
    ol_bk->col_dots_accum(dm, dyc, zc, rn, n, d);  // dm += (1/n) * sum_t dy_t * z_t
    ol_bk->scale_cols(zc, dyc, g, n, d);           // dz = g * dy
  }
}

static void dora_merge(const ol_adapter *a, ol_linear *lin) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  float *rn = a->state;     // (d)
  float *g = a->state + d;  // (d)
  inv_norms(a, lin, rn);    // from the current W, A, B, before W changes
  ol_bk->scale_cols(g, a->value[2], rn, 1, d);
  // W (d, k) = g * (W + s B A), row by row
  ol_bk->gemm(0, 0, d, k, r, a->scale, a->value[1], r, a->value[0], k, 1.0f, lin->W, k);
  ol_bk->scale_rows(lin->W, g, d, k);
}

const ol_adapter_ops ol_dora_ops = {
    .name = "dora", .supports_tp = 1, .reads_w = 1, .uses_rank = 1, .uses_alpha = 1,
    .declare = dora_declare, .init = dora_init, .saved_per_token = dora_saved,
    .forward = dora_forward, .backward = dora_backward, .merge = dora_merge,
    .rescale_forward = dora_rescale_forward, .rescale_backward = dora_rescale_backward,
};
