/* Presets and their synthetic weights (ol_tensor_randomize, counter-based):
 * - every TP slice (column-parallel rows, row-parallel columns, vocabulary rows, and any
 *   rectangle) is exactly the same slice of the whole tensor generated on one rank, under any
 *   thread count;
 * - values are deterministic, and differ between seeds, tensor names and rows;
 * - a large tensor's mean, standard deviation, kurtosis and neighbour correlations are those of
 *   N(0, 0.02) within bounds derived from the sample size;
 * - llama2-70b is LLaMA-2-70B's shape, with GQA k/v projections split across TP.
 * Each check is also run on a deliberately wrong input and must fail there. */
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"
#include "onelora/model/acts.h"

static const float SIGMA = 0.02f;  // ol_tensor_randomize's standard deviation

/* A whole (unsliced) tensor. */
static ol_tensor matrix(const char *name, size_t rows, size_t cols) {
  ol_tensor t = {0};
  ol_strlcpy(t.name, name, sizeof t.name);
  t.ndim = cols ? 2 : 1;
  t.shape[0] = t.count[0] = rows;
  t.shape[1] = t.count[1] = cols;
  t.param = -1;
  return t;
}

static size_t numel(const ol_tensor *t) { return t->count[0] * (t->ndim == 2 ? t->count[1] : 1); }

/* t's slice, freshly generated: (count[0], count[1]) or (count[0]). */
static float *generate(const ol_tensor *t, uint64_t seed) {
  float *x = ol_calloc(numel(t), sizeof(float));
  ol_tensor_randomize(t, x, seed);
  return x;
}

/* How many values of `data`, generated as the slice `part` claims, differ from the whole
 * tensor's values at those positions. whole (shape[0], shape[1]), data (count[0], count[1]). */
static size_t slice_mismatches(const float *whole, const ol_tensor *part, const float *data) {
  const int two = part->ndim == 2;
  const size_t cols = two ? part->count[1] : 1, full = two ? part->shape[1] : 1;
  const size_t c0 = two ? part->start[1] : 0;
  size_t bad = 0;
  for (size_t i = 0; i < part->count[0]; i++)
    for (size_t j = 0; j < cols; j++)
      bad += data[i * cols + j] != whole[(part->start[0] + i) * full + c0 + j];
  return bad;
}

/* How many of the n values of a and b are equal. */
static size_t equal_count(const float *a, const float *b, size_t n) {
  size_t eq = 0;
  for (size_t i = 0; i < n; i++) eq += a[i] == b[i];
  return eq;
}

/* A layout with GQA whose every split is divisible by TP = 2 and 4 (nothing allocated). */
static void layout(ol_model *m, int tp, int rank) {
  const ol_config c = {64, 2, 8, 4, 176, 256, 32, 1e-5, 10000.0, 0, 0};
  ol_method none;
  assert_int_equal(ol_method_parse("none", "all", 1, 1.0, &none), OL_OK);
  ol_stage s = ol_pipeline_stage(&c, 1, 0);
  s.tp = tp, s.tp_rank = rank;
  assert_int_equal(ol_model_layout_stage(m, &c, &none, 0, &s), OL_OK);
}

/* Every tensor of every TP rank's layout against the whole tensor: exact. Also checks that the
 * layouts cover column-parallel, row-parallel and vocabulary slices. */
static void test_tp_slices_equal_whole(void **state) {
  ol_model whole;
  layout(&whole, 1, 0);
  int kinds = 0;  // bit 0: rows of a projection split, bit 1: columns split, bit 2: vocabulary
  for (int tp = 2; tp <= 4; tp *= 2)
    for (int r = 0; r < tp; r++) {
      ol_model part;
      layout(&part, tp, r);
      assert_int_equal(part.n_tensors, whole.n_tensors);
      for (size_t i = 0; i < part.n_tensors; i++) {
        const ol_tensor *p = part.tensors[i], *w = ol_model_tensor(&whole, p->name);
        assert_non_null(w);
        if (p->ndim == 2 && p->count[0] < p->shape[0])
          kinds |= strstr(p->name, "_proj") ? 1 : 4;
        if (p->ndim == 2 && p->count[1] < p->shape[1]) kinds |= 2;
        float *full = generate(w, 9), *mine = generate(p, 9);
        assert_int_equal(slice_mismatches(full, p, mine), 0);
        ol_free(full);
        ol_free(mine);
      }
      ol_model_free(&part);
    }
  assert_int_equal(kinds, 7);
  ol_model_free(&whole);
}

