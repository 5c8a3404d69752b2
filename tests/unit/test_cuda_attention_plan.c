/* Unit tests of the CUDA attention kernels' host-side tiling (src/backend/cuda/attention_plan.h),
 * on the CPU: the decisions attention.cu takes from it, checked without a GPU.
 *  - the padded head width and the threads' column maps cover every column exactly once;
 *  - the tiles the forward, dq and dk/dv kernels visit cover every causal (query, key <= query)
 *    pair exactly once, and no visited tile is wholly masked;
 *  - each kernel's shared memory layout has disjoint, float4-aligned regions within the opt-in
 *    limit, and at hd = 128 two blocks fit on an sm_90 multiprocessor;
 *  - the grids are within CUDA's limits and cover the sequence.
 * Shapes: T in {1, 7, 64, 2048, 4096}, hd in {8, 64, 128} (and every hd for the column maps). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/cuda/attention_plan.h"

static const size_t kT[] = {1, 7, 64, 2048, 4096};
static const size_t kHd[] = {8, 64, 128};
#define N_T (sizeof kT / sizeof kT[0])
#define N_HD (sizeof kHd / sizeof kHd[0])

/* ---- head width and the threads' maps ------------------------------------------------------- */

static void test_hd_pad(void **state) {
  (void)state;
  assert_int_equal(ol_attn_hd_pad(0), 0);
  assert_int_equal(ol_attn_hd_pad(OL_ATTN_MAX_HD + 1), 0);
  for (size_t hd = 1; hd <= OL_ATTN_MAX_HD; hd++) {
    const int p = ol_attn_hd_pad(hd);
    assert_true(p == 16 || p == 32 || p == 64 || p == 128);  // the instantiated kernels
    assert_true((size_t)p >= hd);
    assert_true(p == 16 || (size_t)p / 2 < hd);  // the smallest that holds hd
  }
  assert_int_equal(ol_attn_hd_pad(8), 16);
  assert_int_equal(ol_attn_hd_pad(64), 64);
  assert_int_equal(ol_attn_hd_pad(128), 128);
  for (int p = 16; p <= 128; p *= 2) assert_int_equal(ol_attn_ld(p) % 4, 0);  // float4 rows
}

/* Every output column of a tile is held by exactly one (tx, c); with 4 or more columns a
 * thread, its columns come in float4 groups (4g .. 4g+3 consecutive, the first a multiple of
 * 4), which load_cols and store_cols read and write as one float4 at g * 64 + tx * 4. */
static void test_out_cols(void **state) {
  (void)state;
  for (int p = 16; p <= 128; p *= 2) {
    int seen[128] = {0};
    const int per = p / OL_ATTN_TX;
    for (int tx = 0; tx < OL_ATTN_TX; tx++)
      for (int c = 0; c < per; c++) {
        const int col = ol_attn_out_col(tx, c, p);
        assert_true(col >= 0 && col < p);
        seen[col]++;
        if (per >= 4) {
          assert_int_equal(col, (c / 4) * 64 + tx * 4 + c % 4);
        } else {
          assert_int_equal(col, tx * per + c);
        }
      }
    for (int col = 0; col < p; col++) assert_int_equal(seen[col], 1);
  }
}

/* The 16 x 16 threads' micro-tiles: rows ty * RM + r and score columns tx + 16 c cover a
 * (R, C) tile exactly once. */
static void check_micro_tiles(int R, int C) {
  assert_int_equal(R % OL_ATTN_TY, 0);
  assert_int_equal(C % OL_ATTN_TX, 0);
  assert_int_equal(C % 4, 0);  // tile_mm steps over a score row 4 at a time
  const int RM = R / OL_ATTN_TY, CN = C / OL_ATTN_TX;
  int *seen = calloc((size_t)(R * C), sizeof *seen);
  assert_non_null(seen);
  for (int ty = 0; ty < OL_ATTN_TY; ty++)
    for (int tx = 0; tx < OL_ATTN_TX; tx++)
      for (int r = 0; r < RM; r++)
        for (int c = 0; c < CN; c++) seen[(ty * RM + r) * C + tx + OL_ATTN_TX * c]++;
  for (int e = 0; e < R * C; e++) assert_int_equal(seen[e], 1);
  free(seen);
}

static void test_micro_tiles(void **state) {
  (void)state;
  assert_int_equal(OL_ATTN_TX * OL_ATTN_TY, OL_ATTN_THREADS);
  assert_int_equal(OL_ATTN_TX, 16);  // a row group is a half warp: 16-lane shuffles
  check_micro_tiles(OL_ATTN_FWD_BR, OL_ATTN_FWD_BC);
  check_micro_tiles(OL_ATTN_DQ_BR, OL_ATTN_DQ_BC);
  check_micro_tiles(OL_ATTN_DKV_BC, OL_ATTN_DKV_BR);  // rows are keys, columns queries
  assert_int_equal(OL_ATTN_CACHED_THREADS % 32, 0);
  assert_int_equal(OL_ATTN_MAX_HD % 32, 0);  // attention_cached: 4 columns a lane
}

