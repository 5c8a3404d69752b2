/* Data parallelism: replicas see disjoint samples; only the trainable gradients travel. */
#include <mpi.h>

#include "onelora/parallel/dp.h"

double ol_dp_step_bytes(const ol_params *p) { return (double)p->total * sizeof(float); }

void ol_dp_allreduce_grads(ol_grid *g, ol_params *p) {
  if (g->dp == 1 || p->total == 0) return;
  const size_t chunk = (size_t)1 << 30;  // MPI counts are ints
  for (size_t off = 0; off < p->total; off += chunk) {
    size_t n = p->total - off < chunk ? p->total - off : chunk;
    MPI_Allreduce(MPI_IN_PLACE, p->grad + off, (int)n, MPI_FLOAT, MPI_SUM, *(MPI_Comm *)g->dp_comm);
  }
  g->bytes[OL_COMM_DP] += ol_dp_step_bytes(p);
}

void ol_dp_sum(ol_grid *g, double *x, int n) {
  if (g->dp == 1) return;
  MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, *(MPI_Comm *)g->dp_comm);
}
