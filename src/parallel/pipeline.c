/* Pipeline parallelism: contiguous layer ranges per stage, micro-batches flowing between
 * neighbouring stages by MPI_Isend/MPI_Irecv, scheduled as 1F1B (or GPipe for comparison). */
#include <mpi.h>
#include <string.h>

#include "onelora/parallel.h"

static MPI_Comm pp_comm(const ol_grid *g) { return *(MPI_Comm *)g->pp_comm; }

size_t ol_pp_schedule(int pp, int pp_rank, int M, int gpipe, ol_pp_op *ops) {
  size_t n = 0;
  if (gpipe) {  // every forward, then every backward: M activations in flight
    for (int i = 0; i < M; i++) ops[n++] = (ol_pp_op){'F', i};
    for (int i = 0; i < M; i++) ops[n++] = (ol_pp_op){'B', i};
    return n;
  }
  // 1F1B: warm up with the forwards the later stages need, then alternate, then drain
  int warmup = pp - pp_rank - 1 < M ? pp - pp_rank - 1 : M;
  for (int i = 0; i < warmup; i++) ops[n++] = (ol_pp_op){'F', i};
  for (int i = 0; i < M - warmup; i++) {
    ops[n++] = (ol_pp_op){'F', warmup + i};
    ops[n++] = (ol_pp_op){'B', i};
  }
  for (int i = M - warmup; i < M; i++) ops[n++] = (ol_pp_op){'B', i};
  return n;
}

int ol_pp_slots(int pp, int pp_rank, int M, int gpipe) {
  int in_flight = gpipe ? M : pp - pp_rank;
  return in_flight < M ? in_flight : M;
}

/* One request per (slot, direction), so a slot's buffer is reused only after its send ended. */
static MPI_Request *request(ol_grid *g, int slot, int dir) {
  if (!g->pp_requests) {
    g->pp_requests = ol_calloc(2 * OL_PP_MAX_SLOTS, sizeof(MPI_Request));
    for (int i = 0; i < 2 * OL_PP_MAX_SLOTS; i++) ((MPI_Request *)g->pp_requests)[i] = MPI_REQUEST_NULL;
  }
  OL_CHECK(slot >= 0 && slot < OL_PP_MAX_SLOTS);
  return (MPI_Request *)g->pp_requests + 2 * slot + dir;
}

void ol_pp_send(ol_grid *g, int to_next, const float *x, size_t n, int mb, int slot) {
  MPI_Request *r = request(g, slot, to_next);
  MPI_Wait(r, MPI_STATUS_IGNORE);
  OL_CHECK(n <= (size_t)INT32_MAX);
  MPI_Isend(x, (int)n, MPI_FLOAT, g->pp_rank + (to_next ? 1 : -1), 2 * mb + to_next, pp_comm(g), r);
  g->bytes[OL_COMM_PP] += (double)n * sizeof(float);
}

void ol_pp_wait_send(ol_grid *g, int slot) {
  for (int dir = 0; dir < 2; dir++) MPI_Wait(request(g, slot, dir), MPI_STATUS_IGNORE);
}

/* The receive in flight: one at a time, into a buffer of the pipeline's own (the inbox), so that
 * it can be posted before the slot it is meant for is free. One allocation, freed with the grid. */
typedef struct {
  MPI_Request request;
  size_t cap;   /* floats the buffer holds */
  size_t n;     /* floats of the posted receive; 0 when none is posted */
  float buf[];  /* (cap) */
} inbox;

void ol_pp_post_recv(ol_grid *g, int from_prev, size_t n, int mb) {
  inbox *in = g->pp_inbox;
  OL_CHECK(!in || in->n == 0);  // the previous receive was waited for
  OL_CHECK(n > 0 && n <= (size_t)INT32_MAX);
  if (!in || in->cap < n) {
    ol_free(in);
    in = g->pp_inbox = ol_calloc(1, sizeof *in + n * sizeof(float));
    in->cap = n;
  }
  in->n = n;
  // a forward activation from the previous stage was sent "to next" (dir 1), a gradient from
  // the next stage "to previous" (dir 0)
  MPI_Irecv(in->buf, (int)n, MPI_FLOAT, g->pp_rank + (from_prev ? -1 : 1), 2 * mb + from_prev,
            pp_comm(g), &in->request);
}

void ol_pp_wait_recv(ol_grid *g, float *x, size_t n) {
  inbox *in = g->pp_inbox;
  OL_CHECK(in && in->n == n);  // the receive this op expects was posted
  MPI_Wait(&in->request, MPI_STATUS_IGNORE);
  memcpy(x, in->buf, n * sizeof(float));
  in->n = 0;
}

void ol_pp_sum(ol_grid *g, double *x, int n) {
  if (g->pp == 1) return;
  MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, pp_comm(g));
}

/* ---- gathering the trainable state of every stage on stage 0 (for checkpoints) ---------- */

typedef struct {
  char name[128];
  int64_t ndim, shape[2], numel;
} wire_entry;

