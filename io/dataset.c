/* Data files (DESIGN §6): 1-D token datasets "train" and "val" (uint16 or uint32) and the root
 * attribute vocab_size. Tokens are read on demand by hyperslab, never the whole file. */
#include <string.h>
#include <unistd.h>

#include "h5util.h"
#include "onelora/core/core.h"
#include "onelora/io/dataset.h"

static const char *const split_names[2] = {"train", "val"};

/* Token ids are returned as int32, so a vocabulary may hold at most 2^31 ids. */
#define MAX_VOCAB ((int64_t)1 << 31)

struct ol_dataset {
  hid_t file;
  hid_t dset[2];     /* by ol_split */
  size_t len[2];     /* tokens per split */
  int64_t vocab;
  char *path;
};

static int check_vocab(const char *path, int64_t vocab) {
  if (vocab < 2 || vocab > MAX_VOCAB)
    return ol_error("%s: vocab_size must be in [2, 2^31], got %lld", path, (long long)vocab);
  return OL_OK;
}

/* Opens split s and checks it is a 1-D uint16 or uint32 dataset (all bits used) whose tokens
 * the file holds (ol_h5_dataset_extent); records its length. */
static int open_split(ol_dataset *d, ol_split s) {
  const char *name = split_names[s];
  OL_TRY(ol_h5_open_dataset(d->file, d->path, name, name, &d->dset[s]));
  hid_t type = H5Dget_type(d->dset[s]);
  size_t size = H5Tget_size(type);
  int is_uint = H5Tget_class(type) == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE &&
                (size == 2 || size == 4) && H5Tget_precision(type) == 8 * size &&
                H5Tget_offset(type) == 0;
  ol_h5_free(type);
  if (!is_uint)
    return ol_error("%s: dataset '%s' must hold uint16 or uint32 token ids", d->path, name);
  size_t dims[H5S_MAX_RANK], n;  /* (ndim,) */
  int ndim;
  OL_TRY(ol_h5_dataset_extent(d->dset[s], d->path, name, H5S_MAX_RANK, &ndim, dims, &n));
  if (ndim != 1) return ol_error("%s: dataset '%s' must be 1-D, found %d-D", d->path, name, ndim);
  d->len[s] = dims[0];
  return OL_OK;
}

int ol_dataset_open(const char *path, ol_dataset **out) {
  *out = NULL;
  ol_dataset *d = ol_calloc(1, sizeof *d);
  d->dset[0] = d->dset[1] = H5I_INVALID_HID;
  size_t n = strlen(path) + 1;
  d->path = ol_calloc(n, 1);
  memcpy(d->path, path, n);
  int rc = ol_h5_open_read(path, &d->file);
  if (rc == OL_OK) rc = ol_h5_get_i64(d->file, path, "vocab_size", &d->vocab);
  if (rc == OL_OK) rc = check_vocab(path, d->vocab);
  if (rc == OL_OK) rc = open_split(d, OL_SPLIT_TRAIN);
  if (rc == OL_OK) rc = open_split(d, OL_SPLIT_VAL);
  if (rc != OL_OK) {
    ol_dataset_close(d);
    return rc;
  }
  *out = d;
  return OL_OK;
}

int64_t ol_dataset_vocab(const ol_dataset *d) { return d->vocab; }

size_t ol_dataset_len(const ol_dataset *d, ol_split s) { return d->len[s]; }

int ol_dataset_read(ol_dataset *d, ol_split s, size_t start, size_t count, int32_t *dst) {
  OL_CHECK(s == OL_SPLIT_TRAIN || s == OL_SPLIT_VAL);
  const char *name = split_names[s];
  if (start > d->len[s] || count > d->len[s] - start)
    return ol_error("%s: tokens [%zu, %zu) are past the end of '%s' (%zu tokens)", d->path, start,
                    start + count, name, d->len[s]);
  if (count == 0) return OL_OK;
  hsize_t hstart = start, hcount = count;
  hid_t fspace = H5Dget_space(d->dset[s]);
  hid_t mspace = H5Screate_simple(1, &hcount, NULL);
  /* uint16 on disk widens to uint32 in dst; int32 and uint32 share a representation. */
  int ok = fspace >= 0 && mspace >= 0 &&
           H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &hstart, NULL, &hcount, NULL) >= 0 &&
           H5Dread(d->dset[s], H5T_NATIVE_UINT32, mspace, fspace, H5P_DEFAULT, dst) >= 0;
  char why[300] = "";
  if (!ok) ol_h5_reason(why, sizeof why);
  ol_h5_free(mspace);
  ol_h5_free(fspace);
  if (!ok)
    return ol_error("%s: cannot read tokens [%zu, %zu) of '%s'%s", d->path, start, start + count,
                    name, why);
  const uint32_t *tok = (const uint32_t *)dst;  /* (count,) */
  for (size_t i = 0; i < count; i++)
    if (tok[i] >= (uint64_t)d->vocab)
      return ol_error("%s: token %u at %s[%zu] is out of range for vocab_size %lld", d->path,
                      tok[i], name, start + i, (long long)d->vocab);
  return OL_OK;
}

void ol_dataset_close(ol_dataset *d) {
  if (!d) return;
  ol_h5_free(d->dset[0]);
  ol_h5_free(d->dset[1]);
  ol_h5_free(d->file);
  ol_free(d->path);
  ol_free(d);
}

/* ---- writing ---------------------------------------------------------------------------- */

static int check_tokens(const char *path, const char *name, const int32_t *tok, size_t n,
                        int64_t vocab) {
  for (size_t i = 0; i < n; i++)
    if (tok[i] < 0 || tok[i] >= vocab)
      return ol_error("%s: token %d at %s[%zu] is out of range for vocab_size %lld", path,
                      tok[i], name, i, (long long)vocab);
  return OL_OK;
}

static int write_split(hid_t file, const char *path, const char *name, hid_t ftype,
                       const int32_t *tok, size_t n) {
  hsize_t dims = n;
  hid_t space = H5Screate_simple(1, &dims, NULL);
  hid_t dset = H5Dcreate2(file, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int ok = dset >= 0 &&
           (n == 0 || H5Dwrite(dset, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok) >= 0);
  char why[300] = "";
  if (!ok) ol_h5_reason(why, sizeof why);
  ol_h5_free(dset);
  ol_h5_free(space);
  if (!ok) return ol_error("%s: cannot write dataset '%s'%s", path, name, why);
  return OL_OK;
}

int ol_dataset_write(const char *path, int64_t vocab_size, const int32_t *train, size_t n_train,
                     const int32_t *val, size_t n_val) {
  OL_TRY(check_vocab(path, vocab_size));
  OL_TRY(check_tokens(path, "train", train, n_train, vocab_size));
  OL_TRY(check_tokens(path, "val", val, n_val, vocab_size));
  hid_t ftype = vocab_size <= 65536 ? H5T_STD_U16LE : H5T_STD_U32LE;
  char *tmp = ol_io_tmp_path(path);
  hid_t file;
  int rc = ol_h5_create(tmp, &file);
  if (rc == OL_OK) {
    rc = ol_h5_put_i64(file, path, "vocab_size", vocab_size);
    if (rc == OL_OK) rc = write_split(file, path, "train", ftype, train, n_train);
    if (rc == OL_OK) rc = write_split(file, path, "val", ftype, val, n_val);
    if (H5Fclose(file) < 0 && rc == OL_OK) rc = ol_error("%s: cannot close %s", path, tmp);
    if (rc == OL_OK) rc = ol_io_commit(tmp, path);
    if (rc != OL_OK) unlink(tmp);
  }
  ol_free(tmp);
  return rc;
}
