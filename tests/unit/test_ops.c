/* Unit tests of the CPU backend kernels.
 *
 * Forward ops are compared with naive reference loops written here (in double). Every op with
 * a backward gets a finite-difference gradient check: with random inputs x and a random
 * projection r, L(x) = sum(r * forward(x)) is accumulated in double, and the analytic gradient
 * from the backward op is compared with the central difference (L(x + e) - L(x - e)) / 2e.
 *
 * Tolerance of the gradient checks: the forward runs in f32, so each L carries a rounding error
 * of about 6e-8 * sum|r * y| (a few 1e-6 for our sizes of tens to hundreds of O(1) outputs).
 * Divided by 2e = 2e-3 that is ~1e-3 absolute per component against components of O(0.1..1);
 * the truncation error e^2 f''' / 6 ~ 1e-7 is negligible. So a correct kernel shows a relative
 * error of the whole gradient vector, ||g_fd - g|| / ||g_fd||, of about 1e-4..1e-3, and we
 * accept < 1e-2; a wrong term (missing factor, sign, index or head mapping) gives O(0.1..1). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

#define FD_EPS 1e-3f
#define FD_TOL 1e-2

/* ---- helpers --------------------------------------------------------------------------- */

static float *fvec(size_t n) { return ol_calloc(n, sizeof(float)); }
static double *dvec(size_t n) { return ol_calloc(n, sizeof(double)); }

static void fill_normal(float *x, size_t n, ol_rng *r, float s) {
  for (size_t i = 0; i < n; i++) x[i] = s * ol_rng_normal(r);
}

static double dot_fd(const float *a, const float *b, size_t n) {
  double acc = 0.0;
  for (size_t i = 0; i < n; i++) acc += (double)a[i] * (double)b[i];
  return acc;
}

/* ||ref - got|| / ||ref|| over n entries */
static double rel_err_d(const double *ref, const float *got, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = ref[i] - (double)got[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return sqrt(num) / (sqrt(den) + 1e-30);
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
  double m = 0.0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d > m) m = d;
  }
  return m;
}

typedef double (*loss_fn)(void *ctx);

/* Central-difference check of the analytic gradient g of loss() with respect to x(n).
 * When n_check < n, a random subset of n_check components is checked (large inputs). */
static double grad_check(const char *what, loss_fn loss, void *ctx, float *x, const float *g,
                         size_t n, size_t n_check, uint64_t seed) {
  ol_rng r;
  ol_rng_seed(&r, seed);
  if (n_check > n) n_check = n;
  double *fd = dvec(n_check);
  float *ga = fvec(n_check);
  for (size_t c = 0; c < n_check; c++) {
    size_t i = n_check == n ? c : (size_t)(ol_rng_u64(&r) % n);
    const float x0 = x[i];
    x[i] = x0 + FD_EPS;
    double lp = loss(ctx);
    x[i] = x0 - FD_EPS;
    double lm = loss(ctx);
    x[i] = x0;
    /* divide by the perturbation actually representable in f32 */
    fd[c] = (lp - lm) / ((double)(x0 + FD_EPS) - (double)(x0 - FD_EPS));
    ga[c] = g[i];
  }
  double e = rel_err_d(fd, ga, n_check);
  printf("  grad check %-28s rel err %.2e (%zu of %zu)\n", what, e, n_check, n);
  ol_free(fd);
  ol_free(ga);
  return e;
}

static int setup(void **state) {
  (void)state;
  ol_backend_set(ol_backend_cpu());
  return 0;
}

/* ---- gemm / gemv ------------------------------------------------------------------------ */

static void test_gemm_transposes(void **state) {
  (void)state;
  ol_rng r;
  ol_rng_seed(&r, 1);
  const size_t M = 5, N = 7, K = 3, pad = 2;
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      // A stored (M, K) or (K, M); B stored (K, N) or (N, K); padded leading dims
      size_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      float *A = fvec((ta ? K : M) * lda), *B = fvec((tb ? N : K) * ldb);
      float *C = fvec(M * ldc), *C0 = fvec(M * ldc);
      fill_normal(A, (ta ? K : M) * lda, &r, 1.0f);
      fill_normal(B, (tb ? N : K) * ldb, &r, 1.0f);
      fill_normal(C, M * ldc, &r, 1.0f);
      memcpy(C0, C, M * ldc * sizeof(float));
      const float alpha = 1.5f, beta = 0.5f;
      ol_bk->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      for (size_t i = 0; i < M; i++) {
        for (size_t j = 0; j < N; j++) {
          double acc = 0.0;
          for (size_t p = 0; p < K; p++) {
            double a = ta ? A[p * lda + i] : A[i * lda + p];
            double b = tb ? B[j * ldb + p] : B[p * ldb + j];
            acc += a * b;
          }
          double want = alpha * acc + beta * C0[i * ldc + j];
          assert_true(fabs(want - C[i * ldc + j]) < 1e-5 * (1.0 + fabs(want)));
        }
        for (size_t j = N; j < ldc; j++) assert_true(C[i * ldc + j] == C0[i * ldc + j]);
      }
      ol_free(A);
      ol_free(B);
      ol_free(C);
      ol_free(C0);
    }
}

/* gemm_half against double sums of X and the widened W. The widening is exact, so the only error
 * is f32 GEMM rounding: |C - C_ref| <= gamma_K sum_p |alpha x w| + u |beta c| + u |C_ref| with
 * gamma_K = K u / (1 - K u), u = 2^-24 (the deterministic bound, whatever the BLAS kernel). The
 * shapes cross the widening tiles: with K = 4096 a tile holds 1024 columns of op(W), and N = 1100
 * needs two; ldw > the row pads W. A wrong dtype flag (bf16 bits read as f16) must exceed the
 * bound. */
static double half_gemm_worst(int trans_w, int bf16, int read_bf16) {
  ol_rng r;
  ol_rng_seed(&r, 11);
  const size_t M = 3, N = 1100, K = 4096, pad = 5;
  const size_t w_rows = trans_w ? N : K, w_cols = trans_w ? K : N, ldw = w_cols + pad;
  float *X = fvec(M * K), *C = fvec(M * N), *C0 = fvec(M * N);
  uint16_t *W = ol_calloc(w_rows * ldw, sizeof(uint16_t));  // (w_rows, ldw)
  double *Wd = dvec(w_rows * w_cols);                       // the widened values
  fill_normal(X, M * K, &r, 1.0f);
  fill_normal(C, M * N, &r, 1.0f);
  memcpy(C0, C, M * N * sizeof(float));
  for (size_t i = 0; i < w_rows; i++)
    for (size_t j = 0; j < w_cols; j++) {
      float v = 0.05f * ol_rng_normal(&r);
      W[i * ldw + j] = bf16 ? ol_f32_to_bf16(v) : ol_f32_to_f16(v);
      Wd[i * w_cols + j] = bf16 ? ol_bf16_to_f32(W[i * ldw + j]) : ol_f16_to_f32(W[i * ldw + j]);
    }
  const float alpha = 1.5f, beta = 0.5f;
  float *scratch = fvec(ol_bk->gemm_half_scratch_floats(N, K));
  ol_bk->gemm_half(trans_w, M, N, K, alpha, X, K, W, ldw, read_bf16, beta, C, N, scratch);
  const double u = 0x1p-24, gamma = K * u / (1 - K * u);
  double worst = 0.0;
  for (size_t i = 0; i < M; i++)
    for (size_t j = 0; j < N; j++) {
      double acc = 0.0, mag = 0.0;
      for (size_t p = 0; p < K; p++) {
        double w = trans_w ? Wd[j * w_cols + p] : Wd[p * w_cols + j];
        acc += X[i * K + p] * w;
        mag += fabs(X[i * K + p] * w);
      }
      double want = alpha * acc + beta * C0[i * N + j];
      double bound = gamma * fabs(alpha) * mag + u * fabs(beta * C0[i * N + j]) + u * fabs(want);
      double e = fabs(want - C[i * N + j]) / bound;
      if (e > worst) worst = e;
    }
  ol_free(X), ol_free(C), ol_free(C0), ol_free(W), ol_free(Wd), ol_free(scratch);
  return worst;
}

