/* Whole-model checks: the 1LoRA and full-fine-tuning gradients against central finite
 * differences of the loss, 1LoRA at b = 0 is the identity, a merged W + b 1^T equals the
 * adapter, micro-batch accumulation equals one large batch, and --recompute changes no bit. */
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

static ol_config tiny_config(int64_t kv_heads) { return fixture_tiny_config(kv_heads, 16, 0); }

/* Builds a model for `methods` (rank 1, alpha 1), random weights 5x the 0.02 default so the
 * loss is sensitive to every parameter, random tokens: see harness.h. */
static void fixture_init_config(fixture *f, const char *methods, const char *targets,
                                ol_config c, uint64_t seed) {
  const fixture_spec s = {B, T, c, methods, targets, 1, 1.0, 5.0f, seed, 0};
  fixture_init(f, &s);
}

static void init(fixture *f, const char *methods, const char *targets, int64_t kv,
                 uint64_t seed) {
  fixture_init_config(f, methods, targets, tiny_config(kv), seed);
}

static void randomize_trainables(fixture *f, float scale) {
  fixture_randomize_trainables(f, scale, 5);  // no norm weights among these tests' trainables
}

static void test_onelora_gradient_mha(void **state) {
  fixture f;
  init(&f, "1lora", "all", 4, 1);
  randomize_trainables(&f, 0.05f);  // away from b = 0, so every term of the backward matters
  fixture_check_gradient_default(&f, 24);
  fixture_free(&f);
}

static void test_onelora_norms_gradient_gqa(void **state) {
  fixture f;
  init(&f, "1lora,norms", "all", 2, 2);
  fixture_randomize_trainables(&f, 0.05f, 3);  // b random, norm weights near 1
  fixture_check_gradient_default(&f, 24);
  fixture_free(&f);
}

static void test_onelora_random_bitfit_gradient(void **state) {
  // 1lora-random and bitfit share every layer: both additive terms and their backward order
  fixture f;
  init(&f, "1lora-random,bitfit", "all", 2, 8);
  randomize_trainables(&f, 0.05f);
  fixture_check_gradient_default(&f, 24);
  fixture_free(&f);
}

/* The test build's one-file method (src/peft/test_scalar.c, one line in methods.def): its
 * gradient against finite differences, with 1LoRA on the same layers; it is absent (skipped)
 * from a build without ONELORA_TEST_HOOKS. */
static void test_test_scalar_gradient(void **state) {
  if (!ol_adapter_find("test-scalar")) skip();
  fixture f;
  init(&f, "1lora,test-scalar", "all", 2, 11);
  randomize_trainables(&f, 0.05f);
  // c shifts every output of its layer together, so the loss curves d times faster in c than
  // in one b_i: a step of 1e-3 keeps the central difference's O(eps^2) truncation below the 2%
  // tolerance, and its f32 rounding (loss ~4, u = 6e-8: ~1e-4 of the gradient) too
  const fd_check c = {24, 1e-3, 2e-2, NULL};
  fixture_check_gradient(&f, &c);
  fixture_free(&f);
}

static void test_bitfit_on_some_layers_gradient(void **state) {
  // targets leave some layers plain: their dx must still come out of the frozen GEMM alone
  fixture f;
  init(&f, "bitfit", "q,o,down", 4, 9);
  randomize_trainables(&f, 0.1f);
  fixture_check_gradient_default(&f, 24);
  fixture_free(&f);
}

