/* onelora train: text generation from the frozen model with a checkpoint's adapters applied
 * unmerged, on the TP x PP layouts of training (src/train/generate.c). */
#ifndef ONELORA_TRAIN_GENERATE_H
#define ONELORA_TRAIN_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/parallel/grid.h"

/* What `onelora generate` asks for, as parsed by the CLI. */
typedef struct {
  const char *model_path;  /* model file or Hugging Face directory */
  const char *ckpt_path;   /* checkpoint whose method, adapters and trained values apply, or NULL:
                            * the base model (method none) */
  const char *prompt_text; /* the prompt as bytes (a byte-level model: vocab_size 256), or */
  const int32_t *prompt_ids; /* (n_prompt) the prompt as ids, when prompt_text is NULL */
  size_t n_prompt;
  int64_t n_tokens;        /* new tokens to sample, > 0 */
  double temperature;      /* 0: greedy (argmax, the lowest id on ties) */
  int64_t top_k;           /* sample among the top_k largest logits; 0: all */
  uint64_t seed;           /* the sampling RNG (the same tokens on every layout) */
  int tp, pp;              /* layout; the job's ranks must be tp * pp (DP = 1) */
  ol_dtype weights_dtype;  /* frozen matrices in memory */
  int no_cache;            /* recompute the whole sequence at every step instead of a KV cache */
  ol_grid *grid;
} ol_generate_opts;

/* Prefills the prompt, then samples n_tokens tokens one at a time (DESIGN §8). On success *ids
 * (ol_free it) holds the prompt followed by the new tokens, *n_ids of them, the same on every
 * rank, and *cfg the model's shape. With scores non-NULL, *scores (ol_free it; (n_tokens, 3),
 * the same on every rank) holds each new token's log-probability under the distribution it was
 * drawn from, the margin of the draw and the top-k gap (src/train/generate.c, score_token).
 * Collective over every rank of o->grid (scores NULL on every rank or on none); errors are
 * agreed. */
int ol_generate_run(const ol_generate_opts *o, int32_t **ids, size_t *n_ids, double **scores,
                    ol_config *cfg);

#endif
