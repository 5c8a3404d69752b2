/* io/: model, data and checkpoint files, and the metrics log. Bad files are made by copying,
 * truncating or byte-patching files written by io/ itself (attribute names are stored verbatim
 * in HDF5 object headers), so the tests need no HDF5 or Python of their own. Also the plain-file
 * helpers (io/files.c). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"
#include "onelora/io/files.h"

/* ---- fixture: one fresh temp directory per test ---------------------------------------- */

typedef struct {
  char dir[64];
  char buf[4][512];  /* scratch paths */
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/onelora-test-io-XXXXXX");
  if (!mkdtemp(f->dir)) return -1;
  ol_clear_error();
  *state = f;
  return 0;
}

/* The same, writing files in the earliest HDF5 format (h5py's default): without metadata
 * checksums, so that byte patches of attribute and link names make files HDF5 still reads. */
static int setup_earliest(void **state) {
  setenv("ONELORA_HDF5_FORMAT", "earliest", 1);
  return setup(state);
}

static int teardown(void **state) {
  unsetenv("ONELORA_HDF5_FORMAT");
  fixture *f = *state;
  DIR *d = opendir(f->dir);
  struct dirent *e;
  char p[600];
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(p, sizeof p, "%s/%s", f->dir, e->d_name);
      unlink(p);
    }
  if (d) closedir(d);
  rmdir(f->dir);
  free(f);
  return 0;
}

/* Path of `name` in the test directory, in scratch slot k. */
static const char *tpath(fixture *f, int k, const char *name) {
  snprintf(f->buf[k], sizeof f->buf[k], "%s/%s", f->dir, name);
  return f->buf[k];
}

/* ---- helpers ------------------------------------------------------------------------------ */

static ol_config tiny_config(void) {
  ol_config c = {.dim = 8, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .ffn_dim = 12,
                 .vocab_size = 300, .max_seq_len = 64, .norm_eps = 1e-5, .rope_theta = 10000.0};
  return c;
}

/* The config of the small model files below: the file holds a byte per weight it implies
 * (16 x 8 embedding + one layer: 608 values), as the reader requires. */
static ol_config model_config(void) {
  ol_config c = tiny_config();
  c.n_layers = 1, c.vocab_size = 16, c.max_seq_len = 12345;
  return c;
}

static void fill_normal(float *x, size_t n, float scale, uint64_t seed) {
  ol_rng r;
  ol_rng_seed(&r, seed);
  for (size_t i = 0; i < n; i++) x[i] = scale * ol_rng_normal(&r);
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int fd_count(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  while (d && readdir(d)) n++;
  if (d) closedir(d);
  return n;
}

static unsigned char *read_all(const char *path, size_t *n) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  *n = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *b = malloc(*n + 1);
  assert_int_equal(fread(b, 1, *n, fp), *n);
  fclose(fp);
  b[*n] = 0;
  return b;
}

static void write_all(const char *path, const void *b, size_t n) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(b, 1, n, fp), n);
  fclose(fp);
}

/* Replaces every occurrence of the n bytes `from` by `to`; returns how many there were. */
static int patch(const char *path, const void *from, const void *to, size_t n) {
  size_t size;
  unsigned char *b = read_all(path, &size);
  int count = 0;
  for (size_t i = 0; i + n <= size; i++)
    if (memcmp(b + i, from, n) == 0) {
      memcpy(b + i, to, n);
      count++;
      i += n - 1;
    }
  write_all(path, b, size);
  free(b);
  return count;
}

/* Renames attribute a to b and b to a (same length, both present exactly once). */
static void swap_names(const char *path, const char *a, const char *b) {
  size_t n = strlen(a);
  assert_int_equal(strlen(b), n);
  char tmp[64];
  memset(tmp, '#', n);
  assert_int_equal(patch(path, a, tmp, n), 1);
  assert_int_equal(patch(path, b, a, n), 1);
  assert_int_equal(patch(path, tmp, b, n), 1);
}

static void copy_prefix(const char *src, const char *dst, size_t keep) {
  size_t n;
  unsigned char *b = read_all(src, &n);
  write_all(dst, b, keep < n ? keep : n);
  free(b);
}

/* Sends stderr to a file, to check that HDF5 prints nothing of its own; returns the old fd. */
static int stderr_to(const char *path) {
  fflush(stderr);
  int saved = dup(2);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  assert_true(saved >= 0 && fd >= 0);
  dup2(fd, 2);
  close(fd);
  return saved;
}

/* Restores stderr; returns how many bytes were printed meanwhile. */
static long stderr_back(int saved, const char *path) {
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  return file_size(path);
}

/* The call failed and its message contains every given fragment. */
static void expect_error(int rc, const char *a, const char *b, const char *c) {
  const char *msg = ol_last_error();
  const char *parts[3] = {a, b, c};
  if (rc == OL_OK) fail_msg("expected an error containing '%s'", a);
  for (int i = 0; i < 3; i++)
    if (parts[i] && !strstr(msg, parts[i]))
      fail_msg("error '%s' does not contain '%s'", msg, parts[i]);
  if (strchr(msg, '\n')) fail_msg("error '%s' spans lines", msg);
}

/* A model file with "a" [6, 8] and "b" [8], values from fill_normal(seed 1 and 2). */
#define A_ROWS 6
#define A_COLS 8
static void write_model(const char *path, ol_dtype dtype, float *a, float *b) {
  ol_config cfg = model_config();
  fill_normal(a, A_ROWS * A_COLS, 2.0f, 1);
  fill_normal(b, A_COLS, 1.0f, 2);
  ol_h5model *m;
  assert_int_equal(ol_h5model_create(path, &cfg, &m), OL_OK);
  size_t sa[2] = {A_ROWS, A_COLS}, sb[1] = {A_COLS};
  assert_int_equal(ol_h5model_write(m, "a", 2, sa, a, dtype), OL_OK);
  assert_int_equal(ol_h5model_write(m, "b", 1, sb, b, dtype), OL_OK);
  assert_int_equal(ol_h5model_finish(m), OL_OK);
}

/* ---- dtype ---------------------------------------------------------------------------- */

static void test_dtype(void **state) {
  (void)state;
  ol_dtype t;
  const char *names[] = {"f32", "f16", "bf16"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(ol_dtype_parse(names[i], &t), OL_OK);
    assert_int_equal(t, i);
    assert_string_equal(ol_dtype_name(t), names[i]);
  }
  expect_error(ol_dtype_parse("fp32", &t), "'fp32'", NULL, NULL);
}

/* ---- model file --------------------------------------------------------------------------- */

