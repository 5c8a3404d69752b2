/* CPU backend: CBLAS (OpenBLAS) for matrix products, OpenMP for row and elementwise kernels.
 *
 * Threading rule: Debian's OpenBLAS is the pthreads build, which runs its own thread pool and
 * must not be entered from inside an OpenMP parallel region (the two pools oversubscribe the
 * cores, or OpenBLAS serialises). So BLAS is only ever called from sequential code here, and
 * OpenMP parallelises only the loops between BLAS calls. Attention, which alternates BLAS and
 * softmax for every head, uses no OpenMP at all (see there).
 *
 * Deployment note: after a parallel region libgomp's workers spin for a while, competing with
 * OpenBLAS's threads for the cores. Run with OMP_WAIT_POLICY=PASSIVE (measured on 2 cores, a
 * norm/gemm/SwiGLU/gemm layer sequence: 74 -> 97 GFLOP/s), or link an OpenMP build of OpenBLAS.
 *
 * Semantics follow Hugging Face LLaMA (RMSNorm, rotate_half RoPE, causal GQA attention, SwiGLU)
 * and PyTorch (cross-entropy, AdamW). Every buffer is f32, row-major, contiguous. */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

/* Elementwise loops shorter than this run on one thread: the fork/join costs more than it saves. */
#define OMP_MIN_ELEMS ((size_t)1 << 15)
/* Row loops with fewer total elements than this run on one thread. */
#define OMP_MIN_ROWWORK ((size_t)1 << 14)

/* Buffers are host memory: zeroed and 64-byte aligned (ol_calloc), so rows start on cache lines */
static void *cpu_alloc(size_t bytes) { return ol_calloc(bytes, 1); }
static void cpu_free(void *p) { ol_free(p); }
static void cpu_memcpy(void *dst, const void *src, size_t bytes) {
  if (bytes > 0 && dst != src) memcpy(dst, src, bytes);
}
static void cpu_sync(void) {}
static void *cpu_queue(void) { return NULL; }
static size_t cpu_no_bytes(void) { return 0; }

/* ---------------------------------------------------------------------------------------------
 * Vectorised exp for the hot loops (softmax rows, cross-entropy, SiLU).
 *
 * glibc's expf is a scalar call, and GCC will not if-convert the range checks of an inline exp
 * under the default -ftrapping-math, so neither auto-vectorises; the exp then costs as much as
 * the attention matmuls. So the exp loops are written with 8-lane GCC/Clang vector extensions
 * (portable: SSE2 pairs on baseline x86-64, NEON on arm64), and on x86-64 the row kernels are
 * also compiled for AVX2 and picked at run time (target_clones), since release builds do not use
 * -march=native. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SIMD_CLONES
#endif

/* v8f is returned only by static functions of this file, so no ABI boundary is crossed */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v8f __attribute__((vector_size(32)));
/* Always inlined into their callers, so each target clone (avx2 or default) compiles them for its
 * own target; a call across clones would pass 32-byte vectors under two different ABIs (seen as a
 * crash in unoptimised sanitizer builds). */
#define V8_INLINE static inline __attribute__((always_inline))
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

V8_INLINE v8f v8_set(float s) { return (v8f){s, s, s, s, s, s, s, s}; }

/* the first n <= 8 lanes from p, the others = fill */
V8_INLINE v8f v8_load(const float *p, size_t n, float fill) {
  v8f v;
  if (n == 8) {
    memcpy(&v, p, sizeof v);
  } else {
    for (size_t l = 0; l < 8; l++) v[l] = l < n ? p[l] : fill;
  }
  return v;
}

/* the first n <= 8 lanes of *v to p */
V8_INLINE void v8_store(float *p, const v8f *v, size_t n) {
  if (n == 8) {
    memcpy(p, v, sizeof *v);
  } else {
    for (size_t l = 0; l < n; l++) p[l] = (*v)[l];
  }
}

/* lanes of a where mask m is set (all ones), else b. A macro: with baseline x86-64 flags GCC
 * notes an ABI change for every function taking a 32-byte vector by value. */
#define V8_SELECT(m, a, b) ((v8f)(((v8i)(a) & (m)) | ((v8i)(b) & ~(m))))

/* exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in two
 * parts so r is exact), exp(r) by the Cephes expf polynomial: max relative error 8e-8 (1.4 ulp)
 * on [-87, 88]. Below -87 it returns 0 (no denormals), above 88 +inf; NaN propagates. */
