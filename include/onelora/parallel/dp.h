/* onelora parallel: data parallelism. */
#ifndef ONELORA_PARALLEL_DP_H
#define ONELORA_PARALLEL_DP_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/parallel/grid.h"
#include "onelora/peft/params.h"

/* ---- data parallel ---- */
/* Payload bytes one replica sends per step to reduce its gradients: the flat buffer, 4 bytes
 * per trainable value of its shard (DESIGN §5). */
double ol_dp_step_bytes(const ol_params *p);
/* Sums the flat gradient buffer over the DP replicas, in place, on the grid's communication
 * path (ol_grid_use_device): one MPI_Allreduce on host buffers, one ncclAllReduce, or staged. */
void ol_dp_allreduce_grads(ol_grid *g, ol_params *p);
/* Sums n doubles over the DP replicas, in place (losses, token counts). */
void ol_dp_sum(ol_grid *g, double *x, int n);

#endif