static void test_gemm_half(void **state) {
  (void)state;
  for (int trans_w = 0; trans_w < 2; trans_w++)
    for (int bf16 = 0; bf16 < 2; bf16++) {
      double worst = half_gemm_worst(trans_w, bf16, bf16);
      printf("  gemm_half trans_w=%d %s: worst error %.3g of the bound\n", trans_w,
             bf16 ? "bf16" : "f16", worst);
      assert_true(worst <= 1.0);
    }
  assert_true(half_gemm_worst(1, 1, 0) > 1.0);  // bf16 bits read as f16: caught
}

static void test_gemv_transposes(void **state) {
  (void)state;
  ol_rng r;
  ol_rng_seed(&r, 2);
  const size_t M = 6, N = 4, pad = 3;
  for (int t = 0; t < 2; t++) {
    size_t lda = (t ? M : N) + pad;
    float *A = fvec((t ? N : M) * lda), *x = fvec(N), *y = fvec(M), *y0 = fvec(M);
    fill_normal(A, (t ? N : M) * lda, &r, 1.0f);
    fill_normal(x, N, &r, 1.0f);
    fill_normal(y, M, &r, 1.0f);
    memcpy(y0, y, M * sizeof(float));
    ol_bk->gemv(t, M, N, 2.0f, A, lda, x, -1.0f, y);
    for (size_t i = 0; i < M; i++) {
      double acc = 0.0;
      for (size_t j = 0; j < N; j++) acc += (double)(t ? A[j * lda + i] : A[i * lda + j]) * x[j];
      double want = 2.0 * acc - y0[i];
      assert_true(fabs(want - y[i]) < 1e-5 * (1.0 + fabs(want)));
    }
    ol_free(A);
    ol_free(x);
    ol_free(y);
    ol_free(y0);
  }
}

/* ---- embedding ---------------------------------------------------------------------------- */

typedef struct {
  const int32_t *tok;
  const float *table, *r;
  float *out;
  size_t N, D;
} emb_ctx;

static double emb_loss(void *p) {
  emb_ctx *c = p;
  ol_bk->embedding_forward(c->out, c->tok, c->table, NULL, 0, c->N, c->D, 0, 11);
  return dot_fd(c->out, c->r, c->N * c->D);
}

static void test_embedding(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 3);
  /* N*D large enough for the OpenMP path; D = 70 is not a multiple of the 64-column slab */
  const size_t V = 11, N = 512, D = 70;
  int32_t *tok = ol_calloc(N, sizeof(int32_t));
  for (size_t n = 0; n < N; n++) tok[n] = (int32_t)(ol_rng_u64(&rng) % 7);  // repeats, rows 7..10 unused
  float *table = fvec(V * D), *out = fvec(N * D), *r = fvec(N * D), *dt = fvec(V * D),
        *dt0 = fvec(V * D);
  fill_normal(table, V * D, &rng, 1.0f);
  fill_normal(r, N * D, &rng, 1.0f);
  fill_normal(dt0, V * D, &rng, 1.0f);

  ol_bk->embedding_forward(out, tok, table, NULL, 0, N, D, 0, V);
  for (size_t n = 0; n < N; n++)
    assert_memory_equal(out + n * D, table + (size_t)tok[n] * D, D * sizeof(float));
  // a vocabulary shard [2, 6) (TP): its rows, zero rows for the other tokens; its backward
  // scatters only the shard's tokens
  ol_bk->embedding_forward(out, tok, table + 2 * D, NULL, 0, N, D, 2, 4);
  for (size_t n = 0; n < N; n++)
    for (size_t i = 0; i < D; i++)
      assert_true(out[n * D + i] == (tok[n] >= 2 && tok[n] < 6 ? table[(size_t)tok[n] * D + i] : 0.0f));
  float *dshard = fvec(4 * D), *dwhole = fvec(V * D);  // the same sums, in the same order
  ol_bk->embedding_backward(dshard, tok, r, N, D, 2, 4);
  ol_bk->embedding_backward(dwhole, tok, r, N, D, 0, V);
  assert_memory_equal(dshard, dwhole + 2 * D, 4 * D * sizeof(float));
  ol_free(dshard), ol_free(dwhole);

  // backward accumulates: start from dt0, subtract it afterwards
  memcpy(dt, dt0, V * D * sizeof(float));
  ol_bk->embedding_backward(dt, tok, r, N, D, 0, V);
  for (size_t i = 0; i < V * D; i++) dt[i] -= dt0[i];
  double *ref = dvec(V * D);  // naive scatter-add
  for (size_t n = 0; n < N; n++)
    for (size_t i = 0; i < D; i++) ref[(size_t)tok[n] * D + i] += r[n * D + i];
  assert_true(rel_err_d(ref, dt, V * D) < 1e-5);
  for (size_t i = 7 * D; i < V * D; i++) assert_true(fabsf(dt[i]) < 1e-6f);

  /* a subset: each loss evaluation is a parallel region, slow when the cores are shared */
  emb_ctx c = {tok, table, r, out, N, D};
  assert_true(grad_check("embedding dtable", emb_loss, &c, table, dt, V * D, 100, 30) < FD_TOL);
  ol_free(ref);
  ol_free(tok);
  ol_free(table);
  ol_free(out);
  ol_free(r);
  ol_free(dt);
  ol_free(dt0);
}

/* ---- RMSNorm ------------------------------------------------------------------------------ */

typedef struct {
  float *x, *w, *out, *rstd;
  const float *r;
  size_t N, D;
  float eps;
} rms_ctx;

static double rms_loss(void *p) {
  rms_ctx *c = p;
  ol_bk->rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->N, c->D, c->eps);
  return dot_fd(c->out, c->r, c->N * c->D);
}

static void rmsnorm_case(size_t N, size_t D, size_t n_check, uint64_t seed) {
  ol_rng rng;
  ol_rng_seed(&rng, seed);
  const float eps = 1e-5f;
  float *x = fvec(N * D), *w = fvec(D), *out = fvec(N * D), *rstd = fvec(N), *r = fvec(N * D);
  float *dx = fvec(N * D), *dw = fvec(D), *dx0 = fvec(N * D), *dw0 = fvec(D);
  fill_normal(x, N * D, &rng, 1.0f);
  fill_normal(r, N * D, &rng, 1.0f);
  for (size_t i = 0; i < D; i++) w[i] = 1.0f + 0.3f * ol_rng_normal(&rng);
  fill_normal(dx0, N * D, &rng, 1.0f);
  fill_normal(dw0, D, &rng, 1.0f);

  // forward vs naive (HF: x * rsqrt(mean(x^2) + eps) * w)
  ol_bk->rmsnorm_forward(out, rstd, x, w, N, D, eps);
  for (size_t n = 0; n < N; n++) {
    double ms = 0.0;
    for (size_t i = 0; i < D; i++) ms += (double)x[n * D + i] * x[n * D + i];
    double rs = 1.0 / sqrt(ms / (double)D + eps);
    assert_true(fabs(rs - rstd[n]) < 1e-5 * rs);
    for (size_t i = 0; i < D; i++)
      assert_true(fabs(x[n * D + i] * rs * w[i] - out[n * D + i]) < 1e-5);
  }

  // backward accumulates into dx and dw
  memcpy(dx, dx0, N * D * sizeof(float));
  memcpy(dw, dw0, D * sizeof(float));
  ol_bk->rmsnorm_backward(dx, dw, r, x, w, rstd, N, D);
  for (size_t i = 0; i < N * D; i++) dx[i] -= dx0[i];
  for (size_t i = 0; i < D; i++) dw[i] -= dw0[i];

  // dw == NULL must give the same dx
  float *dx2 = fvec(N * D);
  ol_bk->rmsnorm_backward(dx2, NULL, r, x, w, rstd, N, D);
  assert_true(max_abs_diff(dx, dx2, N * D) < 1e-5);

  rms_ctx c = {x, w, out, rstd, r, N, D, eps};
  assert_true(grad_check("rmsnorm dx", rms_loss, &c, x, dx, N * D, n_check, seed + 1) < FD_TOL);
  assert_true(grad_check("rmsnorm dw", rms_loss, &c, w, dw, D, n_check, seed + 2) < FD_TOL);
  ol_free(x);
  ol_free(w);
  ol_free(out);
  ol_free(rstd);
  ol_free(r);
  ol_free(dx);
  ol_free(dw);
  ol_free(dx0);
  ol_free(dw0);
  ol_free(dx2);
}

