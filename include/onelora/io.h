/* onelora io: everything that touches disk. Only io/ links HDF5.
 * Formats are specified in docs/FORMATS.md. All functions return OL_OK or record a one-line
 * error (ol_error) that names the file and the dataset or attribute at fault. */
#ifndef ONELORA_IO_H
#define ONELORA_IO_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/config.h"
#include "onelora/core.h"

typedef enum { OL_DTYPE_F32 = 0, OL_DTYPE_F16 = 1, OL_DTYPE_BF16 = 2 } ol_dtype;
const char *ol_dtype_name(ol_dtype t);
int ol_dtype_parse(const char *s, ol_dtype *out);  /* "f32" | "f16" | "bf16" */

#define OL_MAX_DIMS 4

/* ---- model file (HDF5): root attributes = config, datasets at the root with HF names ---- */
typedef struct ol_h5model ol_h5model;

/* Opens an existing model file and reads + validates its config attributes. */
int ol_h5model_open(const char *path, ol_h5model **out, ol_config *cfg);
/* Reads the slice [start, start+count) of dataset `name` (f32 or f16 on disk) into dst as f32,
 * row-major. `shape` is the full shape the caller expects; a mismatch is an error naming the
 * dataset, the expected and the found shape. dst holds prod(count) floats. */
int ol_h5model_read(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst);
int ol_h5model_has(ol_h5model *m, const char *name);
void ol_h5model_close(ol_h5model *m);

/* Writes a new model file: written to "<path>.tmp", renamed over path by finish. */
int ol_h5model_create(const char *path, const ol_config *cfg, ol_h5model **out);
int ol_h5model_write(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                     const float *src, ol_dtype dtype);  /* dtype: f32 or f16 on disk */
int ol_h5model_finish(ol_h5model *m);                     /* closes; frees m even on error */

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
  uint64_t data_cursor;       /* samples consumed (global), for the data loader */
} ol_ckpt_meta;
#define OL_CKPT_VERSION 1

typedef enum { OL_GROUP_PARAMS = 0, OL_GROUP_ADAM_M, OL_GROUP_ADAM_V, OL_GROUP_FROZEN, OL_GROUP_COUNT } ol_ckpt_group;
const char *ol_ckpt_group_name(ol_ckpt_group g);  /* "params", "adam_m", "adam_v", "frozen" */

typedef struct ol_ckpt ol_ckpt;
/* Creates "<path>.tmp"; finish flushes, fsyncs, renames to path and fsyncs the directory. */
int ol_ckpt_create(const char *path, const ol_ckpt_meta *meta, ol_ckpt **out);
int ol_ckpt_write(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                  const float *src);
int ol_ckpt_finish(ol_ckpt *c);   /* frees c even on error; on error the tmp file is removed */

int ol_ckpt_open(const char *path, ol_ckpt **out, ol_ckpt_meta *meta);  /* checks `format` */
/* Number of datasets in group g, and the i-th one's name and shape (names sorted). */
int ol_ckpt_count(ol_ckpt *c, ol_ckpt_group g, size_t *n);
int ol_ckpt_info(ol_ckpt *c, ol_ckpt_group g, size_t i, char *name, size_t name_size, int *ndim,
                 size_t *shape);
/* Reads dataset `name` of group g; its shape must equal `shape`. */
int ol_ckpt_read(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                 float *dst);
void ol_ckpt_close(ol_ckpt *c);

/* ---- metrics: JSON-lines log ---------------------------------------------------------------- */
typedef struct ol_metrics ol_metrics;
int ol_metrics_open(const char *path, ol_metrics **out);   /* truncates; NULL path = no log */
/* Appends one JSON object. keys[i] -> values[i] (numbers); `kind` becomes {"kind": kind}. */
int ol_metrics_write(ol_metrics *m, const char *kind, int n, const char *const *keys,
                     const double *values);
void ol_metrics_close(ol_metrics *m);

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

/* Writes a Hugging Face LlamaForCausalLM config.json for cfg (tmp + rename); dtype (f32 or f16)
 * becomes torch_dtype. */
int ol_hf_config_write(const char *path, const ol_config *cfg, ol_dtype dtype);
/* Creates directory `dir` and any missing parents; an existing directory is fine. */
int ol_io_make_dir(const char *dir);

#endif
