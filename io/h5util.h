/* Helpers shared by the HDF5 files of io/ (model, data, checkpoint). Private to io/.
 * Every function that can fail records a one-line error naming the file and the attribute or
 * dataset at fault, and returns OL_ERR; HDF5's own error printing is switched off. */
#ifndef ONELORA_IO_H5UTIL_H
#define ONELORA_IO_H5UTIL_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"

/* ---- limits on what a file may declare, checked before anything is sized by it ---- */
#define OL_H5_MAX_STR 4096                      /* bytes of a fixed-length string attribute */
#define OL_H5_MAX_DIM ((uint64_t)1 << 40)       /* one dimension of a dataset */
#define OL_H5_MAX_BYTES ((uint64_t)1 << 50)     /* a dataset's values (1 PiB) */
#define OL_H5_MAX_INFLATE 1032                  /* deflate's best ratio: compressed data may be
                                                 * this much larger than the file */

/* ---- files ---- */
/* Files are written in the HDF5 1.10 format (H5F_LIBVER_V110 and up): every metadata block but
 * the global heap of string values carries a checksum, so corrupt metadata is refused by HDF5
 * before it is decoded. Readers take any format. */
/* Opens an existing HDF5 file read-only; distinguishes missing, not-HDF5 and corrupt files. */
int ol_h5_open_read(const char *path, hid_t *file);
/* Creates (truncates) an HDF5 file for writing; its close fails while objects are still open. */
int ol_h5_create(const char *path, hid_t *file);
/* The same with the caller's file access list (e.g. MPI-IO); every rank of a parallel create
 * calls it. On failure a file left at path is the caller's to remove. */
int ol_h5_create_with(const char *path, hid_t fapl, hid_t *file);
/* Closes any HDF5 id (file, group, dataset, space, type, attribute, plist); ignores invalid ids. */
void ol_h5_free(hid_t id);
/* " (HDF5: <most specific message>)" from the current HDF5 error stack, or "" when empty.
 * Call it right after the failing HDF5 call: the next call clears the stack. */
void ol_h5_reason(char *buf, size_t size);

/* ---- durable replacement: "<path>.tmp" is written, then committed over path ---- */
char *ol_io_tmp_path(const char *path);               /* ol_free() it */
/* fsyncs tmp, renames it to path, fsyncs the directory. */
int ol_io_commit(const char *tmp, const char *path);

/* ---- scalar attributes of `loc` (errors name `file` and the attribute) ---- */
int ol_h5_get_i64(hid_t loc, const char *file, const char *name, int64_t *out);
int ol_h5_get_u64(hid_t loc, const char *file, const char *name, uint64_t *out);
int ol_h5_get_f64(hid_t loc, const char *file, const char *name, double *out);
int ol_h5_get_str(hid_t loc, const char *file, const char *name, char *buf, size_t size);
int ol_h5_put_i64(hid_t loc, const char *file, const char *name, int64_t v);
int ol_h5_put_u64(hid_t loc, const char *file, const char *name, uint64_t v);
int ol_h5_put_f64(hid_t loc, const char *file, const char *name, double v);
int ol_h5_put_str(hid_t loc, const char *file, const char *name, const char *v);

/* The model config as root attributes: `architecture` = "llama" plus the ol_config fields. */
int ol_h5_get_config(hid_t loc, const char *file, ol_config *cfg);
int ol_h5_put_config(hid_t loc, const char *file, const ol_config *cfg);

/* ---- datasets ---- */
/* Opens dataset `name` of loc; errors say "missing dataset '<what>'" and name `file`. */
int ol_h5_open_dataset(hid_t loc, const char *file, const char *name, const char *what,
                       hid_t *dset);
/* Reads dataset `dset`'s shape (ndim <= max_ndim dims, numel values; `what` names it in errors)
 * and checks it against the file before anything is sized by it: every dimension and the
 * values' bytes bounded without overflow, those bytes no larger than the file (OL_H5_MAX_INFLATE
 * times for compressed data), and every byte of uncompressed data stored. */
int ol_h5_dataset_extent(hid_t dset, const char *file, const char *what, int max_ndim, int *ndim,
                         size_t *dims, size_t *numel);
/* Checks that dataset `dset` (shown as `what`) has exactly the shape (ndim, shape), after the
 * checks of ol_h5_dataset_extent. */
int ol_h5_check_shape(hid_t dset, const char *file, const char *what, int ndim,
                      const size_t *shape);
/* Reads the selection fspace of a float dataset (f32/f64, or f16/bf16 stored as 2-byte floats)
 * into dst as f32; mspace describes dst and holds n elements. */
int ol_h5_read_floats(hid_t dset, hid_t fspace, hid_t mspace, size_t n, const char *file,
                      const char *what, float *dst);
/* Checks that the slice [start, start + count) lies inside `shape` (dataset `what` of `file`). */
int ol_h5_check_slice(const char *file, const char *what, int ndim, const size_t *shape,
                      const size_t *start, const size_t *count);
/* Reads the slice [start, start + count) of a float dataset into dst (prod(count) floats). */
int ol_h5_read_slice(hid_t dset, const char *file, const char *what, int ndim,
                     const size_t *start, const size_t *count, float *dst);
/* The IEEE half type as h5py/numpy write it (little-endian); close with H5Tclose. */
hid_t ol_h5_f16_type(void);
hid_t ol_h5_bf16_type(void);   /* bfloat16: sign 15, exponent 7..14 (bias 127), mantissa 0..6 */
/* The on-disk value type of a float dataset: little-endian f32, IEEE half or bfloat16. */
int ol_h5_dataset_dtype(hid_t dset, const char *file, const char *what, ol_dtype *out);
/* Checks that a name is usable as one dataset name (non-empty, no '/'). */
int ol_h5_check_name(const char *file, const char *name);

#endif