static void test_model_f32_roundtrip(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "m.h5");
  float a[A_ROWS * A_COLS], b[A_COLS];  /* (6, 8), (8,) */
  write_model(path, OL_DTYPE_F32, a, b);
  assert_true(exists(path));
  assert_false(exists(tpath(f, 1, "m.h5.tmp")));

  ol_h5model *m;
  ol_config cfg, want = model_config();
  assert_int_equal(ol_h5model_open(path, &m, &cfg), OL_OK);
  assert_memory_equal(&cfg, &want, sizeof cfg);
  assert_true(ol_h5model_has(m, "a"));
  assert_false(ol_h5model_has(m, "nope"));

  size_t shape[2] = {A_ROWS, A_COLS};
  float got[A_ROWS * A_COLS];  /* (6, 8) at most */
  size_t start[2] = {0, 0}, count[2] = {A_ROWS, A_COLS};
  assert_int_equal(ol_h5model_read(m, "a", 2, shape, start, count, got), OL_OK);
  assert_memory_equal(got, a, sizeof a);

  /* rows [2, 5), all columns */
  start[0] = 2, count[0] = 3, start[1] = 0, count[1] = A_COLS;
  assert_int_equal(ol_h5model_read(m, "a", 2, shape, start, count, got), OL_OK);
  assert_memory_equal(got, a + 2 * A_COLS, 3 * A_COLS * sizeof(float));

  /* columns [3, 7) of every row: a strided slice of row-major data */
  start[0] = 0, count[0] = A_ROWS, start[1] = 3, count[1] = 4;
  assert_int_equal(ol_h5model_read(m, "a", 2, shape, start, count, got), OL_OK);
  for (size_t r = 0; r < A_ROWS; r++)
    for (size_t c = 0; c < 4; c++) assert_true(got[r * 4 + c] == a[r * A_COLS + 3 + c]);

  /* a block: rows [1, 4), columns [5, 8) */
  start[0] = 1, count[0] = 3, start[1] = 5, count[1] = 3;
  assert_int_equal(ol_h5model_read(m, "a", 2, shape, start, count, got), OL_OK);
  for (size_t r = 0; r < 3; r++)
    for (size_t c = 0; c < 3; c++) assert_true(got[r * 3 + c] == a[(1 + r) * A_COLS + 5 + c]);

  size_t sb = A_COLS, b0 = 3, bn = 4;
  assert_int_equal(ol_h5model_read(m, "b", 1, &sb, &b0, &bn, got), OL_OK);
  assert_memory_equal(got, b + 3, 4 * sizeof(float));
  ol_h5model_close(m);
}

/* A 2-byte model dataset (f16 or bf16) reads back as the rounded values, whole and sliced. */
static void half_roundtrip(fixture *f, ol_dtype dtype) {
  const int bf16 = dtype == OL_DTYPE_BF16;
  const char *path = tpath(f, 0, bf16 ? "mbf16.h5" : "m16.h5");
  /* (2049, 2048): more than one conversion block of the writer */
  const size_t rows = 2049, cols = 2048, n = rows * cols;
  float *w = malloc(n * sizeof *w), *got = malloc(n * sizeof *got);
  fill_normal(w, n, 3.0f, 7);
  w[0] = 1e-6f;    /* f16 subnormal */
  w[1] = -7e-8f;   /* rounds to 0 or the smallest f16 subnormal */
  w[2] = 60000.0f; /* near the f16 maximum */
  ol_config cfg = tiny_config();
  ol_h5model *m;
  size_t shape[2] = {rows, cols};
  assert_int_equal(ol_h5model_create(path, &cfg, &m), OL_OK);
  assert_int_equal(ol_h5model_write(m, "w", 2, shape, w, dtype), OL_OK);
  assert_int_equal(ol_h5model_finish(m), OL_OK);
  /* stored as 2 bytes per value (plus a few KiB of metadata) */
  assert_true(file_size(path) < (long)(n * 2 + 65536));

  assert_int_equal(ol_h5model_open(path, &m, &cfg), OL_OK);
  ol_dtype stored;
  uint64_t offset;
  char why[160];
  assert_int_equal(ol_h5model_locate(m, "w", &stored, &offset, why, sizeof why), OL_OK);
  assert_int_equal(stored, dtype);
  size_t start[2] = {0, 0};
  assert_int_equal(ol_h5model_read(m, "w", 2, shape, start, shape, got), OL_OK);
  /* round to nearest: relative error <= 2^-11 (f16: 11 significant bits; absolute 2^-25 in its
   * subnormal range) or 2^-8 (bf16: 8 significant bits, f32's exponent range) */
  const float rel = bf16 ? 0x1p-8f : 0x1p-11f, abs_floor = bf16 ? 0.0f : 0x1p-25f;
  for (size_t i = 0; i < n; i++) {
    float want = bf16 ? ol_bf16_to_f32(ol_f32_to_bf16(w[i])) : ol_f16_to_f32(ol_f32_to_f16(w[i]));
    if (got[i] != want) fail_msg("w[%zu]: got %g, want %g", i, got[i], want);
    assert_true(fabsf(got[i] - w[i]) <= fabsf(w[i]) * rel + abs_floor);
  }
  /* a column slice */
  size_t s2[2] = {5, 1000}, c2[2] = {7, 24};
  assert_int_equal(ol_h5model_read(m, "w", 2, shape, s2, c2, got), OL_OK);
  for (size_t r = 0; r < 7; r++)
    for (size_t c = 0; c < 24; c++) {
      float x = w[(5 + r) * cols + 1000 + c];
      assert_true(got[r * 24 + c] ==
                  (bf16 ? ol_bf16_to_f32(ol_f32_to_bf16(x)) : ol_f16_to_f32(ol_f32_to_f16(x))));
    }
  ol_h5model_close(m);
  free(w);
  free(got);
}

static void test_model_f16_roundtrip(void **state) { half_roundtrip(*state, OL_DTYPE_F16); }
static void test_model_bf16_roundtrip(void **state) { half_roundtrip(*state, OL_DTYPE_BF16); }

/* ol_h5model_write_rows asks for the rows in contiguous blocks of at most 2^22 values (the
 * memory a writer needs), more than one here, and the file holds what each block gave. */
typedef struct {
  size_t cols, next, calls, max_values;
} rows_log;

static const float *counting_rows(void *ctx, size_t r0, size_t n, float *scratch) {
  rows_log *log = ctx;
  assert_int_equal(r0, log->next);  // in order, no gap, no overlap
  log->next += n, log->calls++;
  if (n * log->cols > log->max_values) log->max_values = n * log->cols;
  for (size_t i = 0; i < n * log->cols; i++) scratch[i] = (float)(r0 * log->cols + i);  // exact
  return scratch;
}