V8_INLINE v8f v8_exp(const v8f *xp) {
  const v8f x = *xp;
  const v8f lo = v8_set(-87.0f), hi = v8_set(88.0f);
  const v8i below = x < lo, above = x > hi;  // false for NaN
  v8f xc = V8_SELECT(below, lo, V8_SELECT(above, hi, x));
  v8f kf = xc * 1.44269504088896341f;
  kf = (kf + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 pushes out the fraction
  v8f r = xc - kf * 0.693359375f;
  r = r + kf * 2.12194440e-4f;
  v8f p = v8_set(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const v8i k = __builtin_convertvector(kf, v8i);
  const v8f two_k = (v8f)((k + 127) << 23);  // 2^k for k in [-126, 127], built in the exponent
  v8f y = p * two_k;
  y = V8_SELECT(below, v8_set(0.0f), y);
  return V8_SELECT(above, v8_set(INFINITY), y);
}

/* y[j] = exp(a x[j] - b) for j < n (y may alias x; y == NULL: not stored).
 * Returns sum_j exp(a x[j] - b), accumulated in double. */
SIMD_CLONES static double exp_affine(float *y, const float *x, size_t n, float a, float b) {
  v8d acc = {0};
  for (size_t j = 0; j < n; j += 8) {
    const size_t c = n - j < 8 ? n - j : 8;
    const v8f arg = v8_load(x + j, c, -INFINITY) * a - b;  // padding lanes give exp(-inf) = 0
    const v8f e = v8_exp(&arg);
    if (y) v8_store(y + j, &e, c);
    acc += __builtin_convertvector(e, v8d);
  }
  double sum = 0.0;
  for (int l = 0; l < 8; l++) sum += acc[l];
  return sum;
}

/* h = silu(g) u over [i0, i1) */
SIMD_CLONES static void swiglu_forward_range(float *h, const float *g, const float *u, size_t i0,
                                             size_t i1) {
  for (size_t i = i0; i < i1; i += 8) {
    const size_t c = i1 - i < 8 ? i1 - i : 8;
    const v8f gv = v8_load(g + i, c, 0.0f), uv = v8_load(u + i, c, 0.0f);
    const v8f ng = -gv;
    const v8f sig = 1.0f / (1.0f + v8_exp(&ng));
    const v8f hv = gv * sig * uv;
    v8_store(h + i, &hv, c);
  }
}

/* dg = dh u sig (1 + g (1 - sig)), du = dh silu(g) over [i0, i1) */
SIMD_CLONES static void swiglu_backward_range(float *dg, float *du, const float *dh, const float *g,
                                              const float *u, size_t i0, size_t i1) {
  for (size_t i = i0; i < i1; i += 8) {
    const size_t c = i1 - i < 8 ? i1 - i : 8;
    const v8f gv = v8_load(g + i, c, 0.0f), uv = v8_load(u + i, c, 0.0f);
    const v8f dhv = v8_load(dh + i, c, 0.0f);
    const v8f ng = -gv;
    const v8f sig = 1.0f / (1.0f + v8_exp(&ng));
    const v8f dgv = dhv * uv * sig * (1.0f + gv * (1.0f - sig)), duv = dhv * gv * sig;
    v8_store(dg + i, &dgv, c);
    v8_store(du + i, &duv, c);
  }
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

/* Columns of op(W) widened per block: about 16 MiB of f32 scratch whatever K. */
#define HALF_TILE_FLOATS ((size_t)1 << 22)

static size_t half_tile_cols(size_t K) {
  size_t n = K ? HALF_TILE_FLOATS / K : HALF_TILE_FLOATS;
  return n < 16 ? 16 : n;
}

static size_t cpu_gemm_half_scratch_floats(size_t N, size_t K) {
  const size_t tn = half_tile_cols(K);
  return (N < tn ? N : tn) * K;
}

static inline float half_to_f32(uint16_t h, int bf16) {
  if (!bf16) return ol_f16_to_f32(h);
  uint32_t bits = (uint32_t)h << 16;  // bf16 is f32's upper half: inlined, it vectorises
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

static void cpu_widen(float *dst, const uint16_t *src, size_t rows, size_t cols, size_t ld,
                      int bf16) {
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (size_t i = 0; i < rows; i++)
    for (size_t j = 0; j < cols; j++) dst[i * cols + j] = half_to_f32(src[i * ld + j], bf16);
}

static void cpu_gemm_half(int trans_w, size_t M, size_t N, size_t K, float alpha, const float *X,
                          size_t ldx, const uint16_t *W, size_t ldw, int w_bf16, float beta,
                          float *C, size_t ldc, float *scratch) {
  const size_t tn = half_tile_cols(K);
  for (size_t n0 = 0; n0 < N; n0 += tn) {
    const size_t n = N - n0 < tn ? N - n0 : tn;
    if (trans_w) {  // rows [n0, n0 + n) of W (N, K): a (n, K) tile, used transposed
      cpu_widen(scratch, W + n0 * ldw, n, K, ldw, w_bf16);
      cpu_gemm(0, 1, M, n, K, alpha, X, ldx, scratch, K, beta, C + n0, ldc);
    } else {        // columns [n0, n0 + n) of W (K, N): a (K, n) tile
      cpu_widen(scratch, W + n0, K, n, ldw, w_bf16);
      cpu_gemm(0, 0, M, n, K, alpha, X, ldx, scratch, n, beta, C + n0, ldc);
    }
  }
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

static void cpu_embedding_forward(float *out, const int32_t *tokens, const float *table,
                                  const uint16_t *table16, int bf16, size_t N, size_t D,
                                  int64_t v0, size_t V) {
  // out (N, D), tokens (N), table or table16 (V, D): the rows [v0, v0 + V) of the vocabulary
#pragma omp parallel for schedule(static) if (N * D >= OMP_MIN_ELEMS)
  for (size_t n = 0; n < N; n++) {
    OL_CHECK(tokens[n] >= 0);
    const int64_t t = (int64_t)tokens[n] - v0;
    if (t < 0 || t >= (int64_t)V) memset(out + n * D, 0, D * sizeof(float));
    else if (table16) cpu_widen(out + n * D, table16 + (size_t)t * D, 1, D, D, bf16);
    else memcpy(out + n * D, table + (size_t)t * D, D * sizeof(float));
  }
}

static void cpu_embedding_backward(float *dtable, const int32_t *tokens, const float *dout,
                                   size_t N, size_t D, int64_t v0, size_t V) {
  // dtable (V, D) += for the rows [v0, v0 + V) of the vocabulary, tokens (N), dout (N, D)
  /* Race-free: a token may repeat, so threads own disjoint column slabs of the table, and
   * each walks all N tokens for its slab (every read of dout stays a contiguous run). */
  const size_t slab = 64;
  const size_t nslabs = (D + slab - 1) / slab;
#pragma omp parallel for schedule(static) if (N * D >= OMP_MIN_ELEMS)
  for (size_t s = 0; s < nslabs; s++) {
    size_t c0 = s * slab, c1 = c0 + slab < D ? c0 + slab : D;
    for (size_t n = 0; n < N; n++) {
      OL_CHECK(tokens[n] >= 0);
      const int64_t t = (int64_t)tokens[n] - v0;
      if (t < 0 || t >= (int64_t)V) continue;
      float *dst = dtable + (size_t)t * D;
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
#pragma omp for schedule(static) nowait
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
 * diagonal block the few masked entries are computed by BLAS and then zeroed.
 *
 * Threads: the heads run one after another, each product using OpenBLAS's threads, and the
 * softmax rows are vectorised but not OpenMP-parallel. Measured on 2 cores (B=4, T=256..1024,
 * H=8, hd=128), an OpenMP softmax between the BLAS calls of every head made forward+backward
 * 3x to 30x slower: libgomp's idle workers spin while OpenBLAS's threads want the same cores. */

static size_t attn_block(size_t T) {
  /* Big enough that each BLAS call is efficient, small enough to skip most of the masked half. */
  size_t C = T / 8 < 64 ? 64 : T / 8;
  return (C + 15) / 16 * 16;
}

static size_t cpu_attention_scratch_floats(size_t T) { return 2 * T * T; }

/* Unnormalised causal softmax of one score row s(n), in place:
 * s[j] = exp(s[j] scale - m), m = max_j s[j] scale. Returns the row sum; *m_out = m. */
SIMD_CLONES static double softmax_row_unnorm(float *s, size_t n, float scale, float *m_out) {
  v8f vm = v8_set(-INFINITY);
  for (size_t j = 0; j < n; j += 8) {
    const size_t c = n - j < 8 ? n - j : 8;
    const v8f x = v8_load(s + j, c, -INFINITY);
    vm = V8_SELECT(x > vm, x, vm);
  }
  float m = -INFINITY;
  for (int l = 0; l < 8; l++) m = vm[l] > m ? vm[l] : m;
  m *= scale;  // scale > 0: max(s scale) = max(s) scale
  *m_out = m;
  return exp_affine(s, s, n, scale, m);
}

/* Softmax backward of one row, in place: with p[j] = exp(s[j] scale - lse) written over s, and
 * dp (the row of dO V^T) overwritten by ds[j] = p[j] (dp[j] - sum_k p[k] dp[k]) scale. */
SIMD_CLONES static void softmax_row_backward(float *s, float *dp, size_t n, float scale,
                                             float lse) {
  v8f vrs = v8_set(0.0f);
  for (size_t j = 0; j < n; j += 8) {
    const size_t c = n - j < 8 ? n - j : 8;
    const v8f arg = v8_load(s + j, c, -INFINITY) * scale - lse;  // padding: p = 0
    const v8f pv = v8_exp(&arg);
    v8_store(s + j, &pv, c);
    vrs += pv * v8_load(dp + j, c, 0.0f);
  }
  float rs = 0.0f;
  for (int l = 0; l < 8; l++) rs += vrs[l];
  for (size_t j = 0; j < n; j += 8) {
    const size_t c = n - j < 8 ? n - j : 8;
    const v8f ds = v8_load(s + j, c, 0.0f) * (v8_load(dp + j, c, 0.0f) - rs) * scale;
    v8_store(dp + j, &ds, c);
  }
}

static void cpu_attention_forward(float *out, float *lse, const float *q, const float *k,
                                  const float *v, size_t B, size_t T, size_t H, size_t Hkv,
                                  size_t hd, float *scratch) {
  // out (B, T, H, hd), lse (B, H, T), q (B, T, H, hd), k, v (B, T, Hkv, hd), scratch (2 T^2)
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  const size_t group = H / Hkv;  // query heads per kv head
  const size_t ldq = H * hd, ldk = Hkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const size_t C = attn_block(T);
  float *S = scratch;            // (T, T): scores, then unnormalised exp(S scale - rowmax)
  float *inv = scratch + T * T;  // (T): 1 / row sum, applied to O (T x hd) rather than to P

  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      const float *qb = q + b * T * ldq + h * hd;            // (T, hd), stride ldq
      const float *kb = k + b * T * ldk + (h / group) * hd;  // (T, hd), stride ldk
      const float *vb = v + b * T * ldk + (h / group) * hd;  // (T, hd), stride ldk
      float *ob = out + b * T * ldq + h * hd;                // (T, hd), stride ldq
      float *lb = lse + (b * H + h) * T;                     // (T)

      // S[i0:i1, 0:i1] = Q[i0:i1] K[0:i1]^T
      for (size_t i0 = 0; i0 < T; i0 += C) {
        const size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, qb + i0 * ldq, to_int(ldq), kb, to_int(ldk), 0.0f,
                    S + i0 * T, to_int(T));
      }

      // softmax over the causal prefix j <= i; the rest of the row's block is zeroed
      for (size_t i = 0; i < T; i++) {
        float *row = S + i * T;
        const size_t end = (i / C + 1) * C < T ? (i / C + 1) * C : T;
        float m;
        const double sum = softmax_row_unnorm(row, i + 1, scale, &m);
        memset(row + i + 1, 0, (end - i - 1) * sizeof(float));
        inv[i] = (float)(1.0 / sum);
        lb[i] = m + (float)log(sum);
      }

      // O[i0:i1] = P[i0:i1, 0:i1] V[0:i1], then each row divided by its softmax sum
      for (size_t i0 = 0; i0 < T; i0 += C) {
        const size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, to_int(i1 - i0), to_int(hd),
                    to_int(i1), 1.0f, S + i0 * T, to_int(T), vb, to_int(ldk), 0.0f,
                    ob + i0 * ldq, to_int(ldq));
      }
      for (size_t i = 0; i < T; i++) {
        float *orow = ob + i * ldq;
        const float f = inv[i];
        for (size_t d = 0; d < hd; d++) orow[d] *= f;
      }
    }
}

static void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                   const float *q, const float *k, const float *v,
                                   const float *lse, size_t B, size_t T, size_t H, size_t Hkv,
                                   size_t hd, float *scratch) {
  // dq (B, T, H, hd), dk, dv (B, T, Hkv, hd): overwritten
  // dout, q (B, T, H, hd), k, v (B, T, Hkv, hd), lse (B, H, T), scratch (2 T^2)
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  const size_t group = H / Hkv;
  const size_t ldq = H * hd, ldk = Hkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  const size_t C = attn_block(T);
  float *P = scratch;           // (T, T): S, then P in place
  float *dS = scratch + T * T;  // (T, T): dP, then dS * scale in place

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
        const size_t i1 = i0 + C < T ? i0 + C : T;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, qb + i0 * ldq, to_int(ldq), kb, to_int(ldk), 0.0f,
                    P + i0 * T, to_int(T));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, to_int(i1 - i0), to_int(i1),
                    to_int(hd), 1.0f, dob + i0 * ldq, to_int(ldq), vb, to_int(ldk), 0.0f,
                    dS + i0 * T, to_int(T));
      }

      // P = exp(S scale - lse);  dS = P (dP - rowsum(P dP)), with the softmax scale folded in
      for (size_t i = 0; i < T; i++) {
        float *prow = P + i * T, *drow = dS + i * T;
        const size_t end = (i / C + 1) * C < T ? (i / C + 1) * C : T;
        softmax_row_backward(prow, drow, i + 1, scale, lb[i]);
        memset(prow + i + 1, 0, (end - i - 1) * sizeof(float));
        memset(drow + i + 1, 0, (end - i - 1) * sizeof(float));
      }

      for (size_t i0 = 0; i0 < T; i0 += C) {
        const size_t i1 = i0 + C < T ? i0 + C : T;
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

/* elementwise kernels hand each thread blocks of this many elements */
#define ELEM_BLOCK ((size_t)4096)

static void cpu_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
  // h, g, u (N, F) flattened to n
  const size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t bi = 0; bi < nb; bi++) {
    const size_t i0 = bi * ELEM_BLOCK, i1 = i0 + ELEM_BLOCK < n ? i0 + ELEM_BLOCK : n;
    swiglu_forward_range(h, g, u, i0, i1);
  }
}

static void cpu_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                                const float *u, size_t n) {
  // dg, du (N, F) overwritten; dh, g, u (N, F)
  const size_t nb = (n + ELEM_BLOCK - 1) / ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t bi = 0; bi < nb; bi++) {
    const size_t i0 = bi * ELEM_BLOCK, i1 = i0 + ELEM_BLOCK < n ? i0 + ELEM_BLOCK : n;
    swiglu_backward_range(dg, du, dh, g, u, i0, i1);
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
    const int grad = grad_scale != 0.0f;
    const double sum = exp_affine(grad ? z : NULL, z, V, 1.0f, mx);  // exps stored in place
    if (grad) {
      const float f = (float)((double)grad_scale / sum);
#pragma omp simd
      for (size_t j = 0; j < V; j++) z[j] *= f;
      z[tgt] -= grad_scale;
    }
    loss += log(sum) + (double)mx - (double)zt;
  }
  return loss;
}

