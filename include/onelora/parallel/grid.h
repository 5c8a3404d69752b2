/* onelora parallel: the process grid and every collective (DESIGN §5). Collectives live only
 * in src/parallel/.
 * world = DP x PP x TP ranks; TP is innermost (consecutive ranks, one node), then DP, then PP:
 *   world_rank = pp_rank * (DP * TP) + dp_rank * TP + tp_rank. */
#ifndef ONELORA_PARALLEL_GRID_H
#define ONELORA_PARALLEL_GRID_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"
#include "onelora/core/tp.h"

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
  ol_tp tp_group;                   /* the TP regions over tp_comm (ol_grid_tp) */
  void *comm;                       /* how backend buffers travel: the path, NCCL communicators
                                     * and staging buffers (src/parallel/comm.h) */
} ol_grid;

/* Starts MPI (MPI_THREAD_FUNNELED) and records the world; layouts come with ol_grid_layout. */
void ol_grid_init(int *argc, char ***argv, ol_grid *g);
/* Splits the world into TP, DP and PP communicators; fails (same answer on every rank) when
 * tp * pp does not divide the world size. */
int ol_grid_layout(ol_grid *g, int tp, int pp);
void ol_grid_finalize(ol_grid *g);

/* Chooses this process's backend and sets it (ol_backend_set): device "cpu" (ol_backend_cpu),
 * "cuda" (GPU local_rank % ol_cuda_device_count(), the local rank from
 * OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID, else the rank among this node's ranks) or, in
 * test builds, "cpu-staged" (ol_backend_cpu_staged); NULL is "cpu". Then chooses how the
 * backend's buffers travel, recorded in the grid for every collective and message of
 * src/parallel:
 *   host        the buffers are host memory: plain MPI on them
 *   nccl        TP and DP all-reduces and the TP all-gather by NCCL on the backend's stream
 *               (one NCCL communicator per TP and per DP group); pipeline messages by MPI,
 *               CUDA-aware or staged
 *   cuda-aware  MPI on the device pointers, after the backend's queue has drained
 *   staged      queue drained, buffers copied into pinned host memory, MPI there, copied back
 * The environment variable ONELORA_COMM=auto|staged|cuda-aware|nccl forces one (an unavailable
 * one is an error naming why); auto takes the first available of nccl, cuda-aware, staged.
 * Collective over every rank, which agree on the outcome (a rank without a GPU fails them all).
 * Called before or after ol_grid_layout: the NCCL communicators are built once both are done. */
int ol_grid_use_device(ol_grid *g, const char *device);
/* The communication path for the log: "host", "nccl", "cuda-aware MPI" or "staged through
 * pinned host memory" (with the pipeline messages' path after "nccl"). */
const char *ol_grid_comm_path(const ol_grid *g);

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
/* x (n) of world rank `root` copied to every rank (the token a generation step sampled). */
void ol_grid_bcast_i64(ol_grid *g, int64_t *x, int n, int root);
/* x (n) of world rank `root` copied to every rank (a generation step's --print-scores). */
void ol_grid_bcast_f64(ol_grid *g, double *x, int n, int root);
/* The communicator for collective file I/O over every rank (an MPI_Comm *), or NULL on one
 * rank, where files are written by the plain serial driver. */
void *ol_grid_io_comm(ol_grid *g);

#endif