static void test_model_write_rows(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "rows.h5");
  const size_t rows = 2049, cols = 2048, n = rows * cols;  // 2^22 + 2048 values
  ol_config cfg = tiny_config();
  ol_h5model *m;
  size_t shape[2] = {rows, cols};
  rows_log log = {cols, 0, 0, 0};
  assert_int_equal(ol_h5model_create(path, &cfg, &m), OL_OK);
  assert_int_equal(ol_h5model_write_rows(m, "w", 2, shape, OL_DTYPE_F32, counting_rows, &log),
                   OL_OK);
  assert_int_equal(ol_h5model_finish(m), OL_OK);
  assert_int_equal(log.next, rows);
  assert_true(log.calls >= 2);
  assert_true(log.max_values <= (size_t)1 << 22);
  float *got = malloc(n * sizeof *got);  // (rows, cols)
  size_t start[2] = {0, 0};
  assert_int_equal(ol_h5model_open(path, &m, &cfg), OL_OK);
  assert_int_equal(ol_h5model_read(m, "w", 2, shape, start, shape, got), OL_OK);
  ol_h5model_close(m);
  for (size_t i = 0; i < n; i++)
    if (got[i] != (float)i) fail_msg("w[%zu]: got %g, want %zu", i, got[i], i);
  free(got);
}

static void test_model_open_errors(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *good = tpath(f, 0, "good.h5");
  float a[A_ROWS * A_COLS], b[A_COLS];
  write_model(good, OL_DTYPE_F32, a, b);
  ol_h5model *m = NULL;
  ol_config cfg;

  const char *missing = tpath(f, 1, "missing.h5");
  expect_error(ol_h5model_open(missing, &m, &cfg), missing, "No such file", NULL);
  assert_null(m);

  const char *text = tpath(f, 1, "text.h5");
  write_all(text, "hello, not hdf5\n", 16);
  expect_error(ol_h5model_open(text, &m, &cfg), text, "not an HDF5 file", NULL);

  const char *cut = tpath(f, 1, "cut.h5");
  copy_prefix(good, cut, (size_t)file_size(good) / 2);
  int saved = stderr_to(tpath(f, 2, "stderr.txt"));
  int rc = ol_h5model_open(cut, &m, &cfg);
  assert_int_equal(stderr_back(saved, f->buf[2]), 0);  /* only our one line reaches the user */
  expect_error(rc, cut, "truncated", NULL);

  const char *noattr = tpath(f, 1, "noattr.h5");
  copy_prefix(good, noattr, (size_t)file_size(good));
  assert_int_equal(patch(noattr, "max_seq_len", "max_seq_lex", 11), 1);
  expect_error(ol_h5model_open(noattr, &m, &cfg), noattr, "missing attribute 'max_seq_len'", NULL);

  const char *badtype = tpath(f, 1, "badtype.h5");
  copy_prefix(good, badtype, (size_t)file_size(good));
  swap_names(badtype, "n_layers", "norm_eps");  /* n_layers is now a float64 */
  expect_error(ol_h5model_open(badtype, &m, &cfg), badtype,
               "attribute 'n_layers' is a float, expected an integer", NULL);

  const char *invalid = tpath(f, 1, "invalid.h5");
  copy_prefix(good, invalid, (size_t)file_size(good));
  swap_names(invalid, "n_heads", "ffn_dim");  /* n_heads = 12 does not divide dim = 8 */
  expect_error(ol_h5model_open(invalid, &m, &cfg), invalid, "n_heads=12", NULL);

  const char *arch = tpath(f, 1, "arch.h5");
  copy_prefix(good, arch, (size_t)file_size(good));
  assert_int_equal(patch(arch, "llama", "gpt-2", 5), 1);
  expect_error(ol_h5model_open(arch, &m, &cfg), arch, "'architecture' is 'gpt-2'", NULL);

  const char *dir = tpath(f, 1, "");
  expect_error(ol_h5model_open(dir, &m, &cfg), "directory", NULL, NULL);
  assert_null(m);
  assert_int_equal(fd_count(), fds);
}

static void test_model_read_errors(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *path = tpath(f, 0, "m.h5");
  float a[A_ROWS * A_COLS], b[A_COLS], got[A_ROWS * A_COLS];
  write_model(path, OL_DTYPE_F32, a, b);
  ol_h5model *m;
  ol_config cfg;
  assert_int_equal(ol_h5model_open(path, &m, &cfg), OL_OK);
  size_t shape[2] = {A_ROWS, A_COLS}, start[2] = {0, 0};
  expect_error(ol_h5model_read(m, "nope", 2, shape, start, shape, got), path,
               "missing dataset 'nope'", NULL);
  size_t wrong[2] = {A_COLS, A_ROWS};
  expect_error(ol_h5model_read(m, "a", 2, wrong, start, wrong, got), path,
               "dataset 'a' has shape [6, 8], expected [8, 6]", NULL);
  size_t one[1] = {A_ROWS * A_COLS}, zero[1] = {0};
  expect_error(ol_h5model_read(m, "a", 1, one, zero, one, got),
               "'a' has shape [6, 8], expected [48]", NULL, NULL);
  size_t s2[2] = {4, 0}, c2[2] = {3, A_COLS};
  expect_error(ol_h5model_read(m, "a", 2, shape, s2, c2, got), path, "outside dataset 'a'", NULL);
  ol_h5model_close(m);
  assert_int_equal(fd_count(), fds);
}

static void test_model_write_errors(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  ol_config cfg = tiny_config();
  ol_h5model *m = NULL;
  const char *nodir = tpath(f, 0, "no/such/dir/m.h5");
  expect_error(ol_h5model_create(nodir, &cfg, &m), "no/such/dir/m.h5.tmp", "No such file", NULL);
  assert_null(m);

  ol_config bad = cfg;
  bad.n_kv_heads = 3;
  expect_error(ol_h5model_create(tpath(f, 0, "bad.h5"), &bad, &m), "bad.h5", "n_kv_heads=3", NULL);

  const char *path = tpath(f, 0, "m.h5");
  const char *tmp = tpath(f, 1, "m.h5.tmp");
  float x[4] = {1, 2, 3, 4};
  size_t shape[1] = {4};
  assert_int_equal(ol_h5model_create(path, &cfg, &m), OL_OK);
  assert_true(exists(tmp));
  assert_false(exists(path));
  assert_int_equal(ol_h5model_write(m, "x", 1, shape, x, OL_DTYPE_F32), OL_OK);
  expect_error(ol_h5model_write(m, "x", 1, shape, x, OL_DTYPE_F32), "'x' written twice", NULL,
               NULL);
  expect_error(ol_h5model_write(m, "a/b", 1, shape, x, OL_DTYPE_F32), "'a/b'", NULL, NULL);
  ol_h5model_close(m);  /* closing a writer without finish discards it */
  assert_false(exists(tmp));
  assert_false(exists(path));
  assert_int_equal(fd_count(), fds);
}