static void test_rmsnorm(void **state) {
  (void)state;
  rmsnorm_case(6, 10, 1000, 4);
  rmsnorm_case(128, 144, 100, 5);  // OpenMP path, D not a multiple of the dw slab
}

/* ---- RoPE --------------------------------------------------------------------------------- */

typedef struct {
  float *x, *work;
  const float *cos_t, *sin_t, *r;
  size_t B, T, nh, hd;
} rope_ctx;

static double rope_loss(void *p) {
  rope_ctx *c = p;
  size_t n = c->B * c->T * c->nh * c->hd;
  memcpy(c->work, c->x, n * sizeof(float));
  ol_bk->rope_apply(c->work, c->cos_t, c->sin_t, c->B, c->T, c->nh, c->hd, 0);
  return dot_fd(c->work, c->r, n);
}

static void test_rope(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 6);
  const size_t B = 2, T = 9, nh = 3, hd = 8, half = hd / 2, n = B * T * nh * hd;
  const double theta = 10000.0;
  float *cs = fvec(T * half), *sn = fvec(T * half);
  float *x = fvec(n), *y = fvec(n), *r = fvec(n), *dx = fvec(n), *work = fvec(n);
  ol_bk->rope_table(cs, sn, T, hd, theta);
  for (size_t t = 0; t < T; t++)
    for (size_t i = 0; i < half; i++) {
      double a = (double)t / pow(theta, (double)(2 * i) / (double)hd);
      assert_true(fabs(cos(a) - cs[t * half + i]) < 1e-6);
      assert_true(fabs(sin(a) - sn[t * half + i]) < 1e-6);
    }

  fill_normal(x, n, &rng, 1.0f);
  fill_normal(r, n, &rng, 1.0f);
  memcpy(y, x, n * sizeof(float));
  ol_bk->rope_apply(y, cs, sn, B, T, nh, hd, 0);
  // naive HF: out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), cos/sin doubled
  for (size_t b = 0; b < B; b++)
    for (size_t t = 0; t < T; t++)
      for (size_t h = 0; h < nh; h++)
        for (size_t i = 0; i < hd; i++) {
          const float *xv = x + ((b * T + t) * nh + h) * hd;
          double c = cs[t * half + i % half], s = sn[t * half + i % half];
          double rot = i < half ? -(double)xv[i + half] : (double)xv[i - half];
          double want = xv[i] * c + rot * s;
          assert_true(fabs(want - y[((b * T + t) * nh + h) * hd + i]) < 1e-5);
        }
  // position 0 is the identity, later positions are not
  assert_memory_equal(y, x, nh * hd * sizeof(float));
  assert_true(max_abs_diff(y + nh * hd, x + nh * hd, nh * hd) > 1e-2);

  // inverse o forward = identity
  ol_bk->rope_apply(y, cs, sn, B, T, nh, hd, 1);
  assert_true(max_abs_diff(y, x, n) < 1e-5);

  // gradient: backward of the forward is the inverse rotation applied to dout
  memcpy(dx, r, n * sizeof(float));
  ol_bk->rope_apply(dx, cs, sn, B, T, nh, hd, 1);
  rope_ctx c = {x, work, cs, sn, r, B, T, nh, hd};
  assert_true(grad_check("rope dx", rope_loss, &c, x, dx, n, n, 60) < FD_TOL);
  ol_free(cs);
  ol_free(sn);
  ol_free(x);
  ol_free(y);
  ol_free(r);
  ol_free(dx);
  ol_free(work);
}

/* ---- attention ---------------------------------------------------------------------------- */

/* naive causal GQA attention in double: out (B,T,H,hd), lse (B,H,T) */
static void attention_naive(double *out, double *lse, const float *q, const float *k,
                            const float *v, size_t B, size_t T, size_t H, size_t Hkv, size_t hd) {
  double *s = dvec(T);
  const double scale = 1.0 / sqrt((double)hd);
  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      size_t kh = h / (H / Hkv);
      for (size_t i = 0; i < T; i++) {
        const float *qi = q + ((b * T + i) * H + h) * hd;
        double mx = -INFINITY;
        for (size_t j = 0; j <= i; j++) {
          const float *kj = k + ((b * T + j) * Hkv + kh) * hd;
          double acc = 0.0;
          for (size_t d = 0; d < hd; d++) acc += (double)qi[d] * kj[d];
          s[j] = acc * scale;
          if (s[j] > mx) mx = s[j];
        }
        double sum = 0.0;
        for (size_t j = 0; j <= i; j++) sum += exp(s[j] - mx);
        lse[(b * H + h) * T + i] = mx + log(sum);
        double *oi = out + ((b * T + i) * H + h) * hd;
        for (size_t d = 0; d < hd; d++) oi[d] = 0.0;
        for (size_t j = 0; j <= i; j++) {
          double pj = exp(s[j] - mx) / sum;
          const float *vj = v + ((b * T + j) * Hkv + kh) * hd;
          for (size_t d = 0; d < hd; d++) oi[d] += pj * vj[d];
        }
      }
    }
  ol_free(s);
}

typedef struct {
  float *q, *k, *v, *out, *lse, *scratch;
  const float *r;
  size_t B, T, H, Hkv, hd;
} attn_ctx;

static double attn_loss(void *p) {
  attn_ctx *c = p;
  ol_bk->attention_forward(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->H, c->Hkv, c->hd,
                           c->scratch);
  return dot_fd(c->out, c->r, c->B * c->T * c->H * c->hd);
}

static void attention_case(size_t B, size_t T, size_t H, size_t Hkv, size_t hd, size_t n_check,
                           uint64_t seed) {
  ol_rng rng;
  ol_rng_seed(&rng, seed);
  const size_t nq = B * T * H * hd, nk = B * T * Hkv * hd;
  float *q = fvec(nq), *k = fvec(nk), *v = fvec(nk), *out = fvec(nq), *lse = fvec(B * H * T);
  float *r = fvec(nq), *dq = fvec(nq), *dk = fvec(nk), *dv = fvec(nk), *out2 = fvec(nq);
  float *scratch = fvec(ol_bk->attention_scratch_floats(T));
  double *ref = dvec(nq), *ref_lse = dvec(B * H * T);
  fill_normal(q, nq, &rng, 1.0f);
  fill_normal(k, nk, &rng, 1.0f);
  fill_normal(v, nk, &rng, 1.0f);
  fill_normal(r, nq, &rng, 1.0f);

  // forward and lse vs the naive triple loop
  ol_bk->attention_forward(out, lse, q, k, v, B, T, H, Hkv, hd, scratch);
  attention_naive(ref, ref_lse, q, k, v, B, T, H, Hkv, hd);
  for (size_t i = 0; i < nq; i++) assert_true(fabs(ref[i] - out[i]) < 1e-4);
  for (size_t i = 0; i < B * H * T; i++) assert_true(fabs(ref_lse[i] - lse[i]) < 1e-4);

  // causal mask: changing the k, v of a later position leaves earlier outputs unchanged
  const size_t t0 = T / 2;
  for (size_t b = 0; b < B; b++)
    for (size_t i = 0; i < Hkv * hd; i++) {
      k[(b * T + t0) * Hkv * hd + i] += 3.0f;
      v[(b * T + t0) * Hkv * hd + i] -= 2.0f;
    }
  ol_bk->attention_forward(out2, lse, q, k, v, B, T, H, Hkv, hd, scratch);
  for (size_t b = 0; b < B; b++) {
    const float *o1 = out + b * T * H * hd, *o2 = out2 + b * T * H * hd;
    assert_memory_equal(o1, o2, t0 * H * hd * sizeof(float));          // rows < t0: identical
    assert_true(max_abs_diff(o1 + t0 * H * hd, o2 + t0 * H * hd, H * hd) > 1e-3);  // row t0 moves
  }
  for (size_t b = 0; b < B; b++)
    for (size_t i = 0; i < Hkv * hd; i++) {
      k[(b * T + t0) * Hkv * hd + i] -= 3.0f;
      v[(b * T + t0) * Hkv * hd + i] += 2.0f;
    }

  // gradients: forward (to set lse), backward with dout = r, then finite differences
  ol_bk->attention_forward(out, lse, q, k, v, B, T, H, Hkv, hd, scratch);
  fill_normal(dk, nk, &rng, 1.0f);  // garbage: backward must overwrite
  fill_normal(dv, nk, &rng, 1.0f);
  fill_normal(dq, nq, &rng, 1.0f);
  fill_normal(scratch, ol_bk->attention_scratch_floats(T), &rng, 1.0f);
  ol_bk->attention_backward(dq, dk, dv, r, q, k, v, lse, B, T, H, Hkv, hd, scratch);
  attn_ctx c = {q, k, v, out, lse, scratch, r, B, T, H, Hkv, hd};
  char name[64];
  snprintf(name, sizeof name, "attn dq T=%zu H=%zu Hkv=%zu", T, H, Hkv);
  assert_true(grad_check(name, attn_loss, &c, q, dq, nq, n_check, seed + 1) < FD_TOL);
  snprintf(name, sizeof name, "attn dk T=%zu H=%zu Hkv=%zu", T, H, Hkv);
  assert_true(grad_check(name, attn_loss, &c, k, dk, nk, n_check, seed + 2) < FD_TOL);
  snprintf(name, sizeof name, "attn dv T=%zu H=%zu Hkv=%zu", T, H, Hkv);
  assert_true(grad_check(name, attn_loss, &c, v, dv, nk, n_check, seed + 3) < FD_TOL);

  ol_free(q);
  ol_free(k);
  ol_free(v);
  ol_free(out);
  ol_free(lse);
  ol_free(r);
  ol_free(dq);
  ol_free(dk);
  ol_free(dv);
  ol_free(out2);
  ol_free(scratch);
  ol_free(ref);
  ol_free(ref_lse);
}

