/* The shared whole-model test harness: see harness.h. */
#include "harness.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

ol_config fixture_tiny_config(int64_t kv_heads, int64_t max_seq, int64_t bias) {
  ol_config c = {32, 2, 4, kv_heads, 48, 40, max_seq, 1e-5, 10000.0, bias, bias};
  return c;
}

void fixture_init(fixture *f, const fixture_spec *s) {
  assert_true(s->B * s->T <= FIXTURE_MAX_TOKENS);
  f->B = s->B, f->T = s->T;
  ol_method method;
  assert_int_equal(ol_method_parse(s->methods, s->targets, s->rank, s->alpha, &method), OL_OK);
  ol_config c = s->cfg;
  assert_int_equal(ol_model_build(&f->m, &c, &method, s->seed), OL_OK);
  ol_model_randomize(&f->m, s->seed);
  for (size_t i = 0; i < f->m.n_tensors; i++) {
    ol_tensor *t = f->m.tensors[i];
    if (t->ndim != 2) continue;
    for (size_t j = 0; j < t->shape[0] * t->shape[1]; j++) t->data[j] *= s->weight_scale;
  }
  ol_model_init_adapters(&f->m, s->seed);  // after the weights: DoRA's m = |W|_row reads them
  ol_acts_alloc(&f->a, &f->m, s->B, s->T, s->recompute);
  ol_rng r;
  ol_rng_seed(&r, s->seed + 7);
  for (int64_t i = 0; i < s->B * s->T; i++) {
    f->tokens[i] = (int32_t)(ol_rng_u64(&r) % (uint64_t)c.vocab_size);
    f->targets[i] = (int32_t)(ol_rng_u64(&r) % (uint64_t)c.vocab_size);
  }
}

void fixture_free(fixture *f) {
  ol_acts_free(&f->a);
  ol_model_free(&f->m);
}

double fixture_mean_loss(fixture *f) {
  return ol_model_forward(&f->m, &f->a, f->tokens, f->targets, 0.0f) / (double)(f->B * f->T);
}

void fixture_gradient(fixture *f) {
  memset(f->m.params.grad, 0, f->m.params.total * sizeof(float));
  ol_model_forward(&f->m, &f->a, f->tokens, f->targets, 1.0f / (float)(f->B * f->T));
  ol_model_backward(&f->m, &f->a, f->tokens);
}

float *fixture_final_hidden(const fixture *f) {
  const size_t n = (size_t)(f->B * f->T) * (size_t)f->m.cfg.dim;
  float *out = ol_calloc(n, sizeof(float));  // (B*T, D)
  memcpy(out, f->a.xs + (size_t)f->m.cfg.n_layers * n, n * sizeof(float));
  return out;
}

void fixture_randomize_trainables(fixture *f, float scale, uint64_t seed) {
  ol_rng r;
  ol_rng_seed(&r, seed);
  for (size_t i = 0; i < f->m.params.count; i++) {
    const ol_param_entry *e = &f->m.params.entries[i];
    const int is_norm = strstr(e->name, "norm.weight") != NULL;
    for (size_t j = 0; j < e->numel; j++)
      f->m.params.data[e->offset + j] = (is_norm ? 1.0f : 0.0f) + scale * ol_rng_normal(&r);
  }
}

double fixture_directional_fd(fixture *f, const float *x0, const float *u, double eps) {
  ol_params *p = &f->m.params;
  for (size_t i = 0; i < p->total; i++) p->data[i] = x0[i] + (float)eps * u[i];
  double lp = fixture_mean_loss(f);
  for (size_t i = 0; i < p->total; i++) p->data[i] = x0[i] - (float)eps * u[i];
  double lm = fixture_mean_loss(f);
  memcpy(p->data, x0, p->total * sizeof(float));
  return (lp - lm) / (2 * eps);
}

float *harness_random_unit(size_t n, ol_rng *r) {
  float *u = ol_calloc(n, sizeof(float));  // (n)
  double norm = 0;
  for (size_t i = 0; i < n; i++) u[i] = ol_rng_normal(r), norm += (double)u[i] * u[i];
  for (size_t i = 0; i < n; i++) u[i] /= (float)sqrt(norm);
  return u;
}

double harness_relative_diff(const float *a, const float *b, size_t n) {
  double diff = 0, ref = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    diff += d * d, ref += (double)b[i] * b[i];
  }
  return sqrt(diff / ref);
}

void fixture_check_gradient(fixture *f, const fd_check *c) {
  ol_params *p = &f->m.params;
  fixture_gradient(f);  // the reference forward (DoRA: leaves each layer's 1/n in its state)
  float *g = ol_calloc(p->total, sizeof(float));  // (total)
  memcpy(g, p->grad, p->total * sizeof(float));
  float *x0 = ol_calloc(p->total, sizeof(float));  // (total)
  memcpy(x0, p->data, p->total * sizeof(float));
  if (c->hold) c->hold(f, 1);
  const double eps = c->eps;
  ol_rng r;
  ol_rng_seed(&r, 99);
  for (int dir = 0; dir < 3; dir++) {
    float *u = harness_random_unit(p->total, &r);  // (total)
    double gu = 0;
    for (size_t i = 0; i < p->total; i++) gu += (double)g[i] * u[i];
    double fd = fixture_directional_fd(f, x0, u, eps);
    printf("  direction %d: analytic %.6e  finite-difference %.6e\n", dir, gu, fd);
    assert_true(fabs(fd - gu) <= c->tol * fmax(fabs(fd), 1e-3));
    ol_free(u);
  }
  double err = 0, ref = 0;
  for (size_t k = 0; k < c->n_coords; k++) {
    size_t i = (size_t)(ol_rng_u64(&r) % p->total);
    p->data[i] = x0[i] + (float)eps;
    double lp = fixture_mean_loss(f);
    p->data[i] = x0[i] - (float)eps;
    double lm = fixture_mean_loss(f);
    p->data[i] = x0[i];
    double fd = (lp - lm) / (2 * eps);
    err += (fd - g[i]) * (fd - g[i]);
    ref += fd * fd;
  }
  printf("  %zu coordinates: relative error %.3e\n", c->n_coords, sqrt(err / ref));
  assert_true(ref > 0 && sqrt(err / ref) < c->tol);
  if (c->hold) c->hold(f, 0);
  ol_free(g);
  ol_free(x0);
}

void fixture_check_gradient_default(fixture *f, size_t n_coords) {
  const fd_check c = {n_coords, 1e-2, 2e-2, NULL};
  fixture_check_gradient(f, &c);
}

double fixture_micro_batch_diff(fixture *whole, fixture *half) {
  const int64_t B = whole->B, T = whole->T;
  fixture_gradient(whole);
  const int recompute = half->a.recompute;
  ol_acts_free(&half->a);
  ol_acts_alloc(&half->a, &half->m, 1, T, recompute);
  memset(half->m.params.grad, 0, half->m.params.total * sizeof(float));
  for (int64_t mb = 0; mb < B; mb++) {
    ol_model_forward(&half->m, &half->a, whole->tokens + mb * T, whole->targets + mb * T,
                     1.0f / (float)(B * T));
    ol_model_backward(&half->m, &half->a, whole->tokens + mb * T);
  }
  return harness_relative_diff(half->m.params.grad, whole->m.params.grad, whole->m.params.total);
}