/* ---- data file ------------------------------------------------------------------------------ */

static void make_tokens(int32_t *t, size_t n, int64_t vocab, int32_t mul) {
  for (size_t i = 0; i < n; i++) t[i] = (int32_t)(((int64_t)i * mul + 1) % vocab);
}

static void check_data_roundtrip(fixture *f, const char *name, int64_t vocab) {
  const char *path = tpath(f, 0, name);
  enum { NT = 1000, NV = 50 };
  int32_t train[NT], val[NV], got[NT];
  make_tokens(train, NT, vocab, 7919);
  make_tokens(val, NV, vocab, 104729);
  train[NT - 1] = (int32_t)(vocab - 1);
  assert_int_equal(ol_dataset_write(path, vocab, train, NT, val, NV), OL_OK);
  char tmp[128];
  snprintf(tmp, sizeof tmp, "%s.tmp", name);
  assert_false(exists(tpath(f, 1, tmp)));
  ol_dataset *d;
  assert_int_equal(ol_dataset_open(path, &d), OL_OK);
  assert_int_equal(ol_dataset_vocab(d), vocab);
  assert_int_equal(ol_dataset_len(d, OL_SPLIT_TRAIN), NT);
  assert_int_equal(ol_dataset_len(d, OL_SPLIT_VAL), NV);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_TRAIN, 0, NT, got), OL_OK);
  assert_memory_equal(got, train, sizeof train);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_TRAIN, 990, 10, got), OL_OK);
  assert_memory_equal(got, train + 990, 10 * sizeof(int32_t));
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_VAL, 13, 20, got), OL_OK);
  assert_memory_equal(got, val + 13, 20 * sizeof(int32_t));
  expect_error(ol_dataset_read(d, OL_SPLIT_VAL, 40, 11, got), path, "val", "past the end");
  ol_dataset_close(d);
}

static void test_data_roundtrip(void **state) {
  fixture *f = *state;
  check_data_roundtrip(f, "d16.h5", 300);
  check_data_roundtrip(f, "d32.h5", 70000);
  /* vocab <= 65536 stores uint16: the uint32 file is ~2 bytes per token larger */
  long grow = file_size(tpath(f, 0, "d32.h5")) - file_size(tpath(f, 1, "d16.h5"));
  assert_true(grow >= 2 * 1050);
  check_data_roundtrip(f, "d65536.h5", 65536);
  assert_int_equal(file_size(tpath(f, 0, "d65536.h5")), file_size(tpath(f, 1, "d16.h5")));
}

static void test_data_empty_val(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "d.h5");
  int32_t train[3] = {1, 2, 3}, got[1];
  assert_int_equal(ol_dataset_write(path, 256, train, 3, NULL, 0), OL_OK);
  ol_dataset *d;
  assert_int_equal(ol_dataset_open(path, &d), OL_OK);
  assert_int_equal(ol_dataset_len(d, OL_SPLIT_VAL), 0);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_VAL, 0, 0, got), OL_OK);
  ol_dataset_close(d);
}

static void test_data_errors(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *path = tpath(f, 0, "d.h5");
  enum { NT = 100, NV = 10 };
  int32_t train[NT], val[NV], got[NT];
  make_tokens(train, NT, 1000, 13);
  make_tokens(val, NV, 1000, 17);
  train[37] = 5000;
  train[60] = 1000;  /* == the patched vocab_size: out of range */
  train[61] = 999;
  /* written with vocab_size 60000, then the attribute is patched down to 1000 */
  assert_int_equal(ol_dataset_write(path, 60000, train, NT, val, NV), OL_OK);
  int64_t v60000 = 60000, v1000 = 1000;
  assert_int_equal(patch(path, &v60000, &v1000, sizeof v60000), 1);
  ol_dataset *d;
  assert_int_equal(ol_dataset_open(path, &d), OL_OK);
  assert_int_equal(ol_dataset_vocab(d), 1000);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_TRAIN, 0, 37, got), OL_OK);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_TRAIN, 38, 22, got), OL_OK);
  assert_int_equal(ol_dataset_read(d, OL_SPLIT_TRAIN, 61, 39, got), OL_OK);
  assert_int_equal(got[0], 999);
  expect_error(ol_dataset_read(d, OL_SPLIT_TRAIN, 55, 10, got), path, "token 1000 at train[60]",
               NULL);
  expect_error(ol_dataset_read(d, OL_SPLIT_TRAIN, 30, 10, got), path, "token 5000 at train[37]",
               "vocab_size 1000");
  ol_dataset_close(d);

  /* the writer refuses out-of-vocab tokens */
  train[37] = 1000;
  train[60] = 1;
  expect_error(ol_dataset_write(path, 1000, train, NT, val, NV), "train[37]", NULL, NULL);
  train[37] = 1;
  val[4] = -1;
  expect_error(ol_dataset_write(path, 1000, train, NT, val, NV), "val[4]", NULL, NULL);
  expect_error(ol_dataset_write(path, 1, train, NT, val, 0), "vocab_size", NULL, NULL);

  /* missing split, missing attribute, not HDF5 */
  val[4] = 2;
  assert_int_equal(ol_dataset_write(path, 1000, train, NT, val, NV), OL_OK);
  const char *noval = tpath(f, 1, "noval.h5");
  copy_prefix(path, noval, (size_t)file_size(path));
  assert_int_equal(patch(noval, "val\0", "vax\0", 4), 1);
  expect_error(ol_dataset_open(noval, &d), noval, "missing dataset 'val'", NULL);
  assert_int_equal(patch(noval, "vocab_size", "vocab_sizf", 10), 1);
  expect_error(ol_dataset_open(noval, &d), noval, "missing attribute 'vocab_size'", NULL);
  const char *text = tpath(f, 1, "text.h5");
  write_all(text, "abc", 3);
  expect_error(ol_dataset_open(text, &d), text, "not an HDF5 file", NULL);
  /* a model file has a vocab_size attribute, but no 'train' dataset */
  float a[A_ROWS * A_COLS], b[A_COLS];
  const char *model = tpath(f, 1, "model.h5");
  write_model(model, OL_DTYPE_F32, a, b);
  expect_error(ol_dataset_open(model, &d), model, "missing dataset 'train'", NULL);
  assert_int_equal(fd_count(), fds);
}

