/* CPU backend: CBLAS (OpenBLAS) for matrix products, OpenMP for row and elementwise kernels.
 *
 * Threading rule: Debian's OpenBLAS is the pthreads build, which runs its own thread pool and
 * must not be entered from inside an OpenMP parallel region (the two pools oversubscribe the
 * cores, or OpenBLAS serialises). So BLAS is only ever called from sequential code here, and
 * OpenMP parallelises only the loops between BLAS calls.
 *
 * Semantics follow Hugging Face LLaMA (RMSNorm, rotate_half RoPE, causal GQA attention, SwiGLU)
 * and PyTorch (cross-entropy, AdamW). Every buffer is f32, row-major, contiguous. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "onelora/backend.h"
#include "onelora/core.h"

/* Elementwise loops shorter than this run on one thread: the fork/join costs more than it saves. */
#define OMP_MIN_ELEMS ((size_t)1 << 15)
/* Row loops with fewer total elements than this run on one thread. */
#define OMP_MIN_ROWWORK ((size_t)1 << 14)

/* exp for the hot loops (softmax rows, cross-entropy, SiLU). glibc's expf is a scalar call that
 * blocks vectorisation and dominated the attention softmax; this one inlines into SIMD loops.
 * exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in two
 * parts so r is exact), exp(r) by the Cephes expf polynomial: relative error ~2 ulp over the
 * range. Below -87 it returns 0 (no denormals), above 88 +inf; NaN propagates. */
static inline float fast_expf(float x) {
  const float lo = -87.0f, hi = 88.0f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  float kf = xc * 1.44269504088896341f;
  kf = (kf + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 pushes out the fraction
  float r = xc - kf * 0.693359375f;
  r = r + kf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = ((int32_t)kf + 127) << 23;  // 2^k, k in [-126, 127]
  float two_k;
  memcpy(&two_k, &bits, sizeof two_k);
  float y = p * two_k;
  y = x < lo ? 0.0f : y;
  return x > hi ? INFINITY : y;
}

static int to_int(size_t x) {
  OL_CHECK(x <= (size_t)INT_MAX);
  return (int)x;
}

/* ---------------------------------------------------------------------------------------------
 * gemm / gemv */

static void cpu_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
                     const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
                     size_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) { /* C = beta * C; BLAS would reject lda = 0 for an empty operand */
    for (size_t i = 0; i < M; i++)
      for (size_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, to_int(M), to_int(N), to_int(K), alpha, A,
              to_int(lda), B, to_int(ldb), beta, C, to_int(ldc));
}

static void cpu_gemv(int trans, size_t M, size_t N, float alpha, const float *A, size_t lda,
                     const float *x, float beta, float *y) {
  if (M == 0) return;
  if (N == 0) {
    for (size_t i = 0; i < M; i++) y[i] = beta == 0.0f ? 0.0f : beta * y[i];
    return;
  }
  /* op(A) is (M,N): A is stored (M,N) or, when trans, (N,M) */
  size_t rows = trans ? N : M, cols = trans ? M : N;
  cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, to_int(rows), to_int(cols), alpha,
              A, to_int(lda), x, 1, beta, y, 1);
}

/* ---------------------------------------------------------------------------------------------
 * embedding */

static void cpu_embedding_forward(float *out, const int32_t *tokens, const float *table, size_t N,
                                  size_t D) {
  // out (N, D), tokens (N), table (V, D)
#pragma omp parallel for schedule(static) if (N * D >= OMP_MIN_ELEMS)
  for (size_t n = 0; n < N; n++) {
    OL_CHECK(tokens[n] >= 0);
    memcpy(out + n * D, table + (size_t)tokens[n] * D, D * sizeof(float));
  }
}

