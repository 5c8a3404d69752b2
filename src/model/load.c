/* Moving weights between an ol_model and model files. Each rank reads only its own slice. */
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/io/metrics.h"
#include "onelora/model/acts.h"

static size_t tensor_numel(const ol_tensor *t) {
  return t->ndim == 2 ? t->count[0] * t->count[1] : t->count[0];
}

/* This rank's slice of tensor t from the file into dst, a backend buffer of its numel floats:
 * directly when the backend's memory is host memory, else through a host buffer. */
static int read_slice(ol_weights *f, const ol_tensor *t, float *dst) {
  if (ol_bk->host_visible)
    return ol_weights_read(f, t->name, t->ndim, t->shape, t->start, t->count, dst);
  const size_t n = tensor_numel(t);
  float *host = ol_calloc(n, sizeof(float));  // (numel) the slice
  int rc = ol_weights_read(f, t->name, t->ndim, t->shape, t->start, t->count, host);
  if (rc == OL_OK) ol_bk->to_device(dst, host, n * sizeof(float));
  ol_free(host);
  return rc;
}

/* The rows of a matrix kept at 2 bytes, read as f32 (exact for an f16 or bf16 file). */
static int read_rows(void *weights, const ol_tensor *rows, float *buf) {
  return read_slice(weights, rows, buf);
}

int ol_model_load(ol_model *m, ol_weights *f) {
  // every tensor present with its shape before any is read: a file that lacks one fails at
  // once, naming it, not after minutes of reading
  for (size_t i = 0; i < m->n_tensors; i++)
    if (!m->tensors[i]->not_in_file)
      OL_TRY(ol_weights_check(f, m->tensors[i]->name, m->tensors[i]->ndim, m->tensors[i]->shape));
  for (size_t i = 0; i < m->n_tensors; i++) {
    const ol_tensor *t = m->tensors[i];
    if (t->mapped) continue;  // its pages come from the file itself
    if (t->not_in_file) {  // its config says the file has none: never read a stray dataset
      ol_bk->fill(t->data, 0.0f, tensor_numel(t));
      continue;
    }
    // this rank's slice only: rows of column-parallel and vocab tensors, columns of row-parallel
    if (t->data) OL_TRY(read_slice(f, t, t->data));
    else OL_TRY(ol_tensor_fill_half(t, m->stage.weights_dtype, read_rows, f));
  }
  return OL_OK;
}

int ol_model_save(const ol_model *m, const char *path, int dtype) {
  ol_h5model *f;
  OL_TRY(ol_h5model_create(path, &m->cfg, &f));
  for (size_t i = 0; i < m->n_tensors; i++) {
    const ol_tensor *t = m->tensors[i];
    if (ol_h5model_write(f, t->name, t->ndim, t->shape, t->data, (ol_dtype)dtype) != OL_OK) {
      ol_h5model_close(f);  // discards the temporary file: no partial model is committed
      return OL_ERR;
    }
  }
  return ol_h5model_finish(f);
}

/* "<dir>/<file>", without doubling a trailing slash of dir; ol_free() it. */
static char *join_path(const char *dir, const char *file) {
  size_t n = strlen(dir) + strlen(file) + 2;
  char *p = ol_calloc(n, 1);
  size_t d = strlen(dir);
  snprintf(p, n, "%s%s%s", dir, d == 0 || dir[d - 1] == '/' ? "" : "/", file);
  return p;
}

/* The weights go first and config.json last: a directory with a new config.json has its
 * weights complete. */
int ol_model_save_hf(const ol_model *m, const char *out, int dtype) {
  // OUT.safetensors: that file, and config.json beside it; otherwise OUT is the directory
  size_t n = strlen(out);
  int file = n > 12 && strcmp(out + n - 12, ".safetensors") == 0;
  char *dir = ol_calloc(n + 2, 1);
  memcpy(dir, out, n);
  if (file) {
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    else strcpy(dir, ".");
  }
  int rc = ol_io_make_dir(dir);
  char *st_path = file ? join_path("", out) : join_path(dir, "model.safetensors");
  char *cfg_path = join_path(dir, "config.json");
  ol_free(dir);
  if (rc != OL_OK) {
    ol_free(st_path), ol_free(cfg_path);
    return rc;
  }
  ol_st_tensor *ts = ol_calloc(m->n_tensors, sizeof *ts);  // (n_tensors) in model file order
  for (size_t i = 0; i < m->n_tensors; i++) {
    const ol_tensor *t = m->tensors[i];
    ts[i].name = t->name;
    ts[i].ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) ts[i].shape[d] = t->shape[d];
  }
  ol_safetensors *s = NULL;
  rc = ol_safetensors_create(st_path, ts, m->n_tensors, (ol_dtype)dtype, &s);
  for (size_t i = 0; rc == OL_OK && i < m->n_tensors; i++)
    rc = ol_safetensors_write(s, m->tensors[i]->name, m->tensors[i]->data);
  if (s) {
    if (rc == OL_OK) rc = ol_safetensors_finish(s);
    else ol_safetensors_close(s);
  }
  if (rc == OL_OK) rc = ol_hf_config_write(cfg_path, &m->cfg, (ol_dtype)dtype);
  ol_free(ts);
  ol_free(st_path);
  ol_free(cfg_path);
  return rc;
}
