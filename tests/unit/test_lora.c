/* LoRA and DoRA on the whole tiny model: gradients against central finite differences of the
 * loss, the identity at init, merge equivalence, gradient accumulation over micro-batches, one
 * linear against the formula computed in double, and the memory each keeps.
 *
 * DoRA's row norm n = |W + sBA|_row is detached (treated as a constant in backward), so its
 * analytic gradient is the gradient of the loss with n held at its value. The finite
 * differences for DoRA therefore run with the adapters' rescale_forward wrapped so that n stays
 * at the reference point's value (test_dora_norm_is_detached shows that without the wrapper the
 * two differ, i.e. the norm's own gradient is really left out).
 *
 * The harness (fixture, loss, finite differences) is tests/unit/harness.h, here with
 * N = B*T = 80 tokens so DoRA's backward recomputes z in a full and a partial chunk of 64. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

enum { B = 2, T = 40, RANK = 2 };
static const double ALPHA = 3.0;  /* s = alpha / r = 1.5, so a missing s is caught */

/* A model for `methods` on all targets at RANK and ALPHA, random weights 5x the 0.02 default,
 * the adapters at their init, random tokens: see harness.h. */
static void init(fixture *f, const char *methods, int64_t kv, int64_t bias, uint64_t seed) {
  const fixture_spec s = {B, T, fixture_tiny_config(kv, 64, bias), methods, "all", RANK, ALPHA,
                          5.0f, seed, 0};
  fixture_init(f, &s);
}

/* ---- DoRA with its norm held fixed, for the finite differences ---------------------------
 * dora.c keeps 1/n in the first d floats of a->state. The wrapper lets DoRA recompute n for
 * the perturbed parameters, then undoes that: z is rescaled from 1/n_new to the held 1/n and
 * the held values are put back, so every perturbed forward sees the reference point's n. */
static ol_adapter_ops held_norm_ops;
#define DORA_OPS (ol_adapter_find("dora"))

static void held_rescale_forward(ol_adapter *a, const ol_linear *lin, float *z, size_t N,
                                 float *saved) {
  const size_t d = lin->out;
  float *held = ol_calloc(d, sizeof(float));  // (d) 1/n at the reference point
  memcpy(held, a->state, d * sizeof(float));
  DORA_OPS->rescale_forward(a, lin, z, N, saved);  // z *= m / n_new, a->state = 1/n_new
  for (size_t t = 0; t < N; t++)
    for (size_t i = 0; i < d; i++) z[t * d + i] *= held[i] / a->state[i];
  memcpy(a->state, held, d * sizeof(float));
  ol_free(held);
}

/* swaps every DoRA adapter between the real ops and the held-norm wrapper */
static void hold_dora_norms(fixture *f, int on) {
  held_norm_ops = *DORA_OPS;
  held_norm_ops.rescale_forward = held_rescale_forward;
  for (size_t l = 0; l < (size_t)f->m.cfg.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *lin = &f->m.blocks[l].lin[p];
      for (int i = 0; i < lin->n_adapters; i++) {
        ol_adapter *a = &lin->adapters[i];
        if (a->ops == DORA_OPS || a->ops == &held_norm_ops)
          a->ops = on ? &held_norm_ops : DORA_OPS;
      }
    }
}

/* The finite differences (eps 1e-2, 2e-2 relative: see harness.h); with hold_norms they see
 * DoRA's norm held fixed. */
static void check_gradient(fixture *f, size_t n_coords, int hold_norms) {
  const fd_check c = {n_coords, 1e-2, 2e-2, hold_norms ? hold_dora_norms : NULL};
  fixture_check_gradient(f, &c);
}

/* Moves every trainable away from its init so that each term of the backward matters:
 * A and B ~ 0.2 N(0,1) (s B A is then ~10% of W), DoRA's m = |W|_row (1 + 0.3 N(0,1)), norm
 * weights 1 + 0.05 N(0,1). */