static void cpu_vp_ce_local(const float *logits, const int32_t *targets, size_t N, size_t V,
                            int64_t v0, float *mx, float *zt) {
  // logits (N, V) of vocabulary rows [v0, v0 + V); mx, zt (N)
#pragma omp parallel for schedule(static) if (N * V >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *z = logits + n * V;
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (size_t j = 0; j < V; j++) m = z[j] > m ? z[j] : m;
    mx[n] = m;
    const int64_t t = (int64_t)targets[n] - v0;
    zt[n] = t >= 0 && t < (int64_t)V ? z[t] : 0.0f;
  }
}

static void cpu_vp_ce_sumexp(float *logits, const float *mx, size_t N, size_t V, double *sum,
                             int store) {
  // logits (N, V), mx (N), sum (N)
#pragma omp parallel for schedule(static) if (N * V >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++)
    sum[n] = exp_affine(store ? logits + n * V : NULL, logits + n * V, V, 1.0f, mx[n]);
}

static void cpu_vp_ce_grad(float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0,
                           const double *sum, float grad_scale) {
  // logits (N, V) hold exp(z - max); sum (N) the global sums
#pragma omp parallel for schedule(static) if (N * V >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *z = logits + n * V;
    const float f = (float)((double)grad_scale / sum[n]);
#pragma omp simd
    for (size_t j = 0; j < V; j++) z[j] *= f;
    const int64_t t = (int64_t)targets[n] - v0;
    if (t >= 0 && t < (int64_t)V) z[t] -= grad_scale;
  }
}

