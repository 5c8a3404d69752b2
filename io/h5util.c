/* HDF5 plumbing shared by model, data and checkpoint files: opening, attributes, shapes,
 * float reads (incl. 2-byte floats), and the tmp + fsync + rename commit. */
#include "h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onelora/core/core.h"

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

/* ---- the global heap ---------------------------------------------------------------------
 * Variable-length strings (h5py's str attributes, and onelora's) live in "global heap
 * collections", the one kind of metadata block without a checksum in any HDF5 format, and
 * HDF5 1.10 decodes them trusting every size: a corrupt object size makes it copy past its
 * buffer, a zero one makes it loop forever (1.14.4 added the bounds checks). So before HDF5
 * opens a file, the collections that start in its first GHEAP_SCAN bytes (onelora writes its
 * strings first, so its files keep them there) are walked here as HDF5 walks them, and one
 * whose size or objects do not fit is refused. */
#define GHEAP_SCAN ((size_t)1 << 16)
#define GHEAP_MIN_SIZE 4096  /* the smallest collection HDF5 writes */
#define GHEAP_HEADER 16      /* "GCOL", version 1, 3 reserved bytes, the 8-byte size */
#define GHEAP_OBJ_HEADER 16  /* index (2), reference count (2), reserved (4), size (8) */

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* Walks the collection at byte `at` of the open file fd (file_size bytes). */
static int check_collection(int fd, const char *path, uint64_t at, uint64_t file_size) {
  unsigned char h[GHEAP_OBJ_HEADER];
  if (pread(fd, h, GHEAP_HEADER, (off_t)at) != GHEAP_HEADER) return OL_OK;  /* HDF5 refuses it */
  uint64_t size = le64(h + 8), end = at + size;
  if (size < GHEAP_MIN_SIZE || size > file_size - at)
    return ol_error("%s: the global heap collection at byte %llu declares %llu bytes, %s: the "
                    "file is truncated or corrupt", path, (unsigned long long)at,
                    (unsigned long long)size,
                    size < GHEAP_MIN_SIZE ? "fewer than HDF5 writes" : "past the end of the file");
  for (uint64_t p = at + GHEAP_HEADER; p < end;) {
    if (end - p < GHEAP_OBJ_HEADER) break;  /* HDF5 counts a short tail as free space */
    if (pread(fd, h, GHEAP_OBJ_HEADER, (off_t)p) != GHEAP_OBJ_HEADER)
      return ol_error("%s: cannot read the global heap at byte %llu", path, (unsigned long long)p);
    unsigned index = (unsigned)h[0] | (unsigned)h[1] << 8;
    uint64_t obj_size = le64(h + 8);
    /* object 0 is the free space, its size counting its header; the others are padded to 8 */
    uint64_t need = index == 0 ? obj_size
                    : obj_size > end - p ? UINT64_MAX
                                        : GHEAP_OBJ_HEADER + (obj_size + 7) / 8 * 8;
    if (need < GHEAP_OBJ_HEADER || need > end - p)
      return ol_error("%s: object %u of the global heap collection at byte %llu declares %llu "
                      "bytes, outside the collection: the file is corrupt", path, index,
                      (unsigned long long)at, (unsigned long long)obj_size);
    p += need;
  }
  return OL_OK;
}

/* Every collection that starts in the first GHEAP_SCAN bytes of the open file f. */
static int check_global_heaps(FILE *f, const char *path, uint64_t file_size) {
  static const unsigned char signature[8] = {'G', 'C', 'O', 'L', 1, 0, 0, 0};
  size_t n = file_size < GHEAP_SCAN ? (size_t)file_size : GHEAP_SCAN;
  unsigned char *head = ol_calloc(n + 1, 1);  /* (n,) the file's first bytes */
  int rc = fread(head, 1, n, f) == n ? OL_OK : ol_error("%s: cannot read the file", path);
  for (size_t i = 0; rc == OL_OK && i + sizeof signature <= n; i++)
    if (head[i] == 'G' && memcmp(head + i, signature, sizeof signature) == 0)
      rc = check_collection(fileno(f), path, i, file_size);
  ol_free(head);
  return rc;
}