static void send_tables(ol_grid *g, const ol_params *p, const ol_frozen *gen) {
  MPI_Comm c = pp_comm(g);
  int64_t counts[2] = {(int64_t)p->count, (int64_t)gen->count};
  MPI_Send(counts, 2, MPI_INT64_T, 0, 0, c);
  for (size_t i = 0; i < p->count + gen->count; i++) {
    wire_entry w = {0};
    int is_param = i < p->count;
    const ol_param_entry *e = is_param ? &p->entries[i] : NULL;
    const ol_frozen_entry *f = is_param ? NULL : &gen->entries[i - p->count];
    ol_strlcpy(w.name, is_param ? e->name : f->name, sizeof w.name);
    w.ndim = is_param ? e->ndim : f->ndim;
    for (int d = 0; d < w.ndim; d++) w.shape[d] = (int64_t)(is_param ? e->shape[d] : f->shape[d]);
    w.numel = is_param ? (int64_t)e->numel : w.shape[0] * (w.ndim == 2 ? w.shape[1] : 1);
    MPI_Send(&w, sizeof w, MPI_BYTE, 0, 1, c);
    if (is_param) {
      const float *bufs[3] = {p->data + e->offset, p->m + e->offset, p->v + e->offset};
      for (int b = 0; b < 3; b++) MPI_Send(bufs[b], (int)w.numel, MPI_FLOAT, 0, 2, c);
    } else {
      MPI_Send(f->data, (int)w.numel, MPI_FLOAT, 0, 2, c);
    }
  }
}

int ol_pp_gather_state(ol_grid *g, const ol_params *p, const ol_frozen *gen, ol_params *all,
                       ol_frozen *all_gen) {
  memset(all, 0, sizeof *all);
  memset(all_gen, 0, sizeof *all_gen);
  if (g->pp_rank != 0) {
    send_tables(g, p, gen);
    return OL_OK;
  }
  // stage 0: its own entries, then each later stage's, in stage (= model) order
  typedef struct { int64_t counts[2]; wire_entry *w; float **bufs; } stage_tables;
  stage_tables *st = ol_calloc((size_t)g->pp, sizeof *st);
  for (int s = 1; s < g->pp; s++) {
    MPI_Recv(st[s].counts, 2, MPI_INT64_T, s, 0, pp_comm(g), MPI_STATUS_IGNORE);
    size_t n = (size_t)(st[s].counts[0] + st[s].counts[1]);
    st[s].w = ol_calloc(n, sizeof(wire_entry));
    st[s].bufs = ol_calloc(3 * n, sizeof(float *));
    for (size_t i = 0; i < n; i++) {
      wire_entry *w = &st[s].w[i];
      MPI_Recv(w, sizeof *w, MPI_BYTE, s, 1, pp_comm(g), MPI_STATUS_IGNORE);
      int nb = i < (size_t)st[s].counts[0] ? 3 : 1;
      for (int b = 0; b < nb; b++) {
        st[s].bufs[3 * i + b] = ol_calloc((size_t)w->numel, sizeof(float));
        MPI_Recv(st[s].bufs[3 * i + b], (int)w->numel, MPI_FLOAT, s, 2, pp_comm(g), MPI_STATUS_IGNORE);
      }
    }
  }
  for (size_t i = 0; i < p->count; i++) ol_params_declare(all, p->entries[i].name, p->entries[i].ndim, p->entries[i].shape);
  for (int s = 1; s < g->pp; s++)
    for (int64_t i = 0; i < st[s].counts[0]; i++) {
      size_t shape[2] = {(size_t)st[s].w[i].shape[0], (size_t)st[s].w[i].shape[1]};
      ol_params_declare(all, st[s].w[i].name, (int)st[s].w[i].ndim, shape);
    }
  ol_params_alloc(all);
  size_t k = 0;
  for (size_t i = 0; i < p->count; i++, k++) {
    const ol_param_entry *e = &p->entries[i];
    size_t o = all->entries[k].offset;
    memcpy(all->data + o, p->data + e->offset, e->numel * sizeof(float));
    memcpy(all->m + o, p->m + e->offset, e->numel * sizeof(float));
    memcpy(all->v + o, p->v + e->offset, e->numel * sizeof(float));
  }
  for (int s = 1; s < g->pp; s++)
    for (int64_t i = 0; i < st[s].counts[0]; i++, k++) {
      size_t o = all->entries[k].offset, n = all->entries[k].numel;
      memcpy(all->data + o, st[s].bufs[3 * i], n * sizeof(float));
      memcpy(all->m + o, st[s].bufs[3 * i + 1], n * sizeof(float));
      memcpy(all->v + o, st[s].bufs[3 * i + 2], n * sizeof(float));
    }
  // generated frozen tensors: each name once (VeRA's shared matrices exist on every stage)
  for (size_t i = 0; i < gen->count; i++) {
    const ol_frozen_entry *e = &gen->entries[i];
    float *d = ol_frozen_add(all_gen, e->name, e->ndim, e->shape);
    memcpy(d, e->data, e->shape[0] * (e->ndim == 2 ? e->shape[1] : 1) * sizeof(float));
  }
  for (int s = 1; s < g->pp; s++)
    for (int64_t i = st[s].counts[0]; i < st[s].counts[0] + st[s].counts[1]; i++) {
      size_t shape[2] = {(size_t)st[s].w[i].shape[0], (size_t)st[s].w[i].shape[1]};
      float *d = ol_frozen_add(all_gen, st[s].w[i].name, (int)st[s].w[i].ndim, shape);
      if (d) memcpy(d, st[s].bufs[3 * i], (size_t)st[s].w[i].numel * sizeof(float));
    }
  for (int s = 1; s < g->pp; s++) {
    size_t n = (size_t)(st[s].counts[0] + st[s].counts[1]);
    for (size_t i = 0; i < 3 * n; i++) ol_free(st[s].bufs[i]);
    ol_free(st[s].bufs), ol_free(st[s].w);
  }
  ol_free(st);
  return OL_OK;
}
