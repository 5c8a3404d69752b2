/* onelora parallel: pipeline parallelism (DESIGN §5): the schedule of a stage's micro-batches and
 * its executor, which moves activations and their gradients between neighbouring stages. */
#ifndef ONELORA_PARALLEL_PIPELINE_H
#define ONELORA_PARALLEL_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/parallel/grid.h"

/* ---- the schedule ---- */
#define OL_PP_MAX_SLOTS 1024
typedef struct {
  char kind;  /* 'F' forward or 'B' backward */
  int mb;     /* micro-batch */
} ol_pp_op;
/* This stage's order of the 2M operations of a step: 1F1B, or GPipe (all F, then all B). */
size_t ol_pp_schedule(int pp, int pp_rank, int M, int gpipe, ol_pp_op *ops);
/* Micro-batches in flight on this stage at most: its activation slots. */
int ol_pp_slots(int pp, int pp_rank, int M, int gpipe);

/* ---- the executor ---- */
/* What the executor needs of a stage, and nothing of the model: how to compute a micro-batch in
 * an activation slot, and which of the slot's buffers messages fill and leave from. Micro-batch
 * mb runs in slot mb % n_slots. Every message is n floats, a micro-batch's residual stream. */
typedef struct {
  /* Forward of micro-batch mb in `slot`, its input in place; returns the micro-batch's summed
   * loss (nonzero on the last stage only). */
  double (*forward)(void *ctx, int mb, int slot);
  /* Backward of micro-batch mb in `slot` after its forward there, its d(output) in place. */
  void (*backward)(void *ctx, int mb, int slot);
  float *(*input)(void *ctx, int slot);    /* (n) stage input: a forward's receive target */
  float *(*output)(void *ctx, int slot);   /* (n) stage output: sent on after a forward */
  float *(*d_output)(void *ctx, int slot); /* (n) d(output): a backward's receive target */
  float *(*d_input)(void *ctx, int slot);  /* (n) d(input): sent back after a backward (it may
                                            * be the d_output buffer, overwritten in place) */
  int has_prev;  /* a stage precedes: forwards receive their input, backwards send d(input)
                  * (else this is the first stage, which embeds the tokens) */
  int has_next;  /* a stage follows: forwards send their output, backwards receive d(output)
                  * (else this is the last stage, which holds the head and the loss) */
  size_t n;      /* floats of one message: N * D for N tokens of width D */
} ol_pp_step;

/* Runs this stage's schedule ops (n_ops, from ol_pp_schedule) over n_slots activation slots:
 * every op, or with backward == 0 (evaluation) the forwards only. Each receive is posted before
 * the previous op computes, so the transfer overlaps it; a slot's sends end before its buffers
 * are rewritten, and every send has ended on return. Returns the summed loss of the forwards
 * (nonzero on the last stage only). */
double ol_pp_run(ol_grid *g, const ol_pp_op *ops, size_t n_ops, int n_slots, int backward,
                 const ol_pp_step *step, void *ctx);

/* Generation's blocking pair: x (n) sent to the next stage, or received from the previous one
 * (the same TP rank of the neighbouring stage). */
void ol_pp_send_next(ol_grid *g, const float *x, size_t n);
void ol_pp_recv_prev(ol_grid *g, float *x, size_t n);

/* Sums n doubles over the pipeline stages, in place. */
void ol_pp_sum(ol_grid *g, double *x, int n);

#endif
