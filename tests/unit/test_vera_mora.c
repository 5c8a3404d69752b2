/* VeRA, MoRA type 1 and MoRA type 6.
 *
 * Whole model: gradients against central finite differences of the loss (MHA and GQA, and
 * vera,norms), identity at init, and merge equivalence. Single layer: forward, backward (both
 * beta semantics, gradient accumulation) and merge against naive double-precision
 * implementations written here from the definitions, on shapes chosen to exercise the cyclic
 * padding (k not a multiple of r^, and r^ > k so the padding wraps several times), truncation and
 * tiling (d < k_pad and d > k_pad), and more tokens than one scratch chunk. And VeRA's shared
 * frozen matrices: created once, shapes, bounds, determinism in the seed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

enum { B = 2, T = 8 };

/* ============================== whole-model fixture (harness.h) =========================== */
static ol_config tiny_config(int64_t kv_heads) { return fixture_tiny_config(kv_heads, 16, 0); }

/* A model for `methods` at `rank` (alpha 1), random weights 5x the 0.02 default, adapters at
 * their init, random tokens. */
static void init(fixture *f, const char *methods, const char *targets, int64_t rank, int64_t kv,
                 uint64_t seed) {
  const fixture_spec s = {B, T, tiny_config(kv), methods, targets, rank, 1.0, 5.0f, seed, 0};
  fixture_init(f, &s);
}

/* MoRA's square size, written from the definition: floor(sqrt((k + d) r) + 1/2), made even for
 * type 6 */
static size_t rhat_of(size_t k, size_t d, int64_t rank, int type) {
  size_t rhat = (size_t)floor(sqrt((double)(k + d) * (double)rank) + 0.5);
  return type == 6 ? rhat / 2 * 2 : rhat;
}

static size_t padded(size_t k, size_t rhat) { return (k + rhat - 1) / rhat * rhat; }

/* What the adapted linears of block 0 exercise: returns a bitmask of 1 = some k is not a
 * multiple of r^ (cyclic padding), 2 = some d < k_pad, 4 = some d > k_pad. Also checks every
 * mora_M has the shape [r^, r^]. */
static unsigned mora_coverage(const fixture *f, int type) {
  unsigned cover = 0;
  for (int p = 0; p < OL_PROJ_COUNT; p++) {
    const ol_linear *lin = &f->m.blocks[0].lin[p];
    if (!lin->n_adapters) continue;
    const size_t rhat = rhat_of(lin->in, lin->out, f->m.method.rank, type);
    const size_t kp = padded(lin->in, rhat);
    const ol_param_entry *e = &f->m.params.entries[lin->adapters[0].param[0]];
    assert_true(strstr(e->name, ".mora_M") != NULL);
    assert_int_equal(e->shape[0], rhat);
    assert_int_equal(e->shape[1], rhat);
    cover |= (lin->in % rhat ? 1u : 0u) | (lin->out < kp ? 2u : 0u) | (lin->out > kp ? 4u : 0u);
  }
  return cover;
}

/* ============================== (1) finite-difference gradients =========================== */
static void gradient_case(const char *methods, int64_t rank, int64_t kv, uint64_t seed,
                          float scale) {
  fixture f;
  init(&f, methods, "all", rank, kv, seed);
  fixture_randomize_trainables(&f, scale, seed + 11);
  fixture_check_gradient_default(&f, 32);
  fixture_free(&f);
}

static void test_vera_gradient_mha(void **state) { gradient_case("vera", 4, 4, 1, 0.5f); }
static void test_vera_gradient_gqa(void **state) { gradient_case("vera", 4, 2, 2, 0.5f); }
static void test_vera_norms_gradient_gqa(void **state) {
  gradient_case("vera,norms", 3, 2, 3, 0.5f);
}

static void test_mora_gradient_mha(void **state) {
  fixture f;
  init(&f, "mora", "all", 1, 4, 4);
  assert_true(mora_coverage(&f, 1) & 1u);  // gate, up: k 32, r^ 9; down: k 48, r^ 9
  fixture_randomize_trainables(&f, 0.05f, 15);
  fixture_check_gradient_default(&f, 32);
  fixture_free(&f);
}

