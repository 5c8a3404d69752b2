/* Moving the trainable state between the flat buffers and checkpoint files: every tensor of
 * the table, at its full logical shape, in groups params, adam_m and adam_v. */
#include <stdio.h>

#include "onelora/io.h"
#include "onelora/train.h"

static const ol_ckpt_group state_groups[3] = {OL_GROUP_PARAMS, OL_GROUP_ADAM_M, OL_GROUP_ADAM_V};

static const float *state_buffer(const ol_params *p, int g) {
  return g == 0 ? p->data : g == 1 ? p->m : p->v;
}

static int save_all(ol_ckpt *c, const ol_params *p, const ol_frozen *gen) {
  for (int g = 0; g < 3; g++)
    for (size_t i = 0; i < p->count; i++) {
      const ol_param_entry *e = &p->entries[i];
      OL_TRY(ol_ckpt_write(c, state_groups[g], e->name, e->ndim, e->shape,
                           state_buffer(p, g) + e->offset));
    }
  for (size_t i = 0; i < gen->count; i++) {
    const ol_frozen_entry *e = &gen->entries[i];
    OL_TRY(ol_ckpt_write(c, OL_GROUP_FROZEN, e->name, e->ndim, e->shape, e->data));
  }
  return OL_OK;
}

int ol_checkpoint_save(const ol_params *p, const ol_frozen *gen, const ol_ckpt_meta *meta,
                       const char *path) {
  ol_ckpt *c;
  OL_TRY(ol_ckpt_create(path, meta, &c));
  if (save_all(c, p, gen) != OL_OK) {
    char msg[1024];
    ol_strlcpy(msg, ol_last_error(), sizeof msg);
    ol_ckpt_finish(c);  // discards the temporary file
    return ol_error("%s", msg);
  }
  return ol_ckpt_finish(c);
}

int ol_checkpoint_load(ol_params *p, ol_frozen *gen, ol_ckpt *c, const char *path, int moments) {
  size_t n;
  OL_TRY(ol_ckpt_count(c, OL_GROUP_PARAMS, &n));
  if (n != p->count)
    return ol_error("checkpoint %s holds %zu trainable tensors, this model and method have %zu",
                    path, n, p->count);
  for (int g = 0; g < (moments ? 3 : 1); g++)
    for (size_t i = 0; i < p->count; i++) {
      const ol_param_entry *e = &p->entries[i];
      OL_TRY(ol_ckpt_read(c, state_groups[g], e->name, e->ndim, e->shape,
                          (float *)state_buffer(p, g) + e->offset));
    }
  // the generated frozen tensors as trained (they are regenerated from the seed too; the
  // stored copy keeps a checkpoint self-contained)
  for (size_t i = 0; i < gen->count; i++) {
    ol_frozen_entry *e = &gen->entries[i];
    OL_TRY(ol_ckpt_read(c, OL_GROUP_FROZEN, e->name, e->ndim, e->shape, e->data));
  }
  return OL_OK;
}
