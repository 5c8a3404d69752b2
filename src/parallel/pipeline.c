/* Pipeline parallelism: contiguous layer ranges per stage, micro-batches flowing between
 * neighbouring stages by MPI_Isend/MPI_Irecv, scheduled as 1F1B (or GPipe for comparison), and
 * the executor that runs a stage's schedule (as Megatron's schedules.py does). */
#include <mpi.h>
#include <string.h>

#include "comm.h"
#include "onelora/parallel/pipeline.h"

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

/* Waits for the slot's pending sends, before its buffers are reused or freed. */
static void pp_wait_send(ol_grid *g, int slot) {
  for (int dir = 0; dir < 2; dir++) MPI_Wait(request(g, slot, dir), MPI_STATUS_IGNORE);
}

/* Non-blocking send of n floats to the next (to_next = 1) or previous stage for micro-batch mb,
 * from the buffer x (a backend buffer) of activation slot `slot` (waits for that slot's previous
 * send first). On the messages' path (comm.h): from x itself (host; CUDA-aware, once the kernels
 * that wrote it have ended), or staged: copied into the slot's pinned buffer, which serves both
 * directions, so both of the slot's sends have ended first (the executor waits for them anyway
 * before the slot's next op). */
static void pp_send(ol_grid *g, int to_next, const float *x, size_t n, int mb, int slot) {
  MPI_Request *r = request(g, slot, to_next);
  MPI_Wait(r, MPI_STATUS_IGNORE);
  OL_CHECK(n <= (size_t)INT32_MAX);
  const void *from = x;
  const ol_path path = ol_comm_messages(g);
  if (path == OL_PATH_CUDA_AWARE) {
    ol_comm_backend(g)->sync();
    from = ol_comm_mpi_buffer(x);
  } else if (path == OL_PATH_STAGED) {
    pp_wait_send(g, slot);
    void *stage = ol_comm_message_buffer(g, slot, n * sizeof(float));  // (n) pinned
    ol_comm_backend(g)->sync();
    ol_comm_backend(g)->to_host(stage, x, n * sizeof(float));
    from = stage;
  }
  MPI_Isend(from, (int)n, MPI_FLOAT, g->pp_rank + (to_next ? 1 : -1), 2 * mb + to_next,
            pp_comm(g), r);
  g->bytes[OL_COMM_PP] += (double)n * sizeof(float);
}

/* The receive in flight: one at a time, into a buffer of the pipeline's own (the inbox:
 * ol_comm_message_buffer's, host, pinned or backend memory by the messages' path), so that it
 * can be posted before the slot it is meant for is free. Freed with the grid. */
typedef struct {
  MPI_Request request;
  size_t n;     /* floats of the posted receive; 0 when none is posted */
  void *buf;    /* (n) floats: where it arrives */
} inbox;

/* Non-blocking receive of n floats from the previous (from_prev = 1) or next stage for
 * micro-batch mb, into the inbox: it can be posted before its destination is free (one op
 * ahead), so that the transfer overlaps the current op. One at a time. */
static void pp_post_recv(ol_grid *g, int from_prev, size_t n, int mb) {
  inbox *in = g->pp_inbox;
  OL_CHECK(!in || in->n == 0);  // the previous receive was waited for
  OL_CHECK(n > 0 && n <= (size_t)INT32_MAX);
  if (!in) in = g->pp_inbox = ol_calloc(1, sizeof *in);
  in->buf = ol_comm_message_buffer(g, OL_COMM_INBOX, n * sizeof(float));  // (n) grown, kept
  in->n = n;
  // a forward activation from the previous stage was sent "to next" (dir 1), a gradient from
  // the next stage "to previous" (dir 0)
  void *into = ol_comm_messages(g) == OL_PATH_CUDA_AWARE ? ol_comm_mpi_buffer(in->buf) : in->buf;
  MPI_Irecv(into, (int)n, MPI_FLOAT, g->pp_rank + (from_prev ? -1 : 1), 2 * mb + from_prev,
            pp_comm(g), &in->request);
}

/* Waits for the posted receive and copies its n floats into x (a backend buffer), right before
 * x is used: memcpy on the host path, to_device when staged; when CUDA-aware a queued copy
 * between backend buffers, waited for, so that the next receive may overwrite the inbox. */
static void pp_wait_recv(ol_grid *g, float *x, size_t n) {
  inbox *in = g->pp_inbox;
  OL_CHECK(in && in->n == n);  // the receive this op expects was posted
  MPI_Wait(&in->request, MPI_STATUS_IGNORE);
  const ol_backend *bk = ol_comm_backend(g);
  switch (ol_comm_messages(g)) {
  case OL_PATH_STAGED:
    bk->to_device(x, in->buf, n * sizeof(float));
    break;
  case OL_PATH_CUDA_AWARE:
    bk->copy(x, in->buf, n * sizeof(float));
    bk->sync();
    break;
  default:
    memcpy(x, in->buf, n * sizeof(float));
  }
  in->n = 0;
}

