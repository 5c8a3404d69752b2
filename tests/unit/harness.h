/* The whole-model test harness shared by the unit tests (test_model.c, test_lora.c,
 * test_vera_mora.c): a tiny model with random weights and random tokens, its mean loss and
 * gradient, and the analytic gradient checked against central finite differences of the loss.
 * The assertions use cmocka, so a failing check fails the calling test. */
#ifndef ONELORA_TEST_HARNESS_H
#define ONELORA_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/backend/backend.h"
#include "onelora/model/acts.h"

enum { FIXTURE_MAX_TOKENS = 128 }; /* the largest B * T a fixture holds */

/* What differs between the tests' fixtures */
typedef struct {
  int64_t B, T;                  /* sequences and their length */
  ol_config cfg;                 /* the model */
  const char *methods, *targets; /* as --methods and --targets */
  int64_t rank;                  /* --rank */
  double alpha;                  /* --alpha */
  float weight_scale;            /* every 2-D weight is this times ol_model_randomize's */
  uint64_t seed;                 /* model build, weights, adapters; the tokens use seed + 7 */
  int recompute;                 /* ol_acts_alloc's --recompute */
} fixture_spec;

typedef struct {
  ol_model m;
  ol_acts a;
  int64_t B, T;
  int32_t tokens[FIXTURE_MAX_TOKENS], targets[FIXTURE_MAX_TOKENS]; /* first B * T used */
} fixture;

/* The tests' tiny model: D 32, 2 layers, 4 heads (hd 8), F 48, V 40; `max_seq` the longest T,
 * `bias` both attention_bias and mlp_bias. q, o (32, 32); k, v (Hkv*8, 32); gate, up (48, 32);
 * down (32, 48). */
ol_config fixture_tiny_config(int64_t kv_heads, int64_t max_seq, int64_t bias);

/* Builds a model for s->methods, random weights (weight_scale times the 0.02 default, so the
 * loss is sensitive to every parameter), the adapters at their init (after the weights: DoRA's
 * m = |W|_row reads them), acts for (B, T), random tokens and targets. */
void fixture_init(fixture *f, const fixture_spec *s);
void fixture_free(fixture *f);

/* The mean loss over the B * T tokens (forward only) */
double fixture_mean_loss(fixture *f);

/* Zeroes the gradient, then forward and backward of the mean loss: p->grad holds its gradient */
void fixture_gradient(fixture *f);

/* (B*T, D) copy of the final residual stream of the last forward; ol_free it */
float *fixture_final_hidden(const fixture *f);

/* Every trainable to scale * N(0, 1), norm weights ("norm.weight") to 1 + scale * N(0, 1) */
void fixture_randomize_trainables(fixture *f, float scale, uint64_t seed);

/* Central difference of the mean loss along u (total), around the parameters x0 (total);
 * the parameters are x0 again afterwards. */
double fixture_directional_fd(fixture *f, const float *x0, const float *u, double eps);

/* How check_gradient compares */
typedef struct {
  size_t n_coords; /* single coordinates after the three random directions */
  double eps;      /* the central differences' step */
  double tol;      /* relative tolerance, per direction and over the coordinates */
  /* optional: called with 1 after the reference gradient and before the first difference,
   * with 0 after the last (test_lora.c holds DoRA's norms fixed with it) */
  void (*hold)(fixture *f, int on);
} fd_check;

/* Compares the analytic gradient with central differences along three random directions over
 * the whole flat buffer and along c->n_coords single coordinates. The loss is accumulated in
 * double but the model runs in f32 (relative rounding ~1e-6 of a loss ~4), so with eps = 1e-2
 * the difference quotient carries ~1e-4 absolute noise plus O(eps^2) curvature error; 2e-2
 * relative to the directional derivative's scale leaves room for both while catching any wrong
 * term. */
void fixture_check_gradient(fixture *f, const fd_check *c);

/* eps 1e-2, tolerance 2e-2, no hold */
void fixture_check_gradient_default(fixture *f, size_t n_coords);

/* Gradient accumulation: the gradient of `whole` over its B sequences, and `half`'s (the same
 * model, built alike) accumulated over B micro-batches of one sequence each of whole's tokens,
 * each scaled by 1 / (B T); half's acts are reallocated for one sequence. Returns half's
 * gradient's relative difference to whole's. */
double fixture_micro_batch_diff(fixture *whole, fixture *half);

/* (n) a random unit vector; ol_free it */
float *harness_random_unit(size_t n, ol_rng *r);

/* |a - b| / |b| over n floats, accumulated in double */
double harness_relative_diff(const float *a, const float *b, size_t n);

#endif