/* ---- causal coverage ------------------------------------------------------------------------- */

/* counts (T, T), zeroed: every (i, j <= i) counted once, nothing above the diagonal */
static void check_counts(const uint8_t *counts, size_t T) {
  for (size_t i = 0; i < T; i++)
    for (size_t j = 0; j < T; j++) {
      if (counts[i * T + j] != (j <= i ? 1 : 0)) fail_msg("T %zu: pair (%zu, %zu)", T, i, j);
    }
}

/* A query-tiled pass (forward, delta, dq): query tiles of br rows, each over key tiles of bc
 * keys 0 .. ol_attn_key_tiles - 1 */
static void check_query_pass(size_t T, size_t br, size_t bc, uint8_t *counts) {
  memset(counts, 0, T * T);
  const size_t nq = ol_attn_tiles(T, br);
  assert_true(nq * br >= T && (nq - 1) * br < T);
  for (size_t qt = 0; qt < nq; qt++) {
    const size_t i0 = qt * br, nk = ol_attn_key_tiles(i0, br, bc, T);
    assert_true(nk >= 1 && nk <= ol_attn_tiles(T, bc));
    for (size_t kt = 0; kt < nk; kt++) {
      size_t visible = 0;
      for (size_t i = i0; i < i0 + br; i++)
        for (size_t j = kt * bc; j < kt * bc + bc; j++)
          if (ol_attn_visible(i, j, T)) {
            assert_true(i < T && j < T);
            counts[i * T + j]++;
            visible++;
          }
      assert_true(visible > 0);  // no wholly masked tile is visited
    }
  }
  check_counts(counts, T);
}

/* The dk/dv pass: key tiles of bc keys, each over the query tiles of br rows from
 * ol_attn_first_query_tile on (for each query head of its group: the same tiles) */
static void check_key_pass(size_t T, size_t bc, size_t br, uint8_t *counts) {
  memset(counts, 0, T * T);
  const size_t nk = ol_attn_tiles(T, bc), nq = ol_attn_tiles(T, br);
  for (size_t kt = 0; kt < nk; kt++) {
    const size_t j0 = kt * bc, first = ol_attn_first_query_tile(j0, br);
    assert_true(first < nq);
    for (size_t qt = first; qt < nq; qt++) {
      size_t visible = 0;
      for (size_t j = j0; j < j0 + bc; j++)
        for (size_t i = qt * br; i < qt * br + br; i++)
          if (ol_attn_visible(i, j, T)) {
            assert_true(i < T && j < T);
            counts[i * T + j]++;
            visible++;
          }
      assert_true(visible > 0);
    }
  }
  check_counts(counts, T);
}

static void test_causal_coverage(void **state) {
  (void)state;
  for (size_t t = 0; t < N_T; t++) {
    const size_t T = kT[t];
    uint8_t *counts = malloc(T * T);
    assert_non_null(counts);
    check_query_pass(T, OL_ATTN_FWD_BR, OL_ATTN_FWD_BC, counts);
    check_query_pass(T, OL_ATTN_DQ_BR, OL_ATTN_DQ_BC, counts);
    check_key_pass(T, OL_ATTN_DKV_BC, OL_ATTN_DKV_BR, counts);
    free(counts);
  }
  // rows beyond T see nothing, even their own diagonal
  assert_false(ol_attn_visible(7, 0, 7));
  assert_true(ol_attn_visible(6, 6, 7));
  assert_false(ol_attn_visible(5, 6, 7));
}

/* ---- shared memory --------------------------------------------------------------------------- */

typedef struct {
  size_t off, floats;
} region;

/* regions in order, each float4-aligned, none overlapping the next, all within total */
static void check_regions(const region *r, size_t n, size_t total) {
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(r[i].off % 4, 0);
    const size_t end = r[i].off + r[i].floats;
    assert_true(end <= (i + 1 < n ? r[i + 1].off : total));
  }
  const size_t bytes = total * sizeof(float);
  assert_true(bytes <= OL_ATTN_SMEM_LIMIT);
}

