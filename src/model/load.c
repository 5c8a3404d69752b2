/* Moving weights between an ol_model and model files. Each rank reads only its own slice. */
#include "onelora/io.h"
#include "onelora/model.h"

int ol_model_load(ol_model *m, ol_h5model *f) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    const ol_tensor *t = m->tensors[i];
    size_t start[2] = {0, 0};
    OL_TRY(ol_h5model_read(f, t->name, t->ndim, t->shape, start, t->shape, t->data));
  }
  return OL_OK;
}

int ol_model_save(const ol_model *m, const char *path, int dtype) {
  ol_h5model *f;
  OL_TRY(ol_h5model_create(path, &m->cfg, &f));
  for (size_t i = 0; i < m->n_tensors; i++) {
    const ol_tensor *t = m->tensors[i];
    if (ol_h5model_write(f, t->name, t->ndim, t->shape, t->data, (ol_dtype)dtype) != OL_OK) {
      char msg[1024];
      ol_strlcpy(msg, ol_last_error(), sizeof msg);
      ol_h5model_finish(f);
      return ol_error("%s", msg);
    }
  }
  return ol_h5model_finish(f);
}
