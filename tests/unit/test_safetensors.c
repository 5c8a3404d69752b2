/* io/safetensors_read.c: valid F32/F16/BF16 files read back (slices included, BF16 exact), and
 * each header validation rule rejects its file with an error naming the file and the tensor. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "onelora/core/core.h"
#include "onelora/io/weights.h"

static char path[64];

/* Writes the 8-byte length, the header text and `data_len` bytes of data to `path`. */
static void write_file(const char *header, const void *data, size_t data_len) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  uint64_t n = strlen(header);
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(n >> (8 * i));
  fwrite(len8, 1, 8, f);
  fwrite(header, 1, n, f);
  if (data_len) fwrite(data, 1, data_len, f);
  fclose(f);
}

static int setup(void **state) {
  snprintf(path, sizeof path, "/tmp/onelora-test-st-%ld.safetensors", (long)getpid());
  ol_clear_error();
  return 0;
}

static int teardown(void **state) {
  unlink(path);
  return 0;
}

static void expect_open_error(const char *want) {
  ol_st_reader *r = NULL;
  assert_int_equal(ol_st_open(path, &r), OL_ERR);
  assert_null(r);
  const char *msg = ol_last_error();
  if (!strstr(msg, path) || !strstr(msg, want)) fail_msg("error '%s' lacks '%s'", msg, want);
  ol_clear_error();
}

static void test_f32_slices(void **state) {
  float w[6] = {1, 2, 3, 4, 5, 6};  /* (2, 3) */
  float b[2] = {7, 8};              /* (2) */
  char data[32];
  memcpy(data, w, 24), memcpy(data + 24, b, 8);
  write_file("{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
             "\"data_offsets\":[0,24]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]}}",
             data, 32);
  ol_st_reader *r;
  assert_int_equal(ol_st_open(path, &r), OL_OK);
  assert_true(ol_st_has(r, "w"));
  assert_false(ol_st_has(r, "nope"));
  size_t shape[2] = {2, 3}, start[2] = {0, 1}, count[2] = {2, 2};
  float got[6];  /* (2, 2) column slice */
  assert_int_equal(ol_st_read(r, "w", 2, shape, start, count, got), OL_OK);
  assert_true(got[0] == 2 && got[1] == 3 && got[2] == 5 && got[3] == 6);
  size_t s1 = 1, c1 = 1;  /* row slice */
  size_t st2[2] = {1, 0}, ct2[2] = {1, 3};
  assert_int_equal(ol_st_read(r, "w", 2, shape, st2, ct2, got), OL_OK);
  assert_true(got[0] == 4 && got[2] == 6);
  size_t sb = 2;
  assert_int_equal(ol_st_read(r, "b", 1, &sb, &s1, &c1, got), OL_OK);
  assert_true(got[0] == 8);
  size_t wrong[2] = {3, 2};
  assert_int_equal(ol_st_read(r, "w", 2, wrong, start, count, got), OL_ERR);
  assert_non_null(strstr(ol_last_error(), "tensor 'w' has shape [2, 3], expected [3, 2]"));
  assert_int_equal(ol_st_read(r, "gone", 2, shape, start, count, got), OL_ERR);
  assert_non_null(strstr(ol_last_error(), "missing tensor 'gone'"));
  ol_st_close(r);
}

static void test_f16_bf16(void **state) {
  uint16_t h[4] = {0x3c00, 0xc000, 0x3800, 0x0000};  /* f16: 1, -2, 0.5, 0 */
  uint16_t bf[4] = {0x3f80, 0x4049, 0xbf00, 0x7f80}; /* bf16: 1, 3.140625, -0.5, inf */
  char data[16];
  memcpy(data, h, 8), memcpy(data + 8, bf, 8);
  write_file("{\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
             "\"bf\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}", data, 16);
  ol_st_reader *r;
  assert_int_equal(ol_st_open(path, &r), OL_OK);
  float got[4];
  size_t n = 4, z = 0;
  assert_int_equal(ol_st_read(r, "h", 1, &n, &z, &n, got), OL_OK);
  assert_true(got[0] == 1.0f && got[1] == -2.0f && got[2] == 0.5f && got[3] == 0.0f);
  size_t shape[2] = {2, 2}, start[2] = {0, 0};
  assert_int_equal(ol_st_read(r, "bf", 2, shape, start, shape, got), OL_OK);
  for (int i = 0; i < 4; i++) {  /* bf16 widens exactly: the bits shifted up by 16 */
    uint32_t bits = (uint32_t)bf[i] << 16, gb;
    memcpy(&gb, &got[i], 4);
    assert_int_equal(gb, bits);
  }
  ol_st_close(r);
}

static void test_bad_length(void **state) {
  FILE *f = fopen(path, "wb");
  unsigned char len8[8] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
  fwrite(len8, 1, 8, f);
  fputs("{}", f);
  fclose(f);
  expect_open_error("header length 4294967295");
  f = fopen(path, "wb");
  fputs("abc", f);
  fclose(f);
  expect_open_error("too short");
}

static void test_bad_json(void **state) {
  write_file("{\"w\":{\"dtype\":", NULL, 0);
  expect_open_error("not valid JSON");
  write_file("[1,2]", NULL, 0);
  expect_open_error("not a JSON object");
}

static void test_unknown_dtype(void **state) {
  write_file("{\"w\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[0,2]}}", "ab", 2);
  expect_open_error("tensor 'w': unsupported dtype 'I8'");
}

static void test_size_mismatch(void **state) {
  write_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", "abcdefgh", 8);
  expect_open_error("tensor 'w': shape and dtype need");
  write_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,8]}}",
             "abcdefgh", 8);
  expect_open_error("tensor 'w': shape and dtype need more than");
  write_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", "abcd", 4);
  expect_open_error("tensor 'w': shape[0] is not a non-negative integer");
}

static void test_out_of_bounds(void **state) {
  write_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", "abcd", 4);
  expect_open_error("tensor 'w': data_offsets [0, 8] outside the 4 data bytes");
}

static void test_overlap(void **state) {
  write_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", "abcdefgh", 8);
  expect_open_error("data overlaps tensor");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_f32_slices, setup, teardown),
      cmocka_unit_test_setup_teardown(test_f16_bf16, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_length, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_dtype, setup, teardown),
      cmocka_unit_test_setup_teardown(test_size_mismatch, setup, teardown),
      cmocka_unit_test_setup_teardown(test_out_of_bounds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_overlap, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