static void test_mora_gradient_gqa(void **state) {
  fixture f;
  init(&f, "mora", "all", 2, 2, 5);
  assert_true(mora_coverage(&f, 1) & 1u);
  fixture_randomize_trainables(&f, 0.05f, 16);
  fixture_check_gradient_default(&f, 32);
  fixture_free(&f);
}

static void test_mora6_gradient_mha(void **state) {
  fixture f;
  init(&f, "mora6", "all", 1, 4, 6);
  // gate, up: r^ 8, k_pad 32 < d 48 (tiled); down: r^ 8, k_pad 48 > d 32 (truncated)
  assert_true((mora_coverage(&f, 6) & 6u) == 6u);
  fixture_randomize_trainables(&f, 0.05f, 17);
  fixture_check_gradient_default(&f, 32);
  fixture_free(&f);
}

static void test_mora6_gradient_gqa(void **state) {
  fixture f;
  init(&f, "mora6", "all", 1, 2, 7);
  // k, v: k 32, d 16, r^ 6: padded to 36 and truncated to 16
  assert_true((mora_coverage(&f, 6) & 3u) == 3u);
  fixture_randomize_trainables(&f, 0.05f, 18);
  fixture_check_gradient_default(&f, 32);
  fixture_free(&f);
}

/* ============================== (2) identity at init ======================================= */
static void identity_case(const char *method, int64_t rank) {
  fixture plain, adapted;
  init(&plain, "none", "all", rank, 2, 8);
  init(&adapted, method, "all", rank, 2, 8);
  ol_params *p = &adapted.m.params;
  size_t first_b = SIZE_MAX;  // a vera_lambda_b (or mora_M) value, to perturb below
  for (size_t i = 0; i < p->count; i++) {
    const ol_param_entry *e = &p->entries[i];
    const float want = strstr(e->name, ".vera_lambda_d") ? 0.1f : 0.0f;
    for (size_t j = 0; j < e->numel; j++) assert_true(p->data[e->offset + j] == want);
    if (want == 0.0f && first_b == SIZE_MAX) first_b = e->offset;
  }
  const double a = fixture_mean_loss(&plain), b = fixture_mean_loss(&adapted);
  printf("  %s: frozen loss %.9f, adapted at init %.9f\n", method, a, b);
  assert_true(a == b);
  // and moving the zero-initialised tensor changes the loss, so the comparison above can fail
  p->data[first_b] = 0.5f;
  assert_true(fixture_mean_loss(&adapted) != a);
  fixture_free(&plain);
  fixture_free(&adapted);
}

static void test_vera_identity_at_init(void **state) { identity_case("vera", 4); }
static void test_mora_identity_at_init(void **state) { identity_case("mora", 1); }
static void test_mora6_identity_at_init(void **state) { identity_case("mora6", 1); }

/* ============================== (3) merge equivalence ====================================== */
static void merge_case(const char *method, int64_t rank, int64_t kv, float scale) {
  fixture f;
  init(&f, method, "all", rank, kv, 9);
  fixture_randomize_trainables(&f, scale, 19);
  const size_t n = (size_t)B * T * f.m.cfg.dim;
  double adapted = fixture_mean_loss(&f);
  float *before = fixture_final_hidden(&f);  // (N, D) final residual of the adapted model
  ol_model_attach_adapters(&f.m, 0);  // the frozen model differs, so the check can fail
  double frozen = fixture_mean_loss(&f);
  ol_model_attach_adapters(&f.m, 1);
  ol_model_merge(&f.m);
  double merged = fixture_mean_loss(&f);
  float *after = fixture_final_hidden(&f);  // (N, D) and of the merged one
  double rel = harness_relative_diff(after, before, n);
  printf("  %s: frozen loss %.7f adapted %.7f merged %.7f, final hidden relative diff %.2e\n",
         method, frozen, adapted, merged, rel);
  assert_true(fabs(frozen - adapted) > 1e-3 * fabs(adapted));
  assert_true(fabs(adapted - merged) < 1e-5 * fabs(adapted));
  assert_true(rel < 1e-5);
  ol_free(after);
  ol_free(before);
  fixture_free(&f);
}