/* Any rectangle, e.g. one starting at an odd row and column, under 1 and 3 threads. */
static void test_rectangle_and_threads(void **state) {
  ol_tensor w = matrix("model.layers.0.mlp.down_proj.weight", 300, 200);  // 60,000 values:
  float *full = generate(&w, 4);  // above the backend's threshold for a parallel loop
  ol_tensor p = w;
  p.start[0] = 37, p.count[0] = 101, p.start[1] = 3, p.count[1] = 150;
  float *mine = generate(&p, 4);
  assert_int_equal(slice_mismatches(full, &p, mine), 0);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  float *one = generate(&w, 4);
  omp_set_num_threads(3);
  float *three = generate(&w, 4);
  omp_set_num_threads(threads);
  assert_int_equal(equal_count(one, full, numel(&w)), numel(&w));
  assert_int_equal(equal_count(three, full, numel(&w)), numel(&w));
  ol_free(three);
  ol_free(one);
  ol_free(mine);
  ol_free(full);
}

/* The comparison fails for a slice generated one row or one column off, and for another
 * rank's slice. */
static void test_off_by_one_slice_fails(void **state) {
  ol_model whole, part;
  layout(&whole, 1, 0);
  layout(&part, 4, 1);
  const char *names[] = {"model.layers.0.self_attn.k_proj.weight",  // column-parallel: rows
                         "model.layers.1.mlp.down_proj.weight",     // row-parallel: columns
                         "model.embed_tokens.weight"};              // vocabulary rows
  for (int k = 0; k < 3; k++) {
    const ol_tensor *w = ol_model_tensor(&whole, names[k]), *p = ol_model_tensor(&part, names[k]);
    const int dim = p->count[0] < p->shape[0] ? 0 : 1;  // the split dimension
    float *full = generate(w, 9), *mine = generate(p, 9);
    assert_int_equal(slice_mismatches(full, p, mine), 0);
    for (int shift = -1; shift <= 1; shift += 2) {
      ol_tensor off = *p;
      off.start[dim] = (size_t)((long)off.start[dim] + shift);
      float *wrong = generate(&off, 9);
      assert_true(slice_mismatches(full, p, wrong) > numel(p) / 2);
      ol_free(wrong);
    }
    ol_tensor other = *p;
    other.start[dim] += other.count[dim];  // rank 2's slice
    float *wrong = generate(&other, 9);
    assert_true(slice_mismatches(full, p, wrong) > numel(p) / 2);
    ol_free(wrong);
    ol_free(full);
    ol_free(mine);
  }
  ol_model_free(&part);
  ol_model_free(&whole);
}

/* Deterministic across calls; different for another seed, another name, another row. Two
 * independent draws are equal with probability ~2^-48 per value (two 24-bit uniforms), so
 * "different" means fewer than 1% equal; the same inputs must give 100%. */
