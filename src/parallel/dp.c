/* Data parallelism: replicas see disjoint samples; only the trainable gradients travel. */
#include <mpi.h>

#include "comm.h"
#include "onelora/parallel/dp.h"

double ol_dp_step_bytes(const ol_params *p) { return (double)p->total * sizeof(float); }

void ol_dp_allreduce_grads(ol_grid *g, ol_params *p) {
  if (g->dp == 1 || p->total == 0) return;
  // p->grad (total) is a backend buffer: on the grid's path (comm.h)
  ol_comm_allreduce(g, OL_GROUP_DP, p->grad, p->total, MPI_FLOAT, sizeof(float), MPI_SUM);
  g->bytes[OL_COMM_DP] += ol_dp_step_bytes(p);
}

void ol_dp_sum(ol_grid *g, double *x, int n) {
  if (g->dp == 1) return;
  MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, *(MPI_Comm *)g->dp_comm);
}
