/* onelora train: AdamW, the gradient clip and the learning-rate schedule. */
#ifndef ONELORA_TRAIN_OPTIM_H
#define ONELORA_TRAIN_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/parallel/grid.h"
#include "onelora/peft/params.h"

typedef struct {
  float beta1, beta2, eps, weight_decay;
} ol_adamw;

/* PyTorch defaults: 0.9, 0.999, 1e-8, weight decay 0 */
ol_adamw ol_adamw_defaults(void);
/* One AdamW step over the whole flat buffer (step counted from 1). */
void ol_adamw_step(const ol_adamw *o, ol_params *p, float lr, int64_t step);
/* Global L2 norm of the flat gradient (over the pipeline stages of grid g, when given); scales
 * it to max_norm when above (PyTorch clip_grad_norm_: coefficient max_norm / (norm + 1e-6)).
 * max_norm <= 0 disables. Returns the norm. */
double ol_clip_grad_norm(ol_params *p, double max_norm, ol_grid *g);

typedef enum { OL_SCHED_COSINE = 0, OL_SCHED_CONSTANT = 1 } ol_sched_kind;
typedef struct {
  ol_sched_kind kind;
  double lr, min_lr;
  int64_t warmup, steps;
} ol_schedule;
int ol_schedule_parse(const char *s, ol_sched_kind *out);
/* LR for 0-based step s: linear warmup lr*(s+1)/warmup, then cosine to min_lr or constant. */
double ol_schedule_lr(const ol_schedule *s, int64_t step);

#endif