static void test_attention_mha(void **state) {
  (void)state;
  attention_case(2, 6, 2, 2, 4, 100000, 70);
}

static void test_attention_gqa(void **state) {
  (void)state;
  attention_case(2, 7, 4, 2, 4, 100000, 80);  // 2 query heads per kv head
  attention_case(2, 5, 3, 1, 6, 100000, 85);  // multi-query: all heads share one kv head
}

static void test_attention_peaked(void **state) {
  (void)state;
  /* large scores: most probabilities underflow to 0 and each row is nearly one-hot */
  ol_rng rng;
  ol_rng_seed(&rng, 95);
  const size_t B = 2, T = 70, H = 2, Hkv = 1, hd = 16, nq = B * T * H * hd, nk = B * T * Hkv * hd;
  float *q = fvec(nq), *k = fvec(nk), *v = fvec(nk), *out = fvec(nq), *lse = fvec(B * H * T);
  float *scratch = fvec(ol_bk->attention_scratch_floats(T));
  double *ref = dvec(nq), *ref_lse = dvec(B * H * T);
  fill_normal(q, nq, &rng, 12.0f);
  fill_normal(k, nk, &rng, 12.0f);
  fill_normal(v, nk, &rng, 1.0f);
  ol_bk->attention_forward(out, lse, q, k, v, B, T, H, Hkv, hd, scratch);
  attention_naive(ref, ref_lse, q, k, v, B, T, H, Hkv, hd);
  for (size_t i = 0; i < nq; i++) assert_true(fabs(ref[i] - out[i]) < 1e-4);
  for (size_t i = 0; i < B * H * T; i++)
    assert_true(fabs(ref_lse[i] - lse[i]) < 1e-5 * (1.0 + fabs(ref_lse[i])));
  ol_free(q);
  ol_free(k);
  ol_free(v);
  ol_free(out);
  ol_free(lse);
  ol_free(scratch);
  ol_free(ref);
  ol_free(ref_lse);
}

static void test_attention_long(void **state) {
  (void)state;
  /* T spans several causal row blocks (incl. a partial one) and takes the OpenMP path */
  attention_case(2, 150, 4, 2, 8, 400, 90);
}

/* ---- SwiGLU ------------------------------------------------------------------------------- */

typedef struct {
  float *g, *u, *h;
  const float *r;
  size_t n;
} swiglu_ctx;

static double swiglu_loss(void *p) {
  swiglu_ctx *c = p;
  ol_bk->swiglu_forward(c->h, c->g, c->u, c->n);
  return dot_fd(c->h, c->r, c->n);
}

static void test_swiglu(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 9);
  const size_t n = 257;
  float *g = fvec(n), *u = fvec(n), *h = fvec(n), *r = fvec(n), *dg = fvec(n), *du = fvec(n);
  fill_normal(g, n, &rng, 2.0f);
  fill_normal(u, n, &rng, 1.0f);
  fill_normal(r, n, &rng, 1.0f);
  g[0] = 100.0f;  // sigmoid saturates at 1
  g[1] = -100.0f; // exp(100) overflows to inf: sigmoid must be 0, not NaN
  u[1] = 1.0f;
  g[2] = 0.0f;
  ol_bk->swiglu_forward(h, g, u, n);
  for (size_t i = 0; i < n; i++) {
    double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
    assert_true(fabs(want - h[i]) < 1e-5 * (1.0 + fabs(want)));
  }
  assert_true(fabsf(h[1]) < 1e-40f);  // silu(-100) = -100 / (1 + e^100) ~ -4e-42
  ol_bk->swiglu_backward(dg, du, r, g, u, n);
  swiglu_ctx c = {g, u, h, r, n};
  assert_true(grad_check("swiglu dg", swiglu_loss, &c, g, dg, n, n, 91) < FD_TOL);
  assert_true(grad_check("swiglu du", swiglu_loss, &c, u, du, n, n, 92) < FD_TOL);
  ol_free(g);
  ol_free(u);
  ol_free(h);
  ol_free(r);
  ol_free(dg);
  ol_free(du);
}

/* ---- cross-entropy ------------------------------------------------------------------------ */

typedef struct {
  float *z, *work;
  const int32_t *tgt;
  size_t N, V;
} ce_ctx;

static double ce_loss(void *p) {
  ce_ctx *c = p;
  memcpy(c->work, c->z, c->N * c->V * sizeof(float));
  return ol_bk->cross_entropy(c->work, c->tgt, c->N, c->V, 0.0f);
}

static void test_cross_entropy(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 10);
  const size_t N = 7, V = 33;
  float *z = fvec(N * V), *z0 = fvec(N * V), *work = fvec(N * V), *dz = fvec(N * V);
  int32_t *tgt = ol_calloc(N, sizeof(int32_t));
  fill_normal(z, N * V, &rng, 2.0f);
  for (size_t j = 0; j < V; j++) z[2 * V + j] += 80.0f;  // a row with huge logits: exp overflows unless max-subtracted
  for (size_t n = 0; n < N; n++) tgt[n] = (int32_t)(ol_rng_u64(&rng) % V);
  memcpy(z0, z, N * V * sizeof(float));

  // loss value vs a direct log-softmax in double; grad_scale = 0 leaves logits untouched
  double want = 0.0;
  for (size_t n = 0; n < N; n++) {
    double mx = -INFINITY, sum = 0.0;
    for (size_t j = 0; j < V; j++) mx = fmax(mx, z[n * V + j]);
    for (size_t j = 0; j < V; j++) sum += exp(z[n * V + j] - mx);
    want -= (double)z[n * V + tgt[n]] - mx - log(sum);
  }
  double got = ol_bk->cross_entropy(z, tgt, N, V, 0.0f);
  assert_true(isfinite(got));
  assert_true(fabs(got - want) < 1e-5 * fabs(want));
  assert_memory_equal(z, z0, N * V * sizeof(float));

  // with a gradient: same loss, logits become (softmax - onehot) * grad_scale
  const float gs = 0.25f;
  memcpy(dz, z, N * V * sizeof(float));
  double got2 = ol_bk->cross_entropy(dz, tgt, N, V, gs);
  assert_true(fabs(got2 - want) < 1e-5 * fabs(want));
  for (size_t n = 0; n < N; n++) {
    double rowsum = 0.0;
    for (size_t j = 0; j < V; j++) rowsum += dz[n * V + j];
    assert_true(fabs(rowsum) < 1e-6);  // softmax sums to one, minus the one-hot
  }
  for (size_t i = 0; i < N * V; i++) dz[i] /= gs;
  ce_ctx c = {z, work, tgt, N, V};
  assert_true(grad_check("cross_entropy dlogits", ce_loss, &c, z, dz, N * V, N * V, 100) < FD_TOL);
  ol_free(z);
  ol_free(z0);
  ol_free(work);
  ol_free(dz);
  ol_free(tgt);
}

