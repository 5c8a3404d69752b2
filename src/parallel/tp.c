/* Tensor parallelism (Megatron-style, DESIGN §5): the collective halves of the TP regions that
 * model and adapter code marks (core/tp.h), the partial-gradient reduction and the grad-norm
 * accounting. */
#include <mpi.h>

#include "comm.h"
#include "onelora/backend/backend.h"
#include "onelora/parallel/tp.h"

static int tp_active(const ol_grid *g) { return g && g->tp > 1; }
static MPI_Comm tp_comm(const ol_grid *g) { return *(MPI_Comm *)g->tp_comm; }

/* x (n elements of `size` bytes, a backend buffer) reduced over TP in place, on the grid's
 * path (comm.h), its bytes counted as `kind` */
static void allreduce(ol_grid *g, void *x, size_t n, MPI_Datatype type, size_t size, MPI_Op op,
                      ol_comm_kind kind) {
  ol_comm_allreduce(g, OL_GROUP_TP, x, n, type, size, op);
  g->bytes[kind] += (double)n * (double)size;
}

/* ---- the regions of core/tp.h, over the grid's TP communicator ---- */
static ol_grid *grid_of(const ol_tp *tp) { return tp->grid; }

static void copy_to_backward(const ol_tp *tp, float *dx, size_t n) {
  allreduce(grid_of(tp), dx, n, MPI_FLOAT, sizeof(float), MPI_SUM, OL_COMM_TP_BWD);
}

static void reduce_from_forward(const ol_tp *tp, float *x, size_t n) {
  allreduce(grid_of(tp), x, n, MPI_FLOAT, sizeof(float), MPI_SUM, OL_COMM_TP_FWD);
}

/* Megatron's vocab-parallel cross-entropy: the row maxima, the target logits (zero on the
 * shards that do not hold the target) and the sums of exponentials are reduced over TP between
 * the backend's pieces (mx, zt, sum are backend buffers: the activations' scratch). */
static double vocab_cross_entropy(const ol_tp *tp, float *logits, const int32_t *targets,
                                  size_t n, size_t Vl, int64_t v0, float grad_scale, float *mx,
                                  float *zt, double *sum) {
  ol_grid *g = grid_of(tp);
  ol_bk->vp_ce_local(logits, targets, n, Vl, v0, mx, zt);
  allreduce(g, mx, n, MPI_FLOAT, sizeof(float), MPI_MAX, OL_COMM_TP_FWD);
  allreduce(g, zt, n, MPI_FLOAT, sizeof(float), MPI_SUM, OL_COMM_TP_FWD);
  ol_bk->vp_ce_sumexp(logits, mx, n, Vl, sum, grad_scale != 0.0f);
  allreduce(g, sum, n, MPI_DOUBLE, sizeof(double), MPI_SUM, OL_COMM_TP_FWD);
  if (grad_scale != 0.0f) ol_bk->vp_ce_grad(logits, targets, n, Vl, v0, sum, grad_scale);
  return ol_bk->vp_ce_loss(mx, zt, sum, n);
}

/* gather_from_tp: every rank's n floats, in TP rank order (the vocabulary shards' order). */
static void gather_forward(const ol_tp *tp, const float *x, size_t n, float *out) {
  ol_grid *g = grid_of(tp);
  OL_CHECK(n <= (size_t)INT32_MAX);
  ol_comm_allgather_tp(g, x, n, out);  // backend buffers x (n), out (TP * n)
  g->bytes[OL_COMM_TP_FWD] += (double)n * sizeof(float);
}

static const ol_tp_ops tp_regions = {copy_to_backward, reduce_from_forward, vocab_cross_entropy,
                                     gather_forward};

const ol_tp *ol_grid_tp(ol_grid *g) {
  if (!tp_active(g)) return NULL;
  g->tp_group.ops = &tp_regions;
  g->tp_group.grid = g;
  return &g->tp_group;
}

void ol_tp_reduce_partial_grads(ol_grid *g, ol_params *p) {
  if (!tp_active(g)) return;
  // the partial gradients are scattered over the flat buffer (two small vectors per layer for
  // 1LoRA): pack them (copies queued on the backend), reduce once, unpack
  size_t n = 0;
  for (size_t i = 0; i < p->count; i++) n += p->entries[i].place == OL_PLACE_PARTIAL ? p->entries[i].numel : 0;
  if (n == 0) return;
  float *packed = ol_comm_packed(g, n);  // (n) backend: every partial gradient, in table order
  for (size_t i = 0, at = 0; i < p->count; i++)
    if (p->entries[i].place == OL_PLACE_PARTIAL) {
      ol_bk->copy(packed + at, p->grad + p->entries[i].offset, p->entries[i].numel * sizeof(float));
      at += p->entries[i].numel;
    }
  allreduce(g, packed, n, MPI_FLOAT, sizeof(float), MPI_SUM, OL_COMM_TP_BWD);
  for (size_t i = 0, at = 0; i < p->count; i++)
    if (p->entries[i].place == OL_PLACE_PARTIAL) {
      ol_bk->copy(p->grad + p->entries[i].offset, packed + at, p->entries[i].numel * sizeof(float));
      at += p->entries[i].numel;
    }
}

double ol_tp_grad_sumsq(ol_grid *g, const ol_params *p) {
  if (!tp_active(g)) return ol_bk->sumsq(p->grad, p->total);
  double sq[2] = {0.0, 0.0};  // sharded, replicated
  for (size_t i = 0; i < p->count; i++) {
    const ol_param_entry *e = &p->entries[i];
    sq[ol_param_sharded(e) ? 0 : 1] += ol_bk->sumsq(p->grad + e->offset, e->numel);
  }
  MPI_Allreduce(MPI_IN_PLACE, &sq[0], 1, MPI_DOUBLE, MPI_SUM, tp_comm(g));
  return sq[0] + sq[1];  // replicated values are identical on every TP rank: counted once
}