/* Whether op runs: backwards only when the pass has them */
static int op_runs(ol_pp_op op, int backward) { return op.kind == 'F' || backward; }

/* Whether op receives from a neighbouring stage: its input (F) or d(output) (B) */
static int op_receives(const ol_pp_step *s, ol_pp_op op) {
  return op.kind == 'F' ? s->has_prev : s->has_next;
}

/* Posts the receive of the first op from index i on that runs, when it receives. */
static void post_next_recv(ol_grid *g, const ol_pp_op *ops, size_t n_ops, size_t i, int backward,
                           const ol_pp_step *s) {
  while (i < n_ops && !op_runs(ops[i], backward)) i++;
  if (i < n_ops && op_receives(s, ops[i])) pp_post_recv(g, ops[i].kind == 'F', s->n, ops[i].mb);
}

double ol_pp_run(ol_grid *g, const ol_pp_op *ops, size_t n_ops, int n_slots, int backward,
                 const ol_pp_step *s, void *ctx) {
  double loss = 0.0;
  post_next_recv(g, ops, n_ops, 0, backward, s);
  for (size_t i = 0; i < n_ops; i++) {
    const ol_pp_op op = ops[i];
    if (!op_runs(op, backward)) continue;
    const int slot = op.mb % n_slots;
    pp_wait_send(g, slot);  // the slot's buffers are about to be rewritten
    if (op_receives(s, op))
      pp_wait_recv(g, op.kind == 'F' ? s->input(ctx, slot) : s->d_output(ctx, slot), s->n);  // (n)
    post_next_recv(g, ops, n_ops, i + 1, backward, s);
    if (op.kind == 'F') {
      loss += s->forward(ctx, op.mb, slot);
      if (s->has_next) pp_send(g, 1, s->output(ctx, slot), s->n, op.mb, slot);  // (n)
    } else {
      s->backward(ctx, op.mb, slot);
      if (s->has_prev) pp_send(g, 0, s->d_input(ctx, slot), s->n, op.mb, slot);  // (n)
    }
  }
  for (int k = 0; k < n_slots; k++) pp_wait_send(g, k);
  return loss;
}

void ol_pp_sum(ol_grid *g, double *x, int n) {
  if (g->pp == 1) return;
  MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, pp_comm(g));
}

/* Generation moves one step's (n, D) residual stream at a time, and every stage waits for it
 * anyway: plain blocking messages, with a tag of their own (the executor's tags are 2 mb + dir). */
#define PP_GENERATE_TAG 0x7fff
/* x is a backend buffer: on the messages' path, staged through the grid's pinned buffer. */
void ol_pp_send_next(ol_grid *g, const float *x, size_t n) {
  OL_CHECK(g->pp_rank + 1 < g->pp && n <= (size_t)INT32_MAX);
  const ol_backend *bk = ol_comm_backend(g);
  const void *from = x;
  const ol_path path = ol_comm_messages(g);
  if (path == OL_PATH_CUDA_AWARE) {
    bk->sync();  // the kernels that wrote x have ended
    from = ol_comm_mpi_buffer(x);
  } else if (path == OL_PATH_STAGED) {
    void *stage = ol_comm_stage(g, n * sizeof(float));  // (n) pinned
    bk->sync();
    bk->to_host(stage, x, n * sizeof(float));
    from = stage;
  }
  MPI_Send(from, (int)n, MPI_FLOAT, g->pp_rank + 1, PP_GENERATE_TAG, pp_comm(g));
  g->bytes[OL_COMM_PP] += (double)n * sizeof(float);
}

void ol_pp_recv_prev(ol_grid *g, float *x, size_t n) {
  OL_CHECK(g->pp_rank > 0 && n <= (size_t)INT32_MAX);
  const ol_backend *bk = ol_comm_backend(g);
  const ol_path path = ol_comm_messages(g);
  void *into = x;
  if (path == OL_PATH_CUDA_AWARE) {
    bk->sync();  // no queued kernel still uses x
    into = ol_comm_mpi_buffer(x);
  }
  if (path == OL_PATH_STAGED) into = ol_comm_stage(g, n * sizeof(float));  // (n) pinned
  MPI_Recv(into, (int)n, MPI_FLOAT, g->pp_rank - 1, PP_GENERATE_TAG, pp_comm(g),
           MPI_STATUS_IGNORE);
  if (path == OL_PATH_STAGED) bk->to_device(x, into, n * sizeof(float));
}