static double cpu_vp_ce_loss(const float *mx, const float *zt, const double *sum, size_t N) {
  double loss = 0.0;  // in row order, serially: the same sum on every TP rank
  for (size_t n = 0; n < N; n++) loss += log(sum[n]) + (double)mx[n] - (double)zt[n];
  return loss;
}

/* ---------------------------------------------------------------------------------------------
 * vector helpers */

static void cpu_axpy(float *y, const float *x, float alpha, size_t n) {
  // y (n) += alpha * x (n)
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
}

/* noinline: row_sumsq calls this very code for each row, so its rows have the bits that one
 * sumsq per row has (an inlined copy could be vectorised differently) */
__attribute__((noinline)) static double cpu_sumsq(const float *x, size_t n) {
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

static void cpu_counter_normal(float *x, size_t rows, size_t cols, uint64_t key, size_t r0,
                               size_t c0, float std) {
  // x (rows, cols); each value depends on its indices only, so any split over threads agrees
#pragma omp parallel for schedule(static) if (rows * cols >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < rows; i++)
    for (size_t j = 0; j < cols; j++)
      x[i * cols + j] = std * ol_hash_normal(ol_counter_hash(key, r0 + i, c0 + j));
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

static void cpu_outer(float *y, const float *s, const float *b, size_t N, size_t d, float beta) {
  // y (N, d) = beta * y + s (N) outer b (d); beta 0 writes without reading y
#pragma omp parallel for schedule(static) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *yn = y + n * d;
    const float sn = s[n];
    if (beta == 0.0f)
      for (size_t i = 0; i < d; i++) yn[i] = sn * b[i];
    else
      for (size_t i = 0; i < d; i++) yn[i] = beta * yn[i] + sn * b[i];
  }
}

static void cpu_broadcast_rows(float *x, const float *c, size_t N, size_t k, float beta) {
  // x (N, k) = beta * x + c (N) broadcast along each row
#pragma omp parallel for schedule(static) if (N * k >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *xn = x + n * k;
    const float cn = c[n];
    if (beta == 0.0f)
      for (size_t i = 0; i < k; i++) xn[i] = cn;
    else
      for (size_t i = 0; i < k; i++) xn[i] = beta * xn[i] + cn;
  }
}