static void randomize_trainables(fixture *f, uint64_t seed) {
  ol_rng r;
  ol_rng_seed(&r, seed);
  ol_params *p = &f->m.params;
  for (size_t e = 0; e < p->count; e++) {
    const ol_param_entry *pe = &p->entries[e];
    float *v = p->data + pe->offset;
    if (strstr(pe->name, ".lora_A") || strstr(pe->name, ".lora_B")) {
      for (size_t j = 0; j < pe->numel; j++) v[j] = 0.2f * ol_rng_normal(&r);
    } else if (strstr(pe->name, ".dora_m")) {
      for (size_t j = 0; j < pe->numel; j++) v[j] *= 1.0f + 0.3f * ol_rng_normal(&r);
    } else {
      OL_CHECK(strstr(pe->name, "norm") != NULL);
      for (size_t j = 0; j < pe->numel; j++) v[j] = 1.0f + 0.05f * ol_rng_normal(&r);
    }
  }
}

/* ---- gradients ----------------------------------------------------------------------------- */

static void test_lora_gradient_mha(void **state) {
  fixture f;
  init(&f, "lora", 4, 0, 1);
  randomize_trainables(&f, 11);
  check_gradient(&f, 32, 0);
  fixture_free(&f);
}

static void test_lora_norms_gradient_gqa(void **state) {
  fixture f;
  init(&f, "lora,norms", 2, 0, 2);
  randomize_trainables(&f, 12);
  check_gradient(&f, 32, 0);
  fixture_free(&f);
}

static void test_dora_gradient_gqa(void **state) {
  fixture f;
  init(&f, "dora", 2, 0, 3);
  randomize_trainables(&f, 13);
  check_gradient(&f, 32, 1);
  fixture_free(&f);
}

static void test_dora_norms_gradient_with_bias(void **state) {
  fixture f;  // frozen biases: added after the rescaling, so they must not enter z or dm
  init(&f, "dora,norms", 4, 1, 4);
  randomize_trainables(&f, 14);
  check_gradient(&f, 32, 1);
  fixture_free(&f);
}

/* The held-norm wrapper is not a no-op: the loss with the norm recomputed (the full function)
 * has a different derivative along B than the detached analytic gradient. */
static void test_dora_norm_is_detached(void **state) {
  fixture f;
  init(&f, "dora", 2, 0, 5);
  randomize_trainables(&f, 15);
  ol_params *p = &f.m.params;
  fixture_gradient(&f);
  float *x0 = ol_calloc(p->total, sizeof(float));
  memcpy(x0, p->data, p->total * sizeof(float));
  float *u = ol_calloc(p->total, sizeof(float));  // along the gradient's B part only
  double gu = 0, norm = 0;
  for (size_t e = 0; e < p->count; e++)
    if (strstr(p->entries[e].name, ".lora_B"))
      for (size_t j = 0; j < p->entries[e].numel; j++) {
        size_t i = p->entries[e].offset + j;
        u[i] = p->grad[i], norm += (double)u[i] * u[i];
      }
  for (size_t i = 0; i < p->total; i++) u[i] /= (float)sqrt(norm), gu += (double)p->grad[i] * u[i];
  double full = fixture_directional_fd(&f, x0, u, 1e-2);
  hold_dora_norms(&f, 1);
  double held = fixture_directional_fd(&f, x0, u, 1e-2);
  hold_dora_norms(&f, 0);
  printf("  along dB: analytic %.6e  held-norm fd %.6e  full fd %.6e\n", gu, held, full);
  const double tol = 2e-2;  // the finite-difference check's tolerance (check_gradient)
  assert_true(fabs(held - gu) <= tol * fabs(held));
  assert_true(fabs(full - gu) > 2 * tol * fabs(gu));  // fails that check, with a factor 2 margin
  ol_free(u);
  ol_free(x0);
  fixture_free(&f);
}

