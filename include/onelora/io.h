/* onelora io: everything that touches disk. Only io/ links HDF5.
 * Formats are specified in docs/FORMATS.md. All functions return OL_OK or record a one-line
 * error (ol_error) that names the file and the dataset or attribute at fault. */
#ifndef ONELORA_IO_H
#define ONELORA_IO_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/config.h"
#include "onelora/core.h"

const char *ol_dtype_name(ol_dtype t);
int ol_dtype_parse(const char *s, ol_dtype *out);  /* "f32" | "f16" | "bf16" */

#define OL_MAX_DIMS 4

/* ---- model file (HDF5): root attributes = config, datasets at the root with HF names ---- */
typedef struct ol_h5model ol_h5model;

/* Opens an existing model file and reads + validates its config attributes. */
int ol_h5model_open(const char *path, ol_h5model **out, ol_config *cfg);
/* Reads the slice [start, start+count) of dataset `name` (f32, f16 or bf16) into dst as f32,
 * row-major. `shape` is the full shape the caller expects; a mismatch is an error naming the
 * dataset, the expected and the found shape. dst holds prod(count) floats. */
int ol_h5model_read(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst);
int ol_h5model_has(ol_h5model *m, const char *name);
/* Dataset `name`'s stored dtype (f32, f16 or bf16) and where its values sit in the file:
 * *offset is the file offset of its first byte when it is contiguous and unfiltered (as onelora
 * writes), else UINT64_MAX with the reason in why. */
int ol_h5model_locate(ol_h5model *m, const char *name, ol_dtype *dtype, uint64_t *offset,
                      char *why, size_t why_size);
/* An error naming the dataset unless it exists with this shape. */
int ol_h5model_check(ol_h5model *m, const char *name, int ndim, const size_t *shape);
void ol_h5model_close(ol_h5model *m);

/* Writes a new model file: written to "<path>.tmp", renamed over path by finish. */
int ol_h5model_create(const char *path, const ol_config *cfg, ol_h5model **out);
int ol_h5model_write(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                     const float *src, ol_dtype dtype);  /* f32, f16 or bf16 on disk; each
                                                          * dataset contiguous and unfiltered,
                                                          * so a reader of that dtype can map it */
/* Rows [r0, r0 + n) of a tensor being written (a row: every index after the first), as f32:
 * either a pointer to them or scratch (n, row) filled and returned. */
typedef const float *(*ol_rows_fn)(void *ctx, size_t r0, size_t n, float *scratch);
/* The same as ol_h5model_write, with the values produced a block of rows at a time (a few MiB)
 * by rows(ctx, ...): a tensor is written with one block's memory, whatever its size. */
int ol_h5model_write_rows(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                          ol_dtype dtype, ol_rows_fn rows, void *ctx);
int ol_h5model_finish(ol_h5model *m);                     /* closes; frees m even on error */

/* ---- a model's weights, whatever the format: what training, merging and converting read ---- */
/* A directory is a Hugging Face model (config.json, model.safetensors or the shards of
 * model.safetensors.index.json; F32/F16/BF16), anything else an onelora model file (HDF5).
 * Every JSON file and safetensors header is validated at open (docs/FORMATS.md). */
typedef struct ol_weights ol_weights;
int ol_weights_open(const char *path, ol_weights **out, ol_config *cfg);
/* 1 for a Hugging Face model with tie_word_embeddings: lm_head.weight is the embedding. */
int ol_weights_tied(const ol_weights *w);
/* An error naming the file and the tensor unless it is present with this shape. */
int ol_weights_check(ol_weights *w, const char *name, int ndim, const size_t *shape);
/* As ol_h5model_read: this rank's slice as f32, reading only its bytes. */
int ol_weights_read(ol_weights *w, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst);
/* A read-only mapping of part of a weights file. */
typedef struct {
  void *base;
  size_t length;
} ol_map;
/* Maps this rank's slice [start, start + count) of the 2-D tensor `name` (full shape `shape`)
 * read-only (MAP_SHARED: the ranks of a node share the page cache's one copy) when it is stored
 * in `dtype`, little-endian and contiguous: *ptr then points at element (start[0], start[1]) and
 * rows lie shape[1] values apart. When it cannot be mapped, *ptr = NULL (OL_OK) and `why` says
 * why; errors are for unreadable files only. */
int ol_weights_map(ol_weights *w, const char *name, const size_t *shape, const size_t *start,
                   const size_t *count, ol_dtype dtype, ol_map *map, const void **ptr, char *why,
                   size_t why_size);
void ol_unmap(ol_map *map);
/* The dtype tensor `name` is stored in. */
int ol_weights_dtype(ol_weights *w, const char *name, ol_dtype *out);
void ol_weights_close(ol_weights *w);

