/* Model files (DESIGN §6): the config as root attributes, one f32, f16 or bf16 dataset per tensor
 * at the root under its Hugging Face name. Readers take hyperslabs so a rank reads only its
 * shard; writers go through "<path>.tmp" and a rename. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "h5util.h"
#include "onelora/core/core.h"
#include "onelora/io/weights.h"

/* Datasets are written (and 2-byte ones rounded) this many elements at a time. */
#define WRITE_BLOCK ((size_t)1 << 22)

struct ol_h5model {
  hid_t file;
  char *path;  /* the name the user gave */
  char *tmp;   /* "<path>.tmp" while writing; NULL for a reader */
  /* A writer's block buffers, kept from one dataset to the next: allocating them per dataset
   * fragments the heap between HDF5's own allocations (a 7B init grew by 100 MB a layer). */
  float *block;        /* (block_n) rows as f32 */
  uint16_t *block_f16; /* (block_n) the same rounded to f16 or bf16, once such a dataset is written */
  size_t block_n;
};

static char *str_dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = ol_calloc(n, 1);
  memcpy(d, s, n);
  return d;
}

static ol_h5model *model_new(const char *path, hid_t file, char *tmp) {
  ol_h5model *m = ol_calloc(1, sizeof *m);
  m->file = file;
  m->path = str_dup(path);
  m->tmp = tmp;
  return m;
}

static void model_free(ol_h5model *m) {
  ol_free(m->block);
  ol_free(m->block_f16);
  ol_free(m->path);
  ol_free(m->tmp);
  ol_free(m);
}

/* ---- reading ---------------------------------------------------------------------------- */

/* A model is built (allocated) from its config before any tensor is read, so the config must
 * describe a model the file can hold: at least one byte per value of the embedding and the
 * layers' projections (f16 takes 2, f32 4; the slack admits compressed files). */
static int check_config_fits(hid_t file, const char *path, const ol_config *c) {
  uint64_t values = ol_config_min_values(c);
  hsize_t size = 0;
  if (H5Fget_filesize(file, &size) < 0) return ol_error("%s: cannot read the file's size", path);
  if (values > size)
    return ol_error("%s: the config (dim %lld, %lld layers, ffn %lld, vocab %lld) describes %llu "
                    "weights, more than the file's %llu bytes hold: the file is truncated or "
                    "corrupt", path, (long long)c->dim, (long long)c->n_layers,
                    (long long)c->ffn_dim, (long long)c->vocab_size, (unsigned long long)values,
                    (unsigned long long)size);
  return OL_OK;
}

int ol_h5model_open(const char *path, ol_h5model **out, ol_config *cfg) {
  *out = NULL;
  hid_t file;
  OL_TRY(ol_h5_open_read(path, &file));
  int rc = ol_h5_get_config(file, path, cfg);
  if (rc == OL_OK) rc = ol_config_validate(cfg, path);
  if (rc == OL_OK) rc = check_config_fits(file, path, cfg);
  if (rc != OL_OK) {
    ol_h5_free(file);
    return rc;
  }
  *out = model_new(path, file, NULL);
  return OL_OK;
}

int ol_h5model_has(ol_h5model *m, const char *name) {
  if (H5Lexists(m->file, name, H5P_DEFAULT) <= 0) return 0;
  hid_t obj = H5Oopen(m->file, name, H5P_DEFAULT);
  int is_dataset = obj >= 0 && H5Iget_type(obj) == H5I_DATASET;
  ol_h5_free(obj);
  return is_dataset;
}

int ol_h5model_check(ol_h5model *m, const char *name, int ndim, const size_t *shape) {
  hid_t dset;
  OL_TRY(ol_h5_open_dataset(m->file, m->path, name, name, &dset));
  int rc = ol_h5_check_shape(dset, m->path, name, ndim, shape);
  ol_h5_free(dset);
  return rc;
}