static void cpu_embedding_backward(float *dtable, const int32_t *tokens, const float *dout,
                                   size_t N, size_t D) {
  // dtable (V, D) +=, tokens (N), dout (N, D)
  /* Race-free: a token may repeat, so threads own disjoint column slabs of the table, and
   * each walks all N tokens for its slab (every read of dout stays a contiguous run). */
  const size_t slab = 64;
  const size_t nslabs = (D + slab - 1) / slab;
#pragma omp parallel for schedule(static) if (N * D >= OMP_MIN_ELEMS)
  for (size_t s = 0; s < nslabs; s++) {
    size_t c0 = s * slab, c1 = c0 + slab < D ? c0 + slab : D;
    for (size_t n = 0; n < N; n++) {
      OL_CHECK(tokens[n] >= 0);
      float *dst = dtable + (size_t)tokens[n] * D;
      const float *src = dout + n * D;
      for (size_t c = c0; c < c1; c++) dst[c] += src[c];
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * RMSNorm (Hugging Face LlamaRMSNorm): y = x * rsqrt(mean(x^2) + eps) * w */

static void cpu_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, size_t N,
                                size_t D, float eps) {
  // out (N, D), rstd (N), x (N, D), w (D)
#pragma omp parallel for schedule(static) if (N * D >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *xn = x + n * D;
    float *on = out + n * D;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (size_t i = 0; i < D; i++) ss += xn[i] * xn[i];
    float r = 1.0f / sqrtf(ss / (float)D + eps);
    rstd[n] = r;
    for (size_t i = 0; i < D; i++) on[i] = xn[i] * r * w[i];
  }
}

static void cpu_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                 const float *w, const float *rstd, size_t N, size_t D) {
  // dx (N, D) +=, dw (D) += or NULL, dout (N, D), x (N, D), w (D), rstd (N)
  /* With r = rstd and y_i = x_i r w_i:
   *   dx_i = r (w_i dy_i - x_i r^2 mean_j(dy_j w_j x_j)),   dw_i = sum_n dy_ni x_ni r_n */
  const int par = N * D >= OMP_MIN_ROWWORK;
#pragma omp parallel if (par)
  {
#pragma omp for schedule(static)
    for (size_t n = 0; n < N; n++) {
      const float *xn = x + n * D, *dyn = dout + n * D;
      float *dxn = dx + n * D;
      const float r = rstd[n];
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (size_t i = 0; i < D; i++) dot += dyn[i] * w[i] * xn[i];
      const float c = r * r * r * dot / (float)D;
      for (size_t i = 0; i < D; i++) dxn[i] += r * w[i] * dyn[i] - c * xn[i];
    }
    if (dw) {
      /* dw is a reduction over rows: threads own disjoint column slabs, so no races and no
       * per-thread partial buffers. Only runs when the norm weight is trainable. */
      const size_t slab = 64, nslabs = (D + slab - 1) / slab;
#pragma omp for schedule(static)
      for (size_t s = 0; s < nslabs; s++) {
        size_t c0 = s * slab, c1 = c0 + slab < D ? c0 + slab : D;
        for (size_t n = 0; n < N; n++) {
          const float *xn = x + n * D, *dyn = dout + n * D;
          const float r = rstd[n];
          for (size_t i = c0; i < c1; i++) dw[i] += dyn[i] * xn[i] * r;
        }
      }
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * RoPE (Hugging Face rotate_half convention) */

static void cpu_rope_table(float *cos_t, float *sin_t, size_t T, size_t hd, double theta) {
  // cos_t, sin_t (T, hd/2)
  OL_CHECK(hd % 2 == 0);
  const size_t half = hd / 2;
  for (size_t t = 0; t < T; t++)
    for (size_t i = 0; i < half; i++) {
      double angle = (double)t * pow(theta, -2.0 * (double)i / (double)hd);
      cos_t[t * half + i] = (float)cos(angle);
      sin_t[t * half + i] = (float)sin(angle);
    }
}

static void cpu_rope_apply(float *x, const float *cos_t, const float *sin_t, size_t B, size_t T,
                           size_t nh, size_t hd, int inverse) {
  // x (B, T, nh, hd) in place; cos_t, sin_t (T, hd/2)
  /* x1 = x[:half], x2 = x[half:]:  x1' = x1 c - x2 s,  x2' = x2 c + x1 s.
   * The inverse (= transpose = backward) is the same with s -> -s. */
  const size_t half = hd / 2;
  const float sgn = inverse ? -1.0f : 1.0f;
  const size_t rows = B * T;
#pragma omp parallel for schedule(static) if (rows * nh * hd >= OMP_MIN_ELEMS)
  for (size_t r = 0; r < rows; r++) {
    const size_t t = r % T;
    const float *c = cos_t + t * half, *s = sin_t + t * half;
    for (size_t h = 0; h < nh; h++) {
      float *x1 = x + (r * nh + h) * hd, *x2 = x1 + half;
      for (size_t i = 0; i < half; i++) {
        const float a = x1[i], b = x2[i], si = sgn * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  }
}

/* ---------------------------------------------------------------------------------------------
 * Causal attention with grouped-query heads.
 *
 * Memory choice: the forward keeps only its inputs q, k, v (needed anyway) and lse (B, H, T), the
 * log-sum-exp of every scaled score row: O(T) floats per head. It does NOT keep the softmax P,
 * which is O(T^2) per head (at T = 4096, 32 heads: 2 GiB per layer). Backward rebuilds
 * P = exp(S * scale - lse) exactly from q and k with one extra QK^T product, as FlashAttention
 * does. The only T x T memory is the caller's scratch, reused head after head: 2 T^2 floats
 * (S/P and dP/dS), independent of B, H and the number of layers.
 *
 * Per (b, h) head the products are BLAS calls on strided views: row t of head h of q is at
 * q[(b T + t) H hd + h hd], so the leading dimension is H hd (Hkv hd for k and v); no copies.
 * Causality: rows are processed in blocks of C; block [i0, i1) only needs key columns [0, i1),
 * so the products skip the upper-right blocks (about half the flops for T >> C). Inside a
 * diagonal block the few masked entries are computed by BLAS and then zeroed. */

static size_t attn_block(size_t T) {
  /* Big enough that each BLAS call is efficient, small enough to skip most of the masked half. */
  size_t C = T / 8;
  if (C < 64) C = 64;
  return (C + 15) / 16 * 16;
}

static size_t cpu_attention_scratch_floats(size_t T) { return 2 * T * T; }

static void cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                                  const float *v, size_t B, size_t T, size_t H, size_t Hkv,
                                  size_t hd, float *scratch) {
  // out (B, T, H, hd), lse (B, H, T), q (B, T, H, hd), k, v (B, T, Hkv, hd), scratch (T, T) used
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  const size_t group = H / Hkv;       // query heads per kv head
  const size_t ldq = H * hd, ldk = Hkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const size_t C = attn_block(T);
  float *S = scratch;  // (T, T): scores, then P in place
  const int par = T * T >= OMP_MIN_ROWWORK;

  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      const float *qb = q + b * T * ldq + h * hd;                // (T, hd), stride ldq
      const float *kb = k + b * T * ldk + (h / group) * hd;      // (T, hd), stride ldk
      const float *vb = v + b * T * ldk + (h / group) * hd;      // (T, hd), stride ldk
      float *ob = out + b * T * ldq + h * hd;                    // (T, hd), stride ldq
      float *lb = lse + (b * H + h) * T;                         // (T)

      // S[i0:i1, 0:i1] = Q[i0:i1] K[0:i1]^T
      for (size_t i0 = 0; i0 < T; i0 += C) {
        size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, qb + i0 * ldq, to_int(ldq), kb, to_int(ldk), 0.0f,
                    S + i0 * T, to_int(T));
      }

      // row softmax over the causal prefix j <= i; the rest of the row's block is zeroed
#pragma omp parallel for schedule(static, 8) if (par)
      for (size_t i = 0; i < T; i++) {
        float *row = S + i * T;
        size_t end = (i / C + 1) * C;
        if (end > T) end = T;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (size_t j = 0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
        mx *= scale;  // scale > 0, so max(S scale) = max(S) scale
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (size_t j = 0; j <= i; j++) {
          row[j] = fast_expf(row[j] * scale - mx);
          sum += row[j];
        }
        const float inv = 1.0f / sum;
#pragma omp simd
        for (size_t j = 0; j <= i; j++) row[j] *= inv;
        for (size_t j = i + 1; j < end; j++) row[j] = 0.0f;
        lb[i] = mx + logf(sum);
      }

      // O[i0:i1] = P[i0:i1, 0:i1] V[0:i1]
      for (size_t i0 = 0; i0 < T; i0 += C) {
        size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(i1 - i0), to_int(hd),
                    to_int(i1), 1.0f, S + i0 * T, to_int(T), vb, to_int(ldk), 0.0f,
                    ob + i0 * ldq, to_int(ldq));
      }
    }
}

static void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, const float *k, const float *v,
                                   const float *lse, size_t B, size_t T, size_t H, size_t Hkv,
                                   size_t hd, float *scratch) {
  // dq (B, T, H, hd), dk, dv (B, T, Hkv, hd): overwritten
  // dout, q (B, T, H, hd), k, v (B, T, Hkv, hd), lse (B, H, T), scratch (2, T, T)
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  const size_t group = H / Hkv;
  const size_t ldq = H * hd, ldk = Hkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const size_t C = attn_block(T);
  float *P = scratch;           // (T, T): S, then P in place
  float *dS = scratch + T * T;  // (T, T): dP, then dS * scale in place
  const int par = T * T >= OMP_MIN_ROWWORK;

  // dk, dv accumulate over the query heads that share a kv head
  memset(dk, 0, B * T * ldk * sizeof(float));
  memset(dv, 0, B * T * ldk * sizeof(float));

  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      const float *qb = q + b * T * ldq + h * hd;            // (T, hd), stride ldq
      const float *dob = dout + b * T * ldq + h * hd;        // (T, hd), stride ldq
      const float *kb = k + b * T * ldk + (h / group) * hd;  // (T, hd), stride ldk
      const float *vb = v + b * T * ldk + (h / group) * hd;  // (T, hd), stride ldk
      float *dqb = dq + b * T * ldq + h * hd;                // (T, hd), stride ldq
      float *dkb = dk + b * T * ldk + (h / group) * hd;      // (T, hd), stride ldk
      float *dvb = dv + b * T * ldk + (h / group) * hd;      // (T, hd), stride ldk
      const float *lb = lse + (b * H + h) * T;               // (T)

      // S = Q K^T and dP = dO V^T on the causal blocks
      for (size_t i0 = 0; i0 < T; i0 += C) {
        size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, qb + i0 * ldq, to_int(ldq), kb, to_int(ldk), 0.0f,
                    P + i0 * T, to_int(T));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, dob + i0 * ldq, to_int(ldq), vb, to_int(ldk), 0.0f,
                    dS + i0 * T, to_int(T));
      }

      // P = exp(S scale - lse);  dS = P (dP - rowsum(P dP)), with the softmax scale folded in