static void test_softmax_exp_accuracy(void **state) {
  (void)state;
  /* The backend's vectorised exp, seen through the softmax of two-logit rows z = (0, x):
   * dlogits = softmax - onehot(0) gives p1 = e^x / (1 + e^x) (e^-|x| scaled). f32 ulp is 6e-8;
   * the exp has 1.4 ulp and the few f32 ops around it add a few more, so 1e-6 relative. Below
   * e^-87 (the end of the f32 normal range) the backend flushes to 0, so there the check is
   * absolute: e^-90 = 8e-40 < 1e-39. */
  const size_t N = 2001, V = 2;
  float *z = fvec(N * V);
  int32_t *tgt = ol_calloc(N, sizeof(int32_t));
  for (size_t n = 0; n < N; n++) {
    z[n * V + 0] = 0.0f;
    z[n * V + 1] = -120.0f + 200.0f * (float)n / (float)(N - 1);  // x in [-120, 80]
  }
  float *x = fvec(N);
  for (size_t n = 0; n < N; n++) x[n] = z[n * V + 1];
  double loss = ol_bk->cross_entropy(z, tgt, N, V, 1.0f);
  double want_loss = 0.0;
  for (size_t n = 0; n < N; n++) {
    const double xd = x[n];
    const double p1 = 1.0 / (1.0 + exp(-xd));
    want_loss += xd > 0 ? xd + log1p(exp(-xd)) : log1p(exp(xd));  // -log p0 = log(1 + e^x)
    const double tol = xd < -90.0 ? 1e-39 : xd < -87.0 ? 2e-38 : 1e-6 * p1;
    assert_true(fabs(z[n * V + 1] - p1) <= tol);
    // dz0 = p0 - 1 = -p1, but computed as f32 p0 minus 1: a few f32 ulps of 1 absolute
    assert_true(fabs(z[n * V + 0] + p1) <= 1e-6 * p1 + 3e-7);
  }
  assert_true(fabs(loss - want_loss) < 1e-6 * want_loss);
  ol_free(z);
  ol_free(tgt);
  ol_free(x);
}

/* ---- 1LoRA linear: y = x W^T + b * sum(x) ------------------------------------------------- */

typedef struct {
  float *x, *b, *y, *s;
  const float *W, *r;
  size_t N, k, d;
} lin_ctx;

static void onelora_linear_forward(float *y, float *s, const float *x, const float *W,
                                   const float *b, size_t N, size_t k, size_t d) {
  // y (N, d), s (N), x (N, k), W (d, k), b (d)
  // as ol_linear_forward runs it: the adapter initialises y, the GEMM accumulates
  ol_bk->row_sums(s, x, N, k);
  ol_bk->outer(y, s, b, N, d, 0.0f);
  ol_bk->gemm(0, 1, N, d, k, 1.0f, x, k, W, k, 1.0f, y, d);
}

static double lin_loss(void *p) {
  lin_ctx *c = p;
  onelora_linear_forward(c->y, c->s, c->x, c->W, c->b, c->N, c->k, c->d);
  return dot_fd(c->y, c->r, c->N * c->d);
}

static void test_onelora_linear(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 11);
  const size_t N = 6, k = 9, d = 5;
  float *x = fvec(N * k), *W = fvec(d * k), *b = fvec(d), *y = fvec(N * d), *s = fvec(N);
  float *r = fvec(N * d), *dx = fvec(N * k), *db = fvec(d), *c = fvec(N);
  fill_normal(x, N * k, &rng, 1.0f);
  fill_normal(W, d * k, &rng, 0.5f);
  fill_normal(b, d, &rng, 1.0f);
  fill_normal(r, N * d, &rng, 1.0f);

  onelora_linear_forward(y, s, x, W, b, N, k, d);
  for (size_t n = 0; n < N; n++) {
    double sum = 0.0;
    for (size_t i = 0; i < k; i++) sum += x[n * k + i];
    assert_true(fabs(sum - s[n]) < 1e-5);
    for (size_t j = 0; j < d; j++) {
      double acc = b[j] * sum;
      for (size_t i = 0; i < k; i++) acc += (double)x[n * k + i] * W[j * k + i];
      assert_true(fabs(acc - y[n * d + j]) < 1e-4);
    }
  }

  // backward with dy = r:  dx = dy W + (dy . b) 1,  db = dy^T s, as ol_linear_backward runs
  // it: c overwrites the sums in place, the adapter initialises dx, the GEMM accumulates
  memcpy(c, s, N * sizeof(float));
  memset(db, 0, d * sizeof(float));
  ol_bk->rowdot_accum(c, db, r, c, b, N, d);  // c (N) = dy b, db (d) += dy^T s
  ol_bk->broadcast_rows(dx, c, N, k, 0.0f);
  ol_bk->gemm(0, 0, N, k, d, 1.0f, r, d, W, k, 1.0f, dx, k);
  lin_ctx ctx = {x, b, y, s, W, r, N, k, d};
  assert_true(grad_check("1lora dx", lin_loss, &ctx, x, dx, N * k, N * k, 110) < FD_TOL);
  assert_true(grad_check("1lora db", lin_loss, &ctx, b, db, d, d, 111) < FD_TOL);
  ol_free(x);
  ol_free(W);
  ol_free(b);
  ol_free(y);
  ol_free(s);
  ol_free(r);
  ol_free(dx);
  ol_free(db);
  ol_free(c);
}

/* ---- vector helpers ----------------------------------------------------------------------- */

static void test_vector_helpers(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 12);
  const size_t n = 100003;  // OpenMP path, odd length
  float *x = fvec(n), *y = fvec(n), *y0 = fvec(n);
  fill_normal(x, n, &rng, 1.0f);
  fill_normal(y, n, &rng, 1.0f);
  memcpy(y0, y, n * sizeof(float));
  ol_bk->axpy(y, x, -0.75f, n);
  for (size_t i = 0; i < n; i++) assert_true(fabsf(y[i] - (y0[i] - 0.75f * x[i])) < 1e-6f);
  double want = 0.0;
  for (size_t i = 0; i < n; i++) want += (double)x[i] * x[i];
  assert_true(fabs(ol_bk->sumsq(x, n) - want) < 1e-9 * want);
  memcpy(y, x, n * sizeof(float));
  ol_bk->scale(y, 3.0f, n);
  for (size_t i = 0; i < n; i++) assert_true(y[i] == 3.0f * x[i]);
  ol_free(x);
  ol_free(y);
  ol_free(y0);
}

/* ---- AdamW -------------------------------------------------------------------------------- */

