/* Unit tests of the CUDA backend's launch arithmetic (src/backend/cuda/launch.h), on the CPU:
 *  - ol_cuda_blocks: ceil(n / threads) blocks, at least 1 (no empty launch), at most
 *    OL_CUDA_MAX_BLOCKS, so blocks x threads covers n exactly when uncapped and the grid-stride
 *    loops cover the rest when capped;
 *  - ol_cuda_row_threads: a power-of-two multiple of the warp from 32 to 1024, the smallest
 *    that covers a row;
 *  - ol_cuda_row_chunks: host loops of at most OL_CUDA_MAX_BLOCKS rows (grid.y's limit) cover
 *    every row once.
 * The 2-byte conversions the kernels use are core's (onelora/core/half.h), tested in test_io.c;
 * here only that a GPU-narrowed value would widen back within bf16's half-ulp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "backend/cuda/launch.h"
#include "onelora/core/core.h"

static void test_blocks(void **state) {
  (void)state;
  static const unsigned threads[] = {32, 128, 256, 1024};
  static const size_t ns[] = {0, 1, 31, 32, 33, 255, 256, 257, 65535, 1u << 20, 16776960,
                              16776961, (size_t)1 << 34};
  for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++)
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
      const size_t n = ns[i];
      const unsigned b = ol_cuda_blocks(n, threads[t]);
      assert_true(b >= 1 && b <= OL_CUDA_MAX_BLOCKS);
      const size_t exact = (n + threads[t] - 1) / threads[t];
      if (exact >= 1 && exact <= OL_CUDA_MAX_BLOCKS) {
        assert_int_equal(b, exact);  // uncapped: the fewest blocks that cover n
        assert_true((size_t)b * threads[t] >= n && (size_t)(b - 1) * threads[t] < n);
      } else if (exact > OL_CUDA_MAX_BLOCKS) {
        assert_int_equal(b, OL_CUDA_MAX_BLOCKS);  // capped: grid-stride covers the rest
      }
    }
}

static void test_row_threads(void **state) {
  (void)state;
  for (size_t cols = 0; cols <= 5000; cols++) {
    const unsigned t = ol_cuda_row_threads(cols);
    assert_true(t >= 32 && t <= 1024 && (t & (t - 1)) == 0);  // a power of two, whole warps
    if (cols <= 1024) {
      assert_true(t >= cols);                 // one pass covers the row
      assert_true(t == 32 || t / 2 < cols);  // the smallest that does
    } else {
      assert_int_equal(t, 1024);
    }
  }
}

static void test_row_chunks(void **state) {
  (void)state;
  static const size_t rows[] = {0, 1, 65534, 65535, 65536, 131070, 131071, 1000000};
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    const size_t r = rows[i], chunks = ol_cuda_row_chunks(r);
    size_t covered = 0;  // the host loop of cuda.cu's gemm_half: r0 += OL_CUDA_MAX_BLOCKS
    for (size_t c = 0; c < chunks; c++) {
      const size_t r0 = c * OL_CUDA_MAX_BLOCKS;
      const size_t n = r - r0 < OL_CUDA_MAX_BLOCKS ? r - r0 : OL_CUDA_MAX_BLOCKS;
      assert_true(r0 < r && n >= 1 && n <= OL_CUDA_MAX_BLOCKS);
      covered += n;
    }
    assert_int_equal(covered, r);
  }
}

/* A deliberately wrong expectation must fail: the checks above are not vacuous. */
static void test_wrong_expectation_fails(void **state) {
  (void)state;
  assert_int_not_equal(ol_cuda_blocks(257, 256), 1);   // 257 elements need 2 blocks of 256
  assert_int_not_equal(ol_cuda_row_threads(33), 32);   // 33 columns need 64 threads
  assert_int_not_equal(ol_cuda_row_chunks(65536), 1);  // one row past grid.y's limit
}

/* bf16 round trip: |widen(narrow(x)) - x| <= 2^-8 |x| for normal x (8 significant bits, to
 * nearest), and exact for values already in bf16 */
static void test_bf16_round_trip(void **state) {
  (void)state;
  for (uint32_t k = 0; k < 100000; k++) {
    const float x = (float)(((double)k - 50000.0) * 1.2345e-3);
    const float y = ol_bf16_to_f32(ol_f32_to_bf16(x));
    assert_true(fabsf(y - x) <= ldexpf(fabsf(x), -8));
    assert_true(ol_bf16_to_f32(ol_f32_to_bf16(y)) == y);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_blocks),
      cmocka_unit_test(test_row_threads),
      cmocka_unit_test(test_row_chunks),
      cmocka_unit_test(test_wrong_expectation_fails),
      cmocka_unit_test(test_bf16_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
