/* onelora parallel, private to src/parallel: how backend buffers travel (ol_grid_use_device).
 * Every collective and message of tp.c, dp.c and pipeline.c that touches a backend buffer goes
 * through these helpers, which take the grid's path:
 *   HOST        plain MPI on the buffers (host-visible backends: today's code, bit for bit)
 *   STAGED      the queue drained, the bytes copied into pinned host memory (to_host), MPI
 *               there, copied back (to_device)
 *   CUDA_AWARE  the queue drained, MPI on the device pointers
 *   NCCL        TP and DP collectives queued on the backend's stream (never for messages)
 * Host values (losses, norms, flags) keep their plain MPI calls where they are. */
#ifndef ONELORA_PARALLEL_COMM_H
#define ONELORA_PARALLEL_COMM_H

#include <mpi.h>
#include <stddef.h>

#include "onelora/backend/backend.h"
#include "onelora/parallel/grid.h"
#include "onelora/parallel/pipeline.h"

typedef enum { OL_PATH_HOST = 0, OL_PATH_STAGED, OL_PATH_CUDA_AWARE, OL_PATH_NCCL } ol_path;

/* The sub-communicator a collective runs over */
typedef enum { OL_GROUP_TP = 0, OL_GROUP_DP, OL_GROUP_COUNT } ol_group;

/* The path of the TP and DP collectives, and of the pipeline messages (never NCCL) */
ol_path ol_comm_collectives(ol_grid *g);
ol_path ol_comm_messages(ol_grid *g);
/* The backend whose buffers travel (ol_bk when ol_grid_use_device was not called) */
const ol_backend *ol_comm_backend(ol_grid *g);
/* A backend buffer as a CUDA-aware MPI is handed it: the device pointer itself, or, for the
 * test device cpu-staged, the emulator's memory behind its handle (ol_backend_staged_real). */
void *ol_comm_mpi_buffer(const void *p);

/* x (n elements of `size` bytes, a backend buffer) combined by op over the group, in place.
 * type MPI_FLOAT or MPI_DOUBLE, op MPI_SUM or MPI_MAX. */
void ol_comm_allreduce(ol_grid *g, ol_group group, void *x, size_t n, MPI_Datatype type,
                       size_t size, MPI_Op op);
/* out (TP * n) = every TP rank's x (n) in TP rank order; x and out distinct backend buffers */
void ol_comm_allgather_tp(ol_grid *g, const float *x, size_t n, float *out);

/* A backend buffer (ol_backend alloc) of at least `floats` floats, grown on demand and kept
 * until ol_grid_finalize: the packed partial gradients of ol_tp_reduce_partial_grads. */
float *ol_comm_packed(ol_grid *g, size_t floats);

/* The buffer a pipeline message leaves from or arrives in, of at least `bytes` bytes, grown on
 * demand and kept until ol_grid_finalize: one per activation slot (index 0 .. OL_PP_MAX_SLOTS -
 * 1, the staged sends) and the inbox (index OL_PP_MAX_SLOTS, every path's receives). Host
 * memory on the HOST path, pinned host memory when STAGED, a backend buffer when CUDA_AWARE.
 * Growing drops the old contents: only while no message uses it. */
#define OL_COMM_INBOX OL_PP_MAX_SLOTS
void *ol_comm_message_buffer(ol_grid *g, int index, size_t bytes);

/* Pinned host memory of at least `bytes` bytes (grown on demand, kept): the staging of
 * collectives and of generation's blocking messages. */
void *ol_comm_stage(ol_grid *g, size_t bytes);

/* Builds the NCCL communicators once the path is NCCL and the layout exists (ol_grid_layout
 * and ol_grid_use_device call it; collective over every rank). */
int ol_comm_setup_groups(ol_grid *g);
/* Frees the NCCL communicators (before the layout's MPI communicators go). */
void ol_comm_free_groups(ol_grid *g);
/* Frees everything of g->comm (ol_grid_finalize, before MPI_Finalize). */
void ol_comm_free(ol_grid *g);

#endif
