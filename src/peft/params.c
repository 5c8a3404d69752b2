/* The flat trainable buffer and its table (DESIGN §3): DP reduction, the gradient norm, AdamW
 * and checkpoint I/O all iterate this one table. */
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

int ol_param_sharded(const ol_param_entry *e) {
  return e->place == OL_PLACE_ROWS || e->place == OL_PLACE_COLS;
}

size_t ol_params_declare(ol_params *p, const char *name, int ndim, const size_t *shape,
                         ol_placement place, size_t start, size_t count) {
  OL_CHECK(ndim >= 1 && ndim <= 2 && !p->data);
  OL_CHECK(place != OL_PLACE_COLS || ndim == 2);
  p->entries = ol_grow(p->entries, p->count, &p->cap, sizeof *p->entries);
  ol_param_entry *e = &p->entries[p->count];
  memset(e, 0, sizeof *e);
  ol_strlcpy(e->name, name, sizeof e->name);
  e->ndim = ndim;
  e->place = place;
  const int split = place == OL_PLACE_ROWS ? 0 : place == OL_PLACE_COLS ? 1 : -1;
  e->numel = 1;
  for (int i = 0; i < ndim; i++) {
    e->shape[i] = shape[i];
    e->start[i] = i == split ? start : 0;
    e->count[i] = i == split ? count : shape[i];
    OL_CHECK(e->start[i] + e->count[i] <= shape[i]);
    e->numel *= e->count[i];
  }
  e->offset = p->total;
  p->total += e->numel;
  return p->count++;
}

void ol_params_alloc(ol_params *p) {
  p->data = ol_bk->alloc(p->total * sizeof(float));  // (total) each
  p->grad = ol_bk->alloc(p->total * sizeof(float));
  p->m = ol_bk->alloc(p->total * sizeof(float));
  p->v = ol_bk->alloc(p->total * sizeof(float));
}

float *ol_params_value(const ol_params *p, size_t index) {
  OL_CHECK(index < p->count && p->data);
  return p->data + p->entries[index].offset;
}

float *ol_params_grad(const ol_params *p, size_t index) {
  OL_CHECK(index < p->count && p->grad);
  return p->grad + p->entries[index].offset;
}

void ol_params_free(ol_params *p) {
  ol_free(p->entries);
  ol_bk->free(p->data);
  ol_bk->free(p->grad);
  ol_bk->free(p->m);
  ol_bk->free(p->v);
  memset(p, 0, sizeof *p);
}