/* ---- identity at init -------------------------------------------------------------------- */

/* `methods` at its init equals the frozen model (to rel_tol), and moving the trainables changes
 * the output, so the comparison can fail */
static void check_identity_at_init(const char *methods, int64_t kv, double rel_tol) {
  fixture plain, adapted;
  init(&plain, "none", kv, 0, 6);
  init(&adapted, methods, kv, 0, 6);
  double a = fixture_mean_loss(&plain);
  float *h_plain = fixture_final_hidden(&plain);
  double b = fixture_mean_loss(&adapted);
  float *h_adapted = fixture_final_hidden(&adapted);
  const size_t n = (size_t)B * T * (size_t)plain.m.cfg.dim;
  double rel = harness_relative_diff(h_adapted, h_plain, n);
  printf("  %s at init: loss %.9f vs frozen %.9f, final hidden relative diff %.2e\n", methods, b,
         a, rel);
  assert_true(fabs(a - b) <= rel_tol * fabs(a));
  assert_true(rel <= rel_tol);
  randomize_trainables(&adapted, 16);
  double c = fixture_mean_loss(&adapted);
  float *h_moved = fixture_final_hidden(&adapted);
  double rel_moved = harness_relative_diff(h_moved, h_plain, n);
  printf("  moved: loss %.9f, final hidden relative diff %.2e\n", c, rel_moved);
  // the moved model fails both comparisons. Its hidden state moves by O(1) (s B A is ~10% of
  // each W, compounded over the blocks), so 1e-2 leaves a wide margin; its loss, near log V for
  // random weights, moves far less but must still leave rel_tol
  assert_true(rel_moved > 1e-2);
  assert_true(fabs(c - a) > rel_tol * fabs(a));
  ol_free(h_moved);
  ol_free(h_plain);
  ol_free(h_adapted);
  fixture_free(&plain);
  fixture_free(&adapted);
}

static void test_lora_zero_b_is_identity(void **state) {
  // B = 0 exactly: the adapter's term is an exact 0 that the frozen GEMM accumulates onto
  check_identity_at_init("lora", 4, 0.0);
  fixture f;  // and init really drew A (B = 0 alone would hide an A left at zero)
  init(&f, "lora", 4, 0, 6);
  const ol_adapter *a = &f.m.blocks[0].lin[OL_Q].adapters[0];
  const size_t k = f.m.blocks[0].lin[OL_Q].in;
  const size_t n = RANK * k;  // 64 draws of U(-b, b): mean 0 (std b / 14), mean square b^2 / 3
  double sum = 0, sumsq = 0, lo = 0, hi = 0, bound = 1.0 / sqrt((double)k);
  for (size_t i = 0; i < n; i++) {
    double v = a->value[0][i];
    sum += v, sumsq += v * v, lo = fmin(lo, v), hi = fmax(hi, v);
  }
  printf("  A: mean %.4f, mean square %.4e (expected %.4e), range [%.4f, %.4f] in +-%.4f\n",
         sum / n, sumsq / n, bound * bound / 3, lo, hi, bound);
  assert_true(fabs(sum / n) < 0.25 * bound);
  assert_true(fabs(sumsq / n / (bound * bound / 3) - 1) < 0.35);
  assert_true(lo >= -bound && hi <= bound && lo < -0.8 * bound && hi > 0.8 * bound);
  for (size_t i = 0; i < f.m.blocks[0].lin[OL_Q].out * RANK; i++)
    assert_true(a->value[1][i] == 0.0f);
  fixture_free(&f);
}

static void test_dora_init_is_identity(void **state) {
  // m = |W|_row and B = 0: m / n = 1 up to the rounding of two square roots
  check_identity_at_init("dora", 2, 1e-6);
}

/* ---- merge equivalence --------------------------------------------------------------------- */

