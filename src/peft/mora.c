/* MoRA (Jiang et al. 2024): one square trainable matrix M (r^, r^), r^ = floor(sqrt((k + d) r)
 * + 1/2) (the parameter count of LoRA r), between a parameter-free compression of x (k) and a
 * parameter-free decompression to y (d). M = 0 at init, so training starts from the frozen
 * model. Both types pad x cyclically to k_pad, the next multiple of r^: x_pad[p] = x[p mod k].
 *
 * Type 1 ("mora"), the sum compression:
 *   c_j = sum_{p = j mod r^} x_pad[p] (r^);  y_i += (M c)_{i mod r^} for i < d (tile, truncate)
 *   It keeps c, r^ floats per token. Backward: f_a = sum_{i = a mod r^} dy_i folds dy onto r^
 *   values; dM += f c^T; g = M^T f; dx_{p mod k} += g_{p mod r^} for p < k_pad.
 *
 * Type 6 ("mora6"), the RoPE compression (r^ even): x_pad is G = k_pad / r^ groups of r^ and
 * group g is rotated by RoPE at position g (Hugging Face's rotate_half, base 10000):
 *   o_g = M rot_g(x_g);  y_i += o_{i mod k_pad} for i < d, where o is o_0 .. o_{G-1}
 *   concatenated (truncated when d < k_pad, tiled when d > k_pad), as MoRA's reference code.
 *   It keeps x, k floats per token, and recomputes the rotations in backward: f = dy folded
 *   onto k_pad outputs (tiles summed); dM += sum_g f_g rot_g(x_g)^T; dx gets rot_g^T(M^T f_g)
 *   folded back through the padding.
 *
 * Every compression, decompression and fold is one index map, the backend's cyclic_rows. The
 * (tokens, r^) products run as GEMMs over chunks of tokens in the layer's scratch, so no call
 * allocates and the scratch does not grow with the number of tokens. Both types are linear in
 * x, and merge writes delta W directly: row i of delta W is row (i mod r^) of M spread
 * cyclically over the k_pad inputs (type 1), or, for type 6, row a of M rotated back,
 * rot_g^T(M_a), on group g's inputs, with (g, a) the group and row that output i reads. */
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

enum {
  MORA_CHUNK = 64,   /* tokens per chunk of type 1's (tokens, r^) scratch */
  MORA6_CHUNK = 16,  /* tokens per chunk of type 6's (tokens, k_pad) scratch */
};

static size_t padded(size_t k, size_t rhat) { return (k + rhat - 1) / rhat * rhat; }

static void declare_M(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx, size_t rhat) {
  OL_CHECK(rhat >= 1);
  // M is whole on every rank; under TP dM is a partial sum: of this rank's output rows
  // (column-parallel) or of its input columns' share of the compression (row-parallel)
  const size_t shape[2] = {rhat, rhat};
  ol_adapter_param(a, lin, ctx, "mora_M", 2, shape, OL_PLACE_PARTIAL);
  a->rank = rhat;
}

static void mora_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  (void)rng;  // M (r^, r^) = 0, the identity: the parameter buffer starts zeroed (ol_params_alloc)
}

/* ---- type 1 ------------------------------------------------------------------------------ */
static void mora_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  const size_t k_full = lin->in_full ? lin->in_full : lin->in;
  const size_t d_full = lin->out_full ? lin->out_full : lin->out;
  const size_t rhat = ol_mora_rhat(k_full, d_full, ctx->method->rank);
  declare_M(a, lin, ctx, rhat);
  a->state_floats = MORA_CHUNK * rhat;  // (MORA_CHUNK, r^): M c in forward, folded dy in backward
}

static size_t mora_saved(const ol_adapter *a, const ol_linear *lin) { return a->rank; }

/* The padding of x over this rank's input columns [s, s + k) of the layer's k_full (all of them
 * without TP), mapped onto `width` positions: the padded position p < k_pad reads column
 * p mod k_full and lands on p mod width, so copy w of the input (positions w k_full + g) sends
 * global column g to (w k_full + g) mod width; the last copy is cut at k_pad. Type 1's
 * compression is width r^ (the copies' positions sum); type 6's padded input is width k_pad
 * (each position once; a row-parallel rank leaves the other ranks' columns zero). back = 0:
 * c(n, width) = beta c + that map of x(n, k); back = 1: the transpose, x(n, k) = beta x + the
 * map read backwards from c. */
