/* The process grid: DP x PP x TP communicators and agreement on errors. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "onelora/core/core.h"
#include "onelora/parallel/grid.h"

void ol_grid_init(int *argc, char ***argv, ol_grid *g) {
  memset(g, 0, sizeof *g);
  // Open MPI's default collective-write algorithm for MPI-IO (fcoll/vulcan) can hang when some
  // ranks write nothing, which is the rule in a checkpoint (open-mpi/ompi#7414, seen here under
  // srun with 4 ranks); the other algorithms do not. A user's own setting wins.
  setenv("OMPI_MCA_fcoll", "^vulcan", 0);
  int provided;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g->world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g->world_size);
  g->tp = g->pp = g->dp = 1;
  MPI_Comm *world = ol_calloc(1, sizeof *world);
  *world = MPI_COMM_WORLD;
  g->world_comm = world;
  ol_log_set_rank(g->world_rank);
}

static MPI_Comm *comm(void **handle) { return (MPI_Comm *)handle; }

/* Frees the TP, DP and PP communicators of a layout (the NCCL ones first) */
static void free_layout(ol_grid *g) {
  ol_comm_free_groups(g);
  void **handles[3] = {&g->tp_comm, &g->dp_comm, &g->pp_comm};
  for (int i = 0; i < 3; i++)
    if (*handles[i]) {
      MPI_Comm_free(comm(*handles[i]));
      ol_free(*handles[i]);
      *handles[i] = NULL;
    }
}

int ol_grid_layout(ol_grid *g, int tp, int pp) {
  if (tp <= 0 || pp <= 0 || g->world_size % (tp * pp) != 0)
    return ol_error("--tp %d x --pp %d does not divide the %d ranks of this job", tp, pp,
                    g->world_size);
  free_layout(g);  // a layout made before
  g->tp = tp, g->pp = pp, g->dp = g->world_size / (tp * pp);
  g->tp_rank = g->world_rank % tp;
  g->dp_rank = g->world_rank / tp % g->dp;
  g->pp_rank = g->world_rank / (tp * g->dp);
  // MPI_Comm is an int or a pointer depending on the MPI; keep it in heap storage
  MPI_Comm *c[3];
  for (int i = 0; i < 3; i++) c[i] = ol_calloc(1, sizeof(MPI_Comm));
  MPI_Comm_split(MPI_COMM_WORLD, g->pp_rank * g->dp + g->dp_rank, g->tp_rank, c[0]);  // same stage+replica
  MPI_Comm_split(MPI_COMM_WORLD, g->pp_rank * tp + g->tp_rank, g->dp_rank, c[1]);    // same stage+shard
  MPI_Comm_split(MPI_COMM_WORLD, g->dp_rank * tp + g->tp_rank, g->pp_rank, c[2]);    // same replica+shard
  g->tp_comm = c[0], g->dp_comm = c[1], g->pp_comm = c[2];
  // the NCCL communicators of a device chosen before (ol_grid_use_device), agreed
  if (g->comm && ol_comm_collectives(g) == OL_PATH_NCCL)
    return ol_grid_agree(g, ol_comm_setup_groups(g));
  return OL_OK;
}

void ol_grid_finalize(ol_grid *g) {
  ol_free(g->pp_requests), ol_free(g->pp_inbox), ol_free(g->world_comm);
  g->pp_requests = g->pp_inbox = g->world_comm = NULL;
  free_layout(g);
  ol_comm_free(g);  // the staging buffers, with the backend that allocated them
  MPI_Finalize();
}

int ol_grid_agree(ol_grid *g, int status) {
  if (g->world_size == 1) return status;
  // the lowest failing rank tells everyone its message
  int mine = status == OL_OK ? g->world_size : g->world_rank, first;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (first == g->world_size) return OL_OK;
  char msg[1024];
  ol_strlcpy(msg, first == g->world_rank ? ol_last_error() : "", sizeof msg);
  MPI_Bcast(msg, sizeof msg, MPI_CHAR, first, MPI_COMM_WORLD);
  char prefix[32];
  snprintf(prefix, sizeof prefix, "rank %d: ", first);
  if (strncmp(msg, prefix, strlen(prefix)) == 0) return ol_error("%s", msg);  // agreed before
  return ol_error("%s%s", prefix, msg);
}

int ol_grid_any(ol_grid *g, int flag) {
  int any = flag != 0;
  if (g->world_size > 1) MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return any;
}

void ol_grid_max(ol_grid *g, double *x, int n) {
  if (g->world_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
}

void ol_grid_sum(ol_grid *g, double *x, int n) {
  if (g->world_size > 1) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void ol_grid_bcast_str(ol_grid *g, char *buf, size_t size) {
  if (g->world_size == 1) return;
  MPI_Bcast(buf, (int)size, MPI_CHAR, 0, MPI_COMM_WORLD);
  buf[size - 1] = '\0';
}

void ol_grid_bcast_i64(ol_grid *g, int64_t *x, int n, int root) {
  if (g->world_size > 1) MPI_Bcast(x, n, MPI_INT64_T, root, MPI_COMM_WORLD);
}

void ol_grid_bcast_f64(ol_grid *g, double *x, int n, int root) {
  if (g->world_size > 1) MPI_Bcast(x, n, MPI_DOUBLE, root, MPI_COMM_WORLD);
}

void *ol_grid_io_comm(ol_grid *g) { return g->world_size > 1 ? g->world_comm : NULL; }
