/* Reading safetensors files (Hugging Face weights; docs/FORMATS.md, "Hugging Face input").
 * The layout: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
 * to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section
 * right after the header), an optional "__metadata__" object of strings, then the data.
 * open validates the whole header before any data byte is used; read preads only the rows of
 * the caller's slice and converts them to f32. JSON is parsed by jansson. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onelora/core/core.h"
#include "onelora/io/weights.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/safetensors_read.c reads little-endian floats as host floats; port it first"
#endif

#define MAX_HEADER_BYTES ((uint64_t)100 << 20) /* 100 MiB, as the reference implementation */

typedef struct {
  char *name;
  ol_dtype dtype;
  int ndim;
  size_t shape[OL_MAX_DIMS];
  uint64_t begin, end; /* byte range in the data section */
} st_entry;

struct ol_st_reader {
  int fd;
  char *path;
  uint64_t data_start; /* 8 + N */
  size_t n;
  st_entry *entries;   /* (n) sorted by begin */
};

static char *str_dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = ol_calloc(n, 1);
  memcpy(d, s, n);
  return d;
}

static size_t dtype_size(ol_dtype t) { return t == OL_DTYPE_F32 ? 4 : 2; }

static int by_begin(const void *a, const void *b) {
  const st_entry *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Reads exactly n bytes at offset; a short read is an error naming the file. */
static int pread_all(int fd, const char *path, void *buf, size_t n, uint64_t offset) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t got = pread(fd, p, n, (off_t)offset);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return ol_error("%s: cannot read: %s", path, strerror(errno));
    if (got == 0) return ol_error("%s: unexpected end of file (truncated)", path);
    p += got, n -= (size_t)got, offset += (uint64_t)got;
  }
  return OL_OK;
}

/* One header entry -> e; errors name the file and the tensor. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_size,
                       st_entry *e) {
  if (!json_is_object(v)) return ol_error("%s: tensor '%s': entry is not a JSON object", path, name);
  json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
         *offs = json_object_get(v, "data_offsets");
  if (!json_is_string(dt)) return ol_error("%s: tensor '%s': missing string 'dtype'", path, name);
  const char *d = json_string_value(dt);
  if (strcmp(d, "F32") == 0) e->dtype = OL_DTYPE_F32;
  else if (strcmp(d, "F16") == 0) e->dtype = OL_DTYPE_F16;
  else if (strcmp(d, "BF16") == 0) e->dtype = OL_DTYPE_BF16;
  else return ol_error("%s: tensor '%s': unsupported dtype '%.32s' (F32, F16 or BF16)", path, name, d);
  if (!json_is_array(shape)) return ol_error("%s: tensor '%s': missing list 'shape'", path, name);
  if (json_array_size(shape) > OL_MAX_DIMS)
    return ol_error("%s: tensor '%s': rank %zu, more than %d", path, name, json_array_size(shape),
                    OL_MAX_DIMS);
  e->ndim = (int)json_array_size(shape);
  uint64_t bytes = dtype_size(e->dtype);
  for (int i = 0; i < e->ndim; i++) {
    json_t *x = json_array_get(shape, (size_t)i);
    if (!json_is_integer(x) || json_integer_value(x) < 0)
      return ol_error("%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, i);
    uint64_t dim = (uint64_t)json_integer_value(x);
    if (dim > 0 && bytes > data_size / dim) bytes = UINT64_MAX;  /* more than the file: caught below */
    else bytes *= dim;
    e->shape[i] = (size_t)dim;
  }
  if (!json_is_array(offs) || json_array_size(offs) != 2 ||
      !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
    return ol_error("%s: tensor '%s': 'data_offsets' is not [begin, end]", path, name);
  json_int_t b = json_integer_value(json_array_get(offs, 0)),
             en = json_integer_value(json_array_get(offs, 1));
  if (b < 0 || en < b || (uint64_t)en > data_size)
    return ol_error("%s: tensor '%s': data_offsets [%lld, %lld] outside the %llu data bytes", path,
                    name, (long long)b, (long long)en, (unsigned long long)data_size);
  e->begin = (uint64_t)b, e->end = (uint64_t)en;
  if (bytes != e->end - e->begin)
    return ol_error("%s: tensor '%s': shape and dtype need %s bytes, data_offsets span %llu", path,
                    name, bytes == UINT64_MAX ? "more than the file's" : "a different number of",
                    (unsigned long long)(e->end - e->begin));
  return OL_OK;
}

