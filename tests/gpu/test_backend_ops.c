/* test_backend_ops [--backend cuda|cpu-staged] [--wrong OP] [--only OP]
 *
 * Every entry of the ol_backend table (include/onelora/backend/backend.h) runs on a candidate
 * backend and on the CPU reference (ol_backend_cpu()) with the same random inputs, and the
 * outputs are compared within a bound that an error model gives, never one read off a run.
 *
 * Inputs are made on the host. The reference runs on host copies; the candidate's buffers come
 * from its own alloc, are filled with to_device and read back with to_host (they need not be host
 * memory, so they are never dereferenced here). ol_backend_set() names whichever backend is
 * running, in case an op consults ol_bk.
 *
 * The error model. u = 2^-24 is f32's unit roundoff and gamma(n) = n u / (1 - n u). A sum of n
 * terms t_i (products included) computed in f32 in any order is within gamma(n) sum |t_i| of the
 * exact sum (Higham, Accuracy and Stability of Numerical Algorithms, 3.1); the candidate and the
 * reference are each that close to it, so they differ by at most 2 gamma(n) sum |t_i|. The same
 * with u = 2^-53 for sums the contract keeps in double. An elementwise formula of k roundings
 * differs by at most 2 k u times the sum of the magnitudes of its terms (a fused multiply-add on
 * the GPU only removes roundings). exp: cpu.c's Cephes polynomial is within 1.4 ulp, CUDA's expf
 * and a port of the polynomial within 2 ulp = 4u, so two exps differ by 8u relative (E_EXP).
 * Ops the contract defines exactly (fill, narrow, widen, scale, scale_rows, scale_cols,
 * diag_scale, counter_normal, sqrt_inplace, the maxima of vp_ce_local, embedding_forward,
 * sample at temperature 0, cyclic_rows without collisions) must match bit for bit (two NaNs of
 * an f32 output count as equal: no contract fixes a NaN's payload). Each check's model is the
 * comment above it.
 *
 * --wrong OP adds 0.5 + |x| to the first element of the first f32 input of every case of OP,
 * for the candidate only: the comparison must then fail (ctest WILL_FAIL proves it can).
 * --only OP runs the cases of one op.
 *
 * Exit: 0 all passed, 1 a mismatch, 2 bad usage, 77 no candidate here (no CUDA build or no GPU
 * for --backend cuda; no test hooks for cpu-staged). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

#define U_F32 (1.0 / 16777216.0)         /* 2^-24 */
#define U_F64 (1.0 / 9007199254740992.0) /* 2^-53 */
#define U_BF16 (1.0 / 256.0)             /* 2^-8: bf16 keeps 8 significant bits */
#define U_F16 (1.0 / 2048.0)             /* 2^-11: f16 keeps 11 */
#define E_EXP (8.0 * U_F32)              /* two f32 exps, each within 2 ulp = 4u */

static double gam(double n) { return n * U_F32 / (1.0 - n * U_F32); }
static double gam64(double n) { return n * U_F64 / (1.0 - n * U_F64); }

/* ---------------------------------------------------------------------------------------------
 * state, cases and reports */

static const ol_backend *cand, *ref;
static const char *wrong_op, *only_op;
static int perturb_pending, perturbed, cases_run, cases_failed;
static ol_rng rng;

/* the case being checked: one op on one shape, one output line */
static struct {
  int open, failed, tolerance;
  char op[40], shape[160];
  double max_err, bound_at;  // the largest error of any output, and the bound at that element
  char why[480];             // the first failing output's worst element
} cs;

static int want(const char *op) { return !only_op || strcmp(only_op, op) == 0; }

static void end_case(void) {
  if (!cs.open) return;
  printf("%-4s %-20s %-56s max_err %-9.3g %s %.3g\n", cs.failed ? "FAIL" : "ok", cs.op,
         cs.shape, cs.max_err, cs.tolerance ? "bound" : "exact", cs.bound_at);
  if (cs.failed) printf("       %s\n", cs.why);
  cases_run++;
  if (cs.failed) cases_failed++;
  cs.open = 0;
}

__attribute__((format(printf, 2, 3))) static void begin(const char *op, const char *fmt, ...) {
  end_case();
  memset(&cs, 0, sizeof cs);
  cs.open = 1;
  snprintf(cs.op, sizeof cs.op, "%s", op);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cs.shape, sizeof cs.shape, fmt, ap);
  va_end(ap);
  perturb_pending = wrong_op && strcmp(wrong_op, op) == 0;
}

static void note(double err, double bound) {
  if (err >= cs.max_err) cs.max_err = err, cs.bound_at = bound;
}

__attribute__((format(printf, 1, 2))) static void fail(const char *fmt, ...) {
  if (cs.failed) return;  // the first failing output is the one reported
  cs.failed = 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cs.why, sizeof cs.why, fmt, ap);
  va_end(ap);
}

/* got(n) against want(n) (f32 when !is_f64, else double), |got - want| <= bound[i] for every i;
 * a NaN or infinity in want must be matched by the same in got, and a NaN in got alone fails */
static void check_tol_any(const char *out, const void *got, const void *want_, const double *bound,
                          size_t n, int is_f64) {
  cs.tolerance = 1;
  size_t bad = 0, worst = 0;
  double worst_ratio = -1.0, max_err = 0.0, bound_at = n ? bound[0] : 0.0;
  for (size_t i = 0; i < n; i++) {
    const double g = is_f64 ? ((const double *)got)[i] : ((const float *)got)[i];
    const double w = is_f64 ? ((const double *)want_)[i] : ((const float *)want_)[i];
    double e;
    if (isnan(w)) e = isnan(g) ? 0.0 : INFINITY;
    else if (isinf(w)) e = g == w ? 0.0 : INFINITY;
    else e = isnan(g) ? INFINITY : fabs(g - w);
    if (e > max_err) max_err = e, bound_at = bound[i];
    if (!(e <= bound[i])) {
      const double r = bound[i] > 0.0 ? e / bound[i] : INFINITY;
      if (!bad || r > worst_ratio) worst_ratio = r, worst = i;
      bad++;
    }
  }
  if (max_err == 0.0) {  // all equal: the line shows the tightest nonzero bound instead
    bound_at = 0.0;
    for (size_t i = 0; i < n; i++)
      if (bound[i] > 0.0 && (bound_at == 0.0 || bound[i] < bound_at)) bound_at = bound[i];
  }
  note(max_err, bound_at);
  if (bad) {
    const double g = is_f64 ? ((const double *)got)[worst] : ((const float *)got)[worst];
    const double w = is_f64 ? ((const double *)want_)[worst] : ((const float *)want_)[worst];
    fail("%s: %zu of %zu elements out of bound; worst [%zu] got %.9g want %.9g err %.3g "
         "bound %.3g", out, bad, n, worst, g, w, fabs(g - w), bound[worst]);
  }
}
static void check_tol(const char *out, const float *got, const float *want_, const double *bound,
                      size_t n) {
  check_tol_any(out, got, want_, bound, n, 0);
}
static void check_tol64(const char *out, const double *got, const double *want_,
                        const double *bound, size_t n) {
  check_tol_any(out, got, want_, bound, n, 1);
}
static void check_scalar(const char *out, double got, double want_, double bound) {
  check_tol_any(out, &got, &want_, &bound, 1, 1);
}

/* bit for bit: n elements of `elem` bytes; f32 (is_f32) NaNs count as equal */
static void check_exact(const char *out, const void *got, const void *want_, size_t n, size_t elem,
                        int is_f32) {
  size_t bad = 0, first = 0;
  double max_err = 0.0;
  for (size_t i = 0; i < n; i++) {
    const char *g = (const char *)got + i * elem, *w = (const char *)want_ + i * elem;
    if (memcmp(g, w, elem) == 0) continue;
    if (is_f32) {
      float gf, wf;
      memcpy(&gf, g, 4);
      memcpy(&wf, w, 4);
      if (isnan(gf) && isnan(wf)) continue;
      const double e = isnan(gf) || isnan(wf) ? INFINITY : fabs((double)gf - (double)wf);
      if (e > max_err) max_err = e;
    } else {
      max_err = INFINITY;  // integers and 2-byte floats: any difference is a wrong value
    }
    if (!bad) first = i;
    bad++;
  }
  note(bad ? (max_err > 0.0 ? max_err : INFINITY) : 0.0, 0.0);
  if (bad) {
    unsigned long long gb = 0, wb = 0;
    memcpy(&gb, (const char *)got + first * elem, elem < 8 ? elem : 8);
    memcpy(&wb, (const char *)want_ + first * elem, elem < 8 ? elem : 8);
    fail("%s: %zu of %zu elements differ; first [%zu] got bits 0x%llx want 0x%llx", out, bad, n,
         first, gb, wb);
  }
}
static void check_exact_f(const char *out, const float *got, const float *want_, size_t n) {
  check_exact(out, got, want_, n, 4, 1);
}

__attribute__((format(printf, 3, 4))) static void check_true(const char *out, int ok,
                                                             const char *fmt, ...) {
  note(ok ? 0.0 : INFINITY, 0.0);
  if (ok) return;
  char msg[300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fail("%s: %s", out, msg);
}

/* ---------------------------------------------------------------------------------------------
 * host buffers, candidate buffers, random inputs */

static size_t nz(size_t n) { return n ? n : 1; }
static float *hf(size_t n) { return ol_calloc(nz(n), sizeof(float)); }
static double *hdbl(size_t n) { return ol_calloc(nz(n), sizeof(double)); }
static void *hcopy(const void *src, size_t bytes) {
  void *p = ol_calloc(nz(bytes), 1);
  if (bytes) memcpy(p, src, bytes);
  return p;
}
static float *hcopyf(const float *src, size_t n) { return hcopy(src, n * sizeof(float)); }

static void use_ref(void) { ol_backend_set(ref); }
static void use_cand(void) { ol_backend_set(cand); }

/* a candidate buffer holding host bytes h (never perturbed: indices, 2-byte data, doubles) */
static void *dput(const void *h, size_t bytes) {
  void *d = cand->alloc(nz(bytes));
  if (bytes) cand->to_device(d, h, bytes);
  return d;
}
/* a candidate buffer holding the f32 values h(n); under --wrong, the first one of the case is
 * perturbed in its element 0 */
static float *dputf(const float *h, size_t n) {
  if (perturb_pending && n > 0) {
    float *t = hcopyf(h, n);
    t[0] += 0.5f + fabsf(t[0]);
    float *d = dput(t, n * sizeof(float));
    ol_free(t);
    perturb_pending = 0;
    perturbed++;
    return d;
  }
  return dput(h, n * sizeof(float));
}
static float *dnewf(size_t n) { return cand->alloc(nz(n) * sizeof(float)); }
/* a host copy of a candidate buffer */
static void *dget(const void *d, size_t bytes) {
  void *h = ol_calloc(nz(bytes), 1);
  if (bytes) cand->to_host(h, d, bytes);
  return h;
}
static float *dgetf(const float *d, size_t n) { return dget(d, n * sizeof(float)); }
static void dfree(void *d) { cand->free(d); }

static float ur(float lo, float hi) { return lo + (hi - lo) * ol_rng_uniform(&rng); }
static float *hrand(size_t n, float lo, float hi) {
  float *x = hf(n);
  for (size_t i = 0; i < n; i++) x[i] = ur(lo, hi);
  return x;
}
static size_t ri(size_t n) { return (size_t)(ol_rng_u64(&rng) % n); }
static float *habs(const float *x, size_t n) {
  float *a = hf(n);
  for (size_t i = 0; i < n; i++) a[i] = fabsf(x[i]);
  return a;
}
static float widen1(uint16_t h, int bf16) { return bf16 ? ol_bf16_to_f32(h) : ol_f16_to_f32(h); }
static uint16_t narrow1(float f, int bf16) { return bf16 ? ol_f32_to_bf16(f) : ol_f32_to_f16(f); }

/* ---------------------------------------------------------------------------------------------
 * memory: alloc, free, to_device, to_host, copy, sync, host_alloc, host_free, queue,
 * peak_bytes, total_bytes */

static void test_memory(void) {
  if (!want("memory")) return;
  const size_t n = 1003;
  begin("memory", "alloc to_device copy to_host host_alloc n=%zu", n);
  float *d1 = dnewf(n), *d2 = dnewf(n);
  float *zero = hf(n), *x = hrand(n, -1.0f, 1.0f);
  // alloc zeroes; a round trip and a device copy move bytes unchanged (exact)
  float *g0 = dgetf(d1, n);
  check_exact_f("alloc zeroed", g0, zero, n);
  cand->to_device(d1, x, n * sizeof(float));
  cand->copy(d2, d1, n * sizeof(float));
  cand->sync();
  float *g1 = dgetf(d2, n);
  check_exact_f("to_device/copy/to_host", g1, x, n);
  // pinned staging memory is host memory, zeroed, and a valid source and destination
  float *pin = cand->host_alloc(n * sizeof(float));
  check_exact_f("host_alloc zeroed", pin, zero, n);
  memcpy(pin, x, n * sizeof(float));
  cand->to_device(d1, pin, (n / 2) * sizeof(float));
  memset(pin, 0, n * sizeof(float));
  cand->to_host(pin, d1, n * sizeof(float));
  check_exact_f("host_alloc staging", pin, x, n);
  cand->host_free(pin);
  (void)cand->queue();
  const size_t total = cand->total_bytes(), peak = cand->peak_bytes();
  check_true("peak_bytes", total == 0 || (peak >= 2 * n * sizeof(float) && peak <= total),
             "peak %zu total %zu", peak, total);
  cand->free(NULL);
  dfree(d1), dfree(d2);
  ol_free(zero), ol_free(x), ol_free(g0), ol_free(g1);
}

/* ---------------------------------------------------------------------------------------------
 * gemm, gemm_half, widen, gemv */

/* C(M, N) = alpha op(A) op(B) + beta C0. Model: C_ij is a sum of K products and the beta term,
 * with the alpha scaling: each backend is within gamma(K + 2) (|alpha| sum_k |a_ik b_kj| +
 * |beta c_ij|) of the exact value, so bound 2 gamma(K + 2) (...). sum_k |a_ik b_kj| is the
 * reference gemm of |A| and |B| in f32, itself within gamma(K) of exact: the factor 1 + 2
 * gamma(K) covers that. The columns past N of each row of C (ldc > N) stay untouched: bound 0. */
static void gemm_case(int ta, int tb, size_t M, size_t N, size_t K, float alpha, float beta,
                      size_t pad) {
  const size_t ar = ta ? K : M, ac = ta ? M : K;  // A stored (ar, ac)
  const size_t br = tb ? N : K, bc = tb ? K : N;  // B stored (br, bc)
  const size_t lda = ac + pad, ldb = bc + pad, ldc = N + pad;
  begin("gemm", "ta=%d tb=%d M=%zu N=%zu K=%zu lda=%zu ldb=%zu ldc=%zu beta=%g", ta, tb, M, N, K,
        lda, ldb, ldc, beta);
  const size_t na = ar * lda, nb = br * ldb, nc = M * ldc;
  float *A = hrand(na, -1.0f, 1.0f), *B = hrand(nb, -1.0f, 1.0f), *C = hrand(nc, -1.0f, 1.0f);
  float *dA = dputf(A, na), *dB = dputf(B, nb), *dC = dputf(C, nc);
  float *absA = habs(A, na), *absB = habs(B, nb), *S = hf(M * N);
  use_ref();
  ref->gemm(ta, tb, M, N, K, 1.0f, absA, lda, absB, ldb, 0.0f, S, N);
  double *bound = hdbl(nc);
  for (size_t i = 0; i < M; i++)
    for (size_t j = 0; j < N; j++)
      bound[i * ldc + j] = 2.0 * gam((double)K + 2.0) *
                           (fabs(alpha) * S[i * N + j] * (1.0 + 2.0 * gam((double)K)) +
                            fabs((double)beta * C[i * ldc + j]));
  float *Cref = hcopyf(C, nc);
  ref->gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cref, ldc);
  use_cand();
  cand->gemm(ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc);
  float *got = dgetf(dC, nc);
  check_tol("C", got, Cref, bound, nc);
  dfree(dA), dfree(dB), dfree(dC);
  ol_free(A), ol_free(B), ol_free(C), ol_free(absA), ol_free(absB), ol_free(S);
  ol_free(bound), ol_free(Cref), ol_free(got);
}