static void cpu_add_bias(float *y, const float *bias, size_t N, size_t d, float beta) {
  // y (N, d) = beta * y + bias (d) in every row
#pragma omp parallel for schedule(static) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *yn = y + n * d;
    if (beta == 0.0f)
      for (size_t i = 0; i < d; i++) yn[i] = bias[i];
    else
      for (size_t i = 0; i < d; i++) yn[i] = beta * yn[i] + bias[i];
  }
}

static void cpu_col_sums(float *db, const float *dy, size_t N, size_t d) {
  // db (d) += sum over the N rows of dy (N, d)
#pragma omp parallel for schedule(static) reduction(+ : db[:d]) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *dyn = dy + n * d;
    for (size_t i = 0; i < d; i++) db[i] += dyn[i];
  }
}

static void cpu_rowdot_accum(float *c, float *db, const float *dy, const float *s, const float *b,
                             size_t N, size_t d) {
  // c (N) = dy (N, d) b (d); db (d) += dy^T s (N): each row of dy is read once
#pragma omp parallel for schedule(static) reduction(+ : db[:d]) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *dyn = dy + n * d;
    const float sn = s[n];
    float acc = 0.0f;
    for (size_t i = 0; i < d; i++) {
      acc += dyn[i] * b[i];
      db[i] += sn * dyn[i];
    }
    c[n] = acc;
  }
}