static void test_vera_merge(void **state) { merge_case("vera", 4, 2, 0.5f); }
static void test_mora_merge(void **state) { merge_case("mora", 1, 2, 0.05f); }
static void test_mora6_merge(void **state) { merge_case("mora6", 1, 4, 0.05f); }

/* ============================== (4) one layer against naive code ========================== */
typedef struct {
  ol_params params;
  ol_frozen frozen;
  ol_method method;
  ol_linear lin;  // W (d, k) zero: the adapter alone
} single;

/* One linear (d, k) with one adapter of `kind`, declared through the seam as the model does */
static void single_init(single *s, const char *kind, size_t d, size_t k, int64_t rank,
                        size_t k_max, size_t d_max, uint64_t seed) {
  memset(s, 0, sizeof *s);
  assert_int_equal(ol_method_parse(kind, "q", rank, 1.0, &s->method),
                   OL_OK);
  ol_linear *lin = &s->lin;
  snprintf(lin->name, sizeof lin->name, "test.proj");
  lin->out = d, lin->in = k, lin->ldw = k, lin->w_param = -1;
  ol_peft_ctx ctx = {&s->params, &s->frozen, &s->method, seed, k_max, d_max};
  ol_adapter *a = &lin->adapters[lin->n_adapters++];
  a->ops = ol_adapter_find(kind);
  a->ops->declare(a, lin, &ctx);
  ol_params_alloc(&s->params);
  ol_adapter_bind(a, &s->params);
  a->state = ol_calloc(a->state_floats, sizeof(float));
  lin->W = ol_calloc(d * k, sizeof(float));
  ol_rng r;  // trainables away from init: lambda_b, lambda_d, M all random
  ol_rng_seed(&r, seed + 1);
  for (size_t i = 0; i < s->params.total; i++) s->params.data[i] = 0.5f * ol_rng_normal(&r);
}

static void single_free(single *s) {
  ol_free(s->lin.adapters[0].state);
  ol_free(s->lin.W);
  ol_params_free(&s->params);
  ol_frozen_free(&s->frozen);
}

/* A naive forward: y (d) = the adapter's delta W x for one token x (k), in double */
typedef void (*naive_fn)(const single *s, const float *x, double *y);

static void naive_mora1(const single *s, const float *x, double *y) {
  const size_t k = s->lin.in, d = s->lin.out;
  const size_t rhat = rhat_of(k, d, s->method.rank, 1), kp = padded(k, rhat);
  const float *M = s->params.data;  // (r^, r^), the only tensor
  double c[256] = {0}, mc[256];
  assert_true(rhat <= 256);
  for (size_t p = 0; p < kp; p++) c[p % rhat] += x[p % k];  // x_pad[p] = x[p mod k]
  for (size_t a = 0; a < rhat; a++) {
    mc[a] = 0;
    for (size_t b = 0; b < rhat; b++) mc[a] += M[a * rhat + b] * c[b];
  }
  for (size_t i = 0; i < d; i++) y[i] = mc[i % rhat];  // tile, truncate to d
}

static void naive_mora6(const single *s, const float *x, double *y) {
  const size_t k = s->lin.in, d = s->lin.out;
  const size_t rhat = rhat_of(k, d, s->method.rank, 6), kp = padded(k, rhat), h = rhat / 2;
  const float *M = s->params.data;  // (r^, r^)
  double o[1024], z[256];           // o (k_pad): every group's M rot(x_g), concatenated
  assert_true(kp <= 1024 && rhat <= 256);
  for (size_t g = 0; g < kp / rhat; g++) {
    const size_t base = g * rhat;
    for (size_t i = 0; i < h; i++) {  // HF rotate_half at position g
      const double angle = (double)g * pow(10000.0, -2.0 * (double)i / (double)rhat);
      const double v1 = x[(base + i) % k], v2 = x[(base + i + h) % k];
      z[i] = v1 * cos(angle) - v2 * sin(angle);
      z[i + h] = v2 * cos(angle) + v1 * sin(angle);
    }
    for (size_t a = 0; a < rhat; a++) {
      o[base + a] = 0;
      for (size_t b = 0; b < rhat; b++) o[base + a] += M[a * rhat + b] * z[b];
    }
  }
  for (size_t i = 0; i < d; i++) y[i] = o[i % kp];  // truncate, or tile then truncate
}