static void test_gemm(void) {
  if (!want("gemm")) return;
  static const size_t shapes[][3] = {{37, 29, 53}, {1, 40, 8}, {3, 1, 200}, {8, 200, 1}, {5, 7, 0}};
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++)
      for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        gemm_case(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], 0.75f, s % 2 ? -0.5f : 0.0f,
                  3);
  gemm_case(0, 1, 128, 512, 5120, 1.0f, 1.0f, 0);  // y += x W^T at LLaMA-13B width
  gemm_case(1, 0, 256, 1024, 512, 1.0f, 0.0f, 0);  // a weight gradient dy^T x
}

/* C(M, N) = alpha X(M, K) op(W) + beta C0, W 2-byte. Model: as gemm's for the f32 sum, plus the
 * candidate may round X to W's type first (the GPU does, for the tensor cores): |x_h - x| <=
 * u_half |x| (+ 2^-25 below f16's normal range, half its subnormal spacing 2^-24), so the
 * products move by at most u_half sum_k |x_k w_k| (+ 2^-25 sum_k |w_k|), bounded here by twice
 * that: 2 u_half |alpha| sum |x w| (+ 2^-24 |alpha| sum |w| for f16). u_half: bf16 2^-8, f16
 * 2^-11. sum |x w| is the reference gemm of |X| and |widened W|, as gemm's. */
static void gemm_half_case(int trans_w, int bf16, size_t M, size_t N, size_t K, float alpha,
                           float beta, size_t pad) {
  const size_t ldx = K + pad, wr = trans_w ? N : K, wc = trans_w ? K : N, ldw = wc + pad,
               ldc = N + pad;
  begin("gemm_half", "trans_w=%d %s M=%zu N=%zu K=%zu ldx=%zu ldw=%zu ldc=%zu", trans_w,
        bf16 ? "bf16" : "f16", M, N, K, ldx, ldw, ldc);
  const size_t nx = M * ldx, nw = wr * ldw, nc = M * ldc;
  float *X = hrand(nx, -1.0f, 1.0f), *C = hrand(nc, -1.0f, 1.0f), *Wf = hf(nw);
  uint16_t *W = ol_calloc(nz(nw), sizeof(uint16_t));
  for (size_t i = 0; i < nw; i++) {
    W[i] = narrow1(ur(-0.25f, 0.25f), bf16);
    Wf[i] = widen1(W[i], bf16);
  }
  float *dX = dputf(X, nx), *dC = dputf(C, nc);
  uint16_t *dW = dput(W, nw * sizeof(uint16_t));
  float *absX = habs(X, nx), *absW = habs(Wf, nw), *S = hf(M * N);
  use_ref();
  ref->gemm(0, trans_w, M, N, K, 1.0f, absX, ldx, absW, ldw, 0.0f, S, N);
  double *wsum = hdbl(N);  // sum_k |w_kj| of column j of op(W)
  for (size_t r = 0; r < wr; r++)
    for (size_t c = 0; c < wc; c++) wsum[trans_w ? r : c] += fabs((double)Wf[r * ldw + c]);
  const double uh = bf16 ? U_BF16 : U_F16;
  double *bound = hdbl(nc);
  for (size_t i = 0; i < M; i++)
    for (size_t j = 0; j < N; j++) {
      const double sxw = S[i * N + j] * (1.0 + 2.0 * gam((double)K));
      bound[i * ldc + j] =
          2.0 * gam((double)K + 2.0) * (fabs(alpha) * sxw + fabs((double)beta * C[i * ldc + j])) +
          fabs(alpha) * (2.0 * uh * sxw + (bf16 ? 0.0 : ldexp(wsum[j], -24)));
    }
  float *Cref = hcopyf(C, nc);
  float *rs = hf(ref->gemm_half_scratch_floats(N, K));
  ref->gemm_half(trans_w, M, N, K, alpha, X, ldx, W, ldw, bf16, beta, Cref, ldc, rs);
  use_cand();
  float *cs_scratch = dnewf(cand->gemm_half_scratch_floats(N, K));
  cand->gemm_half(trans_w, M, N, K, alpha, dX, ldx, dW, ldw, bf16, beta, dC, ldc, cs_scratch);
  float *got = dgetf(dC, nc);
  check_tol("C", got, Cref, bound, nc);
  dfree(dX), dfree(dC), dfree(dW), dfree(cs_scratch);
  ol_free(X), ol_free(C), ol_free(Wf), ol_free(W), ol_free(absX), ol_free(absW), ol_free(S);
  ol_free(wsum), ol_free(bound), ol_free(Cref), ol_free(rs), ol_free(got);
}

static void test_gemm_half(void) {
  if (!want("gemm_half")) return;
  for (int tw = 0; tw < 2; tw++)
    for (int bf = 0; bf < 2; bf++) {
      gemm_half_case(tw, bf, 37, 29, 53, 1.25f, 0.5f, 3);
      gemm_half_case(tw, bf, 1, 40, 8, 1.0f, 0.0f, 1);
      gemm_half_case(tw, bf, 3, 1, 200, -1.0f, 1.0f, 2);
    }
  gemm_half_case(1, 1, 64, 1024, 5120, 1.0f, 0.0f, 0);  // y = x W^T, W a bf16 13B projection
  gemm_half_case(0, 0, 64, 5120, 1024, 1.0f, 1.0f, 0);  // dx += dy W, f16
}

/* dst = src widened: exact (every 2-byte value is an f32), compared as bits, on random 16-bit
 * patterns (NaNs with payloads, infinities, subnormals included) */
static void widen_case(size_t rows, size_t cols, size_t ld, int bf16) {
  begin("widen", "%s rows=%zu cols=%zu ld=%zu", bf16 ? "bf16" : "f16", rows, cols, ld);
  const size_t ns = rows * ld, nd = rows * cols;
  uint16_t *src = ol_calloc(nz(ns), sizeof(uint16_t));
  for (size_t i = 0; i < ns; i++) src[i] = (uint16_t)ol_rng_u64(&rng);
  float *dst = hrand(nd, -1.0f, 1.0f);
  uint16_t *dsrc = dput(src, ns * sizeof(uint16_t));
  float *ddst = dputf(dst, nd);
  use_ref();
  ref->widen(dst, src, rows, cols, ld, bf16);
  use_cand();
  cand->widen(ddst, dsrc, rows, cols, ld, bf16);
  float *got = dgetf(ddst, nd);
  check_exact("dst", got, dst, nd, 4, 0);
  dfree(dsrc), dfree(ddst);
  ol_free(src), ol_free(dst), ol_free(got);
}

static void test_widen(void) {
  if (!want("widen")) return;
  for (int bf = 0; bf < 2; bf++) {
    widen_case(37, 29, 33, bf);
    widen_case(1, 1, 1, bf);
  }
  widen_case(512, 5120, 5120, 1);
}

/* y(M) = alpha op(A) x + beta y0. Model: as gemm's, a sum of N products plus the beta term:
 * 2 gamma(N + 2) (|alpha| sum_j |a_ij x_j| + |beta y_i|). */
static void gemv_case(int trans, size_t M, size_t N, float alpha, float beta, size_t pad) {
  const size_t ar = trans ? N : M, ac = trans ? M : N, lda = ac + pad;
  begin("gemv", "trans=%d M=%zu N=%zu lda=%zu beta=%g", trans, M, N, lda, beta);
  const size_t na = ar * lda;
  float *A = hrand(na, -1.0f, 1.0f), *x = hrand(N, -1.0f, 1.0f), *y = hrand(M, -1.0f, 1.0f);
  float *dA = dputf(A, na), *dx = dputf(x, N), *dy = dputf(y, M);
  double *bound = hdbl(M);
  for (size_t i = 0; i < M; i++) {
    double s = 0.0;
    for (size_t j = 0; j < N; j++)
      s += fabs((double)(trans ? A[j * lda + i] : A[i * lda + j]) * x[j]);
    bound[i] = 2.0 * gam((double)N + 2.0) * (fabs(alpha) * s + fabs((double)beta * y[i]));
  }
  float *yref = hcopyf(y, M);
  use_ref();
  ref->gemv(trans, M, N, alpha, A, lda, x, beta, yref);
  use_cand();
  cand->gemv(trans, M, N, alpha, dA, lda, dx, beta, dy);
  float *got = dgetf(dy, M);
  check_tol("y", got, yref, bound, M);
  dfree(dA), dfree(dx), dfree(dy);
  ol_free(A), ol_free(x), ol_free(y), ol_free(bound), ol_free(yref), ol_free(got);
}

static void test_gemv(void) {
  if (!want("gemv")) return;
  for (int t = 0; t < 2; t++) {
    gemv_case(t, 37, 53, 0.5f, 0.0f, 3);
    gemv_case(t, 1, 1, 2.0f, 1.5f, 1);
    gemv_case(t, 53, 37, -1.0f, 1.0f, 2);
    gemv_case(t, 1000, 3000, 1.0f, 0.0f, 0);
  }
}

/* ---------------------------------------------------------------------------------------------
 * embedding */

/* tokens(N) drawn from [lo, hi) */
static int32_t *htokens(size_t N, size_t lo, size_t hi) {
  int32_t *t = ol_calloc(nz(N), sizeof(int32_t));
  for (size_t n = 0; n < N; n++) t[n] = (int32_t)(lo + ri(hi - lo));
  return t;
}

/* out = rows of the table shard, zero rows outside it: copies (or exact widenings), so exact.
 * out starts as garbage, so the zero rows must be written. kind: 0 f32, 1 f16, 2 bf16. */
static void embedding_forward_case(size_t N, size_t D, int64_t v0, size_t V, size_t vocab,
                                   int kind) {
  static const char *kinds[] = {"f32", "f16", "bf16"};
  begin("embedding_forward", "%s N=%zu D=%zu v0=%lld V=%zu vocab=%zu", kinds[kind], N, D,
        (long long)v0, V, vocab);
  int32_t *tok = htokens(N, 0, vocab);
  float *table = NULL, *dtable = NULL;
  uint16_t *table16 = NULL, *dtable16 = NULL;
  if (kind == 0) {
    table = hrand(V * D, -1.0f, 1.0f);
    dtable = dputf(table, V * D);
  } else {
    table16 = ol_calloc(nz(V * D), sizeof(uint16_t));
    for (size_t i = 0; i < V * D; i++) table16[i] = narrow1(ur(-1.0f, 1.0f), kind == 2);
    dtable16 = dput(table16, V * D * sizeof(uint16_t));
  }
  float *out = hrand(N * D, 5.0f, 6.0f);
  float *dout = dputf(out, N * D);
  int32_t *dtok = dput(tok, N * sizeof(int32_t));
  use_ref();
  ref->embedding_forward(out, tok, table, table16, kind == 2, N, D, v0, V);
  use_cand();
  cand->embedding_forward(dout, dtok, dtable, dtable16, kind == 2, N, D, v0, V);
  float *got = dgetf(dout, N * D);
  check_exact_f("out", got, out, N * D);
  dfree(dtable), dfree(dtable16), dfree(dout), dfree(dtok);
  ol_free(tok), ol_free(table), ol_free(table16), ol_free(out), ol_free(got);
}

/* dtable += scatter of dout by tokens. Model: element (t, c) is dtable0 plus the m rows of dout
 * whose token maps to t, summed in some order (the CPU in token order, a GPU perhaps not):
 * 2 gamma(m) (|dtable0_tc| + sum |dout_nc|). */
static void embedding_backward_case(size_t N, size_t D, int64_t v0, size_t V, size_t lo,
                                    size_t hi) {
  begin("embedding_backward", "N=%zu D=%zu v0=%lld V=%zu tokens in [%zu,%zu)", N, D,
        (long long)v0, V, lo, hi);
  int32_t *tok = htokens(N, lo, hi);
  float *dout = hrand(N * D, -1.0f, 1.0f), *dt = hrand(V * D, -1.0f, 1.0f);
  float *ddout = dputf(dout, N * D), *ddt = dputf(dt, V * D);
  int32_t *dtok = dput(tok, N * sizeof(int32_t));
  double *bound = hdbl(V * D);
  size_t *count = ol_calloc(nz(V), sizeof(size_t));
  for (size_t i = 0; i < V * D; i++) bound[i] = fabs((double)dt[i]);
  for (size_t n = 0; n < N; n++) {
    const int64_t t = (int64_t)tok[n] - v0;
    if (t < 0 || t >= (int64_t)V) continue;
    count[t]++;
    for (size_t c = 0; c < D; c++) bound[(size_t)t * D + c] += fabs((double)dout[n * D + c]);
  }
  for (size_t t = 0; t < V; t++)
    for (size_t c = 0; c < D; c++) bound[t * D + c] *= 2.0 * gam((double)count[t]);
  use_ref();
  ref->embedding_backward(dt, tok, dout, N, D, v0, V);
  use_cand();
  cand->embedding_backward(ddt, dtok, ddout, N, D, v0, V);
  float *got = dgetf(ddt, V * D);
  check_tol("dtable", got, dt, bound, V * D);
  dfree(ddout), dfree(ddt), dfree(dtok);
  ol_free(tok), ol_free(dout), ol_free(dt), ol_free(bound), ol_free(count), ol_free(got);
}

