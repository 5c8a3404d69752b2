/* Learning-rate schedule and the data order. */
#include <math.h>
#include <string.h>

#include "onelora/train/optim.h"
#include "onelora/train/data.h"
#include "onelora/train/trainer.h"
#include "onelora/train/checkpoint.h"
#include "onelora/train/plan.h"

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

size_t ol_sample_position(uint64_t seed, int shuffle, int64_t step, size_t G, size_t j, size_t n,
                          size_t T) {
  size_t range = n - T - 1;
  uint64_t index = (uint64_t)step * G + j;
  if (!shuffle) return (size_t)((index * T) % range);
  return (size_t)(ol_hash64(seed ^ ol_hash64(index)) % range);
}