static void test_merge_random_and_bitfit(void **state) {
  // the merged model (W += b v^T, bias += beta) computes the adapted model's loss
  fixture f;
  init(&f, "1lora-random,bitfit", "all", 2, 10);
  randomize_trainables(&f, 0.05f);
  double adapted = fixture_mean_loss(&f);
  fixture merged;
  ol_config c = tiny_config(2);
  c.attention_bias = c.mlp_bias = 1;
  ol_method none;
  assert_int_equal(ol_method_parse("none", "all", 1, 1.0, &none), OL_OK);
  assert_int_equal(ol_model_build(&merged.m, &c, &none, 10), OL_OK);
  for (size_t i = 0; i < f.m.n_tensors; i++) {  // same weights, zero biases
    ol_tensor *src = f.m.tensors[i], *dst = ol_model_tensor(&merged.m, src->name);
    size_t n = src->ndim == 2 ? src->shape[0] * src->shape[1] : src->shape[0];
    memcpy(dst->data, src->data, n * sizeof(float));
  }
  merged.B = B, merged.T = T;
  ol_acts_alloc(&merged.a, &merged.m, B, T, 0);
  memcpy(merged.tokens, f.tokens, B * T * sizeof(int32_t));
  memcpy(merged.targets, f.targets, B * T * sizeof(int32_t));
  double plain = fixture_mean_loss(&merged);  // before folding: the adapters must matter
  assert_true(fabs(plain - adapted) > 1e-4 * fabs(adapted));
  for (size_t l = 0; l < (size_t)c.n_layers; l++)  // fold the adapters into the copy's layers
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *from = &f.m.blocks[l].lin[p], *to = &merged.m.blocks[l].lin[p];
      for (int i = 0; i < from->n_adapters; i++) from->adapters[i].ops->merge(&from->adapters[i], to);
    }
  double folded = fixture_mean_loss(&merged);
  printf("  adapted %.7f merged %.7f\n", adapted, folded);
  assert_true(fabs(adapted - folded) < 1e-5 * fabs(adapted));
  fixture_free(&f);
  fixture_free(&merged);
}

static void test_full_gradient(void **state) {
  fixture f;
  init(&f, "full", "all", 2, 3);
  fixture_check_gradient_default(&f, 48);
  fixture_free(&f);
}

static void test_full_gradient_with_biases(void **state) {
  // a merged BitFit model fine-tuned in full: the biases are trainable weights too
  ol_config c = tiny_config(2);
  c.attention_bias = c.mlp_bias = 1;
  fixture f;
  fixture_init_config(&f, "full", "all", c, 11);
  for (size_t i = 0; i < f.m.n_tensors; i++)  // biases away from the norms' ones
    if (strstr(f.m.tensors[i]->name, ".bias"))
      for (size_t j = 0; j < f.m.tensors[i]->shape[0]; j++) f.m.tensors[i]->data[j] = 0.1f * (float)(j % 7) - 0.3f;
  fixture_check_gradient_default(&f, 48);
  size_t with_grad = 0;  // every bias gets a gradient
  for (size_t i = 0; i < f.m.n_tensors; i++)
    if (strstr(f.m.tensors[i]->name, ".bias"))
      with_grad += ol_bk->sumsq(ol_params_grad(&f.m.params, (size_t)f.m.tensors[i]->param),
                               f.m.tensors[i]->shape[0]) > 0;
  assert_int_equal(with_grad, 2 * OL_PROJ_COUNT);
  fixture_free(&f);
}

static void test_onelora_zero_is_identity(void **state) {
  fixture plain, adapted;
  init(&plain, "none", "all", 2, 4);
  init(&adapted, "1lora", "all", 2, 4);
  for (size_t i = 0; i < adapted.m.params.total; i++) assert_true(adapted.m.params.data[i] == 0.0f);
  double a = fixture_mean_loss(&plain), b = fixture_mean_loss(&adapted);
  assert_true(a == b);
  // and b != 0 changes it, so the comparison above can fail
  adapted.m.params.data[0] = 0.1f;
  assert_true(fixture_mean_loss(&adapted) != a);
  fixture_free(&plain);
  fixture_free(&adapted);
}