static void test_embedding(void) {
  if (want("embedding_forward"))
    for (int kind = 0; kind < 3; kind++) {
      embedding_forward_case(37, 40, 300, 500, 1000, kind);
      embedding_forward_case(1, 8, 0, 1000, 1000, kind);
      embedding_forward_case(3, 200, 700, 300, 1000, kind);
      embedding_forward_case(512, 5120, 1000, 1000, 3000, kind);
    }
  if (want("embedding_backward")) {
    embedding_backward_case(37, 40, 300, 500, 250, 350);
    embedding_backward_case(1, 8, 0, 1000, 0, 1000);
    embedding_backward_case(3, 200, 700, 300, 0, 1000);
    embedding_backward_case(200, 40, 0, 10, 0, 10);  // every row of the table hit ~20 times
    embedding_backward_case(512, 5120, 1000, 1000, 0, 3000);
  }
}

/* ---------------------------------------------------------------------------------------------
 * RMSNorm */

/* out = x r w, rstd = r = 1 / sqrt(sum x^2 / D + eps). Model: sum x^2 (D nonnegative terms) is
 * within gamma(D) relative on each side; /D, + eps, the square root (or a 2 ulp rsqrt) and the
 * reciprocal add at most 7u, and the square root halves the sum's error: r is within
 * gamma(D) / 2 + 7u relative on each side, so bound (gamma(D) + 14u) r. out has two more
 * roundings per side: (gamma(D) + 18u) |x| r |w|. */
static void rmsnorm_forward_case(size_t N, size_t D, float eps) {
  begin("rmsnorm_forward", "N=%zu D=%zu eps=%g", N, D, eps);
  float *x = hrand(N * D, -2.0f, 2.0f), *w = hrand(D, 0.5f, 1.5f);
  float *out = hrand(N * D, 7.0f, 8.0f), *rstd = hrand(N, 7.0f, 8.0f);
  float *dx = dputf(x, N * D), *dw = dputf(w, D), *dout = dputf(out, N * D),
        *drstd = dputf(rstd, N);
  use_ref();
  ref->rmsnorm_forward(out, rstd, x, w, N, D, eps);
  double *bo = hdbl(N * D), *br = hdbl(N);
  for (size_t n = 0; n < N; n++) {
    double ss = 0.0;
    for (size_t i = 0; i < D; i++) ss += (double)x[n * D + i] * x[n * D + i];
    const double r = 1.0 / sqrt(ss / (double)D + (double)eps);
    br[n] = (gam((double)D) + 14.0 * U_F32) * r;
    for (size_t i = 0; i < D; i++)
      bo[n * D + i] = (gam((double)D) + 18.0 * U_F32) * fabs((double)x[n * D + i] * w[i]) * r;
  }
  use_cand();
  cand->rmsnorm_forward(dout, drstd, dx, dw, N, D, eps);
  float *go = dgetf(dout, N * D), *gr = dgetf(drstd, N);
  check_tol("out", go, out, bo, N * D);
  check_tol("rstd", gr, rstd, br, N);
  dfree(dx), dfree(dw), dfree(dout), dfree(drstd);
  ol_free(x), ol_free(w), ol_free(out), ol_free(rstd), ol_free(bo), ol_free(br), ol_free(go);
  ol_free(gr);
}

/* dx += r w dy - c x with c = r^3 dot / D, dot = sum_i dy_i w_i x_i; dw += sum_n dy x r.
 * Model (rstd r is an input, the same bits on both sides): dot is a sum of D products of three:
 * |d dot| <= 2 gamma(D + 1) sum |dy w x|; c adds 5 roundings per side: |dc| <= r^3 |d dot| / D +
 * 10u |c|; dx_i adds at most 4 roundings per side: 8u (|dx0| + |r w dy| + |c x|) + |x| |dc|. dw is
 * a sum of N products of three plus dw0: 2 gamma(N + 3) (|dw0| + sum_n |dy x r|). */
static void rmsnorm_backward_case(size_t N, size_t D, int with_dw) {
  begin("rmsnorm_backward", "N=%zu D=%zu dw=%s", N, D, with_dw ? "yes" : "NULL");
  float *dy = hrand(N * D, -1.0f, 1.0f), *x = hrand(N * D, -2.0f, 2.0f), *w = hrand(D, 0.5f, 1.5f);
  float *dx = hrand(N * D, -1.0f, 1.0f), *dw = hrand(D, -1.0f, 1.0f), *rstd = hf(N);
  float *scratch = hf(N * D);
  use_ref();
  ref->rmsnorm_forward(scratch, rstd, x, w, N, D, 1e-5f);
  float *ddy = dputf(dy, N * D), *ddx = dputf(dx, N * D), *dxx = dputf(x, N * D),
        *ddw = dputf(dw, D), *dww = dputf(w, D), *drstd = dputf(rstd, N);
  double *bx = hdbl(N * D), *bw = hdbl(D);
  for (size_t i = 0; i < D; i++) bw[i] = fabs((double)dw[i]);
  for (size_t n = 0; n < N; n++) {
    const float *xn = x + n * D, *dyn = dy + n * D;
    const double r = rstd[n];
    double dot = 0.0, adot = 0.0;
    for (size_t i = 0; i < D; i++) {
      dot += (double)dyn[i] * w[i] * xn[i];
      adot += fabs((double)dyn[i] * w[i] * xn[i]);
      bw[i] += fabs((double)dyn[i] * xn[i] * r);
    }
    const double c = r * r * r * dot / (double)D;
    const double dc =
        r * r * r * 2.0 * gam((double)D + 1.0) * adot / (double)D + 10.0 * U_F32 * fabs(c);
    for (size_t i = 0; i < D; i++)
      bx[n * D + i] = 8.0 * U_F32 * (fabs((double)dx[n * D + i]) + fabs(r * w[i] * dyn[i]) +
                                     fabs(c * xn[i])) + fabs((double)xn[i]) * dc;
  }
  for (size_t i = 0; i < D; i++) bw[i] *= 2.0 * gam((double)N + 3.0);
  ref->rmsnorm_backward(dx, with_dw ? dw : NULL, dy, x, w, rstd, N, D);
  use_cand();
  cand->rmsnorm_backward(ddx, with_dw ? ddw : NULL, ddy, dxx, dww, drstd, N, D);
  float *gx = dgetf(ddx, N * D), *gw = dgetf(ddw, D);
  check_tol("dx", gx, dx, bx, N * D);
  if (with_dw) check_tol("dw", gw, dw, bw, D);
  else check_exact_f("dw untouched", gw, dw, D);
  dfree(ddy), dfree(ddx), dfree(dxx), dfree(ddw), dfree(dww), dfree(drstd);
  ol_free(dy), ol_free(x), ol_free(w), ol_free(dx), ol_free(dw), ol_free(rstd), ol_free(scratch);
  ol_free(bx), ol_free(bw), ol_free(gx), ol_free(gw);
}

static void test_rmsnorm(void) {
  static const size_t Ns[] = {1, 3, 37}, Ds[] = {8, 40, 200};
  for (size_t a = 0; a < 3; a++)
    for (size_t b = 0; b < 3; b++) {
      if (want("rmsnorm_forward")) rmsnorm_forward_case(Ns[a], Ds[b], b == 1 ? 1e-6f : 1e-5f);
      if (want("rmsnorm_backward")) rmsnorm_backward_case(Ns[a], Ds[b], Ns[a] != 3);
    }
  if (want("rmsnorm_forward")) rmsnorm_forward_case(64, 5120, 1e-5f);
  if (want("rmsnorm_backward")) rmsnorm_backward_case(64, 5120, 1);
}

/* ---------------------------------------------------------------------------------------------
 * RoPE */

/* cos, sin of angle = t theta^(-2i/hd), computed in double and rounded to f32 (the contract is
 * the CPU's double formula). Model: pow and cos/sin in double are within 2 ulp on either
 * library, and the angle is at most T, so the doubles differ by eps <= 8 T 2^-52 + 2^-50; two
 * roundings to f32 of values eps apart differ by at most 2u |v| + 2 eps. An f32 angle would
 * miss by T 2^-24 and fail at large T, as it should. */
static void rope_table_case(size_t T, size_t hd, double theta) {
  begin("rope_table", "T=%zu hd=%zu theta=%g", T, hd, theta);
  const size_t n = T * (hd / 2);
  float *c = hrand(n, 3.0f, 4.0f), *s = hrand(n, 3.0f, 4.0f);
  float *dc = dputf(c, n), *ds = dputf(s, n);
  use_ref();
  ref->rope_table(c, s, T, hd, theta);
  use_cand();
  cand->rope_table(dc, ds, T, hd, theta);
  float *gc = dgetf(dc, n), *gs = dgetf(ds, n);
  const double eps = 8.0 * (double)T * ldexp(1.0, -52) + ldexp(1.0, -50);
  double *bc = hdbl(n), *bs = hdbl(n);
  for (size_t i = 0; i < n; i++) {
    bc[i] = 2.0 * U_F32 * fabs((double)c[i]) + 2.0 * eps;
    bs[i] = 2.0 * U_F32 * fabs((double)s[i]) + 2.0 * eps;
  }
  check_tol("cos", gc, c, bc, n);
  check_tol("sin", gs, s, bs, n);
  dfree(dc), dfree(ds);
  ol_free(c), ol_free(s), ol_free(gc), ol_free(gs), ol_free(bc), ol_free(bs);
}

/* x1' = x1 c - x2 s, x2' = x2 c + x1 s (s negated when inverse). Model: two products and a sum
 * per side, gamma(2) each: 4u (|x1 c| + |x2 s|) and 4u (|x2 c| + |x1 s|). */
static void rope_apply_case(size_t B, size_t T, size_t nh, size_t hd, int inverse) {
  begin("rope_apply", "B=%zu T=%zu nh=%zu hd=%zu inverse=%d", B, T, nh, hd, inverse);
  const size_t half = hd / 2, n = B * T * nh * hd;
  float *c = hf(T * half), *s = hf(T * half), *x = hrand(n, -2.0f, 2.0f);
  use_ref();
  ref->rope_table(c, s, T, hd, 10000.0);
  float *dx = dputf(x, n), *dc = dputf(c, T * half), *ds = dputf(s, T * half);
  double *bound = hdbl(n);
  for (size_t r = 0; r < B * T; r++)
    for (size_t h = 0; h < nh; h++)
      for (size_t i = 0; i < half; i++) {
        const size_t t = r % T, o = (r * nh + h) * hd + i;
        const double a = fabs((double)x[o]), b = fabs((double)x[o + half]);
        const double ci = fabs((double)c[t * half + i]), si = fabs((double)s[t * half + i]);
        bound[o] = 4.0 * U_F32 * (a * ci + b * si);
        bound[o + half] = 4.0 * U_F32 * (b * ci + a * si);
      }
  ref->rope_apply(x, c, s, B, T, nh, hd, inverse);
  use_cand();
  cand->rope_apply(dx, dc, ds, B, T, nh, hd, inverse);
  float *got = dgetf(dx, n);
  check_tol("x", got, x, bound, n);
  dfree(dx), dfree(dc), dfree(ds);
  ol_free(c), ol_free(s), ol_free(x), ol_free(bound), ol_free(got);
}

static void test_rope(void) {
  if (want("rope_table")) {
    rope_table_case(17, 8, 10000.0);
    rope_table_case(1, 16, 10000.0);
    rope_table_case(64, 128, 10000.0);
    rope_table_case(4096, 128, 500000.0);
  }
  if (want("rope_apply")) {
    static const size_t Ts[] = {1, 17}, hds[] = {8, 16, 128};
    for (size_t a = 0; a < 2; a++)
      for (size_t b = 0; b < 3; b++)
        for (int inv = 0; inv < 2; inv++) rope_apply_case(2, Ts[a], 4, hds[b], inv);
    rope_apply_case(1, 512, 40, 128, 0);
  }
}

/* ---------------------------------------------------------------------------------------------
 * attention: the error models, in double on the host */

/* sum_d a_d b_d, and sum_d |a_d b_d| in *abs_sum */
static double dot_abs(const float *a, const float *b, size_t n, double *abs_sum) {
  double s = 0.0, t = 0.0;
  for (size_t d = 0; d < n; d++) {
    const double p = (double)a[d] * b[d];
    s += p;
    t += fabs(p);
  }
  *abs_sum = t;
  return s;
}

/* The forward model of one query row q_i against keys k_j and values v_j, j < len (row j at
 * kb + j ldk, vb + j ldk). With x_j = s_j scale (s_j = q.k_j), m = max x, L = m + log sum
 * exp(x - m) and p_j = exp(x_j - L), all exact here:
 *  - each side computes s_j in f32 within gamma(hd) sum |q k|, so the exponents differ by
 *    delta_j = scale 2 gamma(hd) sum |q k_j| + 4u (|x_j| + |m|) (the scaling and the subtraction,
 *    in whatever form: exp2 with log2(e) folded in included);
 *  - the exps add E_EXP relative; the row sum, f32 or double, with the online softmax's
 *    rescalings, at most 4 gamma(len) relative: lse bound = max delta + E_EXP + 4 gamma(len) +
 *    4u (|L| + |m|) (the log's and the sum's roundings);
 *  - out_d = sum_j p_j v_jd: each p_j within (delta_j + E_EXP) and the normalisation within the
 *    lse bound, and the sum of len terms, rescalings included, within 8 gamma(len) relative: out
 *    bound = (2 max delta + 2 E_EXP + 8 gamma(len) + 8u) sum_j p_j |v_jd|.
 * Writes bout (hd), returns the lse bound; x, a: scratch (len). */
