/* Tensor parallelism (Megatron-style, DESIGN §5): the TP all-reduces of the row-parallel
 * forward, the column-parallel backward and the parallel cross-entropy, the partial-gradient
 * reduction, the grad-norm accounting and the shard gathering for checkpoints. */
#include <mpi.h>
#include <string.h>

#include "onelora/backend.h"
#include "onelora/parallel.h"

static int tp_active(const ol_grid *g) { return g && g->tp > 1; }
static MPI_Comm tp_comm(const ol_grid *g) { return *(MPI_Comm *)g->tp_comm; }

static void allreduce(ol_grid *g, void *x, size_t n, MPI_Datatype type, size_t size, MPI_Op op,
                      ol_comm_kind kind) {
  const size_t chunk = (size_t)1 << 30;  // MPI counts are ints
  for (size_t off = 0; off < n; off += chunk) {
    size_t c = n - off < chunk ? n - off : chunk;
    MPI_Allreduce(MPI_IN_PLACE, (char *)x + off * size, (int)c, type, op, tp_comm(g));
  }
  g->bytes[kind] += (double)n * (double)size;
}

void ol_tp_allreduce(ol_grid *g, float *x, size_t n, ol_comm_kind kind) {
  if (tp_active(g)) allreduce(g, x, n, MPI_FLOAT, sizeof(float), MPI_SUM, kind);
}

void ol_tp_allreduce_max(ol_grid *g, float *x, size_t n, ol_comm_kind kind) {
  if (tp_active(g)) allreduce(g, x, n, MPI_FLOAT, sizeof(float), MPI_MAX, kind);
}

void ol_tp_allreduce_double(ol_grid *g, double *x, size_t n, ol_comm_kind kind) {
  if (tp_active(g)) allreduce(g, x, n, MPI_DOUBLE, sizeof(double), MPI_SUM, kind);
}

void ol_tp_reduce_partial_grads(ol_grid *g, ol_params *p) {
  if (!tp_active(g)) return;
  // the partial gradients are scattered over the flat buffer (two small vectors per layer for
  // 1LoRA): pack them, reduce once, unpack
  size_t n = 0;
  for (size_t i = 0; i < p->count; i++) n += p->entries[i].tp_partial ? p->entries[i].numel : 0;
  if (n == 0) return;
  float *packed = ol_calloc(n, sizeof(float));  // (n) every partial gradient, in table order
  for (size_t i = 0, at = 0; i < p->count; i++)
    if (p->entries[i].tp_partial) {
      memcpy(packed + at, p->grad + p->entries[i].offset, p->entries[i].numel * sizeof(float));
      at += p->entries[i].numel;
    }
  allreduce(g, packed, n, MPI_FLOAT, sizeof(float), MPI_SUM, OL_COMM_TP_BWD);
  for (size_t i = 0, at = 0; i < p->count; i++)
    if (p->entries[i].tp_partial) {
      memcpy(p->grad + p->entries[i].offset, packed + at, p->entries[i].numel * sizeof(float));
      at += p->entries[i].numel;
    }
  ol_free(packed);
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

/* Places a (count0, count1) slice starting at (start0, start1) into a full (rows, cols) tensor. */
static void place(float *full, size_t cols, const float *slice, const int64_t *box) {
  for (int64_t r = 0; r < box[2]; r++)
    memcpy(full + (size_t)(box[0] + r) * cols + (size_t)box[1], slice + (size_t)(r * box[3]),
           (size_t)box[3] * sizeof(float));
}

int ol_tp_gather_state(ol_grid *g, const ol_params *p, const ol_frozen *gen, ol_params *all,
                       ol_frozen *all_gen) {
  memset(all, 0, sizeof *all);
  memset(all_gen, 0, sizeof *all_gen);
  const int root = g->tp_rank == 0;
  if (root) {
    for (size_t i = 0; i < p->count; i++)
      ol_params_declare(all, p->entries[i].name, p->entries[i].ndim, p->entries[i].shape);
    ol_params_alloc(all);
    for (size_t i = 0; i < gen->count; i++) {
      const ol_frozen_entry *e = &gen->entries[i];
      float *d = ol_frozen_add(all_gen, e->name, e->ndim, e->shape);
      memcpy(d, e->data, e->shape[0] * (e->ndim == 2 ? e->shape[1] : 1) * sizeof(float));
    }
  }
  int64_t *boxes = ol_calloc(4 * (size_t)g->tp, sizeof(int64_t));  // (tp, 4) start0 start1 count0 count1
  int *counts = ol_calloc((size_t)g->tp, sizeof(int)), *displs = ol_calloc((size_t)g->tp, sizeof(int));
  for (size_t i = 0; i < p->count; i++) {
    const ol_param_entry *e = &p->entries[i];
    const size_t cols = e->ndim == 2 ? e->shape[1] : 1;
    const float *bufs[3] = {p->data + e->offset, p->m + e->offset, p->v + e->offset};
    if (!ol_param_sharded(e)) {  // replicated: tp_rank 0's copy is the tensor
      if (root)
        for (int b = 0; b < 3; b++) {
          float *dst[3] = {all->data, all->m, all->v};
          memcpy(dst[b] + all->entries[i].offset, bufs[b], e->numel * sizeof(float));
        }
      continue;
    }
    int64_t box[4] = {(int64_t)e->start[0], e->ndim == 2 ? (int64_t)e->start[1] : 0,
                      (int64_t)e->count[0], e->ndim == 2 ? (int64_t)e->count[1] : 1};
    MPI_Gather(box, 4, MPI_INT64_T, boxes, 4, MPI_INT64_T, 0, tp_comm(g));
    size_t total = 0;
    for (int r = 0; root && r < g->tp; r++) {
      counts[r] = (int)(boxes[4 * r + 2] * boxes[4 * r + 3]);
      displs[r] = (int)total;
      total += (size_t)counts[r];
    }
    float *recv = root ? ol_calloc(total, sizeof(float)) : NULL;  // (sum of shard numel)
    for (int b = 0; b < 3; b++) {
      MPI_Gatherv(bufs[b], (int)e->numel, MPI_FLOAT, recv, counts, displs, MPI_FLOAT, 0, tp_comm(g));
      if (!root) continue;
      float *dst[3] = {all->data, all->m, all->v};
      for (int r = 0; r < g->tp; r++)
        place(dst[b] + all->entries[i].offset, cols, recv + displs[r], boxes + 4 * r);
    }
    ol_free(recv);
  }
  ol_free(boxes), ol_free(counts), ol_free(displs);
  return OL_OK;
}
