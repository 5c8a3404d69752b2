/* Time to generate one synthetic weight (ol_tensor_randomize) whole and as each of its TP
 * shards, on the layout the trainer uses. Not a test: docs/PERFORMANCE.md quotes its output.
 * Usage: bench_synthetic [PRESET [TENSOR [TP]]], e.g. llama2-7b model.layers.0.self_attn.q_proj.weight 8 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"
#include "onelora/model/acts.h"

/* Seconds to generate t's slice into data, the best of `reps` runs. */
static double time_slice(const ol_tensor *t, float *data, int reps) {
  double best = 0;
  for (int i = 0; i < reps; i++) {
    double t0 = ol_now();
    ol_tensor_randomize(t, data, 1);
    double s = ol_now() - t0;
    if (i == 0 || s < best) best = s;
  }
  return best;
}

/* The layout of `preset` on TP rank `rank` of `tp` (nothing allocated). */
static int layout(ol_model *m, const char *preset, int tp, int rank) {
  ol_config cfg;
  ol_method none;
  OL_TRY(ol_preset(preset, &cfg));
  OL_TRY(ol_method_parse("none", "all", 1, 1.0, &none));
  ol_stage stage = ol_pipeline_stage(&cfg, 1, 0);
  stage.tp = tp, stage.tp_rank = rank;
  return ol_model_layout_stage(m, &cfg, &none, 0, &stage);
}

int main(int argc, char **argv) {
  const char *preset = argc > 1 ? argv[1] : "llama2-7b";
  const char *name = argc > 2 ? argv[2] : "model.layers.0.self_attn.q_proj.weight";
  const int tp = argc > 3 ? atoi(argv[3]) : 8, reps = 3;
  ol_backend_set(ol_backend_cpu());
  ol_model whole;
  if (layout(&whole, preset, 1, 0) != OL_OK) {
    fprintf(stderr, "bench_synthetic: %s\n", ol_last_error());
    return 1;
  }
  const ol_tensor *w = ol_model_tensor(&whole, name);
  if (!w) {
    fprintf(stderr, "bench_synthetic: %s has no tensor '%s'\n", preset, name);
    return 1;
  }
  float *data = ol_calloc(ol_tensor_numel(w), sizeof(float));  // (shape) the whole tensor
  const double s_whole = time_slice(w, data, reps);
  printf("%s %s [%zu, %zu]: whole %.1f ms\n", preset, name, w->shape[0], w->shape[1],
         1e3 * s_whole);
  for (int r = 0; r < tp; r++) {
    ol_model part;
    if (layout(&part, preset, tp, r) != OL_OK) {
      fprintf(stderr, "bench_synthetic: %s\n", ol_last_error());
      return 1;
    }
    const ol_tensor *s = ol_model_tensor(&part, name);
    const double sec = time_slice(s, data, reps);
    printf("  TP %d rank %d rows [%zu, +%zu) cols [%zu, +%zu): %.1f ms (%.2fx of whole)\n", tp, r,
           s->start[0], s->count[0], s->start[1], s->count[1], 1e3 * sec, sec / s_whole);
    ol_model_free(&part);
  }
  ol_free(data);
  ol_model_free(&whole);
  return 0;
}