static void naive_vera(const single *s, const float *x, double *y) {
  const size_t k = s->lin.in, d = s->lin.out, r = (size_t)s->method.rank;
  const ol_frozen_entry *A = ol_frozen_find(&s->frozen, "vera_A");  // (r, k_max)
  const ol_frozen_entry *Bm = ol_frozen_find(&s->frozen, "vera_B");  // (d_max, r)
  const float *lambda_b = ol_params_value(&s->params, 0);  // (d)
  const float *lambda_d = ol_params_value(&s->params, 1);  // (r)
  double h[64];
  assert_true(r <= 64);
  for (size_t j = 0; j < r; j++) {
    double u = 0;
    for (size_t l = 0; l < k; l++) u += (double)A->data[j * A->shape[1] + l] * x[l];
    h[j] = lambda_d[j] * u;
  }
  for (size_t i = 0; i < d; i++) {
    double g = 0;
    for (size_t j = 0; j < r; j++) g += (double)Bm->data[i * r + j] * h[j];
    y[i] = lambda_b[i] * g;
  }
}

static double rel_err(const float *got, const double *want, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; i++) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    ref += want[i] * want[i];
  }
  assert_true(ref > 0);
  return sqrt(diff / ref);
}

/* Forward (beta 0 over NaN garbage, and beta 1), backward (beta 0 over NaN garbage, beta 1,
 * gradients accumulating) and merge of s's adapter for N tokens, against `naive`. The naive
 * gradients come from linearity: dx = dy delta W with delta W's columns the naive outputs for
 * the unit inputs, and since the output is linear in each trainable tensor on its own,
 * d<dy, y>/d theta_m = <dy, y with theta = e_m>. */