int ol_h5model_locate(ol_h5model *m, const char *name, ol_dtype *dtype, uint64_t *offset,
                      char *why, size_t why_size) {
  *offset = UINT64_MAX;
  hid_t dset;
  OL_TRY(ol_h5_open_dataset(m->file, m->path, name, name, &dset));
  int rc = ol_h5_dataset_dtype(dset, m->path, name, dtype);
  hid_t dcpl = rc == OL_OK ? H5Dget_create_plist(dset) : H5I_INVALID_HID;
  hid_t fcpl = rc == OL_OK ? H5Fget_create_plist(m->file) : H5I_INVALID_HID;
  hsize_t userblock = 0;
  if (rc != OL_OK) {
  } else if (dcpl < 0 || fcpl < 0 || H5Pget_userblock(fcpl, &userblock) < 0) {
    rc = ol_error("%s: dataset '%s': cannot read its storage properties", m->path, name);
  } else if (H5Pget_layout(dcpl) != H5D_CONTIGUOUS) {
    snprintf(why, why_size, "dataset '%s' is chunked", name);
  } else if (H5Pget_nfilters(dcpl) != 0) {
    snprintf(why, why_size, "dataset '%s' is filtered", name);
  } else {
    haddr_t addr = H5Dget_offset(dset);
    if (addr == HADDR_UNDEF) snprintf(why, why_size, "dataset '%s' has no storage", name);
    else *offset = (uint64_t)addr + (uint64_t)userblock;
  }
  ol_h5_free(fcpl);
  ol_h5_free(dcpl);
  ol_h5_free(dset);
  return rc;
}

int ol_h5model_read(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst) {
  OL_CHECK(m && !m->tmp);
  OL_CHECK(ndim >= 1 && ndim <= OL_MAX_DIMS);
  OL_TRY(ol_h5_check_slice(m->path, name, ndim, shape, start, count));
  hid_t dset;
  OL_TRY(ol_h5_open_dataset(m->file, m->path, name, name, &dset));
  int rc = ol_h5_check_shape(dset, m->path, name, ndim, shape);
  if (rc == OL_OK) rc = ol_h5_read_slice(dset, m->path, name, ndim, start, count, dst);
  ol_h5_free(dset);
  return rc;
}

/* ---- writing ---------------------------------------------------------------------------- */

int ol_h5model_create(const char *path, const ol_config *cfg, ol_h5model **out) {
  *out = NULL;
  OL_TRY(ol_config_validate(cfg, path));
  char *tmp = ol_io_tmp_path(path);
  hid_t file;
  int rc = ol_h5_create(tmp, &file);
  if (rc == OL_OK) {
    rc = ol_h5_put_config(file, path, cfg);
    if (rc != OL_OK) {
      ol_h5_free(file);
      unlink(tmp);
    }
  }
  if (rc != OL_OK) {
    ol_free(tmp);
    return rc;
  }
  *out = model_new(path, file, tmp);
  return OL_OK;
}

/* Writes the dataset a block of whole rows (dim 0) at a time, each block from rows() and, for
 * f16 and bf16 (`half`), rounded to 2 bytes: memory stays one block, in buffers that m keeps for
 * its next dataset. */
static int write_blocks(ol_h5model *m, hid_t dset, hid_t ftype, int ndim, const hsize_t *dims,
                        ol_dtype dtype, ol_rows_fn rows, void *ctx) {
  const int half = dtype != OL_DTYPE_F32;
  size_t row = 1;  /* elements per index of dim 0 */
  for (int i = 1; i < ndim; i++) row *= (size_t)dims[i];
  size_t rows_per = row >= WRITE_BLOCK ? 1 : WRITE_BLOCK / row;
  if (rows_per > dims[0]) rows_per = (size_t)dims[0];
  if (rows_per * row > m->block_n) {  /* grows to one block (or one longer row) at most */
    ol_free(m->block);
    ol_free(m->block_f16);
    m->block_n = rows_per * row;
    m->block = ol_calloc(m->block_n, sizeof *m->block);
    m->block_f16 = NULL;
  }
  if (half && !m->block_f16) m->block_f16 = ol_calloc(m->block_n, sizeof *m->block_f16);
  hid_t fspace = H5Dget_space(dset);
  int ok = fspace >= 0;
  for (size_t r0 = 0; ok && r0 < dims[0]; r0 += rows_per) {
    size_t nr = dims[0] - r0 < rows_per ? (size_t)dims[0] - r0 : rows_per;
    const float *src = rows(ctx, r0, nr, m->block);  /* (nr, row) */
    for (size_t i = 0; half && i < nr * row; i++)
      m->block_f16[i] = dtype == OL_DTYPE_F16 ? ol_f32_to_f16(src[i]) : ol_f32_to_bf16(src[i]);
    hsize_t start[OL_MAX_DIMS] = {r0}, count[OL_MAX_DIMS] = {nr};  /* (ndim,) */
    for (int i = 1; i < ndim; i++) count[i] = dims[i];
    hid_t mspace = H5Screate_simple(ndim, count, NULL);
    ok = mspace >= 0 &&
         H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL) >= 0 &&
         H5Dwrite(dset, half ? ftype : H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT,
                  half ? (const void *)m->block_f16 : (const void *)src) >= 0;
    ol_h5_free(mspace);
  }
  ol_h5_free(fspace);
  return ok ? OL_OK : OL_ERR;
}