#pragma omp parallel for schedule(static, 8) if (par)
      for (size_t i = 0; i < T; i++) {
        float *prow = P + i * T, *drow = dS + i * T;
        size_t end = (i / C + 1) * C;
        if (end > T) end = T;
        const float l = lb[i];
        float rs = 0.0f;
#pragma omp simd reduction(+ : rs)
        for (size_t j = 0; j <= i; j++) {
          prow[j] = fast_expf(prow[j] * scale - l);
          rs += prow[j] * drow[j];
        }
#pragma omp simd
        for (size_t j = 0; j <= i; j++) drow[j] = prow[j] * (drow[j] - rs) * scale;
        for (size_t j = i + 1; j < end; j++) prow[j] = drow[j] = 0.0f;
      }

      for (size_t i0 = 0; i0 < T; i0 += C) {
        size_t i1 = i0 + C < T ? i0 + C : T;
        // dQ[i0:i1] = dS[i0:i1, 0:i1] K[0:i1]   (scale already in dS)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(i1 - i0), to_int(hd),
                    to_int(i1), 1.0f, dS + i0 * T, to_int(T), kb, to_int(ldk), 0.0f,
                    dqb + i0 * ldq, to_int(ldq));
        // key rows j in [i0, i1) are attended only by query rows i >= i0:
        // dV[i0:i1] += P[i0:T, i0:i1]^T dO[i0:T],  dK[i0:i1] += dS[i0:T, i0:i1]^T Q[i0:T]
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, to_int(i1 - i0), to_int(hd),
                    to_int(T - i0), 1.0f, P + i0 * T + i0, to_int(T), dob + i0 * ldq,
                    to_int(ldq), 1.0f, dvb + i0 * ldk, to_int(ldk));
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, to_int(i1 - i0), to_int(hd),
                    to_int(T - i0), 1.0f, dS + i0 * T + i0, to_int(T), qb + i0 * ldq,
                    to_int(ldq), 1.0f, dkb + i0 * ldk, to_int(ldk));
      }
    }
}

