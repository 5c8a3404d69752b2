/* onelora io: the checkpoint file format (HDF5, DESIGN §6). */
#ifndef ONELORA_IO_CHECKPOINT_H
#define ONELORA_IO_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/core/core.h"

/* ---- checkpoint file (HDF5), DESIGN §6 ---------------------------------------------------- */
typedef struct {
  int64_t version;            /* OL_CKPT_VERSION */
  int64_t step;               /* optimizer steps completed */
  char method[128];           /* e.g. "1lora,norms" */
  char targets[128];          /* e.g. "all" or "q,k,v" */
  ol_config cfg;
  int64_t tp, pp, dp;         /* layout at write time */
  uint64_t seed;
  double loss;                /* train loss of the last step */
  /* trainer state needed for an exact resume */
  int64_t rank, alpha_x1000;  /* reserved for methods; rank = adapter rank, alpha scaled by 1000 */
  /* the data loader's state: the order is a counter-based function of (seed, shuffle, sample),
   * so the samples consumed and the batch geometry are all of it (there is no other RNG
   * state: generated tensors are stored in group `frozen`) */
  uint64_t data_cursor;       /* samples consumed (global) = step * global_batch */
  int64_t global_batch;       /* sequences per step, micro_batch * micro_batches * dp */
  int64_t seq_len;            /* tokens per sequence */
  int64_t shuffle;            /* 1 = shuffled order, 0 = --no-shuffle */
} ol_ckpt_meta;
#define OL_CKPT_VERSION 2

typedef enum { OL_GROUP_PARAMS = 0, OL_GROUP_ADAM_M, OL_GROUP_ADAM_V, OL_GROUP_FROZEN, OL_GROUP_COUNT } ol_ckpt_group;
const char *ol_ckpt_group_name(ol_ckpt_group g);  /* "params", "adam_m", "adam_v", "frozen" */

typedef struct ol_ckpt ol_ckpt;
/* Writing. Creates "<path>.tmp". With mpi_comm (an MPI_Comm *) the file is written by every
 * rank of that communicator with MPI-IO: each rank calls every function below with the same
 * names, shapes and chunks in the same order, each with its own slice (possibly empty). With
 * NULL one process writes it. */
int ol_ckpt_create(const char *path, const ol_ckpt_meta *meta, void *mpi_comm, ol_ckpt **out);
/* Creates dataset `name` of group g at its full logical `shape` and writes this rank's slice
 * [start, start + count) from src (prod(count) floats; a zero count writes nothing). `chunk`
 * is the chunk shape (a shard's extent, so that shards are whole chunks), NULL = the shape.
 * Every dataset gets the Fletcher32 checksum filter. A parallel writer's callers agree on the
 * outcome of each call before the next (a rank that failed alone would leave the others
 * waiting in the next collective). */
int ol_ckpt_write_slice(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim,
                        const size_t *shape, const size_t *chunk, const size_t *start,
                        const size_t *count, const float *src);
/* The whole tensor from one process. */
int ol_ckpt_write(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                  const float *src);
/* Flushes (under MPI-IO: syncs every rank's part) and closes the temporary file; frees c.
 * Collective for a parallel writer. The file is not yet visible: see ol_ckpt_commit. */
int ol_ckpt_close_written(ol_ckpt *c);
/* One process, after create and before any write: reserves `bytes` of disk for the temporary
 * file (fallocate, keeping its size), so that a full disk fails here, cleanly, rather than
 * inside a collective write, from which parallel HDF5 cannot recover. Where the file system
 * cannot reserve, the free space is checked instead. */
int ol_ckpt_reserve(const char *path, size_t bytes);
/* Every writing process, before the collective writes: an error when its own file size limit
 * (RLIMIT_FSIZE) is below `bytes`. fallocate ignores that limit, and a write past it would fail
 * with EFBIG on that rank alone, inside HDF5's collective calls, where the others would wait. */
int ol_ckpt_check_size_limit(const char *path, size_t bytes);
/* Makes a closed temporary file the checkpoint (giving back the unused reservation): fsync, rename to path, fsync the directory.
 * Called by one process, once every writer closed successfully. */
int ol_ckpt_commit(const char *path);
/* Removes path's temporary file, if any. */
void ol_ckpt_discard(const char *path);
/* One process: close_written + commit, and discard on failure; frees c. */
int ol_ckpt_finish(ol_ckpt *c);

int ol_ckpt_open(const char *path, ol_ckpt **out, ol_ckpt_meta *meta);  /* checks `format` */
/* Number of datasets in group g, and the i-th one's name and shape (names sorted). */
int ol_ckpt_count(ol_ckpt *c, ol_ckpt_group g, size_t *n);
int ol_ckpt_info(ol_ckpt *c, ol_ckpt_group g, size_t i, char *name, size_t name_size, int *ndim,
                 size_t *shape);
/* Reads dataset `name` of group g; its shape must equal `shape`. Reading a whole dataset
 * verifies every chunk's checksum. */
int ol_ckpt_read(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                 float *dst);
/* Reads the slice [start, start + count) of dataset `name` (full shape `shape`) into dst. */
int ol_ckpt_read_slice(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim,
                       const size_t *shape, const size_t *start, const size_t *count, float *dst);
void ol_ckpt_close(ol_ckpt *c);

/* The checkpoint directory: DIR/step-%08lld.h5 (DESIGN §6). */
void ol_ckpt_path(char *buf, size_t size, const char *dir, int64_t step);
/* The steps of the complete checkpoints in dir (temporary files ignored), ascending; *steps is
 * ol_free'd by the caller. A missing directory holds none. */
int ol_ckpt_list(const char *dir, int64_t **steps, size_t *n);
/* Deletes all but the newest `keep` checkpoints (keep = 0 keeps all), and the temporary files
 * that writes which died left behind, older than the newest complete checkpoint. */
int ol_ckpt_prune(const char *dir, size_t keep);

#endif
