/* onelora parallel: tensor parallelism (Megatron-style, DESIGN §5). */
#ifndef ONELORA_PARALLEL_TP_H
#define ONELORA_PARALLEL_TP_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/tp.h"
#include "onelora/parallel/grid.h"
#include "onelora/peft/params.h"

/* The TP group's regions (core/tp.h) over g's TP communicator, for ol_model_bind_tp; NULL when
 * TP = 1 (or g is NULL). Forward halves count their bytes as OL_COMM_TP_FWD, backward halves as
 * OL_COMM_TP_BWD. */
const ol_tp *ol_grid_tp(ol_grid *g);
/* Sums the gradients of the PARTIAL entries over TP (1LoRA's b on row-parallel layers), in
 * place, packed into one all-reduce. */
void ol_tp_reduce_partial_grads(struct ol_grid *g, ol_params *p);
/* Squared gradient norm with every value counted once over the TP ranks: sharded entries summed
 * over TP, replicated ones counted once. */
double ol_tp_grad_sumsq(struct ol_grid *g, const ol_params *p);

#endif