static void test_shared_memory(void **state) {
  (void)state;
  for (size_t h = 0; h < N_HD; h++) {
    const int p = ol_attn_hd_pad(kHd[h]);
    const size_t ld = (size_t)ol_attn_ld(p);
    const size_t fbc = OL_ATTN_FWD_BC, fbr = OL_ATTN_FWD_BR;
    const size_t fk = fbc * ld > fbr * (fbc + OL_ATTN_PAD) ? fbc * ld : fbr * (fbc + OL_ATTN_PAD);
    const region fwd[] = {{ol_attn_fwd_q_off(p), fbr * ld},  // Q
                          {ol_attn_fwd_v_off(p), fbc * ld},  // V
                          {ol_attn_fwd_k_off(p), fk}};       // K, then P
    check_regions(fwd, 3, ol_attn_fwd_floats(p));

    const size_t qbr = OL_ATTN_DQ_BR, qbc = OL_ATTN_DQ_BC;
    const size_t qv = qbc * ld > qbr * (qbc + OL_ATTN_PAD) ? qbc * ld : qbr * (qbc + OL_ATTN_PAD);
    const region dq[] = {{ol_attn_dq_q_off(p), qbr * ld},   // Q
                         {ol_attn_dq_do_off(p), qbr * ld},  // dO
                         {ol_attn_dq_k_off(p), qbc * ld},   // K
                         {ol_attn_dq_v_off(p), qv}};        // V, then dS
    check_regions(dq, 4, ol_attn_dq_floats(p));

    const size_t kbc = OL_ATTN_DKV_BC, kbr = OL_ATTN_DKV_BR;
    const region dkv[] = {{ol_attn_dkv_k_off(p), kbc * ld},                     // K
                          {ol_attn_dkv_v_off(p), kbc * ld},                     // V
                          {ol_attn_dkv_q_off(p), kbr * ld},                     // Q
                          {ol_attn_dkv_do_off(p), kbr * ld},                    // dO
                          {ol_attn_dkv_p_off(p), kbc * (kbr + OL_ATTN_PAD)},    // P^T, dS^T
                          {ol_attn_dkv_lse_off(p), kbr},                        // lse
                          {ol_attn_dkv_delta_off(p), kbr}};                     // delta
    check_regions(dkv, 7, ol_attn_dkv_floats(p));

    if (p == 128) {  // two blocks per sm_90 multiprocessor (228 KiB, 1 KiB reserved a block)
      const size_t sm90 = 228 * 1024, reserved = 1024;
      assert_true(2 * (ol_attn_fwd_floats(p) * sizeof(float) + reserved) <= sm90);
      assert_true(2 * (ol_attn_dq_floats(p) * sizeof(float) + reserved) <= sm90);
      assert_true(2 * (ol_attn_dkv_floats(p) * sizeof(float) + reserved) <= sm90);
    }
  }
}

/* ---- grids ----------------------------------------------------------------------------------- */

static void check_grid(ol_attn_grid g, size_t T, size_t tile, size_t heads, size_t B) {
  assert_true(ol_attn_grid_ok(g));
  assert_int_equal(g.y, heads);
  assert_int_equal(g.z, B);
  assert_true(g.x * tile >= T && (g.x - 1) * tile < T);  // every row, no empty tile
}

static void test_grids(void **state) {
  (void)state;
  const size_t Bs[] = {1, 8, 64}, Hs[] = {1, 40, 64};
  for (size_t t = 0; t < N_T; t++)
    for (size_t bi = 0; bi < 3; bi++)
      for (size_t hi = 0; hi < 3; hi++) {
        const size_t T = kT[t], B = Bs[bi], H = Hs[hi];
        check_grid(ol_attn_fwd_grid(B, T, H), T, OL_ATTN_FWD_BR, H, B);
        check_grid(ol_attn_dq_grid(B, T, H), T, OL_ATTN_DQ_BR, H, B);
        check_grid(ol_attn_dkv_grid(B, T, H), T, OL_ATTN_DKV_BC, H, B);
        const ol_attn_grid c = ol_attn_cached_grid(T, H);  // T new rows at once
        assert_true(ol_attn_grid_ok(c));
        assert_int_equal(c.x, T);
        assert_int_equal(c.y, H);
      }
  ol_attn_grid bad = {1, 65536, 1};
  assert_false(ol_attn_grid_ok(bad));
  bad.y = 1, bad.z = 0;
  assert_false(ol_attn_grid_ok(bad));
  bad.z = 1, bad.x = 0;
  assert_false(ol_attn_grid_ok(bad));
  bad.x = (size_t)OL_ATTN_GRID_X_MAX + 1;
  assert_false(ol_attn_grid_ok(bad));
}

/* The key tiles a query tile visits at the edges: the first tile, a partial last tile */
static void test_key_tiles(void **state) {
  (void)state;
  assert_int_equal(ol_attn_key_tiles(0, 64, 64, 1), 1);
  assert_int_equal(ol_attn_key_tiles(0, 64, 64, 7), 1);
  assert_int_equal(ol_attn_key_tiles(0, 64, 32, 64), 2);
  assert_int_equal(ol_attn_key_tiles(64, 64, 32, 70), 3);  // rows 64..69: keys up to 69
  assert_int_equal(ol_attn_key_tiles(4032, 64, 64, 4096), 64);
  assert_int_equal(ol_attn_first_query_tile(0, 32), 0);
  assert_int_equal(ol_attn_first_query_tile(64, 32), 2);
  assert_int_equal(ol_attn_first_query_tile(4032, 32), 126);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hd_pad),          cmocka_unit_test(test_out_cols),
      cmocka_unit_test(test_micro_tiles),     cmocka_unit_test(test_causal_coverage),
      cmocka_unit_test(test_shared_memory),   cmocka_unit_test(test_grids),
      cmocka_unit_test(test_key_tiles),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