static void test_adamw(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 13);
  const size_t n = 50;
  const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
  float *p = fvec(n), *g = fvec(n), *m = fvec(n), *v = fvec(n);
  double *pd = dvec(n), *md = dvec(n), *vd = dvec(n);
  fill_normal(p, n, &rng, 1.0f);
  for (size_t i = 0; i < n; i++) pd[i] = p[i];
  for (int64_t step = 1; step <= 3; step++) {
    fill_normal(g, n, &rng, step == 2 ? 1e-3f : 1.0f);
    ol_bk->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, step);
    // torch.optim.AdamW by hand, in double
    double bc1 = 1.0 - pow(b1, (double)step), bc2 = 1.0 - pow(b2, (double)step);
    for (size_t i = 0; i < n; i++) {
      pd[i] *= 1.0 - (double)lr * wd;
      md[i] = b1 * md[i] + (1.0 - b1) * g[i];
      vd[i] = b2 * vd[i] + (1.0 - b2) * (double)g[i] * g[i];
      double mhat = md[i] / bc1, vhat = vd[i] / bc2;
      pd[i] -= lr * mhat / (sqrt(vhat) + eps);
      assert_true(fabs(md[i] - m[i]) < 1e-6 * (fabs(md[i]) + 1e-6));
      assert_true(fabs(vd[i] - v[i]) < 1e-5 * vd[i] + 1e-12);
      assert_true(fabs(pd[i] - p[i]) < 1e-6 * (1.0 + fabs(pd[i])));
    }
  }
  ol_free(p);
  ol_free(g);
  ol_free(m);
  ol_free(v);
  ol_free(pd);
  ol_free(md);
  ol_free(vd);
}

/* ---- fills, conversions, row scalings, index maps ----------------------------------------
 * Each op is compared with a plain loop here. Where the op's arithmetic is copies, single
 * correctly rounded operations or adds in a fixed order, the reference does the same operations
 * in the same order and the comparison is bit for bit (memcmp). Elsewhere the reference is in
 * double and the tolerance comes from the error model of the f32 arithmetic: a sum of m rounded
 * terms is within gamma_m * sum|terms| of the exact value, gamma_m = m u / (1 - m u), u = 2^-24.
 * Each comparison is then shown to fail for a deliberately wrong input, so it is not vacuous. */

static double gamma_n(double m) {
  const double u = 0x1p-24;
  return m * u / (1.0 - m * u);
}

static int same_bits(const void *a, const void *b, size_t bytes) {
  return memcmp(a, b, bytes) == 0;
}

static void test_fill_narrow(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 14);
  const size_t n = 100003;  // OpenMP path, odd length
  float *x = fvec(n), *ref = fvec(n), *src = fvec(n);
  ol_bk->fill(x, 0.1f, n);
  for (size_t i = 0; i < n; i++) ref[i] = 0.1f;
  assert_true(same_bits(x, ref, n * sizeof(float)));
  ol_bk->fill(x, 0.2f, n);  // wrong value
  assert_false(same_bits(x, ref, n * sizeof(float)));

  fill_normal(src, n, &rng, 3.0f);
  src[7] = 0.0f, src[8] = -0.0f;     // signed zeros
  src[9] = 1e-6f, src[10] = 70000.0f;  // an f16 subnormal, an f16 overflow
  uint16_t *h = ol_calloc(n, sizeof(uint16_t)), *href = ol_calloc(n, sizeof(uint16_t));
  for (int bf16 = 0; bf16 <= 1; bf16++) {
    for (size_t i = 0; i < n; i++) href[i] = bf16 ? ol_f32_to_bf16(src[i]) : ol_f32_to_f16(src[i]);
    ol_bk->narrow(h, src, n, bf16);
    assert_true(same_bits(h, href, n * sizeof(uint16_t)));
    const float keep = src[5];
    src[5] *= 1.01f;  // a wrong input: 1% is more than one step of either 2-byte format
    ol_bk->narrow(h, src, n, bf16);
    assert_false(same_bits(h, href, n * sizeof(uint16_t)));
    src[5] = keep;
  }
  ol_free(x);
  ol_free(ref);
  ol_free(src);
  ol_free(h);
  ol_free(href);
}

static void test_scale_rows_sqrt(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 15);
  const size_t N = 300, k = 77;  // N k >= the row-work threshold: OpenMP path
  float *x = fvec(N * k), *y = fvec(N * k), *ref = fvec(N * k), *g = fvec(N);
  fill_normal(x, N * k, &rng, 1.0f);
  fill_normal(g, N, &rng, 1.0f);
  for (size_t i = 0; i < N; i++)
    for (size_t j = 0; j < k; j++) ref[i * k + j] = x[i * k + j] * g[i];  // one rounding each
  memcpy(y, x, N * k * sizeof(float));
  ol_bk->scale_rows(y, g, N, k);
  assert_true(same_bits(y, ref, N * k * sizeof(float)));
  g[N - 1] = -g[N - 1];  // a wrong input: the last row's factor
  memcpy(y, x, N * k * sizeof(float));
  ol_bk->scale_rows(y, g, N, k);
  assert_false(same_bits(y, ref, N * k * sizeof(float)));

  // sqrtf is correctly rounded: bit for bit
  const size_t n = 40000;
  float *v = fvec(n), *w = fvec(n), *vref = fvec(n);
  for (size_t i = 0; i < n; i++) v[i] = fabsf(ol_rng_normal(&rng)) * 10.0f;
  v[3] = 0.0f;
  for (size_t i = 0; i < n; i++) vref[i] = sqrtf(v[i]);
  memcpy(w, v, n * sizeof(float));
  ol_bk->sqrt_inplace(w, n);
  assert_true(same_bits(w, vref, n * sizeof(float)));
  v[n / 2] *= 1.5f;  // a wrong input
  memcpy(w, v, n * sizeof(float));
  ol_bk->sqrt_inplace(w, n);
  assert_false(same_bits(w, vref, n * sizeof(float)));
  ol_free(x);
  ol_free(y);
  ol_free(ref);
  ol_free(g);
  ol_free(v);
  ol_free(w);
  ol_free(vref);
}

/* row_sumsq's contract is sumsq's sum of each row, rounded to f32: bit for bit against one sumsq
 * per row, and within the error model of a plain double loop. Products of two floats are exact
 * in double, so each double sum of k terms is within gamma_k^double (u = 2^-53) of the exact
 * value, the reference's likewise, and the final rounding to f32 adds u = 2^-24 relative. */
static int row_sumsq_close(const float *got, const float *x, size_t N, size_t k) {
  for (size_t i = 0; i < N; i++) {
    double want = 0.0;
    for (size_t j = 0; j < k; j++) want += (double)x[i * k + j] * (double)x[i * k + j];
    const double ud = 0x1p-53, gk = (double)k * ud / (1.0 - (double)k * ud);
    if (fabs((double)got[i] - want) > (0x1p-24 * (1.0 + 2.0 * gk) + 2.0 * gk) * want) return 0;
  }
  return 1;
}

static void row_sumsq_case(size_t N, size_t k, uint64_t seed) {
  ol_rng rng;
  ol_rng_seed(&rng, seed);
  float *x = fvec(N * k), *got = fvec(N), *ref = fvec(N);
  fill_normal(x, N * k, &rng, 1.0f);
  for (size_t i = 0; i < N; i++) ref[i] = (float)ol_bk->sumsq(x + i * k, k);
  ol_bk->row_sumsq(got, x, N, k);
  assert_true(same_bits(got, ref, N * sizeof(float)));
  assert_true(row_sumsq_close(got, x, N, k));
  x[(N - 1) * k + k / 2] += 1.0f;  // a wrong input: one element of the last row
  ol_bk->row_sumsq(got, x, N, k);
  assert_false(same_bits(got, ref, N * sizeof(float)));
  x[(N - 1) * k + k / 2] -= 1.0f;  // restored (x + 1 - 1 may differ in the last bit: recompute)
  for (size_t i = 0; i < N; i++) ref[i] = (float)ol_bk->sumsq(x + i * k, k);
  ol_bk->row_sumsq(got, x, N, k);
  got[0] *= 1.0f + 1e-4f;  // a wrong result: far outside the error model
  assert_false(row_sumsq_close(got, x, N, k));
  ol_free(x);
  ol_free(got);
  ol_free(ref);
}

static void test_row_sumsq(void **state) {
  (void)state;
  row_sumsq_case(600, 53, 16);   // short rows, spread over threads
  row_sumsq_case(3, 40001, 17);  // rows long enough for sumsq's own threads
}

