/* HDF5 plumbing shared by model, data and checkpoint files: opening, attributes, shapes,
 * float reads (incl. 2-byte floats), and the tmp + fsync + rename commit. */
#include "h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onelora/core.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/ decodes little-endian 2-byte floats in place; port ol_h5_read_floats first"
#endif

/* ---- errors ---------------------------------------------------------------------------- */

typedef struct {
  char *buf;
  size_t size;
} reason_buf;

static herr_t keep_innermost(unsigned n, const H5E_error2_t *e, void *data) {
  reason_buf *r = data;
  if (n == 0 && e->desc && e->desc[0]) ol_strlcpy(r->buf, e->desc, r->size);
  return 0;
}

void ol_h5_reason(char *buf, size_t size) {
  char desc[256] = "";
  reason_buf r = {desc, sizeof desc};
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, &r);
  for (char *p = desc; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';  /* keep the error on one line */
  snprintf(buf, size, desc[0] ? " (HDF5: %s)" : "%s", desc);
}

static void h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

void ol_h5_free(hid_t id) {
  if (id < 0) return;
  switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
  }
}

/* ---- files ------------------------------------------------------------------------------ */

/* File access: lock where the file system supports it, carry on where it does not (Lustre). */
static hid_t file_access(H5F_close_degree_t degree) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return fapl;
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, 1, 1);
#endif
  H5Pset_fclose_degree(fapl, degree);
  return fapl;
}

int ol_h5_open_read(const char *path, hid_t *file) {
  h5_quiet();
  *file = H5I_INVALID_HID;
  struct stat st;
  if (stat(path, &st) != 0) return ol_error("%s: cannot open: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) return ol_error("%s: is a directory, expected an HDF5 file", path);
  FILE *f = fopen(path, "rb");
  if (!f) return ol_error("%s: cannot open: %s", path, strerror(errno));
  fclose(f);
  if (H5Fis_hdf5(path) <= 0) return ol_error("%s: not an HDF5 file", path);
  hid_t fapl = file_access(H5F_CLOSE_WEAK);
  *file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
  char why[300] = "";
  if (*file < 0) ol_h5_reason(why, sizeof why);
  ol_h5_free(fapl);
  if (*file < 0) return ol_error("%s: cannot open HDF5 file, truncated or corrupt%s", path, why);
  return OL_OK;
}

int ol_h5_create(const char *path, hid_t *file) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  int rc = ol_h5_create_with(path, fapl, file);
  ol_h5_free(fapl);
  if (rc != OL_OK) unlink(path);
  return rc;
}

int ol_h5_create_with(const char *path, hid_t fapl, hid_t *file) {
  h5_quiet();
  *file = H5I_INVALID_HID;
  /* a probe for a plain errno message; no O_TRUNC, so that the probe of a late rank of a
   * parallel create cannot cut what the others already wrote */
  int fd = open(path, O_WRONLY | O_CREAT, 0666);
  if (fd < 0) return ol_error("%s: cannot create: %s", path, strerror(errno));
  close(fd);
  H5Pset_fclose_degree(fapl, H5F_CLOSE_SEMI);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, 1, 1);
#endif
  *file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  char why[300] = "";
  if (*file < 0) ol_h5_reason(why, sizeof why);
  if (*file < 0) return ol_error("%s: cannot create HDF5 file%s", path, why);
  return OL_OK;
}

int ol_h5_check_slice(const char *file, const char *what, int ndim, const size_t *shape,
                      const size_t *start, const size_t *count) {
  for (int i = 0; i < ndim; i++)
    if (start[i] > shape[i] || count[i] > shape[i] - start[i])
      return ol_error("%s: slice [%zu, %zu) of dimension %d is outside dataset '%s' (size %zu)",
                      file, start[i], start[i] + count[i], i, what, shape[i]);
  return OL_OK;
}

/* Reads the hyperslab [start, start + count) of an open dataset into dst (prod(count) floats). */
int ol_h5_read_slice(hid_t dset, const char *file, const char *what, int ndim,
                     const size_t *start, const size_t *count, float *dst) {
  hsize_t hstart[OL_MAX_DIMS], hcount[OL_MAX_DIMS];  /* (ndim,) */
  size_t n = 1;
  for (int i = 0; i < ndim; i++) {
    hstart[i] = start[i];
    hcount[i] = count[i];
    n *= count[i];
  }
  if (n == 0) return OL_OK;
  hid_t fspace = H5Dget_space(dset);
  hid_t mspace = H5Screate_simple(ndim, hcount, NULL);
  int rc;
  if (fspace < 0 || mspace < 0 ||
      H5Sselect_hyperslab(fspace, H5S_SELECT_SET, hstart, NULL, hcount, NULL) < 0)
    rc = ol_error("%s: cannot select a slice of dataset '%s'", file, what);
  else
    rc = ol_h5_read_floats(dset, fspace, mspace, n, file, what, dst);
  ol_h5_free(mspace);
  ol_h5_free(fspace);
  return rc;
}

