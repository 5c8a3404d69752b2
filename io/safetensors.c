/* Hugging Face outputs: a safetensors file and a LLaMA config.json (docs/FORMATS.md, "Merged
 * models"). safetensors is an 8-byte little-endian header length N, N bytes of JSON (padded
 * with spaces to a multiple of 8) giving each tensor's dtype, shape and [begin, end) byte range
 * in the data section, then the data, raw little-endian. The header is known up front, so the
 * writer streams: create writes the header, each write appends one tensor's bytes in order.
 * Both files go through "<path>.tmp", fsync and rename, like the HDF5 writers. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "h5util.h"
#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/metrics.h"
#include "json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/safetensors.c writes host floats as little-endian bytes; port it first"
#endif

/* f16 tensors are converted and written this many elements at a time. */
#define F16_BLOCK ((size_t)1 << 20)

static char *str_dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = ol_calloc(n, 1);
  memcpy(d, s, n);
  return d;
}

/* ---- a growing text buffer ------------------------------------------------------------- */

typedef struct {
  char *s;
  size_t len, cap;
} text;

static void text_add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(text *t, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s ? t->s + t->len : NULL, t->s ? t->cap - t->len : 0, fmt, ap);
    va_end(ap);
    OL_CHECK(n >= 0);
    if (t->s && (size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap ? 2 * t->cap : 4096;
    while (cap < t->len + (size_t)n + 1) cap *= 2;
    char *s = ol_calloc(cap, 1);
    if (t->s) memcpy(s, t->s, t->len + 1);
    ol_free(t->s);
    t->s = s, t->cap = cap;
  }
}

char *ol_json_quote(const char *s) {
  text t = {0};
  text_add(&t, "\"");
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      text_add(&t, "\\%c", *p);
    else if (*p < 0x20)
      text_add(&t, "\\u%04x", *p);
    else
      text_add(&t, "%c", *p);
  }
  text_add(&t, "\"");
  return t.s;
}

static void text_json_str(text *t, const char *s) {
  char *q = ol_json_quote(s);
  text_add(t, "%s", q);
  ol_free(q);
}

/* A finite double as a JSON number that reads back exactly and as a float in Python's json:
 * whole numbers as 10000.0, others as the shortest %g that round-trips (1e-05). */