/* VeRA's diagonal scaling: two products in a fixed order, bit for bit */
static void test_diag_scale(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 18);
  const size_t n = 700, r = 24;  // n r >= the row-work threshold: OpenMP path
  float *S = fvec(n * r), *ref = fvec(n * r), *B = fvec(n * r), *lb = fvec(n), *ld = fvec(r);
  fill_normal(B, n * r, &rng, 1.0f);
  fill_normal(lb, n, &rng, 1.0f);
  fill_normal(ld, r, &rng, 1.0f);
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < r; j++) ref[i * r + j] = (lb[i] * B[i * r + j]) * ld[j];
  ol_bk->diag_scale(S, lb, B, ld, n, r);
  assert_true(same_bits(S, ref, n * r * sizeof(float)));
  ld[r - 1] *= 2.0f;  // a wrong input
  ol_bk->diag_scale(S, lb, B, ld, n, r);
  assert_false(same_bits(S, ref, n * r * sizeof(float)));
  ol_free(S);
  ol_free(ref);
  ol_free(B);
  ol_free(lb);
  ol_free(ld);
}

/* Its gradients: q_ij = dS_ij B_ij, dlb_i += sum_j q_ij ld_j, dld_j += sum_i q_ij lb_i, against
 * double. Each term has two roundings and each sum of m terms m - 1 more, then one for the add to
 * the initial value: |got - exact| <= gamma_{m+2} (|initial| + sum|terms|), m = r for dlb and n
 * for dld; the double reference's own error (~m 2^-53) is covered by the margin of 2. */
static int diag_grads_close(const float *got, const float *init, const double *want,
                            const double *abs_sum, size_t count, size_t m) {
  for (size_t i = 0; i < count; i++)
    if (fabs((double)got[i] - want[i]) >
        2.0 * gamma_n((double)m + 2.0) * (fabs(init[i]) + abs_sum[i]))
      return 0;
  return 1;
}

static void test_diag_scale_backward(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 19);
  const size_t n = 300, r = 40;
  float *dS = fvec(n * r), *B = fvec(n * r), *lb = fvec(n), *ld = fvec(r);
  float *dlb0 = fvec(n), *dld0 = fvec(r), *dlb = fvec(n), *dld = fvec(r);
  double *wlb = dvec(n), *wld = dvec(r), *alb = dvec(n), *ald = dvec(r);
  fill_normal(dS, n * r, &rng, 1.0f);
  fill_normal(B, n * r, &rng, 1.0f);
  fill_normal(lb, n, &rng, 1.0f);
  fill_normal(ld, r, &rng, 1.0f);
  fill_normal(dlb0, n, &rng, 1.0f);
  fill_normal(dld0, r, &rng, 1.0f);
  for (size_t j = 0; j < r; j++) wld[j] = dld0[j];
  for (size_t i = 0; i < n; i++) {
    wlb[i] = dlb0[i];
    for (size_t j = 0; j < r; j++) {
      const double q = (double)dS[i * r + j] * (double)B[i * r + j];
      wlb[i] += q * ld[j], alb[i] += fabs(q * ld[j]);
      wld[j] += q * lb[i], ald[j] += fabs(q * lb[i]);
    }
  }
  memcpy(dlb, dlb0, n * sizeof(float));
  memcpy(dld, dld0, r * sizeof(float));
  ol_bk->diag_scale_backward(dlb, dld, dS, B, lb, ld, n, r);
  assert_true(diag_grads_close(dlb, dlb0, wlb, alb, n, r));
  assert_true(diag_grads_close(dld, dld0, wld, ald, r, n));
  // wrong inputs: ld reaches only dlb, lb only dld
  const float ld0 = ld[0];
  ld[0] *= 1.5f;
  memcpy(dlb, dlb0, n * sizeof(float));
  memcpy(dld, dld0, r * sizeof(float));
  ol_bk->diag_scale_backward(dlb, dld, dS, B, lb, ld, n, r);
  assert_false(diag_grads_close(dlb, dlb0, wlb, alb, n, r));
  assert_true(diag_grads_close(dld, dld0, wld, ald, r, n));
  ld[0] = ld0;
  lb[n - 1] *= 1.5f;
  memcpy(dlb, dlb0, n * sizeof(float));
  memcpy(dld, dld0, r * sizeof(float));
  ol_bk->diag_scale_backward(dlb, dld, dS, B, lb, ld, n, r);
  assert_false(diag_grads_close(dld, dld0, wld, ald, r, n));
  ol_free(dS);
  ol_free(B);
  ol_free(lb);
  ol_free(ld);
  ol_free(dlb0);
  ol_free(dld0);
  ol_free(dlb);
  ol_free(dld);
  ol_free(wlb);
  ol_free(wld);
  ol_free(alb);
  ol_free(ald);
}

/* MoRA's cyclic map: copies and adds in p order, bit for bit against the definition */
static void cyclic_ref(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b,
                       size_t len, size_t n, float beta) {
  for (size_t t = 0; t < n; t++) {
    float *row = dst + t * nd;
    for (size_t i = 0; i < nd; i++) row[i] = beta == 0.0f ? 0.0f : row[i] * beta;
    for (size_t p = 0; p < len; p++) row[(p + a) % nd] += src[t * ns + (p + b) % ns];
  }
}

static void test_cyclic_rows(void **state) {
  (void)state;
  ol_rng rng;
  ol_rng_seed(&rng, 20);
  // (nd, a, ns, b, len, n): compression (len > nd: positions summed), tiling and truncation
  // (len = nd > ns, < ns), the phases of a shard, and n (nd + len) past the OpenMP threshold
  const size_t cases[][6] = {{7, 0, 30, 0, 30, 3},     {7, 12, 30, 5, 23, 4},
                             {50, 0, 7, 3, 50, 2},     {10, 0, 64, 17, 10, 5},
                             {13, 4, 11, 9, 100, 600}, {64, 63, 64, 1, 64, 300}};
  const float betas[] = {0.0f, 1.0f, 0.5f};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (size_t bi = 0; bi < 3; bi++) {
      const size_t nd = cases[c][0], a = cases[c][1], ns = cases[c][2], b = cases[c][3];
      const size_t len = cases[c][4], n = cases[c][5];
      const float beta = betas[bi];
      float *src = fvec(n * ns), *dst0 = fvec(n * nd), *dst = fvec(n * nd), *ref = fvec(n * nd);
      fill_normal(src, n * ns, &rng, 1.0f);
      fill_normal(dst0, n * nd, &rng, 1.0f);
      memcpy(ref, dst0, n * nd * sizeof(float));
      cyclic_ref(ref, nd, a, src, ns, b, len, n, beta);
      memcpy(dst, dst0, n * nd * sizeof(float));
      ol_bk->cyclic_rows(dst, nd, a, src, ns, b, len, n, beta);
      assert_true(same_bits(dst, ref, n * nd * sizeof(float)));
      src[(n - 1) * ns + b % ns] += 1.0f;  // a wrong input: read at p = 0 of the last row
      memcpy(dst, dst0, n * nd * sizeof(float));
      ol_bk->cyclic_rows(dst, nd, a, src, ns, b, len, n, beta);
      assert_false(same_bits(dst, ref, n * nd * sizeof(float)));
      ol_free(src);
      ol_free(dst0);
      ol_free(dst);
      ol_free(ref);
    }
}

/* ---- generation: attention against a KV cache, and the sampler ---------------------------- */

/* Forward error bound of one attention output row i (query head h), from its inputs: the score
 * s_j = scale q.k_j is a sum of hd products, |fl(s_j) - s_j| <= (hd + 1) u scale sum_d |q_d k_jd|
 * = ds_j; each probability exp(s_j - m) / sum then carries a relative error of at most
 * 2 max_j ds_j (its own score and the max) + 8 u (the vectorised exp, its sum of len terms in
 * double, the one division), and the output sum_j p_j v_j, a convex combination, adds len u of
 * its own sum: |out - exact| <= max_j |v_j| (2 (2 max_j ds_j + 8 u) + len u). Both kernels
 * compared against each other stay within twice that. */