char *ol_io_tmp_path(const char *path) {
  size_t n = strlen(path) + sizeof ".tmp";
  char *tmp = ol_calloc(n, 1);
  snprintf(tmp, n, "%s.tmp", path);
  return tmp;
}

static int fsync_path(const char *path, int flags, int is_dir) {
  int fd = open(path, flags);
  if (fd < 0) return ol_error("%s: cannot open to sync: %s", path, strerror(errno));
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  /* Some file systems cannot sync a directory (EINVAL); the rename itself has still happened. */
  if (rc != 0 && !(is_dir && err == EINVAL))
    return ol_error("%s: fsync failed: %s", path, strerror(err));
  return OL_OK;
}

int ol_io_commit(const char *tmp, const char *path) {
  OL_TRY(fsync_path(tmp, O_RDONLY, 0));
  if (rename(tmp, path) != 0)
    return ol_error("%s: cannot rename %s over it: %s", path, tmp, strerror(errno));
  size_t n = strlen(path) + 2;
  char *dir = ol_calloc(n, 1);  /* the directory holding path */
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, n, ".");
  else if (slash == path) snprintf(dir, n, "/");
  else snprintf(dir, n, "%.*s", (int)(slash - path), path);
  int rc = fsync_path(dir, O_RDONLY | O_DIRECTORY, 1);
  ol_free(dir);
  return rc;
}

/* ---- attributes ------------------------------------------------------------------------- */

static const char *class_desc(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "an integer";
    case H5T_FLOAT: return "a float";
    case H5T_STRING: return "a string";
    case H5T_ENUM: return "an enum";
    case H5T_COMPOUND: return "a compound";
    case H5T_ARRAY: return "an array";
    case H5T_VLEN: return "a sequence";
    default: return "of an unsupported type";
  }
}

/* Opens attribute `name` and checks it is one value of class `want` (or `also`).
 * On success *attr and *type are open; on failure both are closed. */
static int attr_open(hid_t loc, const char *file, const char *name, H5T_class_t want,
                     H5T_class_t also, const char *want_desc, hid_t *attr, hid_t *type) {
  *attr = *type = H5I_INVALID_HID;
  if (H5Aexists(loc, name) <= 0) return ol_error("%s: missing attribute '%s'", file, name);
  *attr = H5Aopen(loc, name, H5P_DEFAULT);
  if (*attr < 0) return ol_error("%s: cannot open attribute '%s'", file, name);
  *type = H5Aget_type(*attr);
  hid_t space = H5Aget_space(*attr);
  H5T_class_t cls = H5Tget_class(*type);
  hssize_t npoints = H5Sget_simple_extent_npoints(space);
  ol_h5_free(space);
  int rc = OL_OK;
  if (cls != want && cls != also)
    rc = ol_error("%s: attribute '%s' is %s, expected %s", file, name, class_desc(cls), want_desc);
  else if (npoints != 1)
    rc = ol_error("%s: attribute '%s' holds %lld values, expected one", file, name,
                  (long long)npoints);
  if (rc != OL_OK) {
    ol_h5_free(*type);
    ol_h5_free(*attr);
    *attr = *type = H5I_INVALID_HID;
  }
  return rc;
}

static int attr_get_number(hid_t loc, const char *file, const char *name, H5T_class_t want,
                           H5T_class_t also, const char *want_desc, hid_t memtype, void *out) {
  hid_t attr, type;
  OL_TRY(attr_open(loc, file, name, want, also, want_desc, &attr, &type));
  herr_t rc = H5Aread(attr, memtype, out);
  ol_h5_free(type);
  ol_h5_free(attr);
  if (rc < 0) return ol_error("%s: cannot read attribute '%s'", file, name);
  return OL_OK;
}

int ol_h5_get_i64(hid_t loc, const char *file, const char *name, int64_t *out) {
  return attr_get_number(loc, file, name, H5T_INTEGER, H5T_INTEGER, "an integer",
                         H5T_NATIVE_INT64, out);
}