static void test_deterministic_and_distinct(void **state) {
  const size_t R = 64, C = 96, n = R * C;
  ol_tensor a = matrix("model.layers.0.self_attn.q_proj.weight", R, C);
  ol_tensor b = matrix("model.layers.1.self_attn.q_proj.weight", R, C);
  float *a1 = generate(&a, 1), *a1_again = generate(&a, 1), *a2 = generate(&a, 2);
  float *b1 = generate(&b, 1);
  assert_int_equal(equal_count(a1, a1_again, n), n);
  assert_true(equal_count(a1, a2, n) < n / 100);  // seed
  assert_true(equal_count(a1, b1, n) < n / 100);  // name
  assert_true(equal_count(a1, a1 + C, n - C) < n / 100);  // each row against the next
  // the checks fail on the wrong inputs: the "different" check on the same inputs, and the
  // "same" check on different ones
  assert_false(equal_count(a1, a1_again, n) < n / 100);
  assert_true(equal_count(a1, a2, n) != n);
  ol_tensor norm = matrix("model.norm.weight", 64, 0);  // 1-D: ones
  float *ones = generate(&norm, 1);
  for (size_t i = 0; i < 64; i++) assert_true(ones[i] == 1.0f);
  ol_free(ones);
  ol_free(b1);
  ol_free(a2);
  ol_free(a1_again);
  ol_free(a1);
}

/* ---- statistics ------------------------------------------------------------------------- */

/* Sample moments of x (rows, cols), in double, and the correlations of horizontal and vertical
 * neighbours (x[r][c] with x[r][c+1], and with x[r+1][c]). */
typedef struct {
  double mean, std, kurtosis, rho_col, rho_row;
} moments;

static moments sample_moments(const float *x, size_t rows, size_t cols) {
  const double n = (double)(rows * cols);
  double s1 = 0, s2 = 0, s4 = 0, h = 0, v = 0;
  for (size_t i = 0; i < rows * cols; i++) s1 += x[i];
  const double mean = s1 / n;
  for (size_t r = 0; r < rows; r++)
    for (size_t c = 0; c < cols; c++) {
      const double d = x[r * cols + c] - mean;
      s2 += d * d, s4 += d * d * d * d;
      if (c + 1 < cols) h += d * (x[r * cols + c + 1] - mean);
      if (r + 1 < rows) v += d * (x[(r + 1) * cols + c] - mean);
    }
  const double var = s2 / n;
  moments m = {mean, sqrt(var), s4 / n / (var * var), h / ((double)(rows * (cols - 1)) * var),
               v / ((double)((rows - 1) * cols) * var)};
  return m;
}

/* Which checks fail (a bit each: mean, std, kurtosis, rho_col, rho_row), for n = rows x cols
 * values supposed i.i.d. N(0, sigma). Error model: each statistic's sampling standard error for
 * n normal values, std(mean) = sigma/sqrt(n), std(s) = sigma/sqrt(2n), std(kurtosis) = sqrt(24/n),
 * std(rho) = 1/sqrt(pairs); the bound is 6 of them (a false alarm 2e-9 per check for a true
 * normal stream). The Box-Muller tails cut at 5.77 sigma (24-bit u1) move the kurtosis by
 * ~1e-6, far inside the bound. */
static int moments_fail(moments m, size_t rows, size_t cols, double sigma) {
  const double n = (double)(rows * cols);
  int bad = 0;
  bad |= (fabs(m.mean) > 6 * sigma / sqrt(n)) << 0;
  bad |= (fabs(m.std - sigma) > 6 * sigma / sqrt(2 * n)) << 1;
  bad |= (fabs(m.kurtosis - 3) > 6 * sqrt(24 / n)) << 2;
  bad |= (fabs(m.rho_col) > 6 / sqrt((double)(rows * (cols - 1)))) << 3;
  bad |= (fabs(m.rho_row) > 6 / sqrt((double)((rows - 1) * cols))) << 4;
  return bad;
}