/* Merges a second, identical model that has run no forward, as `onelora merge` does: merge
 * may not rely on anything a forward leaves behind (DoRA's norms). */
static void check_merge(const char *methods, int64_t kv, int64_t bias, uint64_t seed) {
  fixture f, g;
  init(&f, methods, kv, bias, seed);
  randomize_trainables(&f, seed + 100);
  double adapted = fixture_mean_loss(&f);
  float *h_adapted = fixture_final_hidden(&f);
  init(&g, methods, kv, bias, seed);
  randomize_trainables(&g, seed + 100);
  ol_model_merge(&g.m);  // adapters folded into W and detached: a plain forward follows
  double merged = fixture_mean_loss(&g);
  float *h_merged = fixture_final_hidden(&g);
  double rel = harness_relative_diff(h_merged, h_adapted, (size_t)B * T * (size_t)f.m.cfg.dim);
  printf("  %s: adapted loss %.7f merged loss %.7f, final hidden relative diff %.2e\n", methods,
         adapted, merged, rel);
  assert_true(fabs(adapted - merged) < 1e-5 * fabs(adapted));
  assert_true(rel < 1e-5);
  ol_free(h_adapted);
  ol_free(h_merged);
  fixture_free(&f);
  fixture_free(&g);
}

static void test_lora_merge_matches_adapter(void **state) { check_merge("lora", 4, 0, 7); }
static void test_dora_merge_matches_adapter(void **state) { check_merge("dora", 2, 0, 8); }
static void test_dora_merge_with_bias(void **state) { check_merge("dora,norms", 2, 1, 9); }

/* ---- gradient accumulation ----------------------------------------------------------------
 * The gradient of the mean over B sequences equals the sum of the gradients of two micro-batches
 * of one sequence each: every gradient must accumulate, and DoRA's state must not carry
 * anything from one micro-batch into the next. */
static void check_micro_batches(const char *methods, uint64_t seed) {
  fixture whole, half;
  init(&whole, methods, 2, 0, seed);
  randomize_trainables(&whole, seed + 100);
  init(&half, methods, 2, 0, seed);
  randomize_trainables(&half, seed + 100);
  double rel = fixture_micro_batch_diff(&whole, &half);
  printf("  %s: two micro-batches vs one batch, gradient relative diff %.2e\n", methods, rel);
  assert_true(rel < 1e-5);
  fixture_free(&whole);
  fixture_free(&half);
}

static void test_micro_batches_accumulate(void **state) {
  check_micro_batches("lora", 17);
  check_micro_batches("dora", 18);
}

/* ---- one linear against the formula, in double ------------------------------------------------
 * The gradient and merge tests compare the code with itself through DoRA's norm; this one
 * checks y = beta y + (m / |W + sBA|_row) * (W x + s B A x) (DoRA) or W x + s B A x (LoRA)
 * computed directly, and that DoRA's state holds 1/n. */