static int parse_header(ol_st_reader *r, const char *text, size_t len, uint64_t data_size) {
  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) return ol_error("%s: header is not valid JSON: %s", r->path, jerr.text);
  int rc = OL_OK;
  if (!json_is_object(root)) rc = ol_error("%s: header is not a JSON object", r->path);
  size_t n = rc == OL_OK ? json_object_size(root) : 0;
  r->entries = ol_calloc(n ? n : 1, sizeof *r->entries);
  const char *key;
  json_t *v;
  if (rc == OL_OK) {
    json_object_foreach(root, key, v) {
      if (strcmp(key, "__metadata__") == 0) {
        const char *mk;
        json_t *mv;
        if (!json_is_object(v)) rc = ol_error("%s: '__metadata__' is not an object", r->path);
        else json_object_foreach(v, mk, mv) if (!json_is_string(mv) && rc == OL_OK)
          rc = ol_error("%s: '__metadata__' value '%.64s' is not a string", r->path, mk);
        if (rc != OL_OK) break;
        continue;
      }
      st_entry *e = &r->entries[r->n];
      rc = parse_entry(r->path, key, v, data_size, e);
      if (rc != OL_OK) break;
      e->name = str_dup(key);
      r->n++;
    }
  }
  json_decref(root);
  if (rc != OL_OK) return rc;
  qsort(r->entries, r->n, sizeof *r->entries, by_begin);
  for (size_t i = 1; i < r->n; i++)
    if (r->entries[i].begin < r->entries[i - 1].end)
      return ol_error("%s: tensor '%s': data overlaps tensor '%s'", r->path, r->entries[i].name,
                      r->entries[i - 1].name);
  return OL_OK;
}

int ol_st_open(const char *path, ol_st_reader **out) {
  *out = NULL;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return ol_error("%s: cannot open: %s", path, strerror(errno));
  ol_st_reader *r = ol_calloc(1, sizeof *r);
  r->fd = fd;
  r->path = str_dup(path);
  struct stat st;
  int rc = fstat(fd, &st) == 0 ? OL_OK : ol_error("%s: cannot stat: %s", path, strerror(errno));
  if (rc == OL_OK && !S_ISREG(st.st_mode)) rc = ol_error("%s: not a regular file", path);
  uint64_t file_size = rc == OL_OK ? (uint64_t)st.st_size : 0;
  unsigned char len8[8];
  if (rc == OL_OK && file_size < 8) rc = ol_error("%s: %llu bytes, too short for a safetensors header", path, (unsigned long long)file_size);
  if (rc == OL_OK) rc = pread_all(fd, path, len8, 8, 0);
  uint64_t n = 0;
  for (int i = 0; rc == OL_OK && i < 8; i++) n |= (uint64_t)len8[i] << (8 * i);
  if (rc == OL_OK && (n == 0 || n > MAX_HEADER_BYTES || n > file_size - 8))
    rc = ol_error("%s: header length %llu is outside 1..min(100 MiB, file size %llu - 8)", path,
                  (unsigned long long)n, (unsigned long long)file_size);
  if (rc == OL_OK) {
    char *text = ol_calloc((size_t)n + 1, 1);  /* (n + 1) */
    rc = pread_all(fd, path, text, (size_t)n, 8);
    if (rc == OL_OK) rc = parse_header(r, text, (size_t)n, file_size - 8 - n);
    ol_free(text);
  }
  r->data_start = 8 + n;
  if (rc != OL_OK) {
    ol_st_close(r);
    return rc;
  }
  *out = r;
  return OL_OK;
}

static const st_entry *find(const ol_st_reader *r, const char *name) {
  for (size_t i = 0; i < r->n; i++)
    if (strcmp(r->entries[i].name, name) == 0) return &r->entries[i];
  return NULL;
}