static void test_statistics(void **state) {
  const size_t R = 2048, C = 2048, n = R * C;
  ol_tensor w = matrix("model.layers.5.mlp.up_proj.weight", R, C);
  float *x = generate(&w, 3);
  assert_int_equal(moments_fail(sample_moments(x, R, C), R, C, SIGMA), 0);
  // each check fails on a deliberately wrong input: an offset of 4 standard errors of the mean
  // beyond the bound, a 1% larger scale, uniform values of the same std, and neighbours that
  // share half their value (rho = 0.5) along rows, then down columns
  float *y = ol_calloc(n, sizeof(float));  // (R, C)
  const float bound = (float)(6 * SIGMA / sqrt((double)n));
  for (size_t i = 0; i < n; i++) y[i] = x[i] + bound + 4 * SIGMA / (float)sqrt((double)n);
  assert_int_equal(moments_fail(sample_moments(y, R, C), R, C, SIGMA) & 1, 1);
  for (size_t i = 0; i < n; i++) y[i] = 1.01f * x[i];
  assert_int_equal(moments_fail(sample_moments(y, R, C), R, C, SIGMA), 2);
  ol_rng rng;
  ol_rng_seed(&rng, 3);
  for (size_t i = 0; i < n; i++) y[i] = SIGMA * sqrtf(12.0f) * (ol_rng_uniform(&rng) - 0.5f);
  assert_int_equal(moments_fail(sample_moments(y, R, C), R, C, SIGMA) & 4, 4);
  for (size_t i = 0; i < n; i++)  // y[r][c] = (x[r][c] + x[r][c+1]) / sqrt(2), cyclic per row
    y[i] = (x[i] + x[i - i % C + (i % C + 1) % C]) / sqrtf(2.0f);
  assert_int_equal(moments_fail(sample_moments(y, R, C), R, C, SIGMA) & 8, 8);
  for (size_t i = 0; i < n; i++)  // the same down each column
    y[i] = (x[i] + x[(i + C) % n]) / sqrtf(2.0f);
  assert_int_equal(moments_fail(sample_moments(y, R, C), R, C, SIGMA) & 16, 16);
  ol_free(y);
  ol_free(x);
}

/* ---- the llama2-70b preset ---------------------------------------------------------------- */

/* LLaMA-2-70B (Meta's config.json): 80 layers of width 8192, 64 query heads sharing 8 kv heads
 * (GQA), SwiGLU width 28672. Under TP = 8 each rank holds one kv head of k and v. */
static void test_llama2_70b(void **state) {
  ol_config c;
  assert_int_equal(ol_preset("llama2-70b", &c), OL_OK);
  const ol_config want = {8192, 80, 64, 8, 28672, 32000, 4096, 1e-5, 10000.0, 0, 0};
  assert_memory_equal(&c, &want, sizeof c);
  assert_non_null(strstr(ol_preset_names(), "llama2-70b"));
  ol_method none;
  assert_int_equal(ol_method_parse("none", "all", 1, 1.0, &none), OL_OK);
  ol_stage s = ol_pipeline_stage(&c, 1, 0);
  s.tp = 8, s.tp_rank = 3;
  ol_model m;
  assert_int_equal(ol_model_layout_stage(&m, &c, &none, 0, &s), OL_OK);
  const size_t hd = 8192 / 64, kv = 8 * hd;
  const ol_tensor *k = ol_model_tensor(&m, "model.layers.79.self_attn.k_proj.weight");
  const ol_tensor *q = ol_model_tensor(&m, "model.layers.79.self_attn.q_proj.weight");
  assert_non_null(k);
  assert_int_equal(k->shape[0], kv);
  assert_int_equal(k->shape[1], 8192);
  assert_int_equal(k->count[0], hd);  // one kv head per rank
  assert_int_equal(k->start[0], 3 * hd);
  assert_int_equal(q->count[0], 8 * hd);  // eight query heads per rank
  assert_int_equal(m.blocks[0].lin[OL_K].out, hd);
  ol_model_free(&m);
}

static int setup(void **state) {
  ol_backend_set(ol_backend_cpu());
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tp_slices_equal_whole),
      cmocka_unit_test(test_rectangle_and_threads),
      cmocka_unit_test(test_off_by_one_slice_fails),
      cmocka_unit_test(test_deterministic_and_distinct),
      cmocka_unit_test(test_statistics),
      cmocka_unit_test(test_llama2_70b),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
