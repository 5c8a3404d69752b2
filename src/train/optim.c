/* AdamW and gradient clipping over the flat trainable buffer. */
#include <math.h>

#include "onelora/backend/backend.h"
#include "onelora/parallel/pipeline.h"
#include "onelora/parallel/tp.h"
#include "onelora/train/optim.h"

ol_adamw ol_adamw_defaults(void) { return (ol_adamw){0.9f, 0.999f, 1e-8f, 0.0f}; }

void ol_adamw_step(const ol_adamw *o, ol_params *p, float lr, int64_t step) {
  if (p->total == 0) return;
  ol_bk->adamw(p->data, p->grad, p->m, p->v, p->total, lr, o->beta1, o->beta2, o->eps,
               o->weight_decay, step);
}

double ol_clip_grad_norm(ol_params *p, double max_norm, ol_grid *g) {
  double sq = ol_tp_grad_sumsq(g, p);  // every value once: TP shards summed, replicas once
  if (g) ol_pp_sum(g, &sq, 1);  // each stage holds its own layers' gradients
  double norm = sqrt(sq);
  if (max_norm > 0 && norm > max_norm) ol_bk->scale(p->grad, (float)(max_norm / (norm + 1e-6)), p->total);
  return norm;
}