int ol_h5_get_u64(hid_t loc, const char *file, const char *name, uint64_t *out) {
  return attr_get_number(loc, file, name, H5T_INTEGER, H5T_INTEGER, "an integer",
                         H5T_NATIVE_UINT64, out);
}

/* A float attribute may also be stored as an integer (rope_theta = 10000 written from Python). */
int ol_h5_get_f64(hid_t loc, const char *file, const char *name, double *out) {
  return attr_get_number(loc, file, name, H5T_FLOAT, H5T_INTEGER, "a float", H5T_NATIVE_DOUBLE,
                         out);
}

static int copy_str(const char *file, const char *name, const char *s, char *buf, size_t size) {
  size_t n = strlen(s);
  if (n >= size)
    return ol_error("%s: attribute '%s' is too long (%zu bytes, at most %zu)", file, name, n,
                    size - 1);
  memcpy(buf, s, n + 1);
  return OL_OK;
}

/* Reads a variable-length (h5py's default) or fixed-length string attribute. */
int ol_h5_get_str(hid_t loc, const char *file, const char *name, char *buf, size_t size) {
  hid_t attr, ftype;
  OL_TRY(attr_open(loc, file, name, H5T_STRING, H5T_STRING, "a string", &attr, &ftype));
  hid_t mtype = H5Tcopy(H5T_C_S1);
  H5Tset_cset(mtype, H5Tget_cset(ftype));
  int rc = OL_OK;
  if (H5Tis_variable_str(ftype) > 0) {
    char *s = NULL;
    H5Tset_size(mtype, H5T_VARIABLE);
    if (H5Aread(attr, mtype, &s) < 0 || !s)
      rc = ol_error("%s: cannot read attribute '%s'", file, name);
    else
      rc = copy_str(file, name, s, buf, size);
    if (s) H5free_memory(s);
  } else {
    size_t n = H5Tget_size(ftype);
    char *s = ol_calloc(n + 1, 1);  /* (n + 1,) NUL-terminated */
    H5Tset_size(mtype, n + 1);
    H5Tset_strpad(mtype, H5T_STR_NULLTERM);
    if (H5Aread(attr, mtype, s) < 0)
      rc = ol_error("%s: cannot read attribute '%s'", file, name);
    else
      rc = copy_str(file, name, s, buf, size);
    ol_free(s);
  }
  ol_h5_free(mtype);
  ol_h5_free(ftype);
  ol_h5_free(attr);
  return rc;
}

static int attr_put(hid_t loc, const char *file, const char *name, hid_t ftype, hid_t mtype,
                    const void *v) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc = attr >= 0 ? H5Awrite(attr, mtype, v) : -1;
  char why[300] = "";
  if (rc < 0) ol_h5_reason(why, sizeof why);
  ol_h5_free(attr);
  ol_h5_free(space);
  if (rc < 0) return ol_error("%s: cannot write attribute '%s'%s", file, name, why);
  return OL_OK;
}