static void check_linear(const char *methods, double beta) {
  fixture f;
  init(&f, methods, 2, 0, 12);
  randomize_trainables(&f, 112);
  fixture_mean_loss(&f);  // binds lin->work
  ol_linear *lin = &f.m.blocks[1].lin[OL_DOWN];  // (d, k) = (32, 48)
  const ol_adapter *a = &lin->adapters[0];
  const int dora = a->ops == DORA_OPS;
  const size_t N = (size_t)B * T, d = lin->out, k = lin->in, r = RANK;
  const double s = ALPHA / RANK;
  ol_rng rng;
  ol_rng_seed(&rng, 21);
  float *x = ol_calloc(N * k, sizeof(float));  // (N, k)
  float *y = ol_calloc(N * d, sizeof(float));  // (N, d)
  float *y0 = ol_calloc(N * d, sizeof(float)); // (N, d)
  float *saved = ol_calloc(N * ol_linear_saved_per_token(lin), sizeof(float));
  for (size_t i = 0; i < N * k; i++) x[i] = ol_rng_normal(&rng);
  for (size_t i = 0; i < N * d; i++) y0[i] = y[i] = ol_rng_normal(&rng);
  ol_linear_forward(lin, x, y, N, (float)beta, saved);

  const float *A = a->value[0], *Bm = a->value[1];  // (r, k), (d, r)
  double *Wp = ol_calloc(d * k, sizeof(double));    // (d, k) W + s B A
  double *g = ol_calloc(d, sizeof(double));         // (d) m / n, or 1
  for (size_t i = 0; i < d; i++) {
    double n2 = 0;
    for (size_t j = 0; j < k; j++) {
      double w = lin->W[i * k + j];
      for (size_t q = 0; q < r; q++) w += s * Bm[i * r + q] * A[q * k + j];
      Wp[i * k + j] = w, n2 += w * w;
    }
    g[i] = dora ? a->value[2][i] / sqrt(n2) : 1.0;
    if (dora) assert_true(fabs(a->state[i] * sqrt(n2) - 1.0) < 1e-5);  // state = 1/n
  }
  double err = 0, ref = 0;
  for (size_t t = 0; t < N; t++)
    for (size_t i = 0; i < d; i++) {
      double acc = 0;
      for (size_t j = 0; j < k; j++) acc += Wp[i * k + j] * x[t * k + j];
      double want = beta * y0[t * d + i] + g[i] * acc;
      err += (y[t * d + i] - want) * (y[t * d + i] - want), ref += want * want;
    }
  printf("  %s, beta %g: relative error %.2e against the formula\n", methods, beta,
         sqrt(err / ref));
  assert_true(sqrt(err / ref) < 1e-5);
  ol_free(x), ol_free(y), ol_free(y0), ol_free(saved), ol_free(Wp), ol_free(g);
  fixture_free(&f);
}

static void test_linear_matches_formula(void **state) {
  check_linear("lora", 0.0);
  check_linear("lora", 1.0);
  check_linear("dora", 0.0);
  check_linear("dora", 1.0);  // z in the linear's scratch, then added to y
}

/* ---- memory: what each keeps ------------------------------------------------------------- */

static void test_saved_floats(void **state) {
  // LoRA and DoRA keep x and t = x A^T: k + r floats per token; DoRA's per-layer state is
  // 1/n, m/n (d each) and the norms' scratch P (d, r), A A^T (r, r), independent of N
  const char *methods[2] = {"lora", "dora"};
  for (int mi = 0; mi < 2; mi++) {
    fixture f;
    init(&f, methods[mi], 2, 0, 10);
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      const ol_linear *lin = &f.m.blocks[1].lin[p];
      assert_int_equal(lin->n_adapters, 1);
      assert_int_equal(ol_linear_saved_per_token(lin), lin->in + RANK);
      const size_t d = lin->out;
      assert_int_equal(lin->adapters[0].state_floats,
                       mi == 0 ? 0 : 2 * d + d * RANK + RANK * RANK);
    }
    fixture_free(&f);
  }
}

static int setup(void **state) {
  ol_backend_set(ol_backend_cpu());
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lora_gradient_mha),
      cmocka_unit_test(test_lora_norms_gradient_gqa),
      cmocka_unit_test(test_dora_gradient_gqa),
      cmocka_unit_test(test_dora_norms_gradient_with_bias),
      cmocka_unit_test(test_dora_norm_is_detached),
      cmocka_unit_test(test_lora_zero_b_is_identity),
      cmocka_unit_test(test_dora_init_is_identity),
      cmocka_unit_test(test_lora_merge_matches_adapter),
      cmocka_unit_test(test_dora_merge_matches_adapter),
      cmocka_unit_test(test_dora_merge_with_bias),
      cmocka_unit_test(test_linear_matches_formula),
      cmocka_unit_test(test_micro_batches_accumulate),
      cmocka_unit_test(test_saved_floats),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