static void pad_map(const ol_linear *lin, size_t rhat, size_t width, float *c, float *x,
                    size_t n, float beta, int back) {
  const size_t k = lin->in, s = lin->in_start, k_full = lin->in_full ? lin->in_full : k;
  const size_t kp = padded(k_full, rhat);
  for (size_t w = 0; w * k_full < kp; w++) {
    const size_t cut = kp - w * k_full < k_full ? kp - w * k_full : k_full;  // columns of copy w
    const size_t lo = s, hi = s + k < cut ? s + k : cut;  // this rank's columns in it
    if (lo >= hi) break;
    const size_t at = w * k_full + lo;                    // their first padded position
    if (!back)
      ol_bk->cyclic_rows(c, width, at, x + (lo - s), k, 0, hi - lo, n, beta);
    else
      ol_bk->cyclic_rows(x + (lo - s), k, 0, c, width, at, hi - lo, n, beta);
    beta = 1.0f;
  }
}

static void mora_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y, size_t N,
                         float beta, float *saved) {
  const size_t rhat = a->rank, d = lin->out;
  const float *M = a->value[0];  // (r^, r^)
  float *c = saved;              // (N, r^) the compressed input, kept for backward
  float *mc = a->state;          // (MORA_CHUNK, r^)
  pad_map(lin, rhat, rhat, c, (float *)x, N, 0.0f, 0);  // c_j = sum over p = j mod r^ of x_pad[p]
  for (size_t t0 = 0; t0 < N; t0 += MORA_CHUNK) {
    const size_t n = N - t0 < MORA_CHUNK ? N - t0 : MORA_CHUNK;
    ol_bk->gemm(0, 1, n, rhat, rhat, 1.0f, c + t0 * rhat, rhat, M, rhat, 0.0f, mc, rhat);
    // y (n, d) = beta y + tile(M c), this rank's rows [out_start, out_start + d) of the tiling
    ol_bk->cyclic_rows(y + t0 * d, d, 0, mc, rhat, lin->out_start, d, n, beta);
  }
}

static void mora_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                          size_t N, float beta, float *saved) {
  const size_t rhat = a->rank, k = lin->in, d = lin->out;
  const float *M = a->value[0];  // (r^, r^)
  float *dM = a->grad[0];        // (r^, r^)
  float *f = a->state;           // (MORA_CHUNK, r^) dy folded onto r^ values
  for (size_t t0 = 0; t0 < N; t0 += MORA_CHUNK) {
    const size_t n = N - t0 < MORA_CHUNK ? N - t0 : MORA_CHUNK;
    float *c = saved + t0 * rhat;  // (n, r^) c from forward, then g = M^T f
    ol_bk->cyclic_rows(f, rhat, lin->out_start, dy + t0 * d, d, 0, d, n, 0.0f);
    ol_bk->gemm(1, 0, rhat, rhat, n, 1.0f, f, rhat, c, rhat, 1.0f, dM, rhat);  // dM += f^T c
    ol_bk->gemm(0, 0, n, rhat, rhat, 1.0f, f, rhat, M, rhat, 0.0f, c, rhat);   // g = f M
    pad_map(lin, rhat, rhat, c, dx + t0 * k, n, beta, 1);  // dx_{p mod k} += g_{p mod r^}
  }
}

static void mora_merge(const ol_adapter *a, ol_linear *lin) {
  // W (d, k): W[i, p mod k] += M[i mod r^, p mod r^] for p < k_pad, so each block of r^ rows
  // of W, from a multiple of r^, gains M (r^, r^) row for row
  const size_t rhat = a->rank, k = lin->in, d = lin->out, kp = padded(k, rhat);
  for (size_t i0 = 0; i0 < d; i0 += rhat) {
    const size_t n = d - i0 < rhat ? d - i0 : rhat;
    ol_bk->cyclic_rows(lin->W + i0 * k, k, 0, a->value[0], rhat, 0, kp, n, 1.0f);
  }
}

const ol_adapter_ops ol_mora_ops = {
    .name = "mora", .supports_tp = 1, .uses_rank = 1,
    .declare = mora_declare, .init = mora_init, .saved_per_token = mora_saved,
    .forward = mora_forward, .backward = mora_backward, .merge = mora_merge,
};