static void check_single(single *s, naive_fn naive, size_t N) {
  ol_linear *lin = &s->lin;
  ol_adapter *a = &lin->adapters[0];
  const size_t k = lin->in, d = lin->out, per = a->ops->saved_per_token(a, lin);
  float *x = ol_calloc(N * k, sizeof(float));      // (N, k)
  float *y = ol_calloc(N * d, sizeof(float));      // (N, d)
  float *y0 = ol_calloc(N * d, sizeof(float));     // (N, d) what beta 1 accumulates onto
  float *dy = ol_calloc(N * d, sizeof(float));     // (N, d)
  float *dx = ol_calloc(N * k, sizeof(float));     // (N, k)
  float *dx0 = ol_calloc(N * k, sizeof(float));    // (N, k)
  float *saved = ol_calloc(N * per, sizeof(float));  // (N, saved_per_token)
  double *want_y = ol_calloc(N * d, sizeof(double));  // (N, d)
  double *dW = ol_calloc(d * k, sizeof(double));      // (d, k) naive delta W
  double *want_dx = ol_calloc(N * k, sizeof(double)); // (N, k)
  double *want_g = ol_calloc(s->params.total, sizeof(double));  // (total)
  double *want = ol_calloc(N * (d + k) + s->params.total, sizeof(double));  // expected values
  double *col = ol_calloc(d, sizeof(double));  // (d)
  float *e = ol_calloc(k, sizeof(float));      // (k)
  ol_rng r;
  ol_rng_seed(&r, 1234);
  for (size_t i = 0; i < N * k; i++) x[i] = ol_rng_normal(&r), dx0[i] = ol_rng_normal(&r);
  for (size_t i = 0; i < N * d; i++) dy[i] = ol_rng_normal(&r), y0[i] = ol_rng_normal(&r);

  // forward
  for (size_t t = 0; t < N; t++) naive(s, x + t * k, want_y + t * d);
  for (size_t i = 0; i < N * d; i++) y[i] = NAN;
  a->ops->forward(a, lin, x, y, N, 0.0f, saved);
  printf("  forward beta 0: relative error %.2e\n", rel_err(y, want_y, N * d));
  assert_true(rel_err(y, want_y, N * d) < 1e-5);
  memcpy(y, y0, N * d * sizeof(float));
  a->ops->forward(a, lin, x, y, N, 1.0f, saved);
  for (size_t i = 0; i < N * d; i++) want[i] = y0[i] + want_y[i];
  assert_true(rel_err(y, want, N * d) < 1e-5);

  // naive delta W, dx = dy delta W and the trainables' gradients
  for (size_t j = 0; j < k; j++) {
    e[j] = 1.0f;
    naive(s, e, col);
    for (size_t i = 0; i < d; i++) dW[i * k + j] = col[i];
    e[j] = 0.0f;
  }
  for (size_t t = 0; t < N; t++)
    for (size_t j = 0; j < k; j++)
      for (size_t i = 0; i < d; i++) want_dx[t * k + j] += dy[t * d + i] * dW[i * k + j];
  for (size_t pi = 0; pi < s->params.count; pi++) {
    const ol_param_entry *pe = &s->params.entries[pi];
    float *theta = s->params.data + pe->offset;
    float *keep = ol_calloc(pe->numel, sizeof(float));
    memcpy(keep, theta, pe->numel * sizeof(float));
    memset(theta, 0, pe->numel * sizeof(float));
    for (size_t m = 0; m < pe->numel; m++) {
      theta[m] = 1.0f;
      double acc = 0;
      for (size_t t = 0; t < N; t++) {
        naive(s, x + t * k, col);
        for (size_t i = 0; i < d; i++) acc += dy[t * d + i] * col[i];
      }
      want_g[pe->offset + m] = acc;
      theta[m] = 0.0f;
    }
    memcpy(theta, keep, pe->numel * sizeof(float));
    ol_free(keep);
  }

  // backward, beta 0 over garbage: dx and fresh gradients
  memset(s->params.grad, 0, s->params.total * sizeof(float));
  a->ops->forward(a, lin, x, y, N, 0.0f, saved);
  for (size_t i = 0; i < N * k; i++) dx[i] = NAN;
  a->ops->backward(a, lin, dy, dx, N, 0.0f, saved);
  printf("  backward: dx relative error %.2e, gradients %.2e\n", rel_err(dx, want_dx, N * k),
         rel_err(s->params.grad, want_g, s->params.total));
  assert_true(rel_err(dx, want_dx, N * k) < 1e-5);
  assert_true(rel_err(s->params.grad, want_g, s->params.total) < 1e-5);
  // beta 1: dx accumulates onto dx0 and the gradients accumulate (to twice the above)
  a->ops->forward(a, lin, x, y, N, 0.0f, saved);
  memcpy(dx, dx0, N * k * sizeof(float));
  a->ops->backward(a, lin, dy, dx, N, 1.0f, saved);
  for (size_t i = 0; i < N * k; i++) want[i] = dx0[i] + want_dx[i];
  assert_true(rel_err(dx, want, N * k) < 1e-5);
  for (size_t i = 0; i < s->params.total; i++) want[i] = 2.0 * want_g[i];
  assert_true(rel_err(s->params.grad, want, s->params.total) < 1e-5);

  // merge into W = 0 gives delta W
  a->ops->merge(a, lin);
  printf("  merge: relative error %.2e\n", rel_err(lin->W, dW, d * k));
  assert_true(rel_err(lin->W, dW, d * k) < 1e-5);

  ol_free(x), ol_free(y), ol_free(y0), ol_free(dy), ol_free(dx), ol_free(dx0), ol_free(saved);
  ol_free(want_y), ol_free(dW), ol_free(want_dx), ol_free(want_g), ol_free(want), ol_free(col);
  ol_free(e);
}

typedef struct {
  size_t d, k;
  int64_t rank;
  size_t N;
} layer_case;

