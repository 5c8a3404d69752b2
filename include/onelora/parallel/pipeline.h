/* onelora parallel: pipeline parallelism. */
#ifndef ONELORA_PARALLEL_PIPELINE_H
#define ONELORA_PARALLEL_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/parallel/grid.h"

/* ---- pipeline parallel ---- */
#define OL_PP_MAX_SLOTS 1024
typedef struct {
  char kind;  /* 'F' forward or 'B' backward */
  int mb;     /* micro-batch */
} ol_pp_op;
/* This stage's order of the 2M operations of a step: 1F1B, or GPipe (all F, then all B). */
size_t ol_pp_schedule(int pp, int pp_rank, int M, int gpipe, ol_pp_op *ops);
/* Micro-batches in flight on this stage at most: its activation slots. */
int ol_pp_slots(int pp, int pp_rank, int M, int gpipe);
/* Non-blocking send of n floats to the next (to_next = 1) or previous stage for micro-batch mb,
 * from the buffer of activation slot `slot` (waits for that slot's previous send first). */
void ol_pp_send(ol_grid *g, int to_next, const float *x, size_t n, int mb, int slot);
/* Waits for the slot's pending sends, before its buffers are reused or freed. */
void ol_pp_wait_send(ol_grid *g, int slot);
/* Non-blocking receive of n floats from the previous (from_prev = 1) or next stage for
 * micro-batch mb, into a buffer of the pipeline's own: it can be posted before its destination
 * is free (one op ahead), so that the transfer overlaps the current op. One at a time. */
void ol_pp_post_recv(ol_grid *g, int from_prev, size_t n, int mb);
/* Waits for the posted receive and copies its n floats into x, right before x is used. */
void ol_pp_wait_recv(ol_grid *g, float *x, size_t n);
/* Sums n doubles over the pipeline stages, in place. */
void ol_pp_sum(ol_grid *g, double *x, int n);

#endif