/* ---- type 6 ------------------------------------------------------------------------------ */
/* Under TP (docs/PARALLEL.md) the groups keep their global index g (padding copies included)
 * and the outputs their global row. Column-parallel: x is whole, so every rank forms all G
 * rotated groups and o as on one rank, and its rows read o at (out_start + i) mod k_pad; the
 * fold of its dy rows is partial, so dM and dx are partial sums (dM summed over TP, dx joining
 * the layer's all-reduce). Row-parallel: type 6 is linear in x, so a rank forms the padded
 * input with only its own columns (zeros at the other ranks' positions), rotates and
 * multiplies every group, and adds its partial o to y, which the layer's all-reduce sums. A
 * group that straddles two shards then needs nothing special: each rank rotates its part of
 * it, zeros elsewhere, and rotation and M are linear. dM = sum_g f_g rot_g(x_g)^T is partial
 * (summed over TP); f comes from the replicated dy, so rot_g^T(M^T f_g) is whole and each rank
 * reads its own columns back. No new collective, and no constraint tying r^ to the shards;
 * the price is that every rank rotates and multiplies all G groups, N k_pad r^ multiply-adds
 * per layer, as on one rank. */
/* scratch: cos, sin (G, r^/2) each, then Z and O (F in backward), (MORA6_CHUNK, k_pad) each */
static void mora6_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  const size_t k_full = lin->in_full ? lin->in_full : lin->in;
  const size_t d_full = lin->out_full ? lin->out_full : lin->out;
  const size_t rhat = ol_mora_rhat(k_full, d_full, ctx->method->rank) / 2 * 2;  // even
  OL_CHECK(rhat >= 2);
  declare_M(a, lin, ctx, rhat);  // dM partial: see above
  a->state_floats = (1 + 2 * (size_t)MORA6_CHUNK) * padded(k_full, rhat);
}

static size_t mora6_saved(const ol_adapter *a, const ol_linear *lin) { return lin->in; }

/* k_pad of the whole layer */
static size_t mora6_kp(const ol_adapter *a, const ol_linear *lin) {
  return padded(lin->in_full ? lin->in_full : lin->in, a->rank);
}

/* The RoPE tables cos, sin (G, r^/2) at the front of the scratch: the angle of group g, pair i
 * is g * 10000^(-2i/r^), computed in double by the backend's rope_table, on first use (the
 * adapter's state_ready says so: the scratch may be device memory, which the host cannot
 * inspect) or every time when `again` (a merge, whose adapter is read-only). */
static void rope_tables(const ol_adapter *a, size_t kp, int again, const float **cos_t,
                        const float **sin_t) {
  const size_t rhat = a->rank;
  float *c = a->state, *s = a->state + kp / 2;  // (G, r^/2) each
  if (again || !a->state_ready) ol_bk->rope_table(c, s, kp / rhat, rhat, 10000.0);
  *cos_t = c, *sin_t = s;
}
static void ready_tables(ol_adapter *a, size_t kp, const float **cos_t, const float **sin_t) {
  rope_tables(a, kp, 0, cos_t, sin_t);
  a->state_ready = 1;
}

/* Z (n, k_pad) = the n padded inputs x (n, k) (this rank's columns at their global positions,
 * zeros at the others'), group g of each rotated at position g */
static void rotated_groups(ol_adapter *a, const ol_linear *lin, const float *x, size_t n,
                           float *Z) {
  const size_t rhat = a->rank, kp = mora6_kp(a, lin);
  const float *cos_t, *sin_t;
  ready_tables(a, kp, &cos_t, &sin_t);
  pad_map(lin, rhat, kp, Z, (float *)x, n, 0.0f, 0);
  ol_bk->rope_apply(Z, cos_t, sin_t, n, kp / rhat, 1, rhat, 0);  // Z as (n, G, 1 head, r^)
}

static void mora6_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y,
                          size_t N, float beta, float *saved) {
  const size_t rhat = a->rank, k = lin->in, d = lin->out, kp = mora6_kp(a, lin);
  const float *M = a->value[0];  // (r^, r^)
  float *Z = a->state + kp;      // (MORA6_CHUNK, k_pad) = (MORA6_CHUNK * G, r^) rotated groups
  float *O = Z + MORA6_CHUNK * kp;  // (MORA6_CHUNK, k_pad) o_0 .. o_{G-1} of each token
  ol_bk->copy(saved, x, N * k * sizeof(float));  // (N, k) x, kept for backward
  for (size_t t0 = 0; t0 < N; t0 += MORA6_CHUNK) {
    const size_t n = N - t0 < MORA6_CHUNK ? N - t0 : MORA6_CHUNK;
    rotated_groups(a, lin, x + t0 * k, n, Z);
    ol_bk->gemm(0, 1, n * (kp / rhat), rhat, rhat, 1.0f, Z, rhat, M, rhat, 0.0f, O, rhat);
    // y (n, d) = beta y + o truncated or tiled: this rank's rows [out_start, out_start + d)
    ol_bk->cyclic_rows(y + t0 * d, d, 0, O, kp, lin->out_start, d, n, beta);
  }
}