/* ---- checkpoint ----------------------------------------------------------------------------- */

typedef struct {
  ol_ckpt_group g;
  const char *name;
  int ndim;
  size_t shape[2];
} ckpt_spec;

/* Written in this (unsorted) order; a big one spans several checksummed chunks. */
static const ckpt_spec ckpt_specs[] = {
    {OL_GROUP_PARAMS, "model.layers.10.self_attn.q_proj.onelora_b", 1, {8, 0}},
    {OL_GROUP_PARAMS, "model.layers.2.mlp.down_proj.onelora_b", 1, {8, 0}},
    {OL_GROUP_PARAMS, "model.norm.weight", 1, {8, 0}},
    {OL_GROUP_PARAMS, "lm_head.lora_A", 2, {2, 8}},
    {OL_GROUP_PARAMS, "model.embed_tokens.weight", 2, {1100, 1000}},
    {OL_GROUP_ADAM_M, "model.norm.weight", 1, {8, 0}},
    {OL_GROUP_ADAM_M, "lm_head.lora_A", 2, {2, 8}},
    {OL_GROUP_ADAM_V, "model.norm.weight", 1, {8, 0}},
    {OL_GROUP_FROZEN, "vera_B", 2, {12, 3}},
    {OL_GROUP_FROZEN, "vera_A", 2, {3, 12}},
};
#define N_CKPT_SPECS (sizeof ckpt_specs / sizeof ckpt_specs[0])

static size_t spec_elems(const ckpt_spec *s) {
  return s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
}

static ol_ckpt_meta test_meta(void) {
  ol_ckpt_meta m;
  memset(&m, 0, sizeof m);
  m.version = OL_CKPT_VERSION;
  m.step = 1234;
  snprintf(m.method, sizeof m.method, "1lora,norms");
  snprintf(m.targets, sizeof m.targets, "q,k,v");
  m.cfg = tiny_config();
  m.tp = 2, m.pp = 3, m.dp = 4;
  m.seed = 0xF00DFACECAFEBEEFull;  /* above 2^63 */
  m.loss = 2.718281828459045;
  m.rank = 4, m.alpha_x1000 = 16000;
  m.data_cursor = 987654321012ull;
  m.global_batch = 8, m.seq_len = 16, m.shuffle = 1;
  return m;
}

static void write_ckpt(const char *path, const ol_ckpt_meta *meta) {
  ol_ckpt *c;
  assert_int_equal(ol_ckpt_create(path, meta, NULL, &c), OL_OK);
  for (size_t i = 0; i < N_CKPT_SPECS; i++) {
    size_t n = spec_elems(&ckpt_specs[i]);
    float *x = malloc(n * sizeof *x);
    fill_normal(x, n, 1.0f, 100 + i);
    assert_int_equal(ol_ckpt_write(c, ckpt_specs[i].g, ckpt_specs[i].name, ckpt_specs[i].ndim,
                                   ckpt_specs[i].shape, x), OL_OK);
    free(x);
  }
  assert_int_equal(ol_ckpt_finish(c), OL_OK);
}

static void test_ckpt_roundtrip(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *path = tpath(f, 0, "step-00001234.h5");
  ol_ckpt_meta want = test_meta(), got;
  write_ckpt(path, &want);
  assert_true(exists(path));
  assert_false(exists(tpath(f, 1, "step-00001234.h5.tmp")));

  ol_ckpt *c;
  assert_int_equal(ol_ckpt_open(path, &c, &got), OL_OK);
  assert_memory_equal(&got, &want, sizeof got);

  /* each group lists its datasets sorted by name, with their shapes */
  for (int g = 0; g < OL_GROUP_COUNT; g++) {
    size_t n, expect_n = 0;
    assert_int_equal(ol_ckpt_count(c, (ol_ckpt_group)g, &n), OL_OK);
    for (size_t i = 0; i < N_CKPT_SPECS; i++) expect_n += ckpt_specs[i].g == (ol_ckpt_group)g;
    assert_int_equal(n, expect_n);
    char prev[256] = "";
    for (size_t i = 0; i < n; i++) {
      char name[256];
      int ndim;
      size_t shape[OL_MAX_DIMS];
      assert_int_equal(ol_ckpt_info(c, (ol_ckpt_group)g, i, name, sizeof name, &ndim, shape),
                       OL_OK);
      assert_true(strcmp(prev, name) < 0);
      snprintf(prev, sizeof prev, "%s", name);
      const ckpt_spec *s = NULL;
      for (size_t k = 0; k < N_CKPT_SPECS; k++)
        if (ckpt_specs[k].g == (ol_ckpt_group)g && !strcmp(ckpt_specs[k].name, name))
          s = &ckpt_specs[k];
      assert_non_null(s);
      assert_int_equal(ndim, s->ndim);
      assert_memory_equal(shape, s->shape, (size_t)ndim * sizeof(size_t));
    }
  }
  size_t n;
  char name[256];
  int ndim;
  size_t shape[OL_MAX_DIMS];
  assert_int_equal(ol_ckpt_count(c, OL_GROUP_PARAMS, &n), OL_OK);
  assert_int_equal(ol_ckpt_info(c, OL_GROUP_PARAMS, 0, name, sizeof name, &ndim, shape), OL_OK);
  assert_string_equal(name, "lm_head.lora_A");
  assert_int_equal(ol_ckpt_info(c, OL_GROUP_PARAMS, 2, name, sizeof name, &ndim, shape), OL_OK);
  assert_string_equal(name, "model.layers.10.self_attn.q_proj.onelora_b");
  expect_error(ol_ckpt_info(c, OL_GROUP_PARAMS, n, name, sizeof name, &ndim, shape), path, NULL,
               NULL);

  /* values come back exactly */
  for (size_t i = 0; i < N_CKPT_SPECS; i++) {
    size_t ne = spec_elems(&ckpt_specs[i]);
    float *x = malloc(ne * sizeof *x), *y = malloc(ne * sizeof *y);
    fill_normal(x, ne, 1.0f, 100 + i);
    assert_int_equal(ol_ckpt_read(c, ckpt_specs[i].g, ckpt_specs[i].name, ckpt_specs[i].ndim,
                                  ckpt_specs[i].shape, y), OL_OK);
    assert_memory_equal(x, y, ne * sizeof *x);
    free(x);
    free(y);
  }
  float y[16];
  size_t s8[1] = {9};
  expect_error(ol_ckpt_read(c, OL_GROUP_ADAM_V, "model.norm.weight", 1, s8, y), path,
               "'adam_v/model.norm.weight' has shape [8], expected [9]", NULL);
  expect_error(ol_ckpt_read(c, OL_GROUP_ADAM_V, "lm_head.lora_A", 1, s8, y), path,
               "missing dataset 'adam_v/lm_head.lora_A'", NULL);
  ol_ckpt_close(c);
  assert_int_equal(fd_count(), fds);
}