static double attn_row_bound(const float *q, const float *k, const float *v, size_t i,
                             size_t h, size_t H, size_t Hkv, size_t hd) {
  const double u = 0x1p-24, scale = 1.0 / sqrt((double)hd);
  const size_t kh = h / (H / Hkv), len = i + 1;
  double ds = 0.0, vmax = 0.0;
  for (size_t j = 0; j < len; j++) {
    double a = 0.0;
    for (size_t d = 0; d < hd; d++) {
      a += fabs((double)q[(i * H + h) * hd + d] * k[(j * Hkv + kh) * hd + d]);
      vmax = fmax(vmax, fabs((double)v[(j * Hkv + kh) * hd + d]));
    }
    ds = fmax(ds, (double)(hd + 1) * u * scale * a);
  }
  return vmax * (2.0 * (2.0 * ds + 8.0 * u) + (double)len * u);
}

/* attention_cached's n rows at t0 .. t0+n-1 against attention_forward's rows of the whole
 * sequence (B = 1) and the double-precision loop; max over elements of |diff| / bound. */
static double attention_cached_case(size_t T, size_t n, size_t H, size_t Hkv, size_t hd,
                                    size_t t0_claimed, uint64_t seed) {
  ol_rng rng;
  ol_rng_seed(&rng, seed);
  const size_t nq = T * H * hd, nk = T * Hkv * hd, t0 = T - n;
  float *q = fvec(nq), *k = fvec(nk), *v = fvec(nk), *out = fvec(nq), *lse = fvec(H * T);
  float *scratch = fvec(ol_bk->attention_scratch_floats(T)), *cached = fvec(n * H * hd);
  double *ref = dvec(nq), *ref_lse = dvec(H * T);
  fill_normal(q, nq, &rng, 1.0f);
  fill_normal(k, nk, &rng, 1.0f);
  fill_normal(v, nk, &rng, 1.0f);
  ol_bk->attention_forward(out, lse, q, k, v, 1, T, H, Hkv, hd, scratch);
  attention_naive(ref, ref_lse, q, k, v, 1, T, H, Hkv, hd);
  float *cache_scratch = fvec(T);
  fill_normal(cached, n * H * hd, &rng, 1.0f);  // garbage: the op must overwrite it
  // the cache holds positions 0 .. t0_claimed + n - 1 (the caller's claim of where the rows are)
  ol_bk->attention_cached(cached, q + t0 * H * hd, k, v, n, t0_claimed, H, Hkv, hd,
                          cache_scratch);
  double worst = 0.0;
  for (size_t i = 0; i < n; i++)
    for (size_t h = 0; h < H; h++) {
      const double bound = attn_row_bound(q, k, v, t0 + i, h, H, Hkv, hd);
      for (size_t d = 0; d < hd; d++) {
        const size_t at = ((t0 + i) * H + h) * hd + d;
        const double got = cached[(i * H + h) * hd + d];
        worst = fmax(worst, fabs(got - ref[at]) / bound);             // vs exact
        worst = fmax(worst, fabs(got - out[at]) / (2.0 * bound));     // vs attention_forward
      }
    }
  printf("  attention_cached T=%zu n=%zu H=%zu Hkv=%zu t0=%zu: max |err| / bound %.3f\n", T, n,
         H, Hkv, t0_claimed, worst);
  ol_free(q), ol_free(k), ol_free(v), ol_free(out), ol_free(lse), ol_free(scratch);
  ol_free(cached), ol_free(ref), ol_free(ref_lse), ol_free(cache_scratch);
  return worst;
}

static void test_attention_cached(void **state) {
  (void)state;
  assert_true(attention_cached_case(9, 1, 2, 2, 4, 8, 301) <= 1.0);     // MHA, one decode step
  assert_true(attention_cached_case(37, 1, 4, 2, 8, 36, 302) <= 1.0);   // GQA
  assert_true(attention_cached_case(150, 3, 3, 1, 16, 147, 303) <= 1.0);// MQA, 3 new rows
  assert_true(attention_cached_case(5, 5, 4, 2, 8, 0, 304) <= 1.0);     // a whole prefill
  // a wrong position (the cache believed one shorter: the last key is missed) is caught
  assert_true(attention_cached_case(37, 1, 4, 2, 8, 35, 302) > 1.0);
}

/* The sampler at the boundaries of the cumulative distribution, which it must place exactly:
 * p_i = exp((l_i - max) / T) / total over the kept ids, in double as the op sums them. */
static void test_sample(void **state) {
  (void)state;
  const size_t V = 6;
  const float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.25f, -3.0f};
  float *scratch = fvec(V);
  // greedy: the argmax, the lowest id of a tie (ids 1 and 3); u is ignored
  assert_int_equal(ol_bk->sample(logits, V, 0.0f, 0, 0.999, scratch), 1);
  assert_int_equal(ol_bk->sample(logits, V, 0.0f, 3, 0.0, scratch), 1);
  const float temps[2] = {1.0f, 0.7f};
  const size_t ks[3] = {0, 3, 2};
  for (int a = 0; a < 2; a++)
    for (int b = 0; b < 3; b++) {
      const double T = temps[a];
      const size_t K = ks[b];
      float sorted[6];
      memcpy(sorted, logits, sizeof sorted);
      for (size_t i = 0; i < V; i++)  // descending, for the K-th largest
        for (size_t j = i + 1; j < V; j++)
          if (sorted[j] > sorted[i]) {
            float t = sorted[i];
            sorted[i] = sorted[j], sorted[j] = t;
          }
      const float thr = K ? sorted[K - 1] : -INFINITY;
      double w[6], total = 0.0;
      for (size_t i = 0; i < V; i++) {
        w[i] = logits[i] >= thr ? exp(((double)logits[i] - 2.0) / T) : 0.0;
        total += w[i];
      }
      double c = 0.0;
      size_t kept = 0;
      for (size_t i = 0; i < V; i++) {
        if (w[i] == 0.0) {  // never drawn, whatever u
          for (int s = 0; s < 64; s++)
            assert_int_not_equal(ol_bk->sample(logits, V, (float)T, K, s / 64.0, scratch),
                                 (int64_t)i);
          continue;
        }
        kept++;
        const double lo = c / total, hi = (c + w[i]) / total;  // id i owns u in [lo, hi)
        c += w[i];
        const double eps = 1e-12;  // far above the rounding of these short double sums
        assert_int_equal(ol_bk->sample(logits, V, (float)T, K, lo + eps, scratch), (int64_t)i);
        if (hi < 1.0 - eps)
          assert_int_equal(ol_bk->sample(logits, V, (float)T, K, hi - eps, scratch), (int64_t)i);
      }
      assert_int_equal(kept, K ? (K == 2 ? 2 : 3) : V);  // K = 3 keeps the tie's two and 1.25
    }
  // a wrong input is caught: without top-k the tail ids are drawn where top-2 forbids them
  assert_int_equal(ol_bk->sample(logits, V, 1.0f, 0, 0.999999, scratch), 5);
  assert_int_not_equal(ol_bk->sample(logits, V, 1.0f, 2, 0.999999, scratch), 5);
  ol_free(scratch);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemm_transposes), cmocka_unit_test(test_gemm_half),
      cmocka_unit_test(test_gemv_transposes),
      cmocka_unit_test(test_embedding),       cmocka_unit_test(test_rmsnorm),
      cmocka_unit_test(test_rope),            cmocka_unit_test(test_attention_mha),
      cmocka_unit_test(test_attention_gqa),   cmocka_unit_test(test_attention_peaked),
      cmocka_unit_test(test_attention_long),
      cmocka_unit_test(test_swiglu),          cmocka_unit_test(test_cross_entropy),
      cmocka_unit_test(test_softmax_exp_accuracy),
      cmocka_unit_test(test_onelora_linear),  cmocka_unit_test(test_vector_helpers),
      cmocka_unit_test(test_adamw),
      cmocka_unit_test(test_fill_narrow),     cmocka_unit_test(test_scale_rows_sqrt),
      cmocka_unit_test(test_row_sumsq),       cmocka_unit_test(test_diag_scale),
      cmocka_unit_test(test_diag_scale_backward),
      cmocka_unit_test(test_cyclic_rows),
      cmocka_unit_test(test_attention_cached), cmocka_unit_test(test_sample),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
