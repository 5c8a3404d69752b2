/* Whole-model checks: the 1LoRA and full-fine-tuning gradients against central finite
 * differences of the loss, 1LoRA at b = 0 is the identity, a merged W + b 1^T equals the
 * adapter, and micro-batch accumulation equals one large batch. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "onelora/backend.h"
#include "onelora/model.h"

enum { B = 2, T = 8 };

static ol_config tiny_config(int64_t kv_heads) {
  ol_config c = {32, 2, 4, kv_heads, 48, 40, 16, 1e-5, 10000.0, 0, 0};
  return c;
}

typedef struct {
  ol_model m;
  ol_acts a;
  int32_t tokens[B * T], targets[B * T];
} fixture;

/* Builds a model for `methods`, random weights (larger than the 0.02 default so the loss is
 * sensitive to every parameter), random tokens. */
static void fixture_init_config(fixture *f, const char *methods, const char *targets,
                                ol_config c, uint64_t seed) {
  ol_method method;
  assert_int_equal(ol_method_parse(methods, targets, 1, 1.0, &method), OL_OK);
  assert_int_equal(ol_model_build(&f->m, &c, &method, seed), OL_OK);
  ol_model_randomize(&f->m, seed);
  for (size_t i = 0; i < f->m.n_tensors; i++) {
    ol_tensor *t = f->m.tensors[i];
    size_t n = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    for (size_t j = 0; j < n; j++) t->data[j] = t->ndim == 2 ? 5.0f * t->data[j] : t->data[j];
  }
  ol_model_init_adapters(&f->m, seed);
  ol_acts_alloc(&f->a, &f->m, B, T);
  ol_rng r;
  ol_rng_seed(&r, seed + 7);
  for (int i = 0; i < B * T; i++) {
    f->tokens[i] = (int32_t)(ol_rng_u64(&r) % (uint64_t)c.vocab_size);
    f->targets[i] = (int32_t)(ol_rng_u64(&r) % (uint64_t)c.vocab_size);
  }
}

static void fixture_init(fixture *f, const char *methods, const char *targets, int64_t kv,
                         uint64_t seed) {
  fixture_init_config(f, methods, targets, tiny_config(kv), seed);
}

static void fixture_free(fixture *f) {
  ol_acts_free(&f->a);
  ol_model_free(&f->m);
}

static double mean_loss(fixture *f) {
  return ol_model_forward(&f->m, &f->a, f->tokens, f->targets, 0.0f) / (B * T);
}

static void gradient(fixture *f) {
  memset(f->m.params.grad, 0, f->m.params.total * sizeof(float));
  ol_model_forward(&f->m, &f->a, f->tokens, f->targets, 1.0f / (B * T));
  ol_model_backward(&f->m, &f->a, f->tokens);
}

/* Compares the analytic gradient with central differences along random directions over the
 * whole flat buffer and along single coordinates. The loss is accumulated in double but the
 * model runs in f32 (relative rounding ~1e-6 of a loss ~4), so with eps = 1e-2 the difference
 * quotient carries ~1e-4 absolute noise plus O(eps^2) curvature error; 2e-2 relative to the
 * directional derivative's scale leaves room for both while catching any wrong term. */