static void mora_single_cases(const char *kind, int type, const layer_case *cases,
                              size_t n_cases, unsigned want_cover) {
  unsigned cover = 0;
  for (size_t c = 0; c < n_cases; c++) {
    const layer_case *lc = &cases[c];
    const size_t rhat = rhat_of(lc->k, lc->d, lc->rank, type), kp = padded(lc->k, rhat);
    printf(" d %zu k %zu rank %lld: r^ %zu, k_pad %zu, %zu tokens\n", lc->d, lc->k,
           (long long)lc->rank, rhat, kp, lc->N);
    cover |= (lc->k % rhat ? 1u : 0u) | (kp >= 2 * lc->k ? 2u : 0u) | (lc->d < kp ? 4u : 0u) |
             (lc->d > kp ? 8u : 0u) | (lc->d % rhat ? 16u : 0u);
    single s;
    single_init(&s, kind, lc->d, lc->k, lc->rank, lc->k, lc->d, 40 + c);
    assert_int_equal(s.params.count, 1);
    assert_int_equal(s.params.entries[0].shape[0], rhat);
    assert_int_equal(s.params.entries[0].shape[1], rhat);
    assert_string_equal(s.params.entries[0].name, "test.proj.mora_M");
    check_single(&s, type == 6 ? naive_mora6 : naive_mora1, lc->N);
    single_free(&s);
  }
  assert_true((cover & want_cover) == want_cover);  // the cases cover what they claim
}

static void test_mora_single_layer(void **state) {
  const layer_case cases[] = {
      {20, 13, 1, 5},   // r^ 6: k padded 13 -> 18; d 20 = 3 tiles of 6 and 2
      {5, 7, 40, 3},    // r^ 22 > k: x_pad wraps x three times; d < r^
      {300, 50, 2, 70}, // r^ 26, k_pad 52; more tokens than one chunk
  };
  mora_single_cases("mora", 1, cases, 3, 1u | 2u | 16u);
}

static void test_mora6_single_layer(void **state) {
  const layer_case cases[] = {
      {20, 13, 1, 5},   // r^ 6, k_pad 18 < d 20: tiled
      {10, 30, 2, 4},   // r^ 9 -> 8, k_pad 32 > d 10: truncated
      {7, 5, 30, 3},    // r^ 19 -> 18: one group wrapping x (k 5) almost four times
      {300, 50, 2, 40}, // r^ 26, two groups, tiled about six times; more tokens than a chunk
  };
  mora_single_cases("mora6", 6, cases, 4, 1u | 2u | 4u | 8u);
}

static void test_vera_single_layer(void **state) {
  // the slices: k 20 of k_max 33, d 300 of d_max 310; d spans two blocks of output rows
  single s;
  single_init(&s, "vera", 300, 20, 3, 33, 310, 50);
  assert_int_equal(s.params.count, 2);
  assert_string_equal(s.params.entries[0].name, "test.proj.vera_lambda_b");
  assert_int_equal(s.params.entries[0].shape[0], 300);
  assert_string_equal(s.params.entries[1].name, "test.proj.vera_lambda_d");
  assert_int_equal(s.params.entries[1].shape[0], 3);
  check_single(&s, naive_vera, 70);
  single_free(&s);
}

