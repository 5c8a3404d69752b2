/* onelora io: model weights on disk (HDF5 model files, safetensors, Hugging Face directories):
 * opened, checked, read, mapped and written. Only io/ touches disk formats (docs/FORMATS.md);
 * every function returns OL_OK or records one line naming the file and the tensor at fault. */
#ifndef ONELORA_IO_WEIGHTS_H
#define ONELORA_IO_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/core/core.h"


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

#endif