static void check_gradient(fixture *f, size_t n_coords) {
  ol_params *p = &f->m.params;
  gradient(f);
  float *g = ol_calloc(p->total, sizeof(float));
  memcpy(g, p->grad, p->total * sizeof(float));
  float *saved = ol_calloc(p->total, sizeof(float));
  memcpy(saved, p->data, p->total * sizeof(float));
  const double eps = 1e-2;
  ol_rng r;
  ol_rng_seed(&r, 99);
  for (int dir = 0; dir < 3; dir++) {
    float *u = ol_calloc(p->total, sizeof(float));
    double gu = 0, unorm = 0;
    for (size_t i = 0; i < p->total; i++) u[i] = ol_rng_normal(&r), unorm += (double)u[i] * u[i];
    for (size_t i = 0; i < p->total; i++) u[i] /= (float)sqrt(unorm), gu += (double)g[i] * u[i];
    for (size_t i = 0; i < p->total; i++) p->data[i] = saved[i] + (float)eps * u[i];
    double lp = mean_loss(f);
    for (size_t i = 0; i < p->total; i++) p->data[i] = saved[i] - (float)eps * u[i];
    double lm = mean_loss(f);
    memcpy(p->data, saved, p->total * sizeof(float));
    double fd = (lp - lm) / (2 * eps);
    printf("  direction %d: analytic %.6e  finite-difference %.6e\n", dir, gu, fd);
    assert_true(fabs(fd - gu) <= 2e-2 * fmax(fabs(fd), 1e-3));
    ol_free(u);
  }
  double err = 0, ref = 0;
  for (size_t c = 0; c < n_coords; c++) {
    size_t i = (size_t)(ol_rng_u64(&r) % p->total);
    p->data[i] = saved[i] + (float)eps;
    double lp = mean_loss(f);
    p->data[i] = saved[i] - (float)eps;
    double lm = mean_loss(f);
    p->data[i] = saved[i];
    double fd = (lp - lm) / (2 * eps);
    err += (fd - g[i]) * (fd - g[i]);
    ref += fd * fd;
  }
  printf("  %zu coordinates: relative error %.3e\n", n_coords, sqrt(err / ref));
  assert_true(ref > 0 && sqrt(err / ref) < 2e-2);
  ol_free(g);
  ol_free(saved);
}

static void randomize_trainables(fixture *f, float scale) {
  ol_rng r;
  ol_rng_seed(&r, 5);
  for (size_t i = 0; i < f->m.params.total; i++) f->m.params.data[i] = scale * ol_rng_normal(&r);
}

static void test_onelora_gradient_mha(void **state) {
  fixture f;
  fixture_init(&f, "1lora", "all", 4, 1);
  randomize_trainables(&f, 0.05f);  // away from b = 0, so every term of the backward matters
  check_gradient(&f, 24);
  fixture_free(&f);
}

static void test_onelora_norms_gradient_gqa(void **state) {
  fixture f;
  fixture_init(&f, "1lora,norms", "all", 2, 2);
  ol_rng r;
  ol_rng_seed(&r, 3);
  for (size_t i = 0; i < f.m.params.count; i++) {  // b random, norm weights near 1
    ol_param_entry *e = &f.m.params.entries[i];
    int is_norm = strstr(e->name, "onelora_b") == NULL;
    for (size_t j = 0; j < e->numel; j++)
      f.m.params.data[e->offset + j] = (is_norm ? 1.0f : 0.0f) + 0.05f * ol_rng_normal(&r);
  }
  check_gradient(&f, 24);
  fixture_free(&f);
}

static void test_onelora_random_bitfit_gradient(void **state) {
  // 1lora-random and bitfit share every layer: both additive terms and their backward order
  fixture f;
  fixture_init(&f, "1lora-random,bitfit", "all", 2, 8);
  randomize_trainables(&f, 0.05f);
  check_gradient(&f, 24);
  fixture_free(&f);
}

static void test_bitfit_on_some_layers_gradient(void **state) {
  // targets leave some layers plain: their dx must still come out of the frozen GEMM alone
  fixture f;
  fixture_init(&f, "bitfit", "q,o,down", 4, 9);
  randomize_trainables(&f, 0.1f);
  check_gradient(&f, 24);
  fixture_free(&f);
}

static void test_merge_random_and_bitfit(void **state) {
  // the merged model (W += b v^T, bias += beta) computes the adapted model's loss
  fixture f;
  fixture_init(&f, "1lora-random,bitfit", "all", 2, 10);
  randomize_trainables(&f, 0.05f);
  double adapted = mean_loss(&f);
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
  ol_acts_alloc(&merged.a, &merged.m, B, T);
  memcpy(merged.tokens, f.tokens, sizeof f.tokens);
  memcpy(merged.targets, f.targets, sizeof f.targets);
  double plain = mean_loss(&merged);  // before folding: the adapters must matter
  assert_true(fabs(plain - adapted) > 1e-4 * fabs(adapted));
  for (size_t l = 0; l < (size_t)c.n_layers; l++)  // fold the adapters into the copy's layers
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *from = &f.m.blocks[l].lin[p], *to = &merged.m.blocks[l].lin[p];
      for (int i = 0; i < from->n_adapters; i++) from->adapters[i].ops->merge(&from->adapters[i], to);
    }
  double folded = mean_loss(&merged);
  printf("  adapted %.7f merged %.7f\n", adapted, folded);
  assert_true(fabs(adapted - folded) < 1e-5 * fabs(adapted));
  fixture_free(&f);
  fixture_free(&merged);
}