int ol_h5_put_i64(hid_t loc, const char *file, const char *name, int64_t v) {
  return attr_put(loc, file, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

int ol_h5_put_u64(hid_t loc, const char *file, const char *name, uint64_t v) {
  return attr_put(loc, file, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
}

int ol_h5_put_f64(hid_t loc, const char *file, const char *name, double v) {
  return attr_put(loc, file, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

/* Strings are variable-length UTF-8, as h5py writes them, so Python reads back a str. */
int ol_h5_put_str(hid_t loc, const char *file, const char *name, const char *v) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  int rc = attr_put(loc, file, name, type, type, &v);
  ol_h5_free(type);
  return rc;
}

/* ---- config ----------------------------------------------------------------------------- */

static const struct {
  const char *name;
  size_t offset;
  int is_float;
} config_fields[] = {
    {"dim", offsetof(ol_config, dim), 0},
    {"n_layers", offsetof(ol_config, n_layers), 0},
    {"n_heads", offsetof(ol_config, n_heads), 0},
    {"n_kv_heads", offsetof(ol_config, n_kv_heads), 0},
    {"ffn_dim", offsetof(ol_config, ffn_dim), 0},
    {"vocab_size", offsetof(ol_config, vocab_size), 0},
    {"max_seq_len", offsetof(ol_config, max_seq_len), 0},
    {"norm_eps", offsetof(ol_config, norm_eps), 1},
    {"rope_theta", offsetof(ol_config, rope_theta), 1},
};
#define N_CONFIG_FIELDS (sizeof config_fields / sizeof config_fields[0])

int ol_h5_get_config(hid_t loc, const char *file, ol_config *cfg) {
  char arch[64];
  OL_TRY(ol_h5_get_str(loc, file, "architecture", arch, sizeof arch));
  if (strcmp(arch, "llama") != 0)
    return ol_error("%s: attribute 'architecture' is '%s', expected 'llama'", file, arch);
  for (size_t i = 0; i < N_CONFIG_FIELDS; i++) {
    char *field = (char *)cfg + config_fields[i].offset;
    if (config_fields[i].is_float)
      OL_TRY(ol_h5_get_f64(loc, file, config_fields[i].name, (double *)field));
    else
      OL_TRY(ol_h5_get_i64(loc, file, config_fields[i].name, (int64_t *)field));
  }
  // optional flags, absent in files without biases
  const char *flags[2] = {"attention_bias", "mlp_bias"};
  int64_t *dst[2] = {&cfg->attention_bias, &cfg->mlp_bias};
  for (int i = 0; i < 2; i++) {
    *dst[i] = 0;
    if (H5Aexists(loc, flags[i]) > 0) OL_TRY(ol_h5_get_i64(loc, file, flags[i], dst[i]));
  }
  return OL_OK;
}

int ol_h5_put_config(hid_t loc, const char *file, const ol_config *cfg) {
  OL_TRY(ol_h5_put_str(loc, file, "architecture", "llama"));
  for (size_t i = 0; i < N_CONFIG_FIELDS; i++) {
    const char *field = (const char *)cfg + config_fields[i].offset;
    if (config_fields[i].is_float)
      OL_TRY(ol_h5_put_f64(loc, file, config_fields[i].name, *(const double *)field));
    else
      OL_TRY(ol_h5_put_i64(loc, file, config_fields[i].name, *(const int64_t *)field));
  }
  if (cfg->attention_bias) OL_TRY(ol_h5_put_i64(loc, file, "attention_bias", 1));
  if (cfg->mlp_bias) OL_TRY(ol_h5_put_i64(loc, file, "mlp_bias", 1));
  return OL_OK;
}

/* ---- datasets --------------------------------------------------------------------------- */

int ol_h5_open_dataset(hid_t loc, const char *file, const char *name, const char *what,
                       hid_t *dset) {
  *dset = H5I_INVALID_HID;
  if (H5Lexists(loc, name, H5P_DEFAULT) <= 0)
    return ol_error("%s: missing dataset '%s'", file, what);
  *dset = H5Dopen2(loc, name, H5P_DEFAULT);
  if (*dset < 0) return ol_error("%s: '%s' is not a readable dataset", file, what);
  return OL_OK;
}

static void shape_str(char *buf, size_t size, int ndim, const size_t *shape) {
  size_t used = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < ndim && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%zu", i ? ", " : "", shape[i]);
  if (used < size) snprintf(buf + used, size - used, "]");
}

int ol_h5_check_shape(hid_t dset, const char *file, const char *what, int ndim,
                      const size_t *shape) {
  hid_t space = H5Dget_space(dset);
  hsize_t dims[H5S_MAX_RANK];  /* (nd,) */
  int nd = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
  if (nd >= 0) H5Sget_simple_extent_dims(space, dims, NULL);
  ol_h5_free(space);
  if (nd < 0) return ol_error("%s: cannot read the shape of dataset '%s'", file, what);
  int same = nd == ndim;
  for (int i = 0; same && i < nd; i++) same = dims[i] == (hsize_t)shape[i];
  if (same) return OL_OK;
  size_t found[H5S_MAX_RANK];  /* (nd,) */
  for (int i = 0; i < nd; i++) found[i] = (size_t)dims[i];
  char want_s[128], found_s[128];
  shape_str(want_s, sizeof want_s, ndim, shape);
  shape_str(found_s, sizeof found_s, nd, found);
  return ol_error("%s: dataset '%s' has shape %s, expected %s", file, what, found_s, want_s);
}

static hid_t h5_half_type(int mant_bits, int exp_bits, size_t ebias) {
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, (size_t)mant_bits, (size_t)exp_bits, 0, (size_t)mant_bits);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, ebias);
  return t;
}

hid_t ol_h5_f16_type(void) { return h5_half_type(10, 5, 15); }

typedef enum { FLOAT_NATIVE, FLOAT_F16, FLOAT_BF16 } float_kind;

/* Classifies a dataset's type; 2-byte floats must be IEEE half or bfloat16 bit layouts. */
static int float_kind_of(hid_t ftype, const char *file, const char *what, float_kind *kind) {
  H5T_class_t cls = H5Tget_class(ftype);
  size_t size = H5Tget_size(ftype);
  if (cls != H5T_FLOAT)
    return ol_error("%s: dataset '%s' is %s type, expected float32 or float16", file, what,
                    cls == H5T_INTEGER ? "an integer" : "a non-float");
  if (size == 4 || size == 8) {
    *kind = FLOAT_NATIVE;
    return OL_OK;
  }
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (size == 2) H5Tget_fields(ftype, &spos, &epos, &esize, &mpos, &msize);
  size_t ebias = size == 2 ? H5Tget_ebias(ftype) : 0;
  if (size == 2 && spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 &&
      ebias == 15) {
    *kind = FLOAT_F16;
    return OL_OK;
  }
  if (size == 2 && spos == 15 && epos == 7 && esize == 8 && mpos == 0 && msize == 7 &&
      ebias == 127) {
    *kind = FLOAT_BF16;
    return OL_OK;
  }
  return ol_error("%s: dataset '%s' has an unsupported %zu-byte float type", file, what, size);
}

/* After a failed read: 1 when the dataset has a Fletcher32 checksum and the same read succeeds
 * with error detection off, i.e. the data is readable but its checksum does not match. */
static int only_checksum_failed(hid_t dset, hid_t mtype, hid_t mspace, hid_t fspace, void *dst) {
  hid_t dcpl = H5Dget_create_plist(dset);
  unsigned flags;
  int has_checksum = dcpl >= 0 && H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, NULL,
                                                       NULL, 0, NULL, NULL) >= 0;
  ol_h5_free(dcpl);
  if (!has_checksum) return 0;
  hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
  int ok = dxpl >= 0 && H5Pset_edc_check(dxpl, H5Z_DISABLE_EDC) >= 0 &&
           H5Dread(dset, mtype, mspace, fspace, dxpl, dst) >= 0;
  ol_h5_free(dxpl);
  return ok;
}

int ol_h5_read_floats(hid_t dset, hid_t fspace, hid_t mspace, size_t n, const char *file,
                      const char *what, float *dst) {
  hid_t ftype = H5Dget_type(dset);
  float_kind kind = FLOAT_NATIVE;
  int rc = ftype >= 0 ? float_kind_of(ftype, file, what, &kind)
                      : ol_error("%s: cannot read the type of dataset '%s'", file, what);
  ol_h5_free(ftype);
  OL_TRY(rc);
  hid_t mtype = kind == FLOAT_F16    ? h5_half_type(10, 5, 15)
                : kind == FLOAT_BF16 ? h5_half_type(7, 8, 127)
                                     : H5Tcopy(H5T_NATIVE_FLOAT);
  herr_t err = H5Dread(dset, mtype, mspace, fspace, H5P_DEFAULT, dst);
  char why[300] = "";
  if (err < 0) ol_h5_reason(why, sizeof why);
  int bad_checksum = err < 0 && only_checksum_failed(dset, mtype, mspace, fspace, dst);
  ol_h5_free(mtype);
  if (bad_checksum)
    return ol_error("%s: dataset '%s' failed its checksum (the file is corrupt)", file, what);
  if (err < 0)
    return ol_error("%s: cannot read dataset '%s': the data is corrupt%s", file, what, why);
  if (kind == FLOAT_NATIVE) return OL_OK;
  /* The n halves sit in the first 2n bytes of dst. Widen back to front: dst[i] (bytes 4i..4i+3)
   * only overwrites halves i' >= 2i, which were already read. */
  const unsigned char *raw = (const unsigned char *)dst;
  for (size_t i = n; i-- > 0;) {
    uint16_t h;
    memcpy(&h, raw + 2 * i, 2);
    dst[i] = kind == FLOAT_F16 ? ol_f16_to_f32(h) : ol_bf16_to_f32(h);
  }
  return OL_OK;
}

int ol_h5_check_name(const char *file, const char *name) {
  if (!name[0] || strchr(name, '/'))
    return ol_error("%s: invalid dataset name '%s' (must be non-empty, without '/')", file, name);
  return OL_OK;
}
