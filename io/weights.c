/* A model's weights, whatever their format: an onelora model file (HDF5) or a Hugging Face
 * directory (config.json and safetensors). A directory is read as Hugging Face's. */
#include <string.h>

#include "hf.h"
#include "onelora/core.h"
#include "onelora/io.h"

struct ol_weights {
  ol_h5model *h5;  /* exactly one of the two */
  ol_hf *hf;
};

int ol_weights_open(const char *path, ol_weights **out, ol_config *cfg) {
  *out = NULL;
  ol_weights *w = ol_calloc(1, sizeof *w);
  int rc = ol_hf_is_dir(path) ? ol_hf_open(path, &w->hf, cfg) : ol_h5model_open(path, &w->h5, cfg);
  if (rc != OL_OK) {
    ol_free(w);
    return rc;
  }
  *out = w;
  return OL_OK;
}

int ol_weights_has(ol_weights *w, const char *name) {
  return w->hf ? ol_hf_has(w->hf, name) : ol_h5model_has(w->h5, name);
}

int ol_weights_tied(const ol_weights *w) { return w->hf ? ol_hf_tied(w->hf) : 0; }

int ol_weights_check(ol_weights *w, const char *name, int ndim, const size_t *shape) {
  return w->hf ? ol_hf_check(w->hf, name, ndim, shape) : ol_h5model_check(w->h5, name, ndim, shape);
}

int ol_weights_read(ol_weights *w, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst) {
  return w->hf ? ol_hf_read(w->hf, name, ndim, shape, start, count, dst)
               : ol_h5model_read(w->h5, name, ndim, shape, start, count, dst);
}

int ol_weights_dtype(ol_weights *w, const char *name, ol_dtype *out) {
  return w->hf ? ol_hf_dtype(w->hf, name, out) : ol_h5model_dtype(w->h5, name, out);
}

void ol_weights_close(ol_weights *w) {
  if (!w) return;
  ol_hf_close(w->hf);
  ol_h5model_close(w->h5);
  ol_free(w);
}