static void test_onelora_merge_matches_adapter(void **state) {
  fixture f;
  init(&f, "1lora", "all", 2, 5);
  randomize_trainables(&f, 0.05f);
  double adapted = fixture_mean_loss(&f);
  float *out = fixture_final_hidden(&f);
  ol_model_merge(&f.m);  // W += b 1^T, adapters detached
  double merged = fixture_mean_loss(&f);
  float *before = fixture_final_hidden(&f);
  double rel = harness_relative_diff(before, out, (size_t)B * T * f.m.cfg.dim);
  printf("  adapted loss %.7f merged loss %.7f, final hidden relative diff %.2e\n", adapted, merged,
         rel);
  assert_true(fabs(adapted - merged) < 1e-5 * fabs(adapted));
  assert_true(rel < 1e-5);
  ol_free(before);
  ol_free(out);
  fixture_free(&f);
}

static void test_micro_batches_equal_one_batch(void **state) {
  // the gradient of the mean over B sequences equals the mean of two half batches' gradients
  fixture whole, half;
  init(&whole, "1lora", "all", 2, 6);
  randomize_trainables(&whole, 0.05f);
  init(&half, "1lora", "all", 2, 6);
  randomize_trainables(&half, 0.05f);
  double rel = fixture_micro_batch_diff(&whole, &half);
  assert_true(rel < 1e-5);  // NaN (a zero gradient) fails it too
  fixture_free(&whole);
  fixture_free(&half);
}

/* --recompute runs the same kernels on the same inputs in the same order, so for every method
 * the gradient and d(input) equal the kept-activation run's bit for bit (exact comparison is
 * the right tolerance: any difference is a bug, not rounding), on 3 layers, so that two blocks
 * are recomputed into the shared slot. It keeps xs (L+1, N, D) and 1/rms (N) of the final norm. */
static void test_recompute_bit_identical(void **state) {
  static const char *methods[] = {"1lora", "lora", "dora", "vera", "mora", "mora6", "bitfit",
                                  "norms", "full", "1lora,norms", "1lora-random"};
  ol_config c = tiny_config(2);
  c.n_layers = 3;
  for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
    fixture f[2];
    for (int r = 0; r < 2; r++) {
      const fixture_spec s = {B, T, c, methods[i], "all", 2, 1.0, 5.0f, 11, r};
      fixture_init(&f[r], &s);
      fixture_randomize_trainables(&f[r], 0.05f, 4);  // LoRA's B and the like away from 0
      fixture_gradient(&f[r]);
    }
    const ol_params *p0 = &f[0].m.params, *p1 = &f[1].m.params;
    const size_t N = B * T, D = (size_t)c.dim, L = (size_t)c.n_layers;
    printf("  %-12s kept %zu -> %zu bytes\n", methods[i], f[0].a.bytes_kept, f[1].a.bytes_kept);
    assert_true(p0->total > 0 && p0->total == p1->total);
    assert_memory_equal(p0->grad, p1->grad, p0->total * sizeof(float));
    assert_memory_equal(f[0].a.dres, f[1].a.dres, N * D * sizeof(float));  // (N, D) d(input)
    assert_int_equal(f[1].a.bytes_kept, ((L + 1) * N * D + N) * sizeof(float));
    assert_true(f[1].a.bytes_kept < f[0].a.bytes_kept);
    fixture_free(&f[0]);
    fixture_free(&f[1]);
  }
}

static int setup(void **state) {
  ol_backend_set(ol_backend_cpu());
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_onelora_gradient_mha),
      cmocka_unit_test(test_onelora_norms_gradient_gqa),
      cmocka_unit_test(test_full_gradient),
      cmocka_unit_test(test_full_gradient_with_biases),
      cmocka_unit_test(test_onelora_random_bitfit_gradient),
      cmocka_unit_test(test_bitfit_on_some_layers_gradient),
      cmocka_unit_test(test_test_scalar_gradient),
      cmocka_unit_test(test_merge_random_and_bitfit),
      cmocka_unit_test(test_onelora_zero_is_identity),
      cmocka_unit_test(test_onelora_merge_matches_adapter),
      cmocka_unit_test(test_micro_batches_equal_one_batch),
      cmocka_unit_test(test_recompute_bit_identical),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