/* ============================== VeRA's shared frozen matrices ============================== */
static void test_vera_shared_frozen(void **state) {
  // targets k (d 16, k 32 with GQA) and down (d 32, k 48): k_max 48, d_max 32
  const int64_t r = 5;
  ol_method method;
  assert_int_equal(ol_method_parse("vera", "k,down", r, 1.0, &method), OL_OK);
  ol_config c = tiny_config(2);
  ol_model m1, m2, m3;
  assert_int_equal(ol_model_build(&m1, &c, &method, 21), OL_OK);
  assert_int_equal(ol_model_build(&m2, &c, &method, 21), OL_OK);
  assert_int_equal(ol_model_build(&m3, &c, &method, 22), OL_OK);
  assert_int_equal(m1.generated.count, 2);  // once for the model, not once per layer
  const ol_frozen_entry *A = ol_frozen_find(&m1.generated, "vera_A");
  const ol_frozen_entry *Bm = ol_frozen_find(&m1.generated, "vera_B");
  assert_non_null(A);
  assert_non_null(Bm);
  assert_int_equal(A->ndim, 2);
  assert_int_equal(A->shape[0], r);
  assert_int_equal(A->shape[1], 48);
  assert_int_equal(Bm->ndim, 2);
  assert_int_equal(Bm->shape[0], 32);
  assert_int_equal(Bm->shape[1], r);
  // every adapted layer reads these two, and only the targets are adapted
  int adapted = 0;
  for (size_t l = 0; l < (size_t)c.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      const ol_linear *lin = &m1.blocks[l].lin[p];
      assert_int_equal(lin->n_adapters, (p == OL_K || p == OL_DOWN) ? 1 : 0);
      if (!lin->n_adapters) continue;
      assert_ptr_equal(lin->adapters[0].frozen[0], A->data);
      assert_ptr_equal(lin->adapters[0].frozen[1], Bm->data);
      adapted++;
    }
  assert_int_equal(adapted, 2 * c.n_layers);
  // U(-sqrt(6 / fan_in), +sqrt(6 / fan_in)): fan_in k_max for A and r for B; the values fill
  // the interval (so a smaller bound fails too) and average near 0
  const struct { const ol_frozen_entry *e; double bound; } mats[2] = {
      {A, sqrt(6.0 / 48.0)}, {Bm, sqrt(6.0 / (double)r)}};
  for (int i = 0; i < 2; i++) {
    const size_t n = mats[i].e->shape[0] * mats[i].e->shape[1];
    double lo = 1e9, hi = -1e9, mean = 0;
    for (size_t j = 0; j < n; j++) {
      const double v = mats[i].e->data[j];
      assert_true(fabs(v) <= mats[i].bound * (1 + 1e-6));  // up to the float rounding
      lo = fmin(lo, v), hi = fmax(hi, v), mean += v / (double)n;
    }
    printf("  %s: n %zu in [%.4f, %.4f], bound %.4f, mean %.4f\n", mats[i].e->name, n, lo, hi,
           mats[i].bound, mean);
    assert_true(hi > 0.9 * mats[i].bound && lo < -0.9 * mats[i].bound);
    assert_true(fabs(mean) < 0.2 * mats[i].bound);
  }
  // the same seed gives the same matrices; another seed other ones
  const char *names[2] = {"vera_A", "vera_B"};
  for (int i = 0; i < 2; i++) {
    const ol_frozen_entry *e1 = ol_frozen_find(&m1.generated, names[i]);
    const ol_frozen_entry *e2 = ol_frozen_find(&m2.generated, names[i]);
    const ol_frozen_entry *e3 = ol_frozen_find(&m3.generated, names[i]);
    const size_t n = e1->shape[0] * e1->shape[1];
    assert_memory_equal(e1->data, e2->data, n * sizeof(float));
    size_t same = 0;
    for (size_t j = 0; j < n; j++) same += e1->data[j] == e3->data[j];
    assert_true(same < n / 10);
  }
  // A and B are not the same stream
  assert_true(A->data[0] != Bm->data[0] || A->data[1] != Bm->data[1]);
  ol_model_free(&m1);
  ol_model_free(&m2);
  ol_model_free(&m3);
}

static int setup(void **state) {
  ol_backend_set(ol_backend_cpu());
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vera_gradient_mha),
      cmocka_unit_test(test_vera_gradient_gqa),
      cmocka_unit_test(test_vera_norms_gradient_gqa),
      cmocka_unit_test(test_mora_gradient_mha),
      cmocka_unit_test(test_mora_gradient_gqa),
      cmocka_unit_test(test_mora6_gradient_mha),
      cmocka_unit_test(test_mora6_gradient_gqa),
      cmocka_unit_test(test_vera_identity_at_init),
      cmocka_unit_test(test_mora_identity_at_init),
      cmocka_unit_test(test_mora6_identity_at_init),
      cmocka_unit_test(test_vera_merge),
      cmocka_unit_test(test_mora_merge),
      cmocka_unit_test(test_mora6_merge),
      cmocka_unit_test(test_mora_single_layer),
      cmocka_unit_test(test_mora6_single_layer),
      cmocka_unit_test(test_vera_single_layer),
      cmocka_unit_test(test_vera_shared_frozen),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