static double attn_row_bound(const float *qi, const float *kb, const float *vb, size_t ldk,
                             size_t len, size_t hd, double *bout, double *x, double *a) {
  const double scale = (double)(1.0f / sqrtf((float)hd));
  double m = -INFINITY;
  for (size_t j = 0; j < len; j++) {
    x[j] = dot_abs(qi, kb + j * ldk, hd, &a[j]) * scale;
    if (x[j] > m) m = x[j];
  }
  double S = 0.0, dmax = 0.0;
  for (size_t j = 0; j < len; j++) {
    S += exp(x[j] - m);
    const double d = scale * 2.0 * gam((double)hd) * a[j] + 4.0 * U_F32 * (fabs(x[j]) + fabs(m));
    if (d > dmax) dmax = d;
  }
  const double L = m + log(S);
  for (size_t d = 0; d < hd; d++) bout[d] = 0.0;
  for (size_t j = 0; j < len; j++) {
    const double p = exp(x[j] - L);
    for (size_t d = 0; d < hd; d++) bout[d] += p * fabs((double)vb[j * ldk + d]);
  }
  const double rel = 2.0 * dmax + 2.0 * E_EXP + 8.0 * gam((double)len) + 8.0 * U_F32;
  for (size_t d = 0; d < hd; d++) bout[d] *= rel;
  return dmax + E_EXP + 4.0 * gam((double)len) + 4.0 * U_F32 * (fabs(L) + fabs(m));
}

/* The backward model. lse is an input (the same bits on both sides), so with x_ij = s_ij scale:
 *  p_ij = exp(x_ij - lse_i), off by ep_ij = p_ij (delta_ij + E_EXP), delta_ij = scale 2 gamma(hd)
 *    sum |q k| + 4u (|x_ij| + |lse_i|);
 *  dp_ij = dout_i . v_j, off by edp_ij = 2 gamma(hd) b_ij, b_ij = sum_d |dout_id v_jd|;
 *  D_i = sum_j p_ij dp_ij (or dout_i . out_i with out recomputed, as a GPU may: its terms are
 *    bounded by b_ij too), off by eD_i = sum_j (ep_ij b_ij + p_ij edp_ij) + 2 gamma(T + hd + 2)
 *    sum_j p_ij b_ij;
 *  ds_ij = p_ij (dp_ij - D_i) scale, off by eds_ij = scale (ep_ij |dp_ij - D_i| + p_ij (edp_ij +
 *    eD_i) + 4u p_ij (|dp_ij| + |D_i|));
 *  dq_i = sum_j ds_ij k_j: sum_j eds_ij |k_j| + 2 gamma(T + 1) sum_j |ds_ij k_j|;
 *  dk_j = sum over the group's heads and i >= j of ds_ij q_i: sum eds |q| + 2 gamma(group T + 1)
 *    sum |ds q|; dv_j the same with p_ij dout_i and ep.
 * bdq (B,T,H,hd), bdk, bdv (B,T,Hkv,hd) are written. */
static void attn_bwd_bounds(const float *dout, const float *q, const float *k, const float *v,
                            const float *lse, size_t B, size_t T, size_t H, size_t Hkv, size_t hd,
                            double *bdq, double *bdk, double *bdv) {
  const size_t group = H / Hkv, ldq = H * hd, ldk = Hkv * hd, nk = B * T * ldk;
  const double scale = (double)(1.0f / sqrtf((float)hd));
  double *sdk = hdbl(nk), *sdv = hdbl(nk);  // the absolute sums of dk's and dv's terms
  double *P = hdbl(T * T), *EP = hdbl(T * T), *DP = hdbl(T * T), *EDP = hdbl(T * T);
  double *BB = hdbl(T * T);
  double *DS = hdbl(T * T), *EDS = hdbl(T * T), *e = hdbl(hd), *sa = hdbl(hd);
  for (size_t i = 0; i < nk; i++) bdk[i] = bdv[i] = 0.0;
  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      const size_t g = h / group;
      const float *qb = q + b * T * ldq + h * hd, *dob = dout + b * T * ldq + h * hd;
      const float *kb = k + b * T * ldk + g * hd, *vb = v + b * T * ldk + g * hd;
      const float *lb = lse + (b * H + h) * T;
      for (size_t i = 0; i < T; i++)
        for (size_t j = 0; j <= i; j++) {
          double a, bb;
          const double x = dot_abs(qb + i * ldq, kb + j * ldk, hd, &a) * scale;
          const double dp = dot_abs(dob + i * ldq, vb + j * ldk, hd, &bb);
          const double p = exp(x - (double)lb[i]);
          const double delta = scale * 2.0 * gam((double)hd) * a +
                               4.0 * U_F32 * (fabs(x) + fabs((double)lb[i]));
          P[i * T + j] = p;
          EP[i * T + j] = p * (delta + E_EXP);
          DP[i * T + j] = dp;
          EDP[i * T + j] = 2.0 * gam((double)hd) * bb;
          BB[i * T + j] = bb;
        }
      for (size_t i = 0; i < T; i++) {
        double D = 0.0, pb = 0.0, eD = 0.0;
        for (size_t j = 0; j <= i; j++) {
          const size_t o = i * T + j;
          D += P[o] * DP[o];
          pb += P[o] * BB[o];
          eD += EP[o] * BB[o] + P[o] * EDP[o];
        }
        eD += 2.0 * gam((double)(T + hd + 2)) * pb;
        for (size_t j = 0; j <= i; j++) {
          const size_t o = i * T + j;
          DS[o] = P[o] * (DP[o] - D) * scale;
          EDS[o] = scale * (EP[o] * fabs(DP[o] - D) + P[o] * (EDP[o] + eD) +
                            4.0 * U_F32 * P[o] * (fabs(DP[o]) + fabs(D)));
        }
        for (size_t d = 0; d < hd; d++) e[d] = sa[d] = 0.0;
        for (size_t j = 0; j <= i; j++)
          for (size_t d = 0; d < hd; d++) {
            const double kk = fabs((double)kb[j * ldk + d]);
            e[d] += EDS[i * T + j] * kk;
            sa[d] += fabs(DS[i * T + j]) * kk;
          }
        for (size_t d = 0; d < hd; d++)
          bdq[(b * T + i) * ldq + h * hd + d] = e[d] + 2.0 * gam((double)T + 1.0) * sa[d];
      }
      for (size_t j = 0; j < T; j++) {
        const size_t o = (b * T + j) * ldk + g * hd;
        for (size_t i = j; i < T; i++) {
          const size_t pi = i * T + j;
          for (size_t d = 0; d < hd; d++) {
            const double qq = fabs((double)qb[i * ldq + d]), oo = fabs((double)dob[i * ldq + d]);
            bdk[o + d] += EDS[pi] * qq;
            sdk[o + d] += fabs(DS[pi]) * qq;
            bdv[o + d] += EP[pi] * oo;
            sdv[o + d] += P[pi] * oo;
          }
        }
      }
    }
  const double gk = 2.0 * gam((double)(group * T) + 1.0);
  for (size_t i = 0; i < nk; i++) {
    bdk[i] += gk * sdk[i];
    bdv[i] += gk * sdv[i];
  }
  ol_free(sdk), ol_free(sdv), ol_free(P), ol_free(EP), ol_free(DP), ol_free(EDP), ol_free(BB);
  ol_free(DS), ol_free(EDS), ol_free(e), ol_free(sa);
}

static void attention_case(size_t B, size_t T, size_t H, size_t Hkv, size_t hd) {
  const size_t nq = B * T * H * hd, nk = B * T * Hkv * hd, nl = B * H * T;
  const size_t ldq = H * hd, ldk = Hkv * hd, group = H / Hkv;
  // q's spread makes the softmax rows range from flat to peaked (scaled scores about +-4)
  float *q = hrand(nq, -3.0f, 3.0f), *k = hrand(nk, -1.0f, 1.0f), *v = hrand(nk, -1.0f, 1.0f);
  float *out = hrand(nq, 9.0f, 10.0f), *lse = hrand(nl, 9.0f, 10.0f);
  float *rscratch = hf(ref->attention_scratch_floats(T));
  use_ref();
  if (want("attention_forward")) {
    begin("attention_forward", "B=%zu T=%zu H=%zu Hkv=%zu hd=%zu", B, T, H, Hkv, hd);
    float *dq = dputf(q, nq), *dk = dputf(k, nk), *dv = dputf(v, nk);
    float *dout = dputf(out, nq), *dlse = dputf(lse, nl);
    double *bo = hdbl(nq), *bl = hdbl(nl), *x = hdbl(T), *a = hdbl(T);
    for (size_t b = 0; b < B; b++)
      for (size_t h = 0; h < H; h++)
        for (size_t i = 0; i < T; i++) {
          const size_t g = h / group;
          bl[(b * H + h) * T + i] = attn_row_bound(
              q + (b * T + i) * ldq + h * hd, k + b * T * ldk + g * hd, v + b * T * ldk + g * hd,
              ldk, i + 1, hd, bo + (b * T + i) * ldq + h * hd, x, a);
        }
    use_cand();
    float *cscratch = dnewf(cand->attention_scratch_floats(T));
    cand->attention_forward(dout, dlse, dq, dk, dv, B, T, H, Hkv, hd, cscratch);
    use_ref();
    ref->attention_forward(out, lse, q, k, v, B, T, H, Hkv, hd, rscratch);
    float *go = dgetf(dout, nq), *gl = dgetf(dlse, nl);
    check_tol("out", go, out, bo, nq);
    check_tol("lse", gl, lse, bl, nl);
    dfree(dq), dfree(dk), dfree(dv), dfree(dout), dfree(dlse), dfree(cscratch);
    ol_free(bo), ol_free(bl), ol_free(x), ol_free(a), ol_free(go), ol_free(gl);
  } else {
    ref->attention_forward(out, lse, q, k, v, B, T, H, Hkv, hd, rscratch);
  }
  if (want("attention_backward")) {
    begin("attention_backward", "B=%zu T=%zu H=%zu Hkv=%zu hd=%zu", B, T, H, Hkv, hd);
    float *dO = hrand(nq, -1.0f, 1.0f);
    // dq, dk, dv start as garbage: they must be overwritten
    float *gq = hrand(nq, 5.0f, 6.0f), *gk = hrand(nk, 5.0f, 6.0f), *gv = hrand(nk, 5.0f, 6.0f);
    float *ddO = dputf(dO, nq), *dq = dputf(q, nq), *dk = dputf(k, nk), *dv = dputf(v, nk);
    float *dlse = dputf(lse, nl);
    float *dgq = dputf(gq, nq), *dgk = dputf(gk, nk), *dgv = dputf(gv, nk);
    double *bq = hdbl(nq), *bk = hdbl(nk), *bv = hdbl(nk);
    attn_bwd_bounds(dO, q, k, v, lse, B, T, H, Hkv, hd, bq, bk, bv);
    ref->attention_backward(gq, gk, gv, dO, q, k, v, lse, B, T, H, Hkv, hd, rscratch);
    use_cand();
    float *cscratch = dnewf(cand->attention_scratch_floats(T));
    cand->attention_backward(dgq, dgk, dgv, ddO, dq, dk, dv, dlse, B, T, H, Hkv, hd, cscratch);
    float *hq = dgetf(dgq, nq), *hk = dgetf(dgk, nk), *hv = dgetf(dgv, nk);
    check_tol("dq", hq, gq, bq, nq);
    check_tol("dk", hk, gk, bk, nk);
    check_tol("dv", hv, gv, bv, nk);
    dfree(ddO), dfree(dq), dfree(dk), dfree(dv), dfree(dlse), dfree(dgq), dfree(dgk);
    dfree(dgv), dfree(cscratch);
    ol_free(dO), ol_free(gq), ol_free(gk), ol_free(gv), ol_free(bq), ol_free(bk), ol_free(bv);
    ol_free(hq), ol_free(hk), ol_free(hv);
  }
  ol_free(q), ol_free(k), ol_free(v), ol_free(out), ol_free(lse), ol_free(rscratch);
}

/* attention_cached: row i of n attends keys 0 .. t0 + i; the forward model of attn_row_bound. */
static void attention_cached_case(size_t n, size_t t0, size_t H, size_t Hkv, size_t hd) {
  begin("attention_cached", "n=%zu t0=%zu H=%zu Hkv=%zu hd=%zu", n, t0, H, Hkv, hd);
  const size_t len = t0 + n, nq = n * H * hd, nk = len * Hkv * hd, ldq = H * hd,
               ldk = Hkv * hd, group = H / Hkv;
  float *q = hrand(nq, -3.0f, 3.0f), *k = hrand(nk, -1.0f, 1.0f), *v = hrand(nk, -1.0f, 1.0f);
  float *out = hrand(nq, 9.0f, 10.0f);
  float *dq = dputf(q, nq), *dk = dputf(k, nk), *dv = dputf(v, nk), *dout = dputf(out, nq);
  float *dscratch = dnewf(len), *rscratch = hf(len);
  double *bo = hdbl(nq), *x = hdbl(len), *a = hdbl(len);
  for (size_t i = 0; i < n; i++)
    for (size_t h = 0; h < H; h++)
      (void)attn_row_bound(q + i * ldq + h * hd, k + (h / group) * hd, v + (h / group) * hd, ldk,
                           t0 + i + 1, hd, bo + i * ldq + h * hd, x, a);
  use_ref();
  ref->attention_cached(out, q, k, v, n, t0, H, Hkv, hd, rscratch);
  use_cand();
  cand->attention_cached(dout, dq, dk, dv, n, t0, H, Hkv, hd, dscratch);
  float *go = dgetf(dout, nq);
  check_tol("out", go, out, bo, nq);
  dfree(dq), dfree(dk), dfree(dv), dfree(dout), dfree(dscratch);
  ol_free(q), ol_free(k), ol_free(v), ol_free(out), ol_free(rscratch), ol_free(bo), ol_free(x);
  ol_free(a), ol_free(go);
}