int ol_st_has(const ol_st_reader *r, const char *name) { return find(r, name) != NULL; }

uint64_t ol_st_data_bytes(const ol_st_reader *r) {
  uint64_t sum = 0;
  for (size_t i = 0; i < r->n; i++) sum += r->entries[i].end - r->entries[i].begin;
  return sum;
}

static float to_f32(ol_dtype t, const unsigned char *p) {
  if (t == OL_DTYPE_F32) {
    float f;
    memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, p, 2);
  return t == OL_DTYPE_F16 ? ol_f16_to_f32(h) : ol_bf16_to_f32(h);
}

/* "[a, b, ...]" */
static void shape_text(char *buf, size_t size, int ndim, const size_t *shape) {
  size_t n = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < ndim && n < size; i++)
    n += (size_t)snprintf(buf + n, size - n, "%s%zu", i ? ", " : "", shape[i]);
  if (n < size) snprintf(buf + n, size - n, "]");
}

/* The entry of tensor `name`, which must have the expected shape; errors name file and tensor. */
static int find_checked(const ol_st_reader *r, const char *name, int ndim, const size_t *shape,
                        const st_entry **out) {
  OL_CHECK(ndim >= 1 && ndim <= 2);
  const st_entry *e = find(r, name);
  if (!e) return ol_error("%s: missing tensor '%s'", r->path, name);
  int same = e->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = e->shape[i] == shape[i];
  if (!same) {
    char found[96], want[96];
    shape_text(found, sizeof found, e->ndim, e->shape);
    shape_text(want, sizeof want, ndim, shape);
    return ol_error("%s: tensor '%s' has shape %s, expected %s", r->path, name, found, want);
  }
  *out = e;
  return OL_OK;
}

int ol_st_locate(const ol_st_reader *r, const char *name, ol_dtype *dtype, uint64_t *offset) {
  const st_entry *e = find(r, name);
  if (!e) return ol_error("%s: missing tensor '%s'", r->path, name);
  *dtype = e->dtype;
  *offset = r->data_start + e->begin;
  return OL_OK;
}

const char *ol_st_path(const ol_st_reader *r) { return r->path; }

int ol_st_check(const ol_st_reader *r, const char *name, int ndim, const size_t *shape) {
  const st_entry *e;
  return find_checked(r, name, ndim, shape, &e);
}

int ol_st_read(ol_st_reader *r, const char *name, int ndim, const size_t *shape,
               const size_t *start, const size_t *count, float *dst) {
  const st_entry *e;
  OL_TRY(find_checked(r, name, ndim, shape, &e));
  for (int i = 0; i < ndim; i++)
    if (start[i] > shape[i] || count[i] > shape[i] - start[i])
      return ol_error("%s: tensor '%s': slice outside dimension %d", r->path, name, i);
  const size_t es = dtype_size(e->dtype);
  const size_t rows = ndim == 2 ? count[0] : 1, cols = ndim == 2 ? count[1] : count[0];
  const size_t row_len = ndim == 2 ? shape[1] : shape[0];
  unsigned char *buf = ol_calloc(cols ? cols * es : 1, 1);  /* (cols) raw values of one row */
  int rc = OL_OK;
  for (size_t i = 0; rc == OL_OK && i < rows && cols; i++) {
    size_t row = ndim == 2 ? start[0] + i : 0, col = ndim == 2 ? start[1] : start[0];
    uint64_t off = r->data_start + e->begin + ((uint64_t)row * row_len + col) * es;
    rc = pread_all(r->fd, r->path, buf, cols * es, off);
    for (size_t j = 0; rc == OL_OK && j < cols; j++) dst[i * cols + j] = to_f32(e->dtype, buf + j * es);
  }
  ol_free(buf);
  return rc;
}

void ol_st_close(ol_st_reader *r) {
  if (!r) return;
  if (r->fd >= 0) close(r->fd);
  for (size_t i = 0; i < r->n; i++) ol_free(r->entries[i].name);
  ol_free(r->entries);
  ol_free(r->path);
  ol_free(r);
}