static void text_json_float(text *t, double v) {
  char buf[64];
  if (v == floor(v) && fabs(v) < 1e15) {
    text_add(t, "%.1f", v);
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  text_add(t, "%s%s", buf, strpbrk(buf, ".eEn") ? "" : ".0");
}

/* ---- safetensors writer ------------------------------------------------------------------- */

struct ol_safetensors {
  FILE *fp;
  char *path;      /* the name the user gave */
  char *tmp;       /* "<path>.tmp", renamed over path by finish */
  ol_dtype dtype;
  size_t n, next;  /* tensors declared, and the index of the next one to write */
  char **names;    /* (n) */
  size_t *numel;   /* (n) */
};

static void st_free(ol_safetensors *s) {
  for (size_t i = 0; s->names && i < s->n; i++) ol_free(s->names[i]);
  ol_free(s->names);
  ol_free(s->numel);
  ol_free(s->path);
  ol_free(s->tmp);
  ol_free(s);
}

/* Closes and removes the tmp file, frees s; returns the error already recorded. */
static int st_abandon(ol_safetensors *s) {
  if (s->fp) fclose(s->fp);
  unlink(s->tmp);
  st_free(s);
  return OL_ERR;
}

int ol_safetensors_create(const char *path, const ol_st_tensor *tensors, size_t n, ol_dtype dtype,
                          ol_safetensors **out) {
  *out = NULL;
  if (dtype != OL_DTYPE_F32 && dtype != OL_DTYPE_F16)
    return ol_error("%s: safetensors output stores f32 or f16, not %s", path, ol_dtype_name(dtype));
  const size_t esize = dtype == OL_DTYPE_F16 ? 2 : 4;
  for (size_t i = 0; i < n; i++) {
    if (!tensors[i].name[0]) return ol_error("%s: tensor %zu has an empty name", path, i);
    if (strcmp(tensors[i].name, "__metadata__") == 0)
      return ol_error("%s: '__metadata__' is reserved and cannot name a tensor", path);
    for (size_t j = 0; j < i; j++)
      if (strcmp(tensors[i].name, tensors[j].name) == 0)
        return ol_error("%s: tensor '%s' is listed twice", path, tensors[i].name);
  }

  ol_safetensors *s = ol_calloc(1, sizeof *s);
  s->path = str_dup(path);
  s->tmp = ol_io_tmp_path(path);
  s->dtype = dtype;
  s->n = n;
  s->names = ol_calloc(n ? n : 1, sizeof *s->names);
  s->numel = ol_calloc(n ? n : 1, sizeof *s->numel);

  // header: {"__metadata__": {...}, "<name>": {"dtype", "shape", "data_offsets"}, ...}
  text h = {0};
  text_add(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
  size_t offset = 0;  // bytes of data before tensor i
  int rc = OL_OK;
  for (size_t i = 0; i < n && rc == OL_OK; i++) {
    const ol_st_tensor *t = &tensors[i];
    OL_CHECK(t->ndim >= 0 && t->ndim <= OL_MAX_DIMS);
    size_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      if (t->shape[d] && numel > SIZE_MAX / esize / t->shape[d]) {
        rc = ol_error("%s: tensor '%s' is too large", path, t->name);
        break;
      }
      numel *= t->shape[d];
    }
    if (rc != OL_OK) break;
    s->names[i] = str_dup(t->name);
    s->numel[i] = numel;
    text_add(&h, ",");
    text_json_str(&h, t->name);
    text_add(&h, ":{\"dtype\":\"%s\",\"shape\":[", dtype == OL_DTYPE_F16 ? "F16" : "F32");
    for (int d = 0; d < t->ndim; d++) text_add(&h, "%s%zu", d ? "," : "", t->shape[d]);
    text_add(&h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + numel * esize);
    offset += numel * esize;
  }
  text_add(&h, "}");
  while (h.len % 8) text_add(&h, " ");  // the data section starts 8-byte aligned

  if (rc == OL_OK) {
    s->fp = fopen(s->tmp, "wb");
    if (!s->fp) rc = ol_error("%s: cannot create %s: %s", path, s->tmp, strerror(errno));
  }
  if (rc == OL_OK) {
    unsigned char len[8];  // little-endian u64 header length
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    if (fwrite(len, 1, 8, s->fp) != 8 || fwrite(h.s, 1, h.len, s->fp) != h.len)
      rc = ol_error("%s: cannot write the header to %s: %s", path, s->tmp, strerror(errno));
  }
  ol_free(h.s);
  if (rc != OL_OK) {
    if (s->fp) return st_abandon(s);
    st_free(s);
    return rc;
  }
  *out = s;
  return OL_OK;
}

int ol_safetensors_write(ol_safetensors *s, const char *name, const float *src) {
  OL_CHECK(s && s->fp);
  if (s->next >= s->n)
    return ol_error("%s: tensor '%s' is one more than the %zu declared", s->path, name, s->n);
  if (strcmp(name, s->names[s->next]) != 0)
    return ol_error("%s: tensor '%s' written where '%s' was declared", s->path, name,
                    s->names[s->next]);
  const size_t n = s->numel[s->next];
  int ok = 1;
  if (s->dtype == OL_DTYPE_F32) {
    ok = fwrite(src, sizeof(float), n, s->fp) == n;
  } else {
    uint16_t *buf = ol_calloc(n < F16_BLOCK ? (n ? n : 1) : F16_BLOCK, sizeof *buf);  // (block)
    for (size_t i0 = 0; ok && i0 < n; i0 += F16_BLOCK) {
      size_t m = n - i0 < F16_BLOCK ? n - i0 : F16_BLOCK;
      for (size_t i = 0; i < m; i++) buf[i] = ol_f32_to_f16(src[i0 + i]);
      ok = fwrite(buf, sizeof *buf, m, s->fp) == m;
    }
    ol_free(buf);
  }
  if (!ok)
    return ol_error("%s: cannot write tensor '%s' to %s: %s", s->path, name, s->tmp,
                    strerror(errno));
  s->next++;
  return OL_OK;
}

int ol_safetensors_finish(ol_safetensors *s) {
  OL_CHECK(s && s->fp);
  if (s->next != s->n) {
    ol_error("%s: only %zu of the %zu declared tensors were written", s->path, s->next, s->n);
    return st_abandon(s);
  }
  FILE *fp = s->fp;
  s->fp = NULL;
  int rc = OL_OK;
  if (fclose(fp) != 0) rc = ol_error("%s: cannot close %s: %s", s->path, s->tmp, strerror(errno));
  if (rc == OL_OK) rc = ol_io_commit(s->tmp, s->path);
  if (rc != OL_OK) return st_abandon(s);
  st_free(s);
  return OL_OK;
}

void ol_safetensors_close(ol_safetensors *s) {
  if (s) st_abandon(s);
}

/* ---- config.json ---------------------------------------------------------------------------- */

/* Writes the text to "<path>.tmp" and commits it over path. */
static int write_text_file(const char *path, const char *s, size_t len) {
  char *tmp = ol_io_tmp_path(path);
  FILE *fp = fopen(tmp, "wb");
  int rc = OL_OK;
  if (!fp) {
    rc = ol_error("%s: cannot create %s: %s", path, tmp, strerror(errno));
  } else {
    int ok = fwrite(s, 1, len, fp) == len;
    int err = errno;
    if (fclose(fp) != 0 && ok) ok = 0, err = errno;
    if (!ok) rc = ol_error("%s: cannot write %s: %s", path, tmp, strerror(err));
    if (rc == OL_OK) rc = ol_io_commit(tmp, path);
    if (rc != OL_OK) unlink(tmp);
  }
  ol_free(tmp);
  return rc;
}

int ol_hf_config_write(const char *path, const ol_config *cfg, ol_dtype dtype) {
  OL_TRY(ol_config_validate(cfg, path));
  if (dtype != OL_DTYPE_F32 && dtype != OL_DTYPE_F16)
    return ol_error("%s: torch_dtype must be f32 or f16, not %s", path, ol_dtype_name(dtype));
  text t = {0};
  text_add(&t, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
  const struct {
    const char *key;
    int64_t v;
  } ints[] = {
      {"hidden_size", cfg->dim},
      {"intermediate_size", cfg->ffn_dim},
      {"num_attention_heads", cfg->n_heads},
      {"num_hidden_layers", cfg->n_layers},
      {"num_key_value_heads", cfg->n_kv_heads},
      {"vocab_size", cfg->vocab_size},
      {"max_position_embeddings", cfg->max_seq_len},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    text_add(&t, "  \"%s\": %lld,\n", ints[i].key, (long long)ints[i].v);
  text_add(&t, "  \"rms_norm_eps\": ");
  text_json_float(&t, cfg->norm_eps);
  text_add(&t, ",\n  \"rope_theta\": ");
  text_json_float(&t, cfg->rope_theta);
  text_add(&t, ",\n  \"hidden_act\": \"silu\",\n  \"tie_word_embeddings\": false,\n");
  text_add(&t, "  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n",
           cfg->attention_bias ? "true" : "false", cfg->mlp_bias ? "true" : "false");
  text_add(&t, "  \"torch_dtype\": \"%s\"\n}\n", dtype == OL_DTYPE_F16 ? "float16" : "float32");
  int rc = write_text_file(path, t.s, t.len);
  ol_free(t.s);
  return rc;
}

/* ---- directories ------------------------------------------------------------------------------ */

int ol_io_make_dir(const char *dir) {
  if (!dir[0]) return ol_error("output directory: empty path");
  char *p = str_dup(dir);
  int rc = OL_OK;
  // every prefix ending before a '/', then the whole path: mkdir -p
  for (char *c = p + 1;; c++) {
    if (*c != '/' && *c != '\0') continue;
    char saved = *c;
    *c = '\0';
    struct stat st;
    if (stat(p, &st) == 0) {
      if (!S_ISDIR(st.st_mode))
        rc = strcmp(p, dir) == 0 ? ol_error("%s: exists and is not a directory", dir)
                                 : ol_error("%s: %s exists and is not a directory", dir, p);
    } else if (mkdir(p, 0777) != 0 && errno != EEXIST) {
      rc = ol_error("%s: cannot create directory %s: %s", dir, p, strerror(errno));
    }
    *c = saved;
    if (rc != OL_OK || saved == '\0') break;
  }
  ol_free(p);
  return rc;
}