static void mora6_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                           size_t N, float beta, float *saved) {
  const size_t rhat = a->rank, k = lin->in, d = lin->out, kp = mora6_kp(a, lin);
  const size_t rows = kp / rhat;  // groups per token
  const float *M = a->value[0];   // (r^, r^)
  float *dM = a->grad[0];         // (r^, r^)
  const float *cos_t, *sin_t;
  ready_tables(a, kp, &cos_t, &sin_t);
  float *Z = a->state + kp;         // (MORA6_CHUNK, k_pad) rotated groups, then their gradient
  float *F = Z + MORA6_CHUNK * kp;  // (MORA6_CHUNK, k_pad) the gradient reaching o
  for (size_t t0 = 0; t0 < N; t0 += MORA6_CHUNK) {
    const size_t n = N - t0 < MORA6_CHUNK ? N - t0 : MORA6_CHUNK;
    rotated_groups(a, lin, saved + t0 * k, n, Z);
    // f_q = sum over the rows i (global out_start + i) = q mod k_pad of dy_i
    ol_bk->cyclic_rows(F, kp, lin->out_start, dy + t0 * d, d, 0, d, n, 0.0f);
    ol_bk->gemm(1, 0, rhat, rhat, n * rows, 1.0f, F, rhat, Z, rhat, 1.0f, dM, rhat);  // f z^T
    ol_bk->gemm(0, 0, n * rows, rhat, rhat, 1.0f, F, rhat, M, rhat, 0.0f, Z, rhat);   // M^T f
    ol_bk->rope_apply(Z, cos_t, sin_t, n, rows, 1, rhat, 1);  // rot_g^T
    pad_map(lin, rhat, kp, Z, dx + t0 * k, n, beta, 1);  // fold back through the padding
  }
}

/* Output i is row a = q mod r^ of o_g, q = i mod k_pad, g = q / r^; group g reads x_pad[g r^ +
 * s] = x[(g r^ + s) mod k], so row i of W gains rot_g^T(M_a) at the inputs (g r^ + s) mod k. The
 * rows from a multiple of r^ share g and take a = 0, 1, ..: they are done a block at a time,
 * with the block's rows of M rotated back in the scratch after the RoPE tables. */
static void mora6_merge(const ol_adapter *a, ol_linear *lin) {
  const size_t rhat = a->rank, k = lin->in, d = lin->out, kp = mora6_kp(a, lin), half = rhat / 2;
  const float *cos_t, *sin_t;
  rope_tables(a, kp, 1, &cos_t, &sin_t);
  const size_t per = 2 * (size_t)MORA6_CHUNK * kp / rhat;  // rows of V that fit: >= 32, as kp >= r^
  float *V = a->state + kp;  // (per, r^) rows of M rotated back
  for (size_t i = 0; i < d;) {
    const size_t q = i % kp, g = q / rhat, a0 = q % rhat;
    size_t n = rhat - a0 < per ? rhat - a0 : per;  // to the end of the group's block of rows
    if (d - i < n) n = d - i;
    ol_bk->copy(V, a->value[0] + a0 * rhat, n * rhat * sizeof(float));  // rows a0 .. of M
    ol_bk->rope_apply(V, cos_t + g * half, sin_t + g * half, 1, 1, n, rhat, 1);  // rot_g^T
    ol_bk->cyclic_rows(lin->W + i * k, k, g * rhat, V, rhat, 0, rhat, n, 1.0f);
    i += n;
  }
}

const ol_adapter_ops ol_mora6_ops = {
    .name = "mora6", .supports_tp = 1, .uses_rank = 1,
    .declare = mora6_declare, .init = mora_init, .saved_per_token = mora6_saved,
    .forward = mora6_forward, .backward = mora6_backward, .merge = mora6_merge,
};