/* ---- data file (HDF5): datasets "train" and "val", 1-D uint16/uint32, attr vocab_size ---- */
typedef struct ol_dataset ol_dataset;
typedef enum { OL_SPLIT_TRAIN = 0, OL_SPLIT_VAL = 1 } ol_split;

int ol_dataset_open(const char *path, ol_dataset **out);
int64_t ol_dataset_vocab(const ol_dataset *d);
size_t ol_dataset_len(const ol_dataset *d, ol_split s);   /* number of tokens */
/* Reads tokens [start, start+count) of a split as int32. Any token >= vocab_size is an error. */
int ol_dataset_read(ol_dataset *d, ol_split s, size_t start, size_t count, int32_t *dst);
void ol_dataset_close(ol_dataset *d);
/* Writes a data file (tmp + rename). Tokens stored as uint16 when vocab_size <= 65536. */
int ol_dataset_write(const char *path, int64_t vocab_size, const int32_t *train, size_t n_train,
                     const int32_t *val, size_t n_val);

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

/* ---- metrics: JSON-lines log ---------------------------------------------------------------- */
typedef struct ol_metrics ol_metrics;
/* Truncates, or appends (a resumed run continues its log); NULL path = no log. */
int ol_metrics_open(const char *path, int append, ol_metrics **out);
/* Appends one JSON object. keys[i] -> values[i] (numbers); `kind` becomes {"kind": kind}. */
int ol_metrics_write(ol_metrics *m, const char *kind, int n, const char *const *keys,
                     const double *values);
void ol_metrics_close(ol_metrics *m);
/* Appends one line `row` to a CSV file, writing the `header` line first when the file is new
 * or empty. */
int ol_csv_append(const char *path, const char *header, const char *row);

/* ---- Hugging Face outputs: safetensors and config.json (docs/FORMATS.md) ------------------ */
/* One tensor of a safetensors file: its name and shape. */
typedef struct {
  const char *name;
  int ndim;
  size_t shape[OL_MAX_DIMS];
} ol_st_tensor;

typedef struct ol_safetensors ol_safetensors;
/* Creates "<path>.tmp" and writes the header for n tensors of one dtype (f32 or f16), whose
 * data then follows in the order given: offsets are laid out back to back in that order. */
int ol_safetensors_create(const char *path, const ol_st_tensor *tensors, size_t n, ol_dtype dtype,
                          ol_safetensors **out);
/* Appends the next declared tensor, which must be `name`; src holds its prod(shape) floats. */
int ol_safetensors_write(ol_safetensors *s, const char *name, const float *src);
/* Checks that every tensor was written, fsyncs and renames to path. Frees s even on error. */
int ol_safetensors_finish(ol_safetensors *s);
/* Abandons a writer without finishing: the tmp file is removed. */
void ol_safetensors_close(ol_safetensors *s);

/* Reading one safetensors file (docs/FORMATS.md, "Hugging Face input"). open validates the
 * whole header (length <= 100 MiB and the file, JSON object, dtype F32/F16/BF16, shape rank <=
 * OL_MAX_DIMS, prod(shape) * dtype size = end - begin, offsets inside the data, no overlaps);
 * errors read "FILE: tensor 'NAME': ...". read takes a 1-D or 2-D slice exactly like
 * ol_h5model_read, preads only its rows and converts them to f32. */
typedef struct ol_st_reader ol_st_reader;
int ol_st_open(const char *path, ol_st_reader **out);
int ol_st_has(const ol_st_reader *r, const char *name);
/* The bytes of all its tensors (disjoint, so at most the file's size). */
uint64_t ol_st_data_bytes(const ol_st_reader *r);
/* An error naming the file and the tensor unless it is present with this shape. */
int ol_st_check(const ol_st_reader *r, const char *name, int ndim, const size_t *shape);
/* Tensor `name`'s dtype and the file offset of its first byte; the file's path. */
int ol_st_locate(const ol_st_reader *r, const char *name, ol_dtype *dtype, uint64_t *offset);
const char *ol_st_path(const ol_st_reader *r);
int ol_st_read(ol_st_reader *r, const char *name, int ndim, const size_t *shape,
               const size_t *start, const size_t *count, float *dst);
void ol_st_close(ol_st_reader *r);

/* Writes a Hugging Face LlamaForCausalLM config.json for cfg (tmp + rename); dtype (f32 or f16)
 * becomes torch_dtype. */
int ol_hf_config_write(const char *path, const ol_config *cfg, ol_dtype dtype);
/* Creates directory `dir` and any missing parents; an existing directory is fine. */
int ol_io_make_dir(const char *dir);

#endif