int ol_h5model_write_rows(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                          ol_dtype dtype, ol_rows_fn rows, void *ctx) {
  OL_CHECK(m && m->tmp);
  OL_CHECK(ndim >= 1 && ndim <= OL_MAX_DIMS);
  OL_TRY(ol_h5_check_name(m->path, name));
  if (H5Lexists(m->file, name, H5P_DEFAULT) > 0)
    return ol_error("%s: dataset '%s' written twice", m->path, name);
  hsize_t dims[OL_MAX_DIMS];  /* (ndim,) */
  size_t n = 1;
  for (int i = 0; i < ndim; i++) {
    dims[i] = shape[i];
    n *= shape[i];
  }
  hid_t ftype = dtype == OL_DTYPE_F16    ? ol_h5_f16_type()
                : dtype == OL_DTYPE_BF16 ? ol_h5_bf16_type()
                                         : H5Tcopy(H5T_IEEE_F32LE);
  hid_t space = H5Screate_simple(ndim, dims, NULL);
  hid_t dset = H5Dcreate2(m->file, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int rc = dset >= 0 ? OL_OK : OL_ERR;
  if (rc == OL_OK && n > 0)
    rc = write_blocks(m, dset, ftype, ndim, dims, dtype, rows, ctx);
  char why[300] = "";
  if (rc != OL_OK) ol_h5_reason(why, sizeof why);
  ol_h5_free(dset);
  ol_h5_free(space);
  ol_h5_free(ftype);
  if (rc != OL_OK) return ol_error("%s: cannot write dataset '%s'%s", m->path, name, why);
  return OL_OK;
}

/* The rows of a tensor already in memory: ctx = {the tensor, elements per row}. */
typedef struct {
  const float *src;
  size_t row;
} whole_src;

static const float *whole_rows(void *ctx, size_t r0, size_t n, float *scratch) {
  const whole_src *w = ctx;
  return w->src + r0 * w->row;
}

int ol_h5model_write(ol_h5model *m, const char *name, int ndim, const size_t *shape,
                     const float *src, ol_dtype dtype) {
  whole_src w = {src, 1};
  for (int i = 1; i < ndim; i++) w.row *= shape[i];
  return ol_h5model_write_rows(m, name, ndim, shape, dtype, whole_rows, &w);
}

int ol_h5model_finish(ol_h5model *m) {
  OL_CHECK(m && m->tmp);
  char why[300] = "";
  int rc = OL_OK;
  if (H5Fclose(m->file) < 0) {
    ol_h5_reason(why, sizeof why);
    rc = ol_error("%s: cannot close %s%s", m->path, m->tmp, why);
  }
  if (rc == OL_OK) rc = ol_io_commit(m->tmp, m->path);
  if (rc != OL_OK) unlink(m->tmp);
  model_free(m);
  return rc;
}

void ol_h5model_close(ol_h5model *m) {
  if (!m) return;
  ol_h5_free(m->file);
  if (m->tmp) unlink(m->tmp);  /* a writer closed without finish: discard its tmp file */
  model_free(m);
}