int ol_h5_open_read(const char *path, hid_t *file) {
  h5_quiet();
  *file = H5I_INVALID_HID;
  struct stat st;
  if (stat(path, &st) != 0) return ol_error("%s: cannot open: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode)) return ol_error("%s: is a directory, expected an HDF5 file", path);
  FILE *f = fopen(path, "rb");
  if (!f) return ol_error("%s: cannot open: %s", path, strerror(errno));
  int rc = H5Fis_hdf5(path) > 0 ? check_global_heaps(f, path, (uint64_t)st.st_size)
                                : ol_error("%s: not an HDF5 file", path);
  fclose(f);
  OL_TRY(rc);
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
  /* the 1.10 format: checksummed superblock, object headers, link and attribute indexes and
   * chunk indexes, so a reader refuses corrupt metadata instead of decoding it (h5py and any
   * HDF5 >= 1.10 read it). ONELORA_HDF5_FORMAT=earliest writes the oldest format instead
   * (h5py's default, readable by HDF5 1.8; no metadata checksums). */
  const char *format = getenv("ONELORA_HDF5_FORMAT");
  int earliest = format && strcmp(format, "earliest") == 0;
  if (format && format[0] && !earliest && strcmp(format, "1.10") != 0)
    return ol_error("%s: ONELORA_HDF5_FORMAT is '%s', expected 1.10 (the default) or earliest",
                    path, format);
  if (H5Pset_libver_bounds(fapl, earliest ? H5F_LIBVER_EARLIEST : H5F_LIBVER_V110,
                           H5F_LIBVER_LATEST) < 0)
    return ol_error("%s: cannot select the HDF5 file format", path);
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
  htri_t exists = H5Aexists(loc, name);
  if (exists < 0)
    return ol_error("%s: cannot look up attribute '%s' (the file is corrupt)", file, name);
  if (exists == 0) return ol_error("%s: missing attribute '%s'", file, name);
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

/* The string attributes onelora reads are names and lists: one line of printable text. */
static int copy_str(const char *file, const char *name, const char *s, char *buf, size_t size) {
  size_t n = strlen(s);
  if (n >= size)
    return ol_error("%s: attribute '%s' is too long (%zu bytes, at most %zu)", file, name, n,
                    size - 1);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return ol_error("%s: attribute '%s' holds control character 0x%02x at byte %zu (the file "
                      "is corrupt)", file, name, (unsigned char)s[i], i);
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
    if (n == 0 || n > OL_H5_MAX_STR) {
      ol_h5_free(mtype);
      ol_h5_free(ftype);
      ol_h5_free(attr);
      return ol_error("%s: attribute '%s' is a string of %zu bytes, expected 1 to %d", file, name,
                      n, OL_H5_MAX_STR);
    }
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

/* The integer fields' upper limits (whatever a file says, nothing larger is sized by it;
 * LLaMA-3-405B has dim 16384, 126 layers, ffn 53248): positive values up to them are left to
 * ol_config_validate, and a model file must also hold the weights they imply (h5model.c). */

static const struct {
  const char *name;
  size_t offset;
  int is_float;
  int64_t max;  /* integer fields: the largest value accepted */
} config_fields[] = {
    {"dim", offsetof(ol_config, dim), 0, OL_MAX_WIDTH},
    {"n_layers", offsetof(ol_config, n_layers), 0, OL_MAX_LAYERS},
    {"n_heads", offsetof(ol_config, n_heads), 0, OL_MAX_WIDTH},
    {"n_kv_heads", offsetof(ol_config, n_kv_heads), 0, OL_MAX_WIDTH},
    {"ffn_dim", offsetof(ol_config, ffn_dim), 0, OL_MAX_FFN},
    {"vocab_size", offsetof(ol_config, vocab_size), 0, OL_MAX_VOCAB},
    {"max_seq_len", offsetof(ol_config, max_seq_len), 0, OL_MAX_SEQ_LEN},
    {"norm_eps", offsetof(ol_config, norm_eps), 1, 0},
    {"rope_theta", offsetof(ol_config, rope_theta), 1, 0},
};
#define N_CONFIG_FIELDS (sizeof config_fields / sizeof config_fields[0])

int ol_h5_get_config(hid_t loc, const char *file, ol_config *cfg) {
  char arch[64];
  OL_TRY(ol_h5_get_str(loc, file, "architecture", arch, sizeof arch));
  if (strcmp(arch, "llama") != 0)
    return ol_error("%s: attribute 'architecture' is '%s', expected 'llama'", file, arch);
  for (size_t i = 0; i < N_CONFIG_FIELDS; i++) {
    char *field = (char *)cfg + config_fields[i].offset;
    if (config_fields[i].is_float) {
      OL_TRY(ol_h5_get_f64(loc, file, config_fields[i].name, (double *)field));
      continue;
    }
    int64_t *v = (int64_t *)field;
    OL_TRY(ol_h5_get_i64(loc, file, config_fields[i].name, v));
    if (*v > config_fields[i].max)
      return ol_error("%s: attribute '%s' is %lld, more than the %lld onelora accepts", file,
                      config_fields[i].name, (long long)*v, (long long)config_fields[i].max);
  }
  // optional flags, absent in files without biases
  const char *flags[2] = {"attention_bias", "mlp_bias"};
  int64_t *dst[2] = {&cfg->attention_bias, &cfg->mlp_bias};
  for (int i = 0; i < 2; i++) {
    *dst[i] = 0;
    htri_t exists = H5Aexists(loc, flags[i]);
    if (exists < 0)
      return ol_error("%s: cannot look up attribute '%s' (the file is corrupt)", file, flags[i]);
    if (exists > 0) OL_TRY(ol_h5_get_i64(loc, file, flags[i], dst[i]));
    if (*dst[i] != 0 && *dst[i] != 1)
      return ol_error("%s: attribute '%s' is %lld, expected 0 or 1", file, flags[i],
                      (long long)*dst[i]);
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
  htri_t exists = H5Lexists(loc, name, H5P_DEFAULT);
  if (exists < 0)
    return ol_error("%s: cannot look up dataset '%s' (the file is corrupt)", file, what);
  if (exists == 0) return ol_error("%s: missing dataset '%s'", file, what);
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

/* Filters other than the Fletcher32 checksum: 1 when the data is stored compressed. */
static int is_compressed(hid_t dset) {
  hid_t dcpl = H5Dget_create_plist(dset);
  int n = dcpl >= 0 ? H5Pget_nfilters(dcpl) : 0, compressed = 0;
  for (int i = 0; i < n; i++) {
    unsigned flags;
    size_t n_values = 0;
    if (H5Pget_filter2(dcpl, (unsigned)i, &flags, &n_values, NULL, 0, NULL, NULL) !=
        H5Z_FILTER_FLETCHER32)
      compressed = 1;
  }
  ol_h5_free(dcpl);
  return compressed;
}

/* The size of the file that holds object `id`, in bytes (0 when unknown). */
static uint64_t file_size_of(hid_t id) {
  hid_t f = H5Iget_file_id(id);
  hsize_t size = 0;
  if (f < 0 || H5Fget_filesize(f, &size) < 0) size = 0;
  ol_h5_free(f);
  return size;
}

int ol_h5_dataset_extent(hid_t dset, const char *file, const char *what, int max_ndim, int *ndim,
                         size_t *dims, size_t *numel) {
  hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
  hsize_t hdims[H5S_MAX_RANK];  /* (nd,) */
  int nd = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
  if (nd >= 0 && nd <= H5S_MAX_RANK && H5Sget_simple_extent_dims(space, hdims, NULL) < 0) nd = -1;
  uint64_t elem = type >= 0 ? H5Tget_size(type) : 0;
  ol_h5_free(type);
  ol_h5_free(space);
  if (nd < 0 || elem == 0)
    return ol_error("%s: cannot read the shape of dataset '%s' (the file is corrupt)", file, what);
  if (nd > max_ndim)
    return ol_error("%s: dataset '%s' has %d dimensions, expected at most %d", file, what, nd,
                    max_ndim);
  uint64_t bytes = elem;  /* of all the values, checked against overflow dimension by dimension */
  for (int i = 0; i < nd; i++) {
    if (hdims[i] > OL_H5_MAX_DIM)
      return ol_error("%s: dataset '%s' has dimension %d of size %llu, more than 2^40", file,
                      what, i, (unsigned long long)hdims[i]);
    if (hdims[i] > 0 && bytes > OL_H5_MAX_BYTES / hdims[i])
      return ol_error("%s: dataset '%s' declares more than 2^50 bytes of values", file, what);
    bytes *= hdims[i];
  }
  uint64_t file_bytes = file_size_of(dset);
  int compressed = is_compressed(dset);
  uint64_t room = compressed ? file_bytes * OL_H5_MAX_INFLATE : file_bytes;
  if (bytes > room)
    return ol_error("%s: dataset '%s' declares %llu bytes of values, more than the file (%llu "
                    "bytes) can hold: the file is truncated or corrupt", file, what,
                    (unsigned long long)bytes, (unsigned long long)file_bytes);
  uint64_t stored = H5Dget_storage_size(dset);
  if (!compressed && stored < bytes)
    return ol_error("%s: dataset '%s' stores %llu of its %llu bytes: the file is truncated or "
                    "corrupt", file, what, (unsigned long long)stored, (unsigned long long)bytes);
  *ndim = nd;
  for (int i = 0; i < nd; i++) dims[i] = (size_t)hdims[i];
  *numel = (size_t)(bytes / elem);
  return OL_OK;
}

int ol_h5_check_shape(hid_t dset, const char *file, const char *what, int ndim,
                      const size_t *shape) {
  size_t found[H5S_MAX_RANK], numel;  /* (nd,) */
  int nd;
  OL_TRY(ol_h5_dataset_extent(dset, file, what, H5S_MAX_RANK, &nd, found, &numel));
  int same = nd == ndim;
  for (int i = 0; same && i < nd; i++) same = found[i] == shape[i];
  if (same) return OL_OK;
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
hid_t ol_h5_bf16_type(void) { return h5_half_type(7, 8, 127); }

typedef enum { FLOAT_NATIVE, FLOAT_F16, FLOAT_BF16 } float_kind;

/* Classifies a dataset's type; 2-byte floats must be IEEE half or bfloat16 bit layouts. */
static int float_kind_of(hid_t ftype, const char *file, const char *what, float_kind *kind) {
  H5T_class_t cls = H5Tget_class(ftype);
  size_t size = H5Tget_size(ftype);
  if (cls != H5T_FLOAT)
    return ol_error("%s: dataset '%s' is %s type, expected float32 or float16", file, what,
                    cls == H5T_INTEGER ? "an integer" : "a non-float");
  if (H5Tequal(ftype, H5T_IEEE_F32LE) > 0 || H5Tequal(ftype, H5T_IEEE_F32BE) > 0 ||
      H5Tequal(ftype, H5T_IEEE_F64LE) > 0 || H5Tequal(ftype, H5T_IEEE_F64BE) > 0) {
    *kind = FLOAT_NATIVE;
    return OL_OK;
  }
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (size == 2) H5Tget_fields(ftype, &spos, &epos, &esize, &mpos, &msize);
  size_t ebias = size == 2 ? H5Tget_ebias(ftype) : 0;
  /* all 16 bits used, the hidden leading 1 of normal numbers */
  int plain = size == 2 && H5Tget_precision(ftype) == 16 && H5Tget_offset(ftype) == 0 &&
              H5Tget_norm(ftype) == H5T_NORM_IMPLIED;
  if (plain && spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 &&
      ebias == 15) {
    *kind = FLOAT_F16;
    return OL_OK;
  }
  if (plain && spos == 15 && epos == 7 && esize == 8 && mpos == 0 && msize == 7 &&
      ebias == 127) {
    *kind = FLOAT_BF16;
    return OL_OK;
  }
  return ol_error("%s: dataset '%s' has an unsupported %zu-byte float type", file, what, size);
}

int ol_h5_dataset_dtype(hid_t dset, const char *file, const char *what, ol_dtype *out) {
  hid_t ftype = H5Dget_type(dset);
  float_kind kind = FLOAT_NATIVE;
  int rc = ftype >= 0 ? float_kind_of(ftype, file, what, &kind)
                      : ol_error("%s: cannot read the type of dataset '%s'", file, what);
  int f32 = ftype >= 0 && H5Tequal(ftype, H5T_IEEE_F32LE) > 0;
  ol_h5_free(ftype);
  OL_TRY(rc);
  if (kind == FLOAT_NATIVE && !f32)
    return ol_error("%s: dataset '%s' is not little-endian float32, float16 or bfloat16", file, what);
  *out = kind == FLOAT_F16 ? OL_DTYPE_F16 : kind == FLOAT_BF16 ? OL_DTYPE_BF16 : OL_DTYPE_F32;
  return OL_OK;
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
