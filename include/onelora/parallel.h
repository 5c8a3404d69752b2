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

typedef struct {
  int world_rank, world_size;
  int tp, pp, dp;                   /* sizes */
  int tp_rank, pp_rank, dp_rank;
  void *tp_comm, *dp_comm, *pp_comm; /* MPI_Comm handles (opaque outside src/parallel) */
  double bytes[OL_COMM_COUNT];      /* this step's payload bytes per purpose */
} ol_grid;

/* Starts MPI (MPI_THREAD_FUNNELED) and records the world; layouts come with ol_grid_layout. */
void ol_grid_init(int *argc, char ***argv, ol_grid *g);
/* Splits the world into TP, DP and PP communicators; fails (same answer on every rank) when
 * tp * pp does not divide the world size. */
int ol_grid_layout(ol_grid *g, int tp, int pp);
void ol_grid_finalize(ol_grid *g);
/* Ends every rank of the job after a fatal error on this one (MPI_Abort). */
void ol_grid_abort(int code) __attribute__((noreturn));
/* Ranks in MPI_COMM_WORLD (1 when MPI was not started) */
int ol_grid_world_size(void);

/* Every rank's status, agreed: returns OL_OK only when all ranks passed OL_OK. A rank that
 * failed keeps its own message; the others record "rank R failed: <its message>" so that every
 * rank can exit cleanly with a message naming the rank and the cause. */
int ol_grid_agree(ol_grid *g, int status);

/* ---- data parallel ---- */
/* Sums the flat gradient buffer over the DP replicas (one MPI_Allreduce, in place). */
void ol_dp_allreduce_grads(ol_grid *g, ol_params *p);
/* Sums n doubles over the DP replicas, in place (losses, token counts). */
void ol_dp_sum(ol_grid *g, double *x, int n);

#endif