static void test_ckpt_atomic(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *path = tpath(f, 0, "c.h5");
  const char *tmp = tpath(f, 1, "c.h5.tmp");
  ol_ckpt_meta meta = test_meta();
  float x[8] = {0};
  size_t s8[1] = {8};
  ol_ckpt *c;

  /* before finish only the tmp file exists; after it only the final one */
  assert_int_equal(ol_ckpt_create(path, &meta, NULL, &c), OL_OK);
  assert_true(exists(tmp));
  assert_false(exists(path));
  assert_int_equal(ol_ckpt_write(c, OL_GROUP_PARAMS, "b", 1, s8, x), OL_OK);
  assert_false(exists(path));
  assert_int_equal(ol_ckpt_finish(c), OL_OK);
  assert_true(exists(path));
  assert_false(exists(tmp));

  /* a failed write discards the checkpoint and leaves the previous file alone */
  long before = file_size(path);
  assert_int_equal(ol_ckpt_create(path, &meta, NULL, &c), OL_OK);
  assert_int_equal(ol_ckpt_write(c, OL_GROUP_PARAMS, "b", 1, s8, x), OL_OK);
  expect_error(ol_ckpt_write(c, OL_GROUP_PARAMS, "b", 1, s8, x), "'params/b' written twice", NULL,
               NULL);
  expect_error(ol_ckpt_finish(c), path, "discarded", NULL);
  assert_false(exists(tmp));
  assert_int_equal(file_size(path), before);

  /* closing a writer without finish discards it */
  assert_int_equal(ol_ckpt_create(tpath(f, 2, "d.h5"), &meta, NULL, &c), OL_OK);
  ol_ckpt_close(c);
  assert_false(exists(tpath(f, 2, "d.h5.tmp")));
  assert_false(exists(tpath(f, 2, "d.h5")));

  expect_error(ol_ckpt_create(tpath(f, 2, "nodir/e.h5"), &meta, NULL, &c), "nodir/e.h5.tmp",
               "No such file", NULL);
  assert_int_equal(fd_count(), fds);
}

static void test_ckpt_corruption(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  const char *path = tpath(f, 0, "c.h5");
  ol_ckpt_meta meta = test_meta(), got;
  enum { N = 4096 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);  /* (N,) */
  for (size_t i = 0; i < N; i++) x[i] = 1000.0f + 0.5f * (float)i;
  size_t shape[1] = {N}, s8[1] = {8};
  ol_ckpt *c;
  assert_int_equal(ol_ckpt_create(path, &meta, NULL, &c), OL_OK);
  assert_int_equal(ol_ckpt_write(c, OL_GROUP_ADAM_M, "big", 1, shape, x), OL_OK);
  assert_int_equal(ol_ckpt_write(c, OL_GROUP_PARAMS, "small", 1, s8, x), OL_OK);
  assert_int_equal(ol_ckpt_finish(c), OL_OK);

  /* flip one bit of x[2049] in the file's copy of "big" */
  float from[4] = {x[2048], x[2049], x[2050], x[2051]}, to[4];
  memcpy(to, from, sizeof to);
  unsigned char *bytes = (unsigned char *)to;
  bytes[5] ^= 0x10;
  assert_int_equal(patch(path, from, to, sizeof from), 1);

  assert_int_equal(ol_ckpt_open(path, &c, &got), OL_OK);
  assert_int_equal(ol_ckpt_read(c, OL_GROUP_PARAMS, "small", 1, s8, y), OL_OK);
  int saved = stderr_to(tpath(f, 2, "stderr.txt"));
  int rc = ol_ckpt_read(c, OL_GROUP_ADAM_M, "big", 1, shape, y);
  assert_int_equal(stderr_back(saved, f->buf[2]), 0);
  expect_error(rc, path, "failed its checksum (the file is corrupt)", "'adam_m/big'");
  ol_ckpt_close(c);
  free(x);
  free(y);
  assert_int_equal(fd_count(), fds);
}

static void test_ckpt_open_errors(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  ol_ckpt *c = NULL;
  ol_ckpt_meta meta;
  float a[A_ROWS * A_COLS], b[A_COLS];
  const char *model = tpath(f, 0, "m.h5");
  write_model(model, OL_DTYPE_F32, a, b);
  expect_error(ol_ckpt_open(model, &c, &meta), model,
               "not a onelora checkpoint (no 'format' attribute; it looks like a model file)", NULL);
  assert_null(c);

  const char *path = tpath(f, 1, "c.h5");
  ol_ckpt_meta want = test_meta();
  write_ckpt(path, &want);
  assert_int_equal(patch(path, "onelora-checkpoint", "onelora-checkpoinX", 18), 1);
  expect_error(ol_ckpt_open(path, &c, &meta), path, "'format' is 'onelora-checkpoinX'", NULL);

  want.version = OL_CKPT_VERSION + 1;
  write_ckpt(path, &want);
  char unsupported[64];
  snprintf(unsupported, sizeof unsupported, "version %d is not supported", OL_CKPT_VERSION + 1);
  expect_error(ol_ckpt_open(path, &c, &meta), path, unsupported, NULL);

  /* a checkpoint whose config attribute n_heads is the string 'targets' */
  want.version = OL_CKPT_VERSION;
  write_ckpt(path, &want);
  swap_names(path, "n_heads", "targets");
  expect_error(ol_ckpt_open(path, &c, &meta), path,
               "attribute 'targets' is an integer, expected a string", NULL);

  write_ckpt(path, &want);
  assert_int_equal(patch(path, "frozen", "frozeN", 6), 1);
  expect_error(ol_ckpt_open(path, &c, &meta), path, "missing group 'frozen'", NULL);
  assert_int_equal(fd_count(), fds);
}

/* The model reader names a string where an integer belongs (made from a checkpoint's attrs). */
static void test_model_string_attr(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "c.h5");
  ol_ckpt_meta want = test_meta();
  write_ckpt(path, &want);
  swap_names(path, "n_heads", "targets");
  ol_h5model *m;
  ol_config cfg;
  expect_error(ol_h5model_open(path, &m, &cfg), path,
               "attribute 'n_heads' is a string, expected an integer", NULL);
}

/* ---- limits: sizes and counts a file declares are checked before anything is sized by them -- */