/* ---------------------------------------------------------------------------------------------
 * SwiGLU: h = silu(g) * u, silu(g) = g * sigmoid(g) */

static void cpu_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
  // h, g, u (N, F) flattened to n
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) h[i] = g[i] / (1.0f + fast_expf(-g[i])) * u[i];
}

static void cpu_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                                const float *u, size_t n) {
  // dg, du (N, F) overwritten; dh, g, u (N, F)
  /* d silu/dg = sig (1 + g (1 - sig)) */
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) {
    const float sig = 1.0f / (1.0f + fast_expf(-g[i]));
    const float silu = g[i] * sig;
    dg[i] = dh[i] * u[i] * sig * (1.0f + g[i] * (1.0f - sig));
    du[i] = dh[i] * silu;
  }
}

/* ---------------------------------------------------------------------------------------------
 * Cross-entropy */

static double cpu_cross_entropy(float *logits, const int32_t *targets, size_t N, size_t V,
                                float grad_scale) {
  // logits (N, V), overwritten by dlogits when grad_scale != 0; targets (N)
  /* loss_n = log(sum_j exp(z_j - max)) + max - z_target; the exps are summed in double.
   * With a gradient, the exps are stored in place in the same pass and rescaled in a second
   * one, so each logit is exponentiated once. */
  double loss = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : loss) if (N * V >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *z = logits + n * V;
    const int32_t tgt = targets[n];
    OL_CHECK(tgt >= 0 && (size_t)tgt < V);
    const float zt = z[tgt];
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (size_t j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    double sum = 0.0;
    if (grad_scale != 0.0f) {
#pragma omp simd reduction(+ : sum)
      for (size_t j = 0; j < V; j++) {
        z[j] = fast_expf(z[j] - mx);
        sum += z[j];
      }
      const float f = (float)((double)grad_scale / sum);
#pragma omp simd
      for (size_t j = 0; j < V; j++) z[j] *= f;
      z[tgt] -= grad_scale;
    } else {
#pragma omp simd reduction(+ : sum)
      for (size_t j = 0; j < V; j++) sum += fast_expf(z[j] - mx);
    }
    loss += log(sum) + (double)mx - (double)zt;
  }
  return loss;
}