static void test_attention(void) {
  if (want("attention_forward") || want("attention_backward")) {
    static const size_t shapes[][5] = {{2, 1, 4, 2, 8},    {2, 17, 4, 2, 16}, {2, 17, 4, 4, 64},
                                       {2, 64, 4, 2, 128}, {1, 64, 4, 4, 8},  {2, 17, 4, 2, 128},
                                       {1, 320, 4, 2, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      attention_case(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
  }
  if (want("attention_cached")) {
    attention_cached_case(1, 0, 4, 2, 16);
    attention_cached_case(1, 16, 4, 2, 128);
    attention_cached_case(3, 14, 4, 4, 64);
    attention_cached_case(2, 300, 8, 2, 128);
    attention_cached_case(1, 1000, 40, 40, 128);
  }
}

/* ---------------------------------------------------------------------------------------------
 * SwiGLU */

/* g with a few extremes where exp over- and underflows */
static float *swiglu_g(size_t n) {
  float *g = hrand(n, -12.0f, 12.0f);
  static const float edge[] = {0.0f, -100.0f, 100.0f, -87.5f, 88.5f, -1.2785f};
  for (size_t i = 0; i < 6 && i < n; i++) g[(i * 977) % n] = edge[i];
  return g;
}

/* h = g sig(g) u. Model: sig = 1 / (1 + exp(-g)) is within 4u (exp) + 2u per side relative, h
 * two products more: 16u |h| for both sides. Below 1e-30 (exp's overflow edge near |g| = 88,
 * whose clamping the contract leaves open) an absolute 1e-30. */
static void swiglu_forward_case(size_t n) {
  begin("swiglu_forward", "n=%zu", n);
  float *g = swiglu_g(n), *u = hrand(n, -2.0f, 2.0f), *h = hrand(n, 3.0f, 4.0f);
  float *dg = dputf(g, n), *du = dputf(u, n), *dh = dputf(h, n);
  use_ref();
  ref->swiglu_forward(h, g, u, n);
  use_cand();
  cand->swiglu_forward(dh, dg, du, n);
  float *got = dgetf(dh, n);
  double *bound = hdbl(n);
  for (size_t i = 0; i < n; i++) bound[i] = 16.0 * U_F32 * fabs((double)h[i]) + 1e-30;
  check_tol("h", got, h, bound, n);
  dfree(dg), dfree(du), dfree(dh);
  ol_free(g), ol_free(u), ol_free(h), ol_free(got), ol_free(bound);
}

/* dg = dh u sig (1 + g (1 - sig)), du = dh g sig. Model: with A = |dh u sig| and inner =
 * 1 + g (1 - sig): sig is within 6u relative per side, so inner within 6u |g| + u |inner|, and
 * the three products add 3u: |d dg| <= A (10u |inner| + 6u |g|) per side; bound
 * A (24u |inner| + 16u |g|) (a margin for other algebraic forms such as sig + g sig (1 - sig)).
 * du: 16u |du| as h's. Both + 1e-30 as swiglu_forward's. */
static void swiglu_backward_case(size_t n) {
  begin("swiglu_backward", "n=%zu", n);
  float *g = swiglu_g(n), *u = hrand(n, -2.0f, 2.0f), *dh = hrand(n, -1.0f, 1.0f);
  float *dg = hrand(n, 3.0f, 4.0f), *du = hrand(n, 3.0f, 4.0f);
  float *d_g = dputf(g, n), *d_u = dputf(u, n), *d_dh = dputf(dh, n), *d_dg = dputf(dg, n),
        *d_du = dputf(du, n);
  double *bg = hdbl(n), *bu = hdbl(n);
  for (size_t i = 0; i < n; i++) {
    const double sig = 1.0 / (1.0 + exp(-(double)g[i]));
    const double A = fabs((double)dh[i] * u[i] * sig), inner = 1.0 + g[i] * (1.0 - sig);
    bg[i] = A * (24.0 * U_F32 * fabs(inner) + 16.0 * U_F32 * fabs((double)g[i])) + 1e-30;
    bu[i] = 16.0 * U_F32 * fabs((double)dh[i] * g[i] * sig) + 1e-30;
  }
  use_ref();
  ref->swiglu_backward(dg, du, dh, g, u, n);
  use_cand();
  cand->swiglu_backward(d_dg, d_du, d_dh, d_g, d_u, n);
  float *gg = dgetf(d_dg, n), *gu = dgetf(d_du, n);
  check_tol("dg", gg, dg, bg, n);
  check_tol("du", gu, du, bu, n);
  dfree(d_g), dfree(d_u), dfree(d_dh), dfree(d_dg), dfree(d_du);
  ol_free(g), ol_free(u), ol_free(dh), ol_free(dg), ol_free(du), ol_free(bg), ol_free(bu);
  ol_free(gg), ol_free(gu);
}

static void test_swiglu(void) {
  static const size_t ns[] = {1, 37 * 40, ((size_t)1 << 20) + 7};
  for (size_t i = 0; i < 3; i++) {
    if (want("swiglu_forward")) swiglu_forward_case(ns[i]);
    if (want("swiglu_backward")) swiglu_backward_case(ns[i]);
  }
}

/* ---------------------------------------------------------------------------------------------
 * cross-entropy, whole and vocab-parallel */

/* logits (N, V) in [-8, 8], row 0 peaked */
static float *ce_logits(size_t N, size_t V) {
  float *z = hrand(N * V, -8.0f, 8.0f);
  if (V > 5) z[5] = 40.0f;
  return z;
}

/* Per row: mx = max z (exact), S = sum_j exp(z_j - mx) (double on both sides, per the CPU and
 * vp_ce_sumexp's contract), loss_n = log S + mx - z_t. Model: each exp term within E_EXP plus
 * 2u |z_j - mx| (the argument's rounding) relative, the double sum within 2 gamma64(V): relS =
 * E_EXP + 2u max_j |z_j - mx| + 2 gamma64(V), and loss_n within relS + 4 2^-53 (|log S| + |mx| +
 * |z_t|). The total adds 2 gamma64(N) sum |loss_n| for its double sum.
 * Gradient: g_j = e_j f - [j = t] gs with f = gs / S: |d(e_j f)| <= |e_j f| (E_EXP + 2u |z_j -
 * mx| + relS + 6u) (f's rounding and the product), and at the target 4u (|e_j f| + |gs|) more. */
static void cross_entropy_case(size_t N, size_t V, float gs) {
  begin("cross_entropy", "N=%zu V=%zu grad_scale=%g", N, V, gs);
  float *z = ce_logits(N, V);
  int32_t *t = htokens(N, 0, V);
  float *dz = dputf(z, N * V);
  int32_t *dt = dput(t, N * sizeof(int32_t));
  double *bound = hdbl(N * V), lbound = 0.0, labs = 0.0;
  for (size_t n = 0; n < N; n++) {
    const float *zn = z + n * V;
    double mx = -INFINITY, S = 0.0, dev = 0.0;
    for (size_t j = 0; j < V; j++) mx = zn[j] > mx ? zn[j] : mx;
    for (size_t j = 0; j < V; j++) {
      S += exp(zn[j] - mx);
      dev = fmax(dev, fabs(zn[j] - mx));
    }
    const double relS = E_EXP + 2.0 * U_F32 * dev + 2.0 * gam64((double)V);
    const double zt = zn[t[n]], loss = log(S) + mx - zt;
    lbound += relS + 4.0 * U_F64 * (fabs(log(S)) + fabs(mx) + fabs(zt));
    labs += fabs(loss);
    for (size_t j = 0; j < V; j++) {
      const double ef = exp(zn[j] - mx) * gs / S;
      bound[n * V + j] = fabs(ef) * (E_EXP + 2.0 * U_F32 * fabs(zn[j] - mx) + relS + 6.0 * U_F32) +
                         ((int32_t)j == t[n] ? 4.0 * U_F32 * (fabs(ef) + fabs((double)gs)) : 0.0);
    }
  }
  lbound += 2.0 * gam64((double)N) * labs;
  use_ref();
  const double want_loss = ref->cross_entropy(z, t, N, V, gs);
  use_cand();
  const double got_loss = cand->cross_entropy(dz, dt, N, V, gs);
  check_scalar("loss", got_loss, want_loss, lbound);
  float *got = dgetf(dz, N * V);
  if (gs != 0.0f) check_tol("dlogits", got, z, bound, N * V);
  else check_exact_f("logits untouched", got, z, N * V);
  dfree(dz), dfree(dt);
  ol_free(z), ol_free(t), ol_free(bound), ol_free(got);
}

/* mx = per-row max, zt = the target's logit in the shard, else 0: both exact */
static void vp_ce_local_case(size_t N, size_t V, int64_t v0, size_t vocab) {
  begin("vp_ce_local", "N=%zu V=%zu v0=%lld vocab=%zu", N, V, (long long)v0, vocab);
  float *z = ce_logits(N, V), *mx = hrand(N, 50.0f, 60.0f), *zt = hrand(N, 50.0f, 60.0f);
  int32_t *t = htokens(N, 0, vocab);
  float *dz = dputf(z, N * V), *dmx = dputf(mx, N), *dzt = dputf(zt, N);
  int32_t *dt = dput(t, N * sizeof(int32_t));
  use_ref();
  ref->vp_ce_local(z, t, N, V, v0, mx, zt);
  use_cand();
  cand->vp_ce_local(dz, dt, N, V, v0, dmx, dzt);
  float *gm = dgetf(dmx, N), *gz = dgetf(dzt, N);
  check_exact_f("mx", gm, mx, N);
  check_exact_f("zt", gz, zt, N);
  dfree(dz), dfree(dmx), dfree(dzt), dfree(dt);
  ol_free(z), ol_free(mx), ol_free(zt), ol_free(t), ol_free(gm), ol_free(gz);
}

/* sum_n = sum_j exp(z_j - mx_n) in double, mx the global maxima (>= the shard's). Model: as
 * cross_entropy's: S (E_EXP + 2u max |z - mx| + 2 gamma64(V)); the stored exps each e (E_EXP +
 * 2u |z - mx|) + 1e-37 (exp's underflow edge). Without store the logits stay as they are. */
static void vp_ce_sumexp_case(size_t N, size_t V, int store) {
  begin("vp_ce_sumexp", "N=%zu V=%zu store=%d", N, V, store);
  float *z = ce_logits(N, V), *mx = hf(N);
  for (size_t n = 0; n < N; n++) {
    float m = -INFINITY;
    for (size_t j = 0; j < V; j++) m = z[n * V + j] > m ? z[n * V + j] : m;
    mx[n] = n % 2 ? m + ur(0.0f, 3.0f) : m;  // odd rows: another shard holds the maximum
  }
  double *sum = hdbl(N), *bs = hdbl(N), *be = hdbl(N * V);
  for (size_t n = 0; n < N; n++) {
    double S = 0.0, dev = 0.0;
    for (size_t j = 0; j < V; j++) {
      const double a = (double)z[n * V + j] - mx[n], e = exp(a);
      S += e;
      dev = fmax(dev, fabs(a));
      be[n * V + j] = e * (E_EXP + 2.0 * U_F32 * fabs(a)) + 1e-37;
    }
    bs[n] = S * (E_EXP + 2.0 * U_F32 * dev + 2.0 * gam64((double)V));
  }
  float *dz = dputf(z, N * V), *dmx = dputf(mx, N);
  double *dsum = cand->alloc(N * sizeof(double));
  use_ref();
  ref->vp_ce_sumexp(z, mx, N, V, sum, store);
  use_cand();
  cand->vp_ce_sumexp(dz, dmx, N, V, dsum, store);
  double *gsum = dget(dsum, N * sizeof(double));
  float *gz = dgetf(dz, N * V);
  check_tol64("sum", gsum, sum, bs, N);
  if (store) check_tol("exps", gz, z, be, N * V);
  else check_exact_f("logits untouched", gz, z, N * V);
  dfree(dz), dfree(dmx), dfree(dsum);
  ol_free(z), ol_free(mx), ol_free(sum), ol_free(bs), ol_free(be), ol_free(gsum), ol_free(gz);
}

/* logits (holding exps e) = e f - [j = t] gs, f = gs / sum. Model: f rounded once in double ->
 * f32 (or twice, in f32: 3u), the product once: 6u |e f| with margin; at the target 4u (|e f| +
 * |gs|) more for the subtraction. */
static void vp_ce_grad_case(size_t N, size_t V, int64_t v0, size_t vocab, float gs) {
  begin("vp_ce_grad", "N=%zu V=%zu v0=%lld vocab=%zu grad_scale=%g", N, V, (long long)v0, vocab,
        gs);
  float *e = hrand(N * V, 1e-6f, 1.0f);
  int32_t *t = htokens(N, 0, vocab);
  double *sum = hdbl(N), *bound = hdbl(N * V);
  for (size_t n = 0; n < N; n++) sum[n] = (double)V * (0.25 + 0.75 * ol_rng_uniform(&rng));
  for (size_t n = 0; n < N; n++)
    for (size_t j = 0; j < V; j++) {
      const double ef = (double)e[n * V + j] * gs / sum[n];
      const int at_t = (int64_t)t[n] - v0 == (int64_t)j;
      bound[n * V + j] =
          6.0 * U_F32 * fabs(ef) + (at_t ? 4.0 * U_F32 * (fabs(ef) + fabs(gs)) : 0.0);
    }
  float *de = dputf(e, N * V);
  int32_t *dt = dput(t, N * sizeof(int32_t));
  double *dsum = dput(sum, N * sizeof(double));
  use_ref();
  ref->vp_ce_grad(e, t, N, V, v0, sum, gs);
  use_cand();
  cand->vp_ce_grad(de, dt, N, V, v0, dsum, gs);
  float *got = dgetf(de, N * V);
  check_tol("dlogits", got, e, bound, N * V);
  dfree(de), dfree(dt), dfree(dsum);
  ol_free(e), ol_free(t), ol_free(sum), ol_free(bound), ol_free(got);
}

/* sum_n log(sum_n) + mx_n - zt_n in double. Model: each log within 1 ulp (2^-52 relative) on
 * either library, and the sum reordered: 2 gamma64(N + 4) sum (|log s| + |mx| + |zt|). */
static void vp_ce_loss_case(size_t N) {
  begin("vp_ce_loss", "N=%zu", N);
  float *mx = hrand(N, -5.0f, 5.0f), *zt = hrand(N, -5.0f, 5.0f);
  double *sum = hdbl(N), abs_sum = 0.0;
  for (size_t n = 0; n < N; n++) {
    sum[n] = 1.0 + 1e4 * ol_rng_uniform(&rng);
    abs_sum += fabs(log(sum[n])) + fabs((double)mx[n]) + fabs((double)zt[n]);
  }
  float *dmx = dputf(mx, N), *dzt = dputf(zt, N);
  double *dsum = dput(sum, N * sizeof(double));
  use_ref();
  const double w = ref->vp_ce_loss(mx, zt, sum, N);
  use_cand();
  const double g = cand->vp_ce_loss(dmx, dzt, dsum, N);
  check_scalar("loss", g, w, 2.0 * gam64((double)N + 4.0) * abs_sum);
  dfree(dmx), dfree(dzt), dfree(dsum);
  ol_free(mx), ol_free(zt), ol_free(sum);
}

static void test_cross_entropy(void) {
  static const size_t shapes[][2] = {{1, 1000}, {3, 1000}, {37, 1000}, {64, 32000}};
  for (size_t s = 0; s < 4; s++) {
    const size_t N = shapes[s][0], V = shapes[s][1];
    if (want("cross_entropy")) {
      cross_entropy_case(N, V, 0.0f);
      cross_entropy_case(N, V, 1.0f / (float)N);
    }
    if (want("vp_ce_local")) vp_ce_local_case(N, V, (int64_t)V, 3 * V);
    if (want("vp_ce_sumexp")) {
      vp_ce_sumexp_case(N, V, 0);
      vp_ce_sumexp_case(N, V, 1);
    }
    if (want("vp_ce_grad")) vp_ce_grad_case(N, V, (int64_t)V, 3 * V, 1.0f / (float)N);
  }
  if (want("vp_ce_local")) vp_ce_local_case(37, 1000, 0, 1000);
  if (want("vp_ce_loss")) {
    vp_ce_loss_case(1);
    vp_ce_loss_case(37);
    vp_ce_loss_case(4096);
  }
}

/* ---------------------------------------------------------------------------------------------
 * vector helpers: axpy, sumsq, scale, fill, counter_normal */

static const size_t vec_ns[] = {1, 37 * 40, ((size_t)1 << 20) + 3};

/* y += alpha x. Model: a product and a sum per side (one rounding with a fused multiply-add):
 * u |alpha x| + 2u |y| <= 3u (|y0| + |alpha x|) */
static void axpy_case(size_t n) {
  begin("axpy", "n=%zu", n);
  const float alpha = -0.37f;
  float *x = hrand(n, -1.0f, 1.0f), *y = hrand(n, -1.0f, 1.0f);
  double *bound = hdbl(n);
  for (size_t i = 0; i < n; i++)
    bound[i] = 3.0 * U_F32 * (fabs((double)y[i]) + fabs((double)alpha * x[i]));
  float *dx = dputf(x, n), *dy = dputf(y, n);
  use_ref();
  ref->axpy(y, x, alpha, n);
  use_cand();
  cand->axpy(dy, dx, alpha, n);
  float *got = dgetf(dy, n);
  check_tol("y", got, y, bound, n);
  dfree(dx), dfree(dy);
  ol_free(x), ol_free(y), ol_free(bound), ol_free(got);
}

/* sum of squares in double: the squares of f32 values are exact in double, so the two sums
 * differ only by their order: 2 gamma64(n) sum x^2 (an f32 accumulation would fail it) */
static void sumsq_case(size_t n) {
  begin("sumsq", "n=%zu", n);
  float *x = hrand(n, -2.0f, 2.0f);
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
  float *dx = dputf(x, n);
  use_ref();
  const double w = ref->sumsq(x, n);
  use_cand();
  const double g = cand->sumsq(dx, n);
  check_scalar("sumsq", g, w, 2.0 * gam64((double)n) * s);
  dfree(dx);
  ol_free(x);
}

/* x *= alpha: one IEEE product per element on both sides: exact */
static void scale_case(size_t n) {
  begin("scale", "n=%zu", n);
  float *x = hrand(n, -3.0f, 3.0f), *dx = dputf(x, n);
  use_ref();
  ref->scale(x, 0.3f, n);
  use_cand();
  cand->scale(dx, 0.3f, n);
  float *got = dgetf(dx, n);
  check_exact_f("x", got, x, n);
  dfree(dx);
  ol_free(x), ol_free(got);
}

/* x = value: exact (a negative zero keeps its sign) */
static void fill_case(size_t n, float value) {
  begin("fill", "n=%zu value=%g", n, value);
  float *x = hrand(n, -1.0f, 1.0f), *dx = dputf(x, n);
  use_ref();
  ref->fill(x, value, n);
  use_cand();
  cand->fill(dx, value, n);
  float *got = dgetf(dx, n);
  check_exact_f("x", got, x, n);
  dfree(dx);
  ol_free(x), ol_free(got);
}

/* the counter-based normals: a pure function of (key, row, col), defined by core's functions:
 * exact */
static void counter_normal_case(size_t rows, size_t cols, uint64_t key, size_t r0, size_t c0,
                                float std) {
  begin("counter_normal", "rows=%zu cols=%zu r0=%zu c0=%zu std=%g", rows, cols, r0, c0, std);
  const size_t n = rows * cols;
  float *x = hrand(n, -1.0f, 1.0f), *dx = dputf(x, n);
  use_ref();
  ref->counter_normal(x, rows, cols, key, r0, c0, std);
  use_cand();
  cand->counter_normal(dx, rows, cols, key, r0, c0, std);
  float *got = dgetf(dx, n);
  check_exact_f("x", got, x, n);
  dfree(dx);
  ol_free(x), ol_free(got);
}

static void test_vector(void) {
  for (size_t i = 0; i < 3; i++) {
    if (want("axpy")) axpy_case(vec_ns[i]);
    if (want("sumsq")) sumsq_case(vec_ns[i]);
    if (want("scale")) scale_case(vec_ns[i]);
    if (want("fill")) fill_case(vec_ns[i], i == 1 ? -0.0f : 3.14159f);
  }
  if (want("sumsq")) sumsq_case(((size_t)1 << 22) + 5);
  if (want("counter_normal")) {
    counter_normal_case(1, 1, 7, 0, 0, 1.0f);
    counter_normal_case(37, 29, 0x1234567890ABCDEFull, 5, 1000, 0.02f);
    counter_normal_case(512, 300, 42, (size_t)1 << 20, 7, 1.0f);
  }
}

/* ---------------------------------------------------------------------------------------------
 * 1LoRA helpers */

static const size_t row_shapes[][2] = {{1, 8}, {3, 40}, {37, 200}, {512, 5120}};
#define N_ROW_SHAPES (sizeof row_shapes / sizeof row_shapes[0])

/* s = row sums of x(N, k): 2 gamma(k) sum |x| */
static void row_sums_case(size_t N, size_t k) {
  begin("row_sums", "N=%zu k=%zu", N, k);
  float *x = hrand(N * k, -1.0f, 1.0f), *s = hrand(N, 5.0f, 6.0f);
  double *bound = hdbl(N);
  for (size_t n = 0; n < N; n++) {
    for (size_t i = 0; i < k; i++) bound[n] += fabs((double)x[n * k + i]);
    bound[n] *= 2.0 * gam((double)k);
  }
  float *dx = dputf(x, N * k), *ds = dputf(s, N);
  use_ref();
  ref->row_sums(s, x, N, k);
  use_cand();
  cand->row_sums(ds, dx, N, k);
  float *got = dgetf(ds, N);
  check_tol("s", got, s, bound, N);
  dfree(dx), dfree(ds);
  ol_free(x), ol_free(s), ol_free(bound), ol_free(got);
}

/* Three ops of the form y = beta y0 + t with t one product (outer: s_n b_i) or one value
 * (broadcast_rows: c_n, add_bias: bias_i). Model: at most two roundings per side: 4u (|beta y0|
 * + |t|). which: 0 outer, 1 broadcast_rows, 2 add_bias. */
static void affine_rows_case(int which, size_t N, size_t d, float beta) {
  static const char *names[] = {"outer", "broadcast_rows", "add_bias"};
  begin(names[which], "N=%zu d=%zu beta=%g", N, d, beta);
  float *y = hrand(N * d, -1.0f, 1.0f), *s = hrand(N, -1.0f, 1.0f), *b = hrand(d, -1.0f, 1.0f);
  double *bound = hdbl(N * d);
  for (size_t n = 0; n < N; n++)
    for (size_t i = 0; i < d; i++) {
      const double t = which == 0 ? (double)s[n] * b[i] : which == 1 ? s[n] : b[i];
      bound[n * d + i] = 4.0 * U_F32 * (fabs((double)beta * y[n * d + i]) + fabs(t));
    }
  float *dy = dputf(y, N * d), *ds = dputf(s, N), *db = dputf(b, d);
  use_ref();
  if (which == 0) ref->outer(y, s, b, N, d, beta);
  else if (which == 1) ref->broadcast_rows(y, s, N, d, beta);
  else ref->add_bias(y, b, N, d, beta);
  use_cand();
  if (which == 0) cand->outer(dy, ds, db, N, d, beta);
  else if (which == 1) cand->broadcast_rows(dy, ds, N, d, beta);
  else cand->add_bias(dy, db, N, d, beta);
  float *got = dgetf(dy, N * d);
  check_tol(which == 1 ? "x" : "y", got, y, bound, N * d);
  dfree(dy), dfree(ds), dfree(db);
  ol_free(y), ol_free(s), ol_free(b), ol_free(bound), ol_free(got);
}

/* db += column sums of dy(N, d): N terms and db0: 2 gamma(N + 1) (|db0| + sum_n |dy_ni|) */
static void col_sums_case(size_t N, size_t d) {
  begin("col_sums", "N=%zu d=%zu", N, d);
  float *dy = hrand(N * d, -1.0f, 1.0f), *db = hrand(d, -1.0f, 1.0f);
  double *bound = hdbl(d);
  for (size_t i = 0; i < d; i++) bound[i] = fabs((double)db[i]);
  for (size_t n = 0; n < N; n++)
    for (size_t i = 0; i < d; i++) bound[i] += fabs((double)dy[n * d + i]);
  for (size_t i = 0; i < d; i++) bound[i] *= 2.0 * gam((double)N + 1.0);
  float *ddy = dputf(dy, N * d), *ddb = dputf(db, d);
  use_ref();
  ref->col_sums(db, dy, N, d);
  use_cand();
  cand->col_sums(ddb, ddy, N, d);
  float *got = dgetf(ddb, d);
  check_tol("db", got, db, bound, d);
  dfree(ddy), dfree(ddb);
  ol_free(dy), ol_free(db), ol_free(bound), ol_free(got);
}

/* c = dy b (c starts as garbage: overwritten), db += dy^T s. Model: c_n a sum of d products:
 * 2 gamma(d) sum_i |dy_ni b_i|; db_i N products and db0: 2 gamma(N + 1) (|db0| + sum |s dy|). */
static void rowdot_accum_case(size_t N, size_t d) {
  begin("rowdot_accum", "N=%zu d=%zu", N, d);
  float *dy = hrand(N * d, -1.0f, 1.0f), *s = hrand(N, -1.0f, 1.0f), *b = hrand(d, -1.0f, 1.0f);
  float *c = hrand(N, 5.0f, 6.0f), *db = hrand(d, -1.0f, 1.0f);
  double *bc = hdbl(N), *bd = hdbl(d);
  for (size_t i = 0; i < d; i++) bd[i] = fabs((double)db[i]);
  for (size_t n = 0; n < N; n++) {
    for (size_t i = 0; i < d; i++) {
      bc[n] += fabs((double)dy[n * d + i] * b[i]);
      bd[i] += fabs((double)dy[n * d + i] * s[n]);
    }
    bc[n] *= 2.0 * gam((double)d);
  }
  for (size_t i = 0; i < d; i++) bd[i] *= 2.0 * gam((double)N + 1.0);
  float *ddy = dputf(dy, N * d), *ds = dputf(s, N), *dbb = dputf(b, d), *dc = dputf(c, N),
        *ddb = dputf(db, d);
  use_ref();
  ref->rowdot_accum(c, db, dy, s, b, N, d);
  use_cand();
  cand->rowdot_accum(dc, ddb, ddy, ds, dbb, N, d);
  float *gc = dgetf(dc, N), *gd = dgetf(ddb, d);
  check_tol("c", gc, c, bc, N);
  check_tol("db", gd, db, bd, d);
  dfree(ddy), dfree(ds), dfree(dbb), dfree(dc), dfree(ddb);
  ol_free(dy), ol_free(s), ol_free(b), ol_free(c), ol_free(db), ol_free(bc), ol_free(bd);
  ol_free(gc), ol_free(gd);
}

static void test_onelora(void) {
  for (size_t s = 0; s < N_ROW_SHAPES; s++) {
    const size_t N = row_shapes[s][0], k = row_shapes[s][1];
    if (want("row_sums")) row_sums_case(N, k);
    if (want("outer")) affine_rows_case(0, N, k, s % 2 ? 0.7f : 0.0f);
    if (want("broadcast_rows")) affine_rows_case(1, N, k, s % 2 ? 0.0f : -1.5f);
    if (want("add_bias")) affine_rows_case(2, N, k, s % 2 ? 1.0f : 0.0f);
    if (want("col_sums")) col_sums_case(N, k);
    if (want("rowdot_accum")) rowdot_accum_case(N, k);
  }
  if (want("col_sums")) col_sums_case(1024, 5120);
}

/* ---------------------------------------------------------------------------------------------
 * AdamW */

/* PyTorch's AdamW, every step an IEEE op. Model, per element, both sides together (the scalars
 * decay, step_size, bc2_sqrt computed in double and rounded: u each per side):
 *  p' = p decay: dpd = 4u |p decay|;
 *  m' = m + w1 (g - m): three roundings per side, u (2 |w1 (g - m)| + |m'|); the form
 *    m b1 + w1 g would add u (|m b1| + |w1 g|): dm = 2u (2 |w1 (g - m)| + |m'| + |m b1| + |w1 g|);
 *  v' = v beta2 + w2 g g: four roundings per side: dv = 2u (|v beta2| + 2 |w2 g g| + |v'|);
 *  denom = sqrt(v') / bc2_sqrt + eps: d sqrt(v') <= dv / (2 sqrt(v')) (sqrt(dv) at v' = 0), plus
 *    four roundings per side: ddenom = d sqrt / bc2_sqrt + 8u denom;
 *  upd = (-step_size m') / denom: dupd = step_size dm / denom + |upd| (ddenom / denom + 6u);
 *  p = p' + upd: dp = dpd + dupd + 2u (|p'| + |upd|). */
static void adamw_case(size_t n, int64_t step, float wd) {
  begin("adamw", "n=%zu step=%lld weight_decay=%g", n, (long long)step, wd);
  const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  float *p = hrand(n, -1.0f, 1.0f), *g = hrand(n, -1.0f, 1.0f), *m = hrand(n, -0.1f, 0.1f),
        *v = hrand(n, 0.0f, 0.01f);
  if (n > 2) g[1] = 0.0f, v[1] = 0.0f;  // v' = 0: denom = eps
  double *bp = hdbl(n), *bm = hdbl(n), *bv = hdbl(n);
  const double bc1 = 1.0 - pow(b1, (double)step), bc2 = 1.0 - pow(b2, (double)step);
  const double decay = 1.0 - (double)lr * wd, step_size = lr / bc1, bc2s = sqrt(bc2);
  const double w1 = 1.0f - b1, w2 = 1.0f - b2, u = U_F32;
  for (size_t i = 0; i < n; i++) {
    const double pi = p[i] * decay, gm = (double)g[i] - m[i], mi = m[i] + w1 * gm;
    const double vi = v[i] * (double)b2 + w2 * g[i] * g[i];
    const double dpd = 4.0 * u * fabs(pi);
    const double dm = 2.0 * u * (2.0 * fabs(w1 * gm) + fabs(mi) + fabs((double)m[i] * b1) +
                                 fabs(w1 * g[i]));
    const double dv = 2.0 * u * (fabs(v[i] * (double)b2) + 2.0 * fabs(w2 * g[i] * g[i]) + fabs(vi));
    const double sv = sqrt(vi), dsv = sv > 0.0 ? dv / (2.0 * sv) : sqrt(dv);
    const double denom = sv / bc2s + eps, ddenom = dsv / bc2s + 8.0 * u * denom;
    const double upd = -step_size * mi / denom;
    const double dupd = step_size * dm / denom + fabs(upd) * (ddenom / denom + 6.0 * u);
    bm[i] = dm;
    bv[i] = dv;
    bp[i] = dpd + dupd + 2.0 * u * (fabs(pi) + fabs(upd));
  }
  float *dp = dputf(p, n), *dg = dputf(g, n), *dm = dputf(m, n), *dv = dputf(v, n);
  use_ref();
  ref->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, step);
  use_cand();
  cand->adamw(dp, dg, dm, dv, n, lr, b1, b2, eps, wd, step);
  float *gp = dgetf(dp, n), *gm = dgetf(dm, n), *gv = dgetf(dv, n);
  check_tol("p", gp, p, bp, n);
  check_tol("m", gm, m, bm, n);
  check_tol("v", gv, v, bv, n);
  dfree(dp), dfree(dg), dfree(dm), dfree(dv);
  ol_free(p), ol_free(g), ol_free(m), ol_free(v), ol_free(bp), ol_free(bm), ol_free(bv);
  ol_free(gp), ol_free(gm), ol_free(gv);
}

static void test_adamw(void) {
  if (!want("adamw")) return;
  for (size_t i = 0; i < 3; i++) {
    adamw_case(vec_ns[i], 1, 0.01f);
    adamw_case(vec_ns[i], 1000, 0.0f);
  }
}

/* ---------------------------------------------------------------------------------------------
 * lora/dora helpers */

/* y = x g per column: one product per element: exact; also in place (y = x) */
static void scale_cols_case(size_t N, size_t d, int in_place) {
  begin("scale_cols", "N=%zu d=%zu%s", N, d, in_place ? " in place" : "");
  float *x = hrand(N * d, -2.0f, 2.0f), *g = hrand(d, -2.0f, 2.0f), *y = hrand(N * d, 5.0f, 6.0f);
  float *dx = dputf(x, N * d), *dg = dputf(g, d), *dy = in_place ? dx : dputf(y, N * d);
  use_ref();
  ref->scale_cols(in_place ? x : y, x, g, N, d);
  use_cand();
  cand->scale_cols(dy, dx, dg, N, d);
  float *got = dgetf(dy, N * d);
  check_exact_f("y", got, in_place ? x : y, N * d);
  dfree(dx), dfree(dg);
  if (!in_place) dfree(dy);
  ol_free(x), ol_free(g), ol_free(y), ol_free(got);
}

/* acc += g * column sums of a b: N products of three and acc0: 2 gamma(N + 2) (|acc0| +
 * sum_n |g a b|) */
static void col_dots_accum_case(size_t N, size_t d) {
  begin("col_dots_accum", "N=%zu d=%zu", N, d);
  float *a = hrand(N * d, -1.0f, 1.0f), *b = hrand(N * d, -1.0f, 1.0f), *g = hrand(d, -2.0f, 2.0f);
  float *acc = hrand(d, -1.0f, 1.0f);
  double *bound = hdbl(d);
  for (size_t i = 0; i < d; i++) bound[i] = fabs((double)acc[i]);
  for (size_t n = 0; n < N; n++)
    for (size_t i = 0; i < d; i++) bound[i] += fabs((double)g[i] * a[n * d + i] * b[n * d + i]);
  for (size_t i = 0; i < d; i++) bound[i] *= 2.0 * gam((double)N + 2.0);
  float *da = dputf(a, N * d), *dbb = dputf(b, N * d), *dg = dputf(g, d), *dacc = dputf(acc, d);
  use_ref();
  ref->col_dots_accum(acc, a, b, g, N, d);
  use_cand();
  cand->col_dots_accum(dacc, da, dbb, dg, N, d);
  float *got = dgetf(dacc, d);
  check_tol("acc", got, acc, bound, d);
  dfree(da), dfree(dbb), dfree(dg), dfree(dacc);
  ol_free(a), ol_free(b), ol_free(g), ol_free(acc), ol_free(bound), ol_free(got);
}

/* n2 = (float) (|W_i|^2 + B_i . P_i) summed in double: the products of f32 values are exact in
 * double, the sums differ by 2 gamma64(k + r) sum (w^2 + |b p|), and each side rounds to f32
 * once: 2u |n2| more */
static void dora_sq_norms_case(size_t d, size_t k, size_t r) {
  begin("dora_sq_norms", "d=%zu k=%zu r=%zu", d, k, r);
  float *W = hrand(d * k, -1.0f, 1.0f), *B = hrand(d * r, -1.0f, 1.0f);
  float *P = hrand(d * r, -1.0f, 1.0f);
  float *n2 = hrand(d, 5.0f, 6.0f);
  double *bound = hdbl(d);
  for (size_t i = 0; i < d; i++) {
    double s = 0.0, a = 0.0;
    for (size_t j = 0; j < k; j++) s += (double)W[i * k + j] * W[i * k + j];
    a = s;
    for (size_t q = 0; q < r; q++) {
      s += (double)B[i * r + q] * P[i * r + q];
      a += fabs((double)B[i * r + q] * P[i * r + q]);
    }
    bound[i] = 2.0 * U_F32 * fabs(s) + 2.0 * gam64((double)(k + r)) * a;
  }
  float *dW = dputf(W, d * k), *dB = dputf(B, d * r), *dP = dputf(P, d * r), *dn2 = dputf(n2, d);
  use_ref();
  ref->dora_sq_norms(n2, W, B, P, d, k, r);
  use_cand();
  cand->dora_sq_norms(dn2, dW, dB, dP, d, k, r);
  float *got = dgetf(dn2, d);
  check_tol("n2", got, n2, bound, d);
  dfree(dW), dfree(dB), dfree(dP), dfree(dn2);
  ol_free(W), ol_free(B), ol_free(P), ol_free(n2), ol_free(bound), ol_free(got);
}

/* x = 1 / sqrt(max(x, 1e-30)): the CPU in double, rounded once (within u of exact); a double
 * GPU the same, a 2 ulp rsqrtf within 4u: bound 6u |x'| (zeros and negatives take the floor) */
static void inv_sqrt_case(size_t n) {
  begin("inv_sqrt", "n=%zu", n);
  float *x = hf(n);
  for (size_t i = 0; i < n; i++) x[i] = powf(10.0f, ur(-6.0f, 6.0f));
  static const float edge[] = {0.0f, -1e-7f, 1e-30f, 1e-35f, 1e30f, -0.0f};
  for (size_t i = 0; i < 6 && i < n; i++) x[(i * 131) % n] = edge[i];
  float *dx = dputf(x, n);
  use_ref();
  ref->inv_sqrt(x, n);
  use_cand();
  cand->inv_sqrt(dx, n);
  float *got = dgetf(dx, n);
  double *bound = hdbl(n);
  for (size_t i = 0; i < n; i++) bound[i] = 6.0 * U_F32 * fabs((double)x[i]);
  check_tol("x", got, x, bound, n);
  dfree(dx);
  ol_free(x), ol_free(got), ol_free(bound);
}

static void test_lora(void) {
  static const size_t shapes[][2] = {{1, 8}, {37, 200}, {300, 5120}};
  for (size_t s = 0; s < 3; s++) {
    if (want("scale_cols")) {
      scale_cols_case(shapes[s][0], shapes[s][1], 0);
      scale_cols_case(shapes[s][0], shapes[s][1], 1);
    }
    if (want("col_dots_accum")) col_dots_accum_case(shapes[s][0], shapes[s][1]);
  }
  if (want("col_dots_accum")) col_dots_accum_case(512, 5120);
  if (want("dora_sq_norms")) {
    dora_sq_norms_case(1, 8, 1);
    dora_sq_norms_case(37, 200, 4);
    dora_sq_norms_case(40, 5120, 16);
  }
  if (want("inv_sqrt")) {
    inv_sqrt_case(6);
    inv_sqrt_case(1480);
    inv_sqrt_case((size_t)1 << 20);
  }
}

/* ---------------------------------------------------------------------------------------------
 * fills, conversions, row scalings, index maps */

/* f32 values that test a 2-byte rounding: ties, overflow, subnormals, NaNs, and random bits */
static float *narrow_inputs(size_t n) {
  static const uint32_t edge[] = {
      0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
      0x7F800001u, 0x7F7FFFFFu, 0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0x47800000u,
      0x33800000u, 0x33000000u, 0x33000001u, 0x33C00000u, 0x38800000u, 0x387FFFFFu,
      0x3F801000u, 0x3F803000u, 0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x00000001u,
      0x3F800001u, 0xC7FFFFFFu, 0x4B7FFFFFu, 0x38000000u, 0x37FFFFFFu, 0x7F7F8000u};
  const size_t ne = sizeof edge / sizeof edge[0];
  float *x = hf(n);
  for (size_t i = 0; i < n; i++) {
    uint32_t b;
    if (i < ne) b = edge[i];
    else if (i % 2) b = (uint32_t)ol_rng_u64(&rng);  // any pattern
    else b = (uint32_t)(ol_rng_u64(&rng) & 0x807FFFFFu) | (uint32_t)((100 + ri(50)) << 23);
    memcpy(&x[i], &b, 4);
  }
  return x;
}

/* dst = src rounded to 2 bytes as core's ol_f32_to_bf16 / ol_f32_to_f16 round: exact bits */
static void narrow_case(size_t n, int bf16) {
  begin("narrow", "%s n=%zu", bf16 ? "bf16" : "f16", n);
  float *src = narrow_inputs(n);
  uint16_t *dst = ol_calloc(nz(n), sizeof(uint16_t));
  for (size_t i = 0; i < n; i++) dst[i] = 0x1234;
  float *dsrc = dputf(src, n);
  uint16_t *ddst = dput(dst, n * sizeof(uint16_t));
  use_ref();
  ref->narrow(dst, src, n, bf16);
  use_cand();
  cand->narrow(ddst, dsrc, n, bf16);
  uint16_t *got = dget(ddst, n * sizeof(uint16_t));
  check_exact("dst", got, dst, n, 2, 0);
  dfree(dsrc), dfree(ddst);
  ol_free(src), ol_free(dst), ol_free(got);
}

/* x row n *= g_n: one product each: exact */
static void scale_rows_case(size_t N, size_t k) {
  begin("scale_rows", "N=%zu k=%zu", N, k);
  float *x = hrand(N * k, -2.0f, 2.0f), *g = hrand(N, -2.0f, 2.0f);
  float *dx = dputf(x, N * k), *dg = dputf(g, N);
  use_ref();
  ref->scale_rows(x, g, N, k);
  use_cand();
  cand->scale_rows(dx, dg, N, k);
  float *got = dgetf(dx, N * k);
  check_exact_f("x", got, x, N * k);
  dfree(dx), dfree(dg);
  ol_free(x), ol_free(g), ol_free(got);
}

/* n2 = (float) sum of squares of each row in double: as dora_sq_norms: 2u |n2| + 2 gamma64(k)
 * sum x^2 */
static void row_sumsq_case(size_t N, size_t k) {
  begin("row_sumsq", "N=%zu k=%zu", N, k);
  float *x = hrand(N * k, -2.0f, 2.0f), *n2 = hrand(N, 5.0f, 6.0f);
  double *bound = hdbl(N);
  for (size_t n = 0; n < N; n++) {
    double s = 0.0;
    for (size_t i = 0; i < k; i++) s += (double)x[n * k + i] * x[n * k + i];
    bound[n] = 2.0 * U_F32 * s + 2.0 * gam64((double)k) * s;
  }
  float *dx = dputf(x, N * k), *dn2 = dputf(n2, N);
  use_ref();
  ref->row_sumsq(n2, x, N, k);
  use_cand();
  cand->row_sumsq(dn2, dx, N, k);
  float *got = dgetf(dn2, N);
  check_tol("n2", got, n2, bound, N);
  dfree(dx), dfree(dn2);
  ol_free(x), ol_free(n2), ol_free(bound), ol_free(got);
}

/* x = sqrtf(x): IEEE square root is correctly rounded on both (CUDA's sqrtf too, this build
 * has no fast math): exact; sqrt(-0) = -0, negatives NaN (any NaN) */
static void sqrt_case(size_t n) {
  begin("sqrt_inplace", "n=%zu", n);
  float *x = hf(n);
  for (size_t i = 0; i < n; i++) x[i] = powf(10.0f, ur(-30.0f, 30.0f));
  static const float edge[] = {0.0f, -0.0f, -1.0f, 1e-40f, INFINITY, 2.0f};
  for (size_t i = 0; i < 6 && i < n; i++) x[(i * 131) % n] = edge[i];
  float *dx = dputf(x, n);
  use_ref();
  ref->sqrt_inplace(x, n);
  use_cand();
  cand->sqrt_inplace(dx, n);
  float *got = dgetf(dx, n);
  check_exact_f("x", got, x, n);
  dfree(dx);
  ol_free(x), ol_free(got);
}

/* S = (lb_i B_ij) ld_j, two products in that order: exact */
static void diag_scale_case(size_t n, size_t r) {
  begin("diag_scale", "n=%zu r=%zu", n, r);
  float *lb = hrand(n, -2.0f, 2.0f), *B = hrand(n * r, -2.0f, 2.0f), *ld = hrand(r, -2.0f, 2.0f);
  float *S = hrand(n * r, 5.0f, 6.0f);
  float *dlb = dputf(lb, n), *dB = dputf(B, n * r), *dld = dputf(ld, r), *dS = dputf(S, n * r);
  use_ref();
  ref->diag_scale(S, lb, B, ld, n, r);
  use_cand();
  cand->diag_scale(dS, dlb, dB, dld, n, r);
  float *got = dgetf(dS, n * r);
  check_exact_f("S", got, S, n * r);
  dfree(dlb), dfree(dB), dfree(dld), dfree(dS);
  ol_free(lb), ol_free(B), ol_free(ld), ol_free(S), ol_free(got);
}

/* dlb_i += sum_j q_ij ld_j, dld_j += sum_i q_ij lb_i, q = dS B. Model: products of three (a
 * fused multiply-add may merge roundings, so not bit for bit): 2 gamma(r + 2) (|dlb0| +
 * sum_j |q ld|) and 2 gamma(n + 2) (|dld0| + sum_i |q lb|) */
static void diag_scale_backward_case(size_t n, size_t r) {
  begin("diag_scale_backward", "n=%zu r=%zu", n, r);
  float *dS = hrand(n * r, -1.0f, 1.0f), *B = hrand(n * r, -1.0f, 1.0f);
  float *lb = hrand(n, -2.0f, 2.0f);
  float *ld = hrand(r, -2.0f, 2.0f), *dlb = hrand(n, -1.0f, 1.0f), *dld = hrand(r, -1.0f, 1.0f);
  double *bl = hdbl(n), *bd = hdbl(r);
  for (size_t i = 0; i < n; i++) bl[i] = fabs((double)dlb[i]);
  for (size_t j = 0; j < r; j++) bd[j] = fabs((double)dld[j]);
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < r; j++) {
      const double q = fabs((double)dS[i * r + j] * B[i * r + j]);
      bl[i] += q * fabs((double)ld[j]);
      bd[j] += q * fabs((double)lb[i]);
    }
  for (size_t i = 0; i < n; i++) bl[i] *= 2.0 * gam((double)r + 2.0);
  for (size_t j = 0; j < r; j++) bd[j] *= 2.0 * gam((double)n + 2.0);
  float *d_dS = dputf(dS, n * r), *d_B = dputf(B, n * r), *d_lb = dputf(lb, n);
  float *d_ld = dputf(ld, r);
  float *d_dlb = dputf(dlb, n), *d_dld = dputf(dld, r);
  use_ref();
  ref->diag_scale_backward(dlb, dld, dS, B, lb, ld, n, r);
  use_cand();
  cand->diag_scale_backward(d_dlb, d_dld, d_dS, d_B, d_lb, d_ld, n, r);
  float *gl = dgetf(d_dlb, n), *gd = dgetf(d_dld, r);
  check_tol("dlb", gl, dlb, bl, n);
  check_tol("dld", gd, dld, bd, r);
  dfree(d_dS), dfree(d_B), dfree(d_lb), dfree(d_ld), dfree(d_dlb), dfree(d_dld);
  ol_free(dS), ol_free(B), ol_free(lb), ol_free(ld), ol_free(dlb), ol_free(dld), ol_free(bl);
  ol_free(bd), ol_free(gl), ol_free(gd);
}

/* dst(n, nd) = beta dst + the cyclic map of src(n, ns). Without collisions (len <= nd: each
 * position of dst receives at most one term) and with beta 0, 1 or 0.5 (products by them are
 * exact, so a fused multiply-add rounds the same) it is exact; beta 0 must not read dst, which
 * starts as NaN then. With collisions (folding) position i sums m_i terms in p order on the
 * CPU: 2 gamma(m_i + 1) (|beta dst0_i| + sum |src terms|). */
static void cyclic_rows_case(size_t nd, size_t a, size_t ns, size_t b, size_t len, size_t n,
                             float beta) {
  begin("cyclic_rows", "nd=%zu a=%zu ns=%zu b=%zu len=%zu n=%zu beta=%g", nd, a, ns, b, len, n,
        beta);
  float *src = hrand(n * ns, -1.0f, 1.0f), *dst = hrand(n * nd, -1.0f, 1.0f);
  if (beta == 0.0f)
    for (size_t i = 0; i < n * nd; i++) dst[i] = NAN;
  const int exact = len <= nd && (beta == 0.0f || beta == 1.0f || beta == 0.5f);
  double *bound = hdbl(n * nd);
  size_t *count = ol_calloc(nz(nd), sizeof(size_t));
  for (size_t t = 0; t < n; t++) {
    for (size_t i = 0; i < nd; i++) {
      count[i] = 0;
      bound[t * nd + i] = beta == 0.0f ? 0.0 : fabs((double)beta * dst[t * nd + i]);
    }
    for (size_t p = 0; p < len; p++) {
      const size_t i = (p + a) % nd;
      count[i]++;
      bound[t * nd + i] += fabs((double)src[t * ns + (p + b) % ns]);
    }
    for (size_t i = 0; i < nd; i++) bound[t * nd + i] *= 2.0 * gam((double)count[i] + 1.0);
  }
  float *dsrc = dputf(src, n * ns), *ddst = dputf(dst, n * nd);
  use_ref();
  ref->cyclic_rows(dst, nd, a, src, ns, b, len, n, beta);
  use_cand();
  cand->cyclic_rows(ddst, nd, a, dsrc, ns, b, len, n, beta);
  float *got = dgetf(ddst, n * nd);
  if (exact) check_exact_f("dst", got, dst, n * nd);
  else check_tol("dst", got, dst, bound, n * nd);
  dfree(dsrc), dfree(ddst);
  ol_free(src), ol_free(dst), ol_free(bound), ol_free(count), ol_free(got);
}

static void test_maps(void) {
  if (want("narrow"))
    for (int bf = 0; bf < 2; bf++) {
      narrow_case(30, bf);
      narrow_case(20011, bf);
      narrow_case((size_t)1 << 20, bf);
    }
  for (size_t s = 0; s < N_ROW_SHAPES; s++) {
    if (want("scale_rows")) scale_rows_case(row_shapes[s][0], row_shapes[s][1]);
    if (want("row_sumsq")) row_sumsq_case(row_shapes[s][0], row_shapes[s][1]);
  }
  if (want("row_sumsq")) row_sumsq_case(3, 40000);
  if (want("sqrt_inplace")) {
    sqrt_case(6);
    sqrt_case(1480);
    sqrt_case((size_t)1 << 20);
  }
  static const size_t ds[][2] = {{1, 1}, {37, 8}, {5120, 16}};
  for (size_t s = 0; s < 3; s++) {
    if (want("diag_scale")) diag_scale_case(ds[s][0], ds[s][1]);
    if (want("diag_scale_backward")) diag_scale_backward_case(ds[s][0], ds[s][1]);
  }
  if (want("cyclic_rows")) {
    cyclic_rows_case(40, 3, 40, 45, 40, 37, 0.0f);     // a permutation, phases past the widths
    cyclic_rows_case(64, 70, 40, 5, 40, 37, 1.0f);     // padding: part of dst untouched
    cyclic_rows_case(200, 11, 40, 0, 200, 37, 0.5f);   // tiling: src read five times
    cyclic_rows_case(8, 5, 40, 0, 40, 37, 0.3f);       // folding: five terms per position
    cyclic_rows_case(16, 0, 16, 0, 0, 1, 0.3f);        // len 0: dst = beta dst
    cyclic_rows_case(5120, 17, 160, 3, 5120, 512, 0.0f);  // a 13B-wide tiling
  }
}

/* ---------------------------------------------------------------------------------------------
 * generation: sample */

static int cmp_desc(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

/* temperature 0: the argmax, lowest id on ties: exact. Otherwise the id whose cumulative weight
 * first exceeds u * total over the kept ids, the weights exp((l - max) / T) in double. Model:
 * each weight within 2 ulp of double on either library, the prefix sums within gamma64(V) of
 * exact: the cumulative sums and u * total differ by at most tol = (2 V + 8) 2^-53 total, so the
 * candidate may return a neighbouring kept id only where the reference's boundary lies within
 * tol of u * total: id j is accepted when it is the reference's, or when it is kept and its
 * prefix sums bracket u * total within tol. */
static void sample_case(size_t V, float temp, size_t top_k, double u, int ties) {
  begin("sample", "V=%zu temperature=%g top_k=%zu u=%g%s", V, temp, top_k, u,
        ties ? " ties" : "");
  float *l = hrand(V, -5.0f, 5.0f);
  if (ties) l[V / 7] = l[V / 2] = 6.0f;
  float *dl = dputf(l, V), *dscratch = dnewf(V), *rscratch = hf(V);
  use_ref();
  const int64_t want_id = ref->sample(l, V, temp, top_k, u, rscratch);
  use_cand();
  const int64_t got = cand->sample(dl, V, temp, top_k, u, dscratch);
  if (temp == 0.0f) {
    check_exact("id", &got, &want_id, 1, sizeof got, 0);
  } else {
    float threshold = -INFINITY, mx = -INFINITY;
    if (top_k > 0 && top_k < V) {
      memcpy(rscratch, l, V * sizeof(float));
      qsort(rscratch, V, sizeof(float), cmp_desc);
      threshold = rscratch[top_k - 1];
    }
    for (size_t i = 0; i < V; i++) mx = l[i] > mx ? l[i] : mx;
    double total = 0.0, before = 0.0, upto = 0.0;
    for (size_t i = 0; i < V; i++) {
      if (l[i] < threshold) continue;
      const double w = exp(((double)l[i] - mx) / (double)temp);
      if ((int64_t)i < got) before += w;
      if ((int64_t)i <= got) upto += w;
      total += w;
    }
    const double r = u * total, tol = (2.0 * (double)V + 8.0) * U_F64 * total;
    const int kept = got >= 0 && (size_t)got < V && l[got] >= threshold;
    const int ok = got == want_id || (kept && before <= r + tol && upto >= r - tol);
    check_true("id", ok, "got %lld, reference %lld, u*total %.17g, prefix sums %.17g .. %.17g",
               (long long)got, (long long)want_id, r, before, upto);
  }
  dfree(dl), dfree(dscratch);
  ol_free(l), ol_free(rscratch);
}

static void test_sample(void) {
  if (!want("sample")) return;
  sample_case(1000, 0.0f, 0, 0.5, 0);
  sample_case(1000, 0.0f, 0, 0.5, 1);
  sample_case(1, 0.0f, 0, 0.5, 0);
  sample_case(1, 1.0f, 0, 0.9, 0);
  static const size_t ks[] = {0, 1, 50, 999, 1000, 1005};
  static const double us[] = {0.0, 0.3, 0.999999};
  for (size_t a = 0; a < 6; a++)
    for (size_t b = 0; b < 3; b++) sample_case(1000, a % 2 ? 0.7f : 1.0f, ks[a], us[b], a == 2);
  sample_case(32000, 0.0f, 0, 0.0, 0);
  sample_case(32000, 0.8f, 40, 0.61, 0);
  sample_case(32000, 1.0f, 0, 0.42, 0);
}

/* ---------------------------------------------------------------------------------------------
 * main */

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [--backend cuda|cpu-staged] [--wrong OP] [--only OP]\n", argv0);
  return 2;
}

int main(int argc, char **argv) {
  const char *backend = "cuda";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) backend = argv[++i];
    else if (strcmp(argv[i], "--wrong") == 0 && i + 1 < argc) wrong_op = argv[++i];
    else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) only_op = argv[++i];
    else return usage(argv[0]);
  }
  ref = ol_backend_cpu();
  if (strcmp(backend, "cuda") == 0) {
    if (!ol_cuda_built()) {
      printf("skip: this build has no CUDA backend (ONELORA_CUDA=OFF or no nvcc)\n");
      return 77;
    }
    if (ol_cuda_device_count() == 0) {  // the reason: no driver or device, or the module
      cand = ol_backend_cuda(0);
      printf("skip: no GPU is visible (%s)\n", cand ? "" : ol_last_error());
      return 77;
    }
    cand = ol_backend_cuda(0);
    if (!cand) {
      printf("FAIL: a GPU is visible but the CUDA backend did not start: %s\n", ol_last_error());
      return 1;
    }
    printf("candidate: cuda on %s\n", ol_cuda_device_name());
  } else if (strcmp(backend, "cpu-staged") == 0) {
    cand = ol_backend_cpu_staged();
    if (!cand) {
      printf("skip: cpu-staged needs a build with -DONELORA_TEST_HOOKS=ON\n");
      return 77;
    }
    printf("candidate: cpu-staged (the cpu kernels behind device-style buffers)\n");
  } else {
    return usage(argv[0]);
  }
  if (wrong_op) printf("--wrong %s: one input of each of its cases is perturbed\n", wrong_op);
  ol_rng_seed(&rng, 20240613);
  const double t0 = ol_now();

  test_memory();
  test_gemm();
  test_gemm_half();
  test_widen();
  test_gemv();
  test_embedding();
  test_rmsnorm();
  test_rope();
  test_attention();
  test_swiglu();
  test_cross_entropy();
  test_vector();
  test_onelora();
  test_adamw();
  test_lora();
  test_maps();
  test_sample();
  end_case();

  if (cases_run == 0) {
    fprintf(stderr, "no op named %s\n", only_op ? only_op : "(none)");
    return 2;
  }
  if (wrong_op && perturbed == 0) {
    fprintf(stderr, "--wrong %s: no such op, or none of its inputs could be perturbed\n", wrong_op);
    return 2;
  }
  printf("summary: %d of %d cases passed, %d failed (%s vs cpu, %.1f s)\n",
         cases_run - cases_failed, cases_run, cases_failed, cand->name, ol_now() - t0);
  return cases_failed ? 1 : 0;
}