/* Replaces the one 8-byte little-endian field holding `from` by `to` (asserts it is unique). */
static void patch_u64(const char *path, uint64_t from, uint64_t to) {
  assert_int_equal(patch(path, &from, &to, sizeof from), 1);
}

static void test_limits_model(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  float a[A_ROWS * A_COLS], b[A_COLS];
  ol_h5model *m = NULL;
  ol_config cfg;
  /* a config field above its limit (max_seq_len 12345 patched to 2^40) */
  const char *big = tpath(f, 0, "big.h5");
  write_model(big, OL_DTYPE_F32, a, b);
  patch_u64(big, 12345, (uint64_t)1 << 40);
  expect_error(ol_h5model_open(big, &m, &cfg), big,
               "attribute 'max_seq_len' is 1099511627776, more than the 2147483648", NULL);
  /* a config whose weights the file cannot hold (4099 x 8 embedding, a 3 KB file) */
  const char *wide = tpath(f, 0, "wide.h5");
  ol_config cfg_wide = model_config();
  cfg_wide.vocab_size = 4099;
  ol_h5model *w;
  size_t sa[2] = {A_ROWS, A_COLS};
  assert_int_equal(ol_h5model_create(wide, &cfg_wide, &w), OL_OK);
  assert_int_equal(ol_h5model_write(w, "a", 2, sa, a, OL_DTYPE_F32), OL_OK);
  assert_int_equal(ol_h5model_finish(w), OL_OK);
  expect_error(ol_h5model_open(wide, &m, &cfg), wide, "describes 33272 weights",
               "truncated or corrupt");
  assert_null(m);
  assert_int_equal(fd_count(), fds);
}

static void test_limits_ckpt(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  ol_ckpt_meta meta = test_meta(), got;
  meta.rank = 4242;
  float x[1000] = {0};
  size_t shape[1] = {1000};
  ol_ckpt *c;
  const char *path = tpath(f, 0, "c.h5"), *bad = tpath(f, 1, "bad.h5");
  assert_int_equal(ol_ckpt_create(path, &meta, NULL, &c), OL_OK);
  assert_int_equal(ol_ckpt_write(c, OL_GROUP_PARAMS, "x", 1, shape, x), OL_OK);
  assert_int_equal(ol_ckpt_finish(c), OL_OK);
  size_t n;

  /* a rank outside [0, 2^16] */
  copy_prefix(path, bad, (size_t)file_size(path));
  patch_u64(bad, 4242, (uint64_t)1 << 20);
  expect_error(ol_ckpt_open(bad, &c, &got), bad, "attribute 'rank' is 1048576, outside [0, 65536]",
               NULL);
  /* a dataset longer than the file (its dataspace: the extent, then the maximum extent) */
  copy_prefix(path, bad, (size_t)file_size(path));
  uint64_t from[2] = {1000, 1000}, to[2] = {(uint64_t)1 << 33, (uint64_t)1 << 33};
  assert_int_equal(patch(bad, from, to, sizeof from), 1);
  assert_int_equal(ol_ckpt_open(bad, &c, &got), OL_OK);
  expect_error(ol_ckpt_count(c, OL_GROUP_PARAMS, &n), bad, "dataset 'params/x' declares 34359738368",
               "more than the file");
  ol_ckpt_close(c);
  /* one dimension above 2^40 */
  copy_prefix(path, bad, (size_t)file_size(path));
  to[0] = to[1] = (uint64_t)1 << 41;
  assert_int_equal(patch(bad, from, to, sizeof from), 1);
  assert_int_equal(ol_ckpt_open(bad, &c, &got), OL_OK);
  expect_error(ol_ckpt_count(c, OL_GROUP_PARAMS, &n), bad, "'params/x' has dimension 0", "2^40");
  ol_ckpt_close(c);
  /* a string with a control character (it would split the error line that quotes it) */
  copy_prefix(path, bad, (size_t)file_size(path));
  assert_int_equal(patch(bad, "1lora,norms", "1lora\nnorms", 11), 1);
  expect_error(ol_ckpt_open(bad, &c, &got), bad, "attribute 'method' holds control character 0x0a",
               NULL);
  assert_int_equal(fd_count(), fds);
}

/* The global heap holds the strings; HDF5 1.10 trusts its sizes, so the reader checks them. */
static void test_limits_global_heap(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  ol_ckpt_meta meta = test_meta(), got;
  ol_ckpt *c;
  const char *path = tpath(f, 0, "c.h5"), *bad = tpath(f, 1, "bad.h5");
  write_ckpt(path, &meta);
  size_t size;
  unsigned char *bytes = read_all(path, &size);
  size_t at = 0;
  while (at + 4 <= size && memcmp(bytes + at, "GCOL", 4) != 0) at++;
  assert_true(at + 4096 <= size);
  const struct {
    size_t offset;  /* from the collection's start */
    uint64_t value;
    const char *message;
  } cases[] = {
      {8, 100, "fewer than HDF5 writes"},             /* the collection's size */
      {8, (uint64_t)1 << 40, "past the end of the file"},
      {16 + 8, (uint64_t)1 << 40, "object 1 of the global heap"},  /* the first string's size */
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    uint64_t good;
    memcpy(&good, bytes + at + cases[k].offset, 8);
    memcpy(bytes + at + cases[k].offset, &cases[k].value, 8);
    write_all(bad, bytes, size);
    memcpy(bytes + at + cases[k].offset, &good, 8);
    int saved = stderr_to(tpath(f, 2, "stderr.txt"));
    int rc = ol_ckpt_open(bad, &c, &got);
    assert_int_equal(stderr_back(saved, f->buf[2]), 0);
    expect_error(rc, bad, cases[k].message, "corrupt");
  }
  /* the free space's size 0 (HDF5 1.10 would loop forever): the object after the last string */
  size_t p = at + 16;
  for (int i = 0; i < 8 && (bytes[p] | bytes[p + 1]); i++) {  /* objects 1, 2, ... then 0 */
    uint64_t len;
    memcpy(&len, bytes + p + 8, 8);
    p += 16 + (len + 7) / 8 * 8;
  }
  memset(bytes + p + 8, 0, 8);
  write_all(bad, bytes, size);
  expect_error(ol_ckpt_open(bad, &c, &got), bad, "object 0 of the global heap", "corrupt");
  free(bytes);
  assert_int_equal(fd_count(), fds);
}

/* Files are written in the checksummed 1.10 format: a flipped metadata byte is refused with
 * one error line, and HDF5 prints nothing of its own. */