/* ---------------------------------------------------------------------------------------------
 * vector helpers */

static void cpu_axpy(float *y, const float *x, float alpha, size_t n) {
  // y (n) += alpha * x (n)
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

static double cpu_sumsq(const float *x, size_t n) {
  // x (n)
  double acc = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : acc) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) acc += (double)x[i] * (double)x[i];
  return acc;
}

static void cpu_scale(float *x, float alpha, size_t n) {
  // x (n) *= alpha
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) x[i] *= alpha;
}

/* ---------------------------------------------------------------------------------------------
 * 1LoRA helpers: y = W x + b * sum(x) */

static void cpu_row_sums(float *s, const float *x, size_t N, size_t k) {
  // s (N), x (N, k)
#pragma omp parallel for schedule(static) if (N * k >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *xn = x + n * k;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (size_t i = 0; i < k; i++) acc += xn[i];
    s[n] = acc;
  }
}

static void cpu_add_outer(float *y, const float *s, const float *b, size_t N, size_t d) {
  // y (N, d) += s (N) outer b (d)
#pragma omp parallel for schedule(static) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *yn = y + n * d;
    const float sn = s[n];
    for (size_t i = 0; i < d; i++) yn[i] += sn * b[i];
  }
}

static void cpu_add_row_scalar(float *x, const float *c, size_t N, size_t k) {
  // x (N, k) += c (N) broadcast along each row
#pragma omp parallel for schedule(static) if (N * k >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *xn = x + n * k;
    const float cn = c[n];
    for (size_t i = 0; i < k; i++) xn[i] += cn;
  }
}

/* ---------------------------------------------------------------------------------------------
 * AdamW, in the order of operations of torch.optim.AdamW (single-tensor path):
 *   p *= 1 - lr wd;  m.lerp_(g, 1 - b1);  v = v b2 + (1 - b2) g^2;
 *   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
 * with bc1 = 1 - b1^step, bc2 = 1 - b2^step computed in double as Python does. */

static void cpu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr,
                      float beta1, float beta2, float eps, float weight_decay, int64_t step) {
  // p, g, m, v (n)
  OL_CHECK(step >= 1);
  const double bc1 = 1.0 - pow((double)beta1, (double)step);
  const double bc2 = 1.0 - pow((double)beta2, (double)step);
  const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
  const float step_size = (float)((double)lr / bc1);
  const float bc2_sqrt = (float)sqrt(bc2);
  const float w1 = 1.0f - beta1, w2 = 1.0f - beta2;
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) {
    const float gi = g[i];
    const float pi = p[i] * decay;
    const float mi = m[i] + w1 * (gi - m[i]);  // lerp with weight < 0.5, as ATen does
    const float vi = v[i] * beta2 + w2 * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * (mi / denom);
  }
}

/* ---------------------------------------------------------------------------------------------
 * the table */

static const ol_backend cpu_backend = {
    .name = "cpu",
    .gemm = cpu_gemm,
    .gemv = cpu_gemv,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_table = cpu_rope_table,
    .rope_apply = cpu_rope_apply,
    .attention_scratch_floats = cpu_attention_scratch_floats,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .cross_entropy = cpu_cross_entropy,
    .axpy = cpu_axpy,
    .sumsq = cpu_sumsq,
    .scale = cpu_scale,
    .row_sums = cpu_row_sums,
    .add_outer = cpu_add_outer,
    .add_row_scalar = cpu_add_row_scalar,
    .adamw = cpu_adamw,
};

const ol_backend *ol_backend_cpu(void) { return &cpu_backend; }
