/* onelora train: the data loader, which tokens each rank reads at each step (DESIGN §6). */
#ifndef ONELORA_TRAIN_DATA_H
#define ONELORA_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/io/dataset.h"

/* Start position in the token stream of global sample j of step s (DESIGN §6).
 * Unshuffled: ((s*G + j)*T) mod (n - T - 1). Shuffled: a counter-based hash of (seed, s*G + j),
 * so the order depends only on the seed, never on the layout. */
size_t ol_sample_position(uint64_t seed, int shuffle, int64_t step, size_t G, size_t j, size_t n,
                          size_t T);

typedef struct {
  const char *path;    /* token data file; NULL: random tokens instead (bench) */
  uint64_t seed;       /* the shuffled order's, and the random tokens' */
  int shuffle;         /* the train split in shuffled order (val is always read in order) */
  size_t B, T, M;      /* sequences per micro-batch, tokens per sequence, micro-batches per step */
  int dp, dp_rank;     /* data-parallel replicas and this rank's replica */
  int64_t vocab_size;  /* the model's: random tokens lie below it, and so must a file's */
  int need_val;        /* the val split will be read (evaluation), so it must hold a sample */
} ol_loader_opts;

/* One replica's view of the data: DP replica r takes the r-th contiguous block of the
 * B * M * DP samples of each global batch. */
typedef struct ol_loader ol_loader;

/* Opens the data file and checks it against the options; no file with o->path NULL. */
int ol_loader_open(const ol_loader_opts *o, ol_loader **out);
/* Fills this replica's micro-batches of step `step` of split s: tokens and targets (M, B, T),
 * targets the tokens shifted by one. Random tokens are a pure function of (seed, split, step,
 * global sample), so every layout draws the same. Fails on a read error or a bad token; the
 * caller agrees the outcome over the ranks. */
int ol_loader_step(ol_loader *l, ol_split s, int64_t step, int32_t *tokens, int32_t *targets);
void ol_loader_close(ol_loader *l);

#endif
