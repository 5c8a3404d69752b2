/* Learning-rate schedule. */
#include <math.h>
#include <string.h>

#include "onelora/train/optim.h"

int ol_schedule_parse(const char *s, ol_sched_kind *out) {
  if (strcmp(s, "cosine") == 0) *out = OL_SCHED_COSINE;
  else if (strcmp(s, "constant") == 0) *out = OL_SCHED_CONSTANT;
  else return ol_error("--schedule: unknown schedule '%s' (use cosine or constant)", s);
  return OL_OK;
}

double ol_schedule_lr(const ol_schedule *s, int64_t step) {
  if (step < s->warmup) return s->lr * (double)(step + 1) / (double)s->warmup;
  if (s->kind == OL_SCHED_CONSTANT) return s->lr;
  int64_t span = s->steps - s->warmup;
  double progress = span > 0 ? (double)(step - s->warmup) / (double)span : 1.0;
  if (progress > 1.0) progress = 1.0;
  return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1.0 + cos(3.14159265358979323846 * progress));
}