static void test_full_gradient(void **state) {
  fixture f;
  fixture_init(&f, "full", "all", 2, 3);
  check_gradient(&f, 48);
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
  check_gradient(&f, 48);
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
  fixture_init(&plain, "none", "all", 2, 4);
  fixture_init(&adapted, "1lora", "all", 2, 4);
  for (size_t i = 0; i < adapted.m.params.total; i++) assert_true(adapted.m.params.data[i] == 0.0f);
  double a = mean_loss(&plain), b = mean_loss(&adapted);
  assert_true(a == b);
  // and b != 0 changes it, so the comparison above can fail
  adapted.m.params.data[0] = 0.1f;
  assert_true(mean_loss(&adapted) != a);
  fixture_free(&plain);
  fixture_free(&adapted);
}

static void test_onelora_merge_matches_adapter(void **state) {
  fixture f;
  fixture_init(&f, "1lora", "all", 2, 5);
  randomize_trainables(&f, 0.05f);
  double adapted = mean_loss(&f);
  const float *before = f.a.xs + (size_t)f.m.cfg.n_layers * B * T * f.m.cfg.dim;
  float *out = ol_calloc((size_t)B * T * f.m.cfg.dim, sizeof(float));
  memcpy(out, before, (size_t)B * T * f.m.cfg.dim * sizeof(float));
  ol_model_merge(&f.m);  // W += b 1^T, adapters detached
  double merged = mean_loss(&f);
  double diff = 0, ref = 0;
  for (size_t i = 0; i < (size_t)B * T * f.m.cfg.dim; i++) {
    double d = (double)before[i] - out[i];
    diff += d * d, ref += (double)out[i] * out[i];
  }
  printf("  adapted loss %.7f merged loss %.7f, final hidden relative diff %.2e\n", adapted, merged,
         sqrt(diff / ref));
  assert_true(fabs(adapted - merged) < 1e-5 * fabs(adapted));
  assert_true(sqrt(diff / ref) < 1e-5);
  ol_free(out);
  fixture_free(&f);
}

static void test_micro_batches_equal_one_batch(void **state) {
  // the gradient of the mean over B sequences equals the mean of two half batches' gradients
  fixture whole, half;
  fixture_init(&whole, "1lora", "all", 2, 6);
  randomize_trainables(&whole, 0.05f);
  gradient(&whole);
  fixture_init(&half, "1lora", "all", 2, 6);
  randomize_trainables(&half, 0.05f);
  ol_acts_free(&half.a);
  ol_acts_alloc(&half.a, &half.m, 1, T);
  memset(half.m.params.grad, 0, half.m.params.total * sizeof(float));
  for (int mb = 0; mb < B; mb++) {
    ol_model_forward(&half.m, &half.a, whole.tokens + mb * T, whole.targets + mb * T, 1.0f / (B * T));
    ol_model_backward(&half.m, &half.a, whole.tokens + mb * T);
  }
  double diff = 0, ref = 0;
  for (size_t i = 0; i < whole.m.params.total; i++) {
    double d = (double)whole.m.params.grad[i] - half.m.params.grad[i];
    diff += d * d, ref += (double)whole.m.params.grad[i] * whole.m.params.grad[i];
  }
  assert_true(ref > 0 && sqrt(diff / ref) < 1e-5);
  fixture_free(&whole);
  fixture_free(&half);
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
      cmocka_unit_test(test_merge_random_and_bitfit),
      cmocka_unit_test(test_onelora_zero_is_identity),
      cmocka_unit_test(test_onelora_merge_matches_adapter),
      cmocka_unit_test(test_micro_batches_equal_one_batch),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