/* ---------------------------------------------------------------------------------------------
 * lora/dora helpers: DoRA's output rescaling y = (m / |W + sBA|_row) * z */

static void cpu_scale_cols(float *y, const float *x, const float *g, size_t N, size_t d) {
  // y (N, d) = x (N, d) * g (d) in every row; y may be x
#pragma omp parallel for schedule(static) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *yn = y + n * d;
    const float *xn = x + n * d;
#pragma omp simd
    for (size_t i = 0; i < d; i++) yn[i] = xn[i] * g[i];
  }
}

static void cpu_col_dots_accum(float *acc, const float *a, const float *b, const float *g,
                               size_t N, size_t d) {
  // acc (d) += g (d) * sum over the N rows of a (N, d) * b (N, d)
#pragma omp parallel for schedule(static) reduction(+ : acc[:d]) if (N * d >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    const float *an = a + n * d, *bn = b + n * d;
    for (size_t i = 0; i < d; i++) acc[i] += g[i] * an[i] * bn[i];
  }
}

static void cpu_dora_sq_norms(float *n2, const float *W, const float *B, const float *P,
                              size_t d, size_t k, size_t r) {
  // n2 (d) = |W_i|^2 + B_i . P_i, W (d, k), B and P (d, r); sums in double
#pragma omp parallel for schedule(static) if (d * k >= OMP_MIN_ROWWORK)
  for (size_t i = 0; i < d; i++) {
    const float *wi = W + i * k, *bi = B + i * r, *pi = P + i * r;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (size_t j = 0; j < k; j++) s += (double)wi[j] * (double)wi[j];
    for (size_t q = 0; q < r; q++) s += (double)bi[q] * (double)pi[q];
    n2[i] = (float)s;
  }
}

static void cpu_inv_sqrt(float *x, size_t n) {
  // x (n) = 1 / sqrt(x). The floor guards a zero row (and an expanded sum rounded below zero):
  // the result stays finite, and a row whose norm is zero has a zero output anyway
  for (size_t i = 0; i < n; i++) x[i] = (float)(1.0 / sqrt(fmax((double)x[i], 1e-30)));
}

/* ---------------------------------------------------------------------------------------------
 * AdamW, in the order of operations of torch.optim.AdamW (single-tensor path, used on CPU):
 *   p *= 1 - lr wd;  m.lerp_(g, 1 - b1);  v = v b2 + (1 - b2) g g;
 *   p += (-(lr / bc1) m) / (sqrt(v) / sqrt(bc2) + eps)
 * with bc1 = 1 - b1^step, bc2 = 1 - b2^step computed in double as Python does; the scalars are
 * then rounded to f32 as ATen does, and each tensor op rounds once, as here. */

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
    p[i] = pi + (-step_size * mi) / denom;  // addcdiv_: self + (value * t1) / t2
  }
}

/* ---------------------------------------------------------------------------------------------
 * fills, conversions, row scalings and the adapters' index maps: the loops that adapters, merges
 * and model set-up would otherwise run over tensor elements themselves */

static void cpu_fill(float *x, float value, size_t n) {
  // x (n) = value
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) x[i] = value;
}

