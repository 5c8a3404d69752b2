/* onelora parallel: the process grid and every collective (DESIGN §5). Collectives live only
 * in src/parallel/.
 * world = DP x PP x TP ranks; TP is innermost (consecutive ranks, one node), then DP, then PP:
 *   world_rank = pp_rank * (DP * TP) + dp_rank * TP + tp_rank. */
#ifndef ONELORA_PARALLEL_H
#define ONELORA_PARALLEL_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/peft.h"

/* Bytes this rank sent in collectives and messages, by purpose (communication accounting). */
typedef enum { OL_COMM_TP_FWD = 0, OL_COMM_TP_BWD, OL_COMM_PP, OL_COMM_DP, OL_COMM_COUNT } ol_comm_kind;

typedef struct ol_grid {
  int world_rank, world_size;
  int tp, pp, dp;                   /* sizes */
  int tp_rank, pp_rank, dp_rank;
  void *tp_comm, *dp_comm, *pp_comm; /* MPI_Comm handles (opaque outside src/parallel) */
  double bytes[OL_COMM_COUNT];      /* this step's payload bytes per purpose */
  void *pp_requests;                /* pipeline send requests, one per (slot, direction) */
  void *pp_inbox;                   /* the pipeline receive in flight and its buffer */
  void *world_comm;                 /* MPI_COMM_WORLD as an MPI_Comm * (for parallel I/O) */
} ol_grid;

/* Starts MPI (MPI_THREAD_FUNNELED) and records the world; layouts come with ol_grid_layout. */
void ol_grid_init(int *argc, char ***argv, ol_grid *g);
/* Splits the world into TP, DP and PP communicators; fails (same answer on every rank) when
 * tp * pp does not divide the world size. */
int ol_grid_layout(ol_grid *g, int tp, int pp);
void ol_grid_finalize(ol_grid *g);

/* Every rank's status, agreed: returns OL_OK only when all ranks passed OL_OK. A rank that
 * failed keeps its own message; the others record "rank R failed: <its message>" so that every
 * rank can exit cleanly with a message naming the rank and the cause. */
int ol_grid_agree(ol_grid *g, int status);

/* Every rank's flag, agreed: 1 on every rank when any rank passed nonzero (a stop request). */
int ol_grid_any(ol_grid *g, int flag);
/* x (n) maximum over every rank, in place (peak memory, bytes sent, for reports). */
void ol_grid_max(ol_grid *g, double *x, int n);
/* x (n) summed over every rank, in place (the memory of all ranks of a node, for reports). */
void ol_grid_sum(ol_grid *g, double *x, int n);
/* World rank 0's string buf (size bytes, NUL-terminated) copied to every rank. */
void ol_grid_bcast_str(ol_grid *g, char *buf, size_t size);
/* The communicator for collective file I/O over every rank (an MPI_Comm *), or NULL on one
 * rank, where files are written by the plain serial driver. */
void *ol_grid_io_comm(ol_grid *g);

/* ---- data parallel ---- */
/* Payload bytes one replica sends per step to reduce its gradients: the flat buffer, 4 bytes
 * per trainable value of its shard (DESIGN §5). */
double ol_dp_step_bytes(const ol_params *p);
/* Sums the flat gradient buffer over the DP replicas (one MPI_Allreduce, in place). */
void ol_dp_allreduce_grads(ol_grid *g, ol_params *p);
/* Sums n doubles over the DP replicas, in place (losses, token counts). */
void ol_dp_sum(ol_grid *g, double *x, int n);

/* ---- tensor parallel (Megatron-style, DESIGN §5): every call is a no-op when g is NULL or
 * TP = 1. Bytes are counted in g->bytes[kind] (OL_COMM_TP_FWD or OL_COMM_TP_BWD). ---- */
/* x (n) summed over the TP ranks, in place. */
void ol_tp_allreduce(struct ol_grid *g, float *x, size_t n, ol_comm_kind kind);
/* x (n) maximum over the TP ranks, in place (the parallel cross-entropy's row maxima). */
void ol_tp_allreduce_max(struct ol_grid *g, float *x, size_t n, ol_comm_kind kind);
/* x (n) doubles summed over the TP ranks, in place. */
void ol_tp_allreduce_double(struct ol_grid *g, double *x, size_t n, ol_comm_kind kind);
/* Sums the gradients of the entries whose gradient is a partial sum over TP (tp_partial: 1LoRA's
 * b on row-parallel layers), in place. */
void ol_tp_reduce_partial_grads(struct ol_grid *g, ol_params *p);
/* Squared gradient norm with every value counted once over the TP ranks: sharded entries summed
 * over TP, replicated ones counted once. */
double ol_tp_grad_sumsq(struct ol_grid *g, const ol_params *p);
/* Collects the TP shards of every trainable tensor (values, Adam moments) on tp_rank 0 as full
 * logical tensors, in table order; the others send and get an empty table. Generated frozen
 * tensors are copied from tp_rank 0's own. */
int ol_tp_gather_state(struct ol_grid *g, const ol_params *p, const ol_frozen *gen, ol_params *all,
                       ol_frozen *all_gen);

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
/* Collects every stage's trainable state (values, Adam moments) and generated frozen tensors
 * on stage 0, in model order, for the checkpoint; other stages send and get empty tables. */
int ol_pp_gather_state(ol_grid *g, const ol_params *p, const ol_frozen *gen, ol_params *all,
                       ol_frozen *all_gen);

#endif
