/* The process grid. For now one rank; DP x PP x TP communicators come with the parallel layer. */
#include <mpi.h>

#include "onelora/core.h"
#include "onelora/parallel.h"

void ol_grid_init(int *argc, char ***argv, ol_grid *g) {
  int provided;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g->world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g->world_size);
  ol_log_set_rank(g->world_rank);
}

void ol_grid_finalize(void) { MPI_Finalize(); }

void ol_grid_abort(int code) { MPI_Abort(MPI_COMM_WORLD, code); }

int ol_grid_world_size(void) {
  int started = 0, size = 1;
  MPI_Initialized(&started);
  if (started) MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}