static void cpu_narrow(uint16_t *dst, const float *src, size_t n, int bf16) {
  // dst (n) 2-byte, src (n) f32; core's conversions, so the bits are theirs
#pragma omp parallel for schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) dst[i] = bf16 ? ol_f32_to_bf16(src[i]) : ol_f32_to_f16(src[i]);
}

static void cpu_scale_rows(float *x, const float *g, size_t N, size_t k) {
  // x (N, k): row n *= g (N)[n]
#pragma omp parallel for schedule(static) if (N * k >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) {
    float *xn = x + n * k;
    const float gn = g[n];
#pragma omp simd
    for (size_t i = 0; i < k; i++) xn[i] *= gn;
  }
}

static void cpu_row_sumsq(float *n2, const float *x, size_t N, size_t k) {
  // n2 (N) = (float) sumsq of each row of x (N, k). A row long enough for sumsq to use threads
  // keeps them (rows one after another, each sum the same as alone); shorter rows, which sumsq
  // sums on one thread anyway, are spread over the threads instead
#pragma omp parallel for schedule(static) if (k < OMP_MIN_ELEMS && N * k >= OMP_MIN_ROWWORK)
  for (size_t n = 0; n < N; n++) n2[n] = (float)cpu_sumsq(x + n * k, k);
}

static void cpu_sqrt_inplace(float *x, size_t n) {
  // x (n) = sqrtf(x)
#pragma omp parallel for simd schedule(static) if (n >= OMP_MIN_ELEMS)
  for (size_t i = 0; i < n; i++) x[i] = sqrtf(x[i]);
}

static void cpu_diag_scale(float *S, const float *lb, const float *B, const float *ld, size_t n,
                           size_t r) {
  // S (n, r) = diag(lb (n)) B (n, r) diag(ld (r)), left to right
#pragma omp parallel for schedule(static) if (n * r >= OMP_MIN_ROWWORK)
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < r; j++) S[i * r + j] = lb[i] * B[i * r + j] * ld[j];
}

static void cpu_diag_scale_backward(float *dlb, float *dld, const float *dS, const float *B,
                                    const float *lb, const float *ld, size_t n, size_t r) {
  // dlb (n) += rows of (dS * B) (n, r) . ld (r);  dld (r) += columns of (dS * B) . lb (n).
  // One thread: dld sums over the rows in row order, which a split over rows would reorder
  // (it is O(n r) beside the O(N n r) product that makes dS)
  for (size_t i = 0; i < n; i++) {
    const float *Bi = B + i * r, *Pi = dS + i * r;
    float acc = 0.0f;
    for (size_t j = 0; j < r; j++) {
      const float q = Pi[j] * Bi[j];
      acc += q * ld[j];
      dld[j] += q * lb[i];
    }
    dlb[i] += acc;
  }
}

/* dst[(p + a) mod nd] += src[(p + b) mod ns] for every p in [0, len), in contiguous runs */
static void cyclic_add(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b,
                       size_t len) {
  size_t i = a % nd, j = b % ns;  // (p + a) mod nd, (p + b) mod ns
  for (size_t p = 0; p < len;) {
    size_t run = len - p;
    if (nd - i < run) run = nd - i;
    if (ns - j < run) run = ns - j;
    for (size_t q = 0; q < run; q++) dst[i + q] += src[j + q];
    p += run, i += run, j += run;
    if (i == nd) i = 0;
    if (j == ns) j = 0;
  }
}

static void cpu_cyclic_rows(float *dst, size_t nd, size_t a, const float *src, size_t ns,
                            size_t b, size_t len, size_t n, float beta) {
  // dst (n, nd) = beta dst + the cyclic map of src (n, ns) over len positions; rows independent
#pragma omp parallel for schedule(static) if (n * (nd + len) >= OMP_MIN_ELEMS)
  for (size_t t = 0; t < n; t++) {
    float *row = dst + t * nd;
    if (beta == 0.0f)
      memset(row, 0, nd * sizeof(float));
    else if (beta != 1.0f)
      for (size_t i = 0; i < nd; i++) row[i] *= beta;
    cyclic_add(row, nd, a, src + t * ns, ns, b, len);
  }
}

/* ---------------------------------------------------------------------------------------------
 * Generation: attention of new query rows against a KV cache, and sampling a token.
 *
 * A decode step has one query row per head: the scores are one matrix-vector product with the
 * cached keys, the output one with the cached values, each a BLAS gemv on strided views (row j
 * of kv head g of the cache is at k[j Hkv hd + g hd]), with the same softmax row kernel as
 * attention_forward. */