static void test_metadata_checksums(void **state) {
  fixture *f = *state;
  int fds = fd_count();
  ol_ckpt_meta meta = test_meta(), got;
  const char *path = tpath(f, 0, "c.h5"), *bad = tpath(f, 1, "bad.h5");
  write_ckpt(path, &meta);
  size_t size;
  unsigned char *bytes = read_all(path, &size);
  assert_int_equal(bytes[8], 3);  /* superblock version 3: HDF5 1.10 */
  /* every object header ("OHDR"), a byte of its body flipped */
  int headers = 0;
  for (size_t at = 0; at + 64 <= size; at++) {
    if (memcmp(bytes + at, "OHDR", 4) != 0) continue;
    headers++;
    bytes[at + 40] ^= 0x5a;
    write_all(bad, bytes, size);
    bytes[at + 40] ^= 0x5a;
    ol_ckpt *c = NULL;
    int saved = stderr_to(tpath(f, 2, "stderr.txt"));
    int rc = ol_ckpt_open(bad, &c, &got);
    size_t n, total = 0;
    for (int g = 0; rc == OL_OK && g < OL_GROUP_COUNT; g++) {
      rc = ol_ckpt_count(c, (ol_ckpt_group)g, &n);
      for (size_t i = 0; rc == OL_OK && i < n; i++) {
        char name[256];
        int ndim;
        size_t shape[OL_MAX_DIMS];
        rc = ol_ckpt_info(c, (ol_ckpt_group)g, i, name, sizeof name, &ndim, shape);
        total += rc == OL_OK;
      }
    }
    if (c) ol_ckpt_close(c);
    assert_int_equal(stderr_back(saved, f->buf[2]), 0);
    if (rc == OL_OK) fail_msg("a flipped byte of the object header at byte %zu was accepted", at);
    expect_error(rc, bad, NULL, NULL);
  }
  assert_true(headers >= 5);
  free(bytes);
  assert_int_equal(fd_count(), fds);
}

/* ---- metrics -------------------------------------------------------------------------------- */

static void test_metrics(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "log.jsonl");
  ol_metrics *m;
  assert_int_equal(ol_metrics_open(path, 0, &m), OL_OK);
  const char *keys[] = {"step", "loss", "lr", "nan", "inf", "neg", "big", "we\"ird"};
  double vals[] = {3, 2.5, 3e-4, NAN, -INFINITY, -17, 1e20, 0.1};
  assert_int_equal(ol_metrics_write(m, "step", 8, keys, vals), OL_OK);
  /* flushed per line: readable before close */
  size_t n;
  char *text = (char *)read_all(path, &n);
  assert_string_equal(text, "{\"kind\": \"step\", \"step\": 3, \"loss\": 2.5, \"lr\": 0.0003, "
                            "\"nan\": null, \"inf\": null, \"neg\": -17, \"big\": 1e+20, "
                            "\"we\\\"ird\": 0.1}\n");
  free(text);
  assert_int_equal(ol_metrics_write(m, "eval", 0, NULL, NULL), OL_OK);
  ol_metrics_close(m);
  text = (char *)read_all(path, &n);
  assert_non_null(strstr(text, "}\n{\"kind\": \"eval\"}\n"));
  free(text);
  /* a resumed run appends; a fresh one truncates */
  assert_int_equal(ol_metrics_open(path, 1, &m), OL_OK);
  assert_int_equal(ol_metrics_write(m, "resume", 0, NULL, NULL), OL_OK);
  ol_metrics_close(m);
  text = (char *)read_all(path, &n);
  assert_non_null(strstr(text, "{\"kind\": \"eval\"}\n{\"kind\": \"resume\"}\n"));
  free(text);
  assert_int_equal(ol_metrics_open(path, 0, &m), OL_OK);
  ol_metrics_close(m);
  text = (char *)read_all(path, &n);
  assert_int_equal(n, 0);
  free(text);

  assert_int_equal(ol_metrics_open(NULL, 0, &m), OL_OK);  /* no log */
  assert_int_equal(ol_metrics_write(m, "step", 1, keys, vals), OL_OK);
  ol_metrics_close(m);
  expect_error(ol_metrics_open(tpath(f, 1, "nodir/log.jsonl"), 0, &m), "nodir/log.jsonl", NULL, NULL);
}

/* ---- plain files ------------------------------------------------------------------------------ */

static void test_files(void **state) {
  fixture *f = *state;
  const char *path = tpath(f, 0, "text.txt");
  enum { N = 150000 };  // more than the 64 KiB a read starts with
  unsigned char *want = malloc(N);  // (N,) bytes
  for (size_t i = 0; i < N; i++) want[i] = (unsigned char)(i * 7 + 3);
  write_all(path, want, N);
  size_t size, n;
  unsigned char *got;
  assert_int_equal(ol_file_size(path, &size), OL_OK);
  assert_int_equal(size, N);
  assert_int_equal(ol_file_read(path, N, &got, &n), OL_OK);
  assert_int_equal(n, N);
  assert_memory_equal(got, want, N);
  ol_free(got);
  // over the bound: a regular file by its size, a stream (no size, endless) by the bytes read
  expect_error(ol_file_read(path, N - 1, &got, &n), path, "150000 bytes, more than the 149999", NULL);
  assert_null(got);
  expect_error(ol_file_read("/dev/zero", 200000, &got, &n), "/dev/zero", "more than the 200000 bytes", NULL);
  assert_null(got);
  write_all(path, want, 0);
  assert_int_equal(ol_file_read(path, N, &got, &n), OL_OK);
  assert_int_equal(n, 0);
  ol_free(got);
  expect_error(ol_file_read(f->dir, N, &got, &n), f->dir, "cannot read", NULL);
  assert_int_equal(ol_file_remove(path), OL_OK);
  assert_int_equal(ol_file_remove(path), OL_OK);  // already gone
  expect_error(ol_file_size(path, &size), path, "cannot stat", NULL);
  expect_error(ol_file_read(path, N, &got, &n), path, "No such file", NULL);
  expect_error(ol_file_remove(f->dir), f->dir, "cannot delete", NULL);
  free(want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dtype),
      cmocka_unit_test_setup_teardown(test_model_f32_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_bf16_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_f16_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_write_rows, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_open_errors, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_model_read_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_write_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_model_string_attr, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_data_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_data_empty_val, setup, teardown),
      cmocka_unit_test_setup_teardown(test_data_errors, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_ckpt_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ckpt_atomic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ckpt_corruption, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ckpt_open_errors, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_limits_model, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_limits_ckpt, setup_earliest, teardown),
      cmocka_unit_test_setup_teardown(test_limits_global_heap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metadata_checksums, setup, teardown),
      cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
      cmocka_unit_test_setup_teardown(test_files, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