static void cpu_attention_cached(float *out, const float *q, const float *k, const float *v,
                                 size_t n, size_t t0, size_t H, size_t Hkv, size_t hd,
                                 float *scratch) {
  // out, q (n, H, hd); k, v (t0+n, Hkv, hd); scratch (t0+n)
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  const size_t group = H / Hkv, ldq = H * hd, ldk = Hkv * hd;
  const float scale = 1.0f / sqrtf((float)hd);
  for (size_t i = 0; i < n; i++) {
    const size_t len = t0 + i + 1;  // keys 0 .. t0+i
    for (size_t h = 0; h < H; h++) {
      const float *qi = q + i * ldq + h * hd;       // (hd)
      const float *kb = k + (h / group) * hd;       // (len, hd), stride ldk
      const float *vb = v + (h / group) * hd;       // (len, hd), stride ldk
      float *oi = out + i * ldq + h * hd;           // (hd)
      float *s = scratch;                           // (len)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, to_int(len), to_int(hd), 1.0f, kb, to_int(ldk),
                  qi, 1, 0.0f, s, 1);
      float m;
      const double sum = softmax_row_unnorm(s, len, scale, &m);
      cblas_sgemv(CblasRowMajor, CblasTrans, to_int(len), to_int(hd), 1.0f, vb, to_int(ldk), s,
                  1, 0.0f, oi, 1);
      const float f = (float)(1.0 / sum);
      for (size_t d = 0; d < hd; d++) oi[d] *= f;
    }
  }
}

static int cmp_float_desc(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

static int64_t cpu_sample(const float *logits, size_t V, float temperature, size_t top_k,
                          double u, float *scratch) {
  // logits (V), scratch (V)
  OL_CHECK(V > 0);
  size_t best = 0;
  for (size_t i = 1; i < V; i++)
    if (logits[i] > logits[best]) best = i;  // strict: the lowest id wins a tie
  if (temperature == 0.0f) return (int64_t)best;
  float threshold = -INFINITY;  // the top_k-th largest logit
  if (top_k > 0 && top_k < V) {
    memcpy(scratch, logits, V * sizeof(float));
    qsort(scratch, V, sizeof(float), cmp_float_desc);
    threshold = scratch[top_k - 1];
  }
  const double mx = logits[best], inv_t = 1.0 / (double)temperature;
  double total = 0.0;
  for (size_t i = 0; i < V; i++)
    if (logits[i] >= threshold) total += exp(((double)logits[i] - mx) * inv_t);
  const double r = u * total;
  double acc = 0.0;
  size_t last = best;
  for (size_t i = 0; i < V; i++) {
    if (logits[i] < threshold) continue;
    acc += exp(((double)logits[i] - mx) * inv_t);
    last = i;
    if (acc > r) return (int64_t)i;
  }
  return (int64_t)last;  // u * total rounded up to the total itself: the last kept id
}

/* ---------------------------------------------------------------------------------------------
 * the table */

static const ol_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .host_visible = 1,
    .to_device = cpu_memcpy,
    .to_host = cpu_memcpy,
    .copy = cpu_memcpy,
    .sync = cpu_sync,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .queue = cpu_queue,
    .peak_bytes = cpu_no_bytes,
    .total_bytes = cpu_no_bytes,
    .gemm = cpu_gemm,
    .gemm_half = cpu_gemm_half,
    .gemm_half_scratch_floats = cpu_gemm_half_scratch_floats,
    .widen = cpu_widen,
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
    .counter_normal = cpu_counter_normal,
    .row_sums = cpu_row_sums,
    .outer = cpu_outer,
    .broadcast_rows = cpu_broadcast_rows,
    .rowdot_accum = cpu_rowdot_accum,
    .add_bias = cpu_add_bias,
    .col_sums = cpu_col_sums,
    .adamw = cpu_adamw,
    /* lora/dora */
    .scale_cols = cpu_scale_cols,
    .col_dots_accum = cpu_col_dots_accum,
    .dora_sq_norms = cpu_dora_sq_norms,
    .inv_sqrt = cpu_inv_sqrt,
    /* vocab-parallel cross-entropy */
    .vp_ce_local = cpu_vp_ce_local,
    .vp_ce_sumexp = cpu_vp_ce_sumexp,
    .vp_ce_grad = cpu_vp_ce_grad,
    .vp_ce_loss = cpu_vp_ce_loss,
    /* fills, conversions, row scalings, index maps */
    .fill = cpu_fill,
    .narrow = cpu_narrow,
    .scale_rows = cpu_scale_rows,
    .row_sumsq = cpu_row_sumsq,
    .sqrt_inplace = cpu_sqrt_inplace,
    .diag_scale = cpu_diag_scale,
    .diag_scale_backward = cpu_diag_scale_backward,
    .cyclic_rows = cpu_cyclic_rows,
    /* generation */
    .attention_cached = cpu_attention_cached,
    .sample = cpu_sample,
};

const ol_backend *ol_backend_cpu(void) { return &cpu_backend; }

