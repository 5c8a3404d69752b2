/* Checkpoint files (DESIGN §6): meta as root attributes; groups params, adam_m, adam_v and
 * frozen, each holding one f32 dataset per tensor at its full logical shape. Every dataset is
 * chunked with a Fletcher32 checksum, so corruption is caught on read. A checkpoint is written
 * to "<path>.tmp", synced and renamed: a reader never sees a half-written file. */
#define _GNU_SOURCE /* fallocate and its FALLOC_FL_* flags */
#include <dirent.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/resource.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "h5util.h"
#include "onelora/core/core.h"
#include "onelora/io/checkpoint.h"

#include <mpi.h>

#define CKPT_FORMAT "onelora-checkpoint"
/* Chunks hold at most this many floats (4 MiB): large enough for fast I/O, small enough that a
 * checksum failure is local. */
#define CHUNK_ELEMS ((hsize_t)1 << 20)
/* What a reader accepts of a file's root attributes and groups before sizing anything by them
 * (LLaMA-2-70B's LoRA has 1,120 tensors per group). */
#define MAX_DATASETS ((hsize_t)1 << 20)        /* per group */
#define MIN_DATASET_BYTES 64                   /* a dataset's link and header take more */
#define MAX_LAYOUT ((int64_t)1 << 20)          /* tp, pp, dp */
#define MAX_RANK ((int64_t)1 << 16)            /* --rank */
#define MAX_BATCH ((int64_t)1 << 31)           /* global_batch, seq_len */

static const char *const group_names[OL_GROUP_COUNT] = {"params", "adam_m", "adam_v", "frozen"};

const char *ol_ckpt_group_name(ol_ckpt_group g) {
  return (unsigned)g < OL_GROUP_COUNT ? group_names[g] : "unknown";
}

typedef struct {
  char *name;
  int ndim;
  size_t shape[OL_MAX_DIMS];
} ckpt_entry;

typedef struct {
  int built;
  size_t n;
  ckpt_entry *e;  /* (n,) sorted by name */
} ckpt_index;

struct ol_ckpt {
  hid_t file;
  hid_t group[OL_GROUP_COUNT];
  char *path;
  char *tmp;    /* "<path>.tmp" while writing; NULL for a reader */
  int parallel; /* written by the ranks of an MPI communicator */
  int failed;   /* a write failed: the writer's later writes are skipped */
  hid_t xfer;   /* dataset transfer: collective under MPI-IO */
  ckpt_index index[OL_GROUP_COUNT];  /* reader: each group's datasets, built on first use */
};

static ol_ckpt *ckpt_new(const char *path) {
  ol_ckpt *c = ol_calloc(1, sizeof *c);
  c->file = H5I_INVALID_HID;
  c->xfer = H5I_INVALID_HID;
  for (int g = 0; g < OL_GROUP_COUNT; g++) c->group[g] = H5I_INVALID_HID;
  size_t n = strlen(path) + 1;
  c->path = ol_calloc(n, 1);
  memcpy(c->path, path, n);
  return c;
}

/* Closes every handle; the file last, so its close can report objects still open. */
static int ckpt_close_handles(ol_ckpt *c) {
  for (int g = 0; g < OL_GROUP_COUNT; g++) ol_h5_free(c->group[g]);
  ol_h5_free(c->xfer);
  c->xfer = H5I_INVALID_HID;
  herr_t rc = c->file >= 0 ? H5Fclose(c->file) : 0;
  c->file = H5I_INVALID_HID;
  return rc < 0 ? OL_ERR : OL_OK;
}

static void index_clear(ckpt_index *ix) {
  for (size_t i = 0; i < ix->n; i++) ol_free(ix->e[i].name);
  ol_free(ix->e);
  memset(ix, 0, sizeof *ix);
}

static void ckpt_free(ol_ckpt *c) {
  for (int g = 0; g < OL_GROUP_COUNT; g++) index_clear(&c->index[g]);
  ol_free(c->path);
  ol_free(c->tmp);
  ol_free(c);
}

/* ---- meta ------------------------------------------------------------------------------- */

static int put_meta(hid_t f, const char *path, const ol_ckpt_meta *m) {
  OL_TRY(ol_h5_put_str(f, path, "format", CKPT_FORMAT));
  OL_TRY(ol_h5_put_i64(f, path, "version", m->version));
  OL_TRY(ol_h5_put_i64(f, path, "step", m->step));
  OL_TRY(ol_h5_put_str(f, path, "method", m->method));
  OL_TRY(ol_h5_put_str(f, path, "targets", m->targets));
  OL_TRY(ol_h5_put_config(f, path, &m->cfg));
  OL_TRY(ol_h5_put_i64(f, path, "tp", m->tp));
  OL_TRY(ol_h5_put_i64(f, path, "pp", m->pp));
  OL_TRY(ol_h5_put_i64(f, path, "dp", m->dp));
  OL_TRY(ol_h5_put_u64(f, path, "seed", m->seed));
  OL_TRY(ol_h5_put_f64(f, path, "loss", m->loss));
  OL_TRY(ol_h5_put_i64(f, path, "rank", m->rank));
  OL_TRY(ol_h5_put_i64(f, path, "alpha_x1000", m->alpha_x1000));
  OL_TRY(ol_h5_put_u64(f, path, "data_cursor", m->data_cursor));
  OL_TRY(ol_h5_put_i64(f, path, "global_batch", m->global_batch));
  OL_TRY(ol_h5_put_i64(f, path, "seq_len", m->seq_len));
  OL_TRY(ol_h5_put_i64(f, path, "shuffle", m->shuffle));
  return OL_OK;
}

static int get_meta(hid_t f, const char *path, ol_ckpt_meta *m) {
  char format[64];
  htri_t has_format = H5Aexists(f, "format");
  if (has_format < 0)
    return ol_error("%s: cannot look up attribute 'format' (the file is corrupt)", path);
  if (has_format == 0)
    return ol_error("%s: not a onelora checkpoint (no 'format' attribute%s)", path,
                    H5Aexists(f, "architecture") > 0 ? "; it looks like a model file" : "");
  OL_TRY(ol_h5_get_str(f, path, "format", format, sizeof format));
  if (strcmp(format, CKPT_FORMAT) != 0)
    return ol_error("%s: attribute 'format' is '%s', expected '%s'", path, format, CKPT_FORMAT);
  OL_TRY(ol_h5_get_i64(f, path, "version", &m->version));
  if (m->version != OL_CKPT_VERSION)
    return ol_error("%s: checkpoint version %lld is not supported (this build reads %d)", path,
                    (long long)m->version, OL_CKPT_VERSION);
  OL_TRY(ol_h5_get_i64(f, path, "step", &m->step));
  OL_TRY(ol_h5_get_str(f, path, "method", m->method, sizeof m->method));
  OL_TRY(ol_h5_get_str(f, path, "targets", m->targets, sizeof m->targets));
  OL_TRY(ol_h5_get_config(f, path, &m->cfg));
  OL_TRY(ol_config_validate(&m->cfg, path));
  OL_TRY(ol_h5_get_i64(f, path, "tp", &m->tp));
  OL_TRY(ol_h5_get_i64(f, path, "pp", &m->pp));
  OL_TRY(ol_h5_get_i64(f, path, "dp", &m->dp));
  OL_TRY(ol_h5_get_u64(f, path, "seed", &m->seed));
  OL_TRY(ol_h5_get_f64(f, path, "loss", &m->loss));
  OL_TRY(ol_h5_get_i64(f, path, "rank", &m->rank));
  OL_TRY(ol_h5_get_i64(f, path, "alpha_x1000", &m->alpha_x1000));
  OL_TRY(ol_h5_get_u64(f, path, "data_cursor", &m->data_cursor));
  OL_TRY(ol_h5_get_i64(f, path, "global_batch", &m->global_batch));
  OL_TRY(ol_h5_get_i64(f, path, "seq_len", &m->seq_len));
  OL_TRY(ol_h5_get_i64(f, path, "shuffle", &m->shuffle));
  const struct {
    const char *name;
    int64_t value, lo, hi;
  } ranges[] = {
      {"step", m->step, 0, INT64_MAX},           {"tp", m->tp, 1, MAX_LAYOUT},
      {"pp", m->pp, 1, MAX_LAYOUT},              {"dp", m->dp, 1, MAX_LAYOUT},
      {"rank", m->rank, 0, MAX_RANK},            {"global_batch", m->global_batch, 1, MAX_BATCH},
      {"seq_len", m->seq_len, 1, MAX_BATCH},     {"shuffle", m->shuffle, 0, 1},
  };
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
    if (ranges[i].value < ranges[i].lo || ranges[i].value > ranges[i].hi)
      return ol_error("%s: attribute '%s' is %lld, outside [%lld, %lld] (the file is corrupt)",
                      path, ranges[i].name, (long long)ranges[i].value, (long long)ranges[i].lo,
                      (long long)ranges[i].hi);
  return OL_OK;
}

/* ---- writing ----------------------------------------------------------------------------- */

/* File access for the writer: MPI-IO over comm when given (every rank of comm writes its own
 * slices; metadata operations are collective), else the default driver. */
static hid_t writer_access(void *mpi_comm) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0 || !mpi_comm) return fapl;
  if (H5Pset_fapl_mpio(fapl, *(MPI_Comm *)mpi_comm, MPI_INFO_NULL) < 0 ||
      H5Pset_all_coll_metadata_ops(fapl, 1) < 0 || H5Pset_coll_metadata_write(fapl, 1) < 0) {
    H5Pclose(fapl);
    return H5I_INVALID_HID;
  }
  return fapl;
}

int ol_ckpt_create(const char *path, const ol_ckpt_meta *meta, void *mpi_comm, ol_ckpt **out) {
  *out = NULL;
  OL_TRY(ol_config_validate(&meta->cfg, path));
  ol_ckpt *c = ckpt_new(path);
  c->tmp = ol_io_tmp_path(path);
  c->parallel = mpi_comm != NULL;
  hid_t fapl = writer_access(mpi_comm);
  int rc = fapl >= 0 ? ol_h5_create_with(c->tmp, fapl, &c->file)
                     : ol_error("%s: cannot set up MPI-IO file access", path);
  ol_h5_free(fapl);
  c->xfer = H5Pcreate(H5P_DATASET_XFER);
  if (rc == OL_OK && (c->xfer < 0 || (c->parallel && H5Pset_dxpl_mpio(c->xfer, H5FD_MPIO_COLLECTIVE) < 0)))
    rc = ol_error("%s: cannot set up collective writes", path);
  if (rc == OL_OK) rc = put_meta(c->file, path, meta);
  for (int g = 0; rc == OL_OK && g < OL_GROUP_COUNT; g++) {
    c->group[g] = H5Gcreate2(c->file, group_names[g], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (c->group[g] < 0) rc = ol_error("%s: cannot create group '%s'", path, group_names[g]);
  }
  if (rc != OL_OK) {
    ckpt_close_handles(c);
    if (!c->parallel) unlink(c->tmp);  /* a parallel writer's tmp file is the caller's */
    ckpt_free(c);
    return rc;
  }
  *out = c;
  return OL_OK;
}

/* Chunk shape: the given one (a shard's extent, so that every shard is whole chunks), else the
 * full shape; halved along the leading dims until a chunk is small enough. Every rank derives
 * the same chunks from the same arguments, as the collective create requires. */
static hid_t chunked_checksummed(int ndim, const hsize_t *dims, const size_t *shard) {
  hsize_t chunk[OL_MAX_DIMS];  /* (ndim,) */
  hsize_t elems = 1;
  for (int i = 0; i < ndim; i++) {
    hsize_t want = shard ? shard[i] : dims[i];
    chunk[i] = want > 0 ? want : 1;
    elems *= chunk[i];
  }
  for (int i = 0; i < ndim && elems > CHUNK_ELEMS; i++)
    while (elems > CHUNK_ELEMS && chunk[i] > 1 && chunk[i] % 2 == 0) {
      chunk[i] /= 2;  /* an even halving keeps shard boundaries on chunk boundaries */
      elems /= 2;
    }
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (dcpl >= 0 && (H5Pset_chunk(dcpl, ndim, chunk) < 0 || H5Pset_fletcher32(dcpl) < 0)) {
    H5Pclose(dcpl);
    dcpl = H5I_INVALID_HID;
  }
  return dcpl;
}

/* Creates the dataset and writes this rank's slice (none when count has a zero). */
static int write_dataset(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim,
                         const size_t *shape, const size_t *chunk, const size_t *start,
                         const size_t *count, const float *src) {
  const char *gname = group_names[g];
  OL_TRY(ol_h5_check_name(c->path, name));
  if (H5Lexists(c->group[g], name, H5P_DEFAULT) > 0)
    return ol_error("%s: dataset '%s/%s' written twice", c->path, gname, name);
  hsize_t dims[OL_MAX_DIMS], hstart[OL_MAX_DIMS], hcount[OL_MAX_DIMS];  /* (ndim,) */
  char what[512];
  snprintf(what, sizeof what, "%s/%s", gname, name);
  OL_TRY(ol_h5_check_slice(c->path, what, ndim, shape, start, count));
  size_t n = 1;
  for (int i = 0; i < ndim; i++) {
    dims[i] = shape[i], hstart[i] = start[i], hcount[i] = count[i];
    n *= count[i];
  }
  hid_t space = H5Screate_simple(ndim, dims, NULL);
  hid_t dcpl = chunked_checksummed(ndim, dims, chunk);
  hid_t dset = space >= 0 && dcpl >= 0 ? H5Dcreate2(c->group[g], name, H5T_IEEE_F32LE, space,
                                                    H5P_DEFAULT, dcpl, H5P_DEFAULT)
                                       : H5I_INVALID_HID;
  hid_t fspace = dset >= 0 ? H5Dget_space(dset) : H5I_INVALID_HID;
  hid_t mspace = H5Screate_simple(ndim, hcount, NULL);
  int ok = fspace >= 0 && mspace >= 0;
  if (ok && n > 0) ok = H5Sselect_hyperslab(fspace, H5S_SELECT_SET, hstart, NULL, hcount, NULL) >= 0;
  else if (ok) ok = H5Sselect_none(fspace) >= 0 && H5Sselect_none(mspace) >= 0;
  static const float nothing = 0.0f;  /* the buffer of an empty selection */
  if (ok && (n > 0 || c->parallel))   /* an empty rank still joins the collective write */
    ok = H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, c->xfer, n > 0 ? src : &nothing) >= 0;
  char why[300] = "";
  if (!ok) ol_h5_reason(why, sizeof why);
  ol_h5_free(mspace);
  ol_h5_free(fspace);
  ol_h5_free(dset);
  ol_h5_free(dcpl);
  ol_h5_free(space);
  if (!ok) return ol_error("%s: cannot write dataset '%s/%s'%s", c->path, gname, name, why);
  return OL_OK;
}

int ol_ckpt_write_slice(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim,
                        const size_t *shape, const size_t *chunk, const size_t *start,
                        const size_t *count, const float *src) {
  OL_CHECK(c && c->tmp);
  OL_CHECK((unsigned)g < OL_GROUP_COUNT);
  OL_CHECK(ndim >= 1 && ndim <= OL_MAX_DIMS);
  int rc = write_dataset(c, g, name, ndim, shape, chunk, start, count, src);
  if (rc != OL_OK) c->failed = 1;
  return rc;
}

int ol_ckpt_write(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                  const float *src) {
  static const size_t zero[OL_MAX_DIMS] = {0};
  return ol_ckpt_write_slice(c, g, name, ndim, shape, NULL, zero, shape, src);
}

int ol_ckpt_close_written(ol_ckpt *c) {
  OL_CHECK(c && c->tmp);
  int rc = c->failed ? ol_error("%s: checkpoint discarded after a failed write", c->path) : OL_OK;
  char why[300] = "";
  /* flush first: under MPI-IO that syncs every rank's part (MPI_File_sync) */
  if (H5Fflush(c->file, H5F_SCOPE_GLOBAL) < 0 && rc == OL_OK) {
    ol_h5_reason(why, sizeof why);
    rc = ol_error("%s: cannot flush %s%s", c->path, c->tmp, why);
  }
  if (ckpt_close_handles(c) != OL_OK && rc == OL_OK) {
    ol_h5_reason(why, sizeof why);
    rc = ol_error("%s: cannot close %s%s", c->path, c->tmp, why);
  }
  ckpt_free(c);
  return rc;
}

int ol_ckpt_check_size_limit(const char *path, size_t bytes) {
  struct rlimit fsize;
  if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_cur != RLIM_INFINITY &&
      (double)fsize.rlim_cur < (double)bytes)
    return ol_error("%s: the checkpoint needs up to %.2f MiB, more than this process's file size "
                    "limit of %.2f MiB (RLIMIT_FSIZE, ulimit -f)", path, bytes / 1048576.0,
                    (double)fsize.rlim_cur / 1048576.0);
  return OL_OK;
}

int ol_ckpt_reserve(const char *path, size_t bytes) {
  char *tmp = ol_io_tmp_path(path);
  int fd = open(tmp, O_WRONLY);
  int rc = OL_OK;
  if (fd < 0) {
    rc = ol_error("%s: cannot open to reserve space: %s", tmp, strerror(errno));
  } else if (fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) != 0) {
    int err = errno;
    struct statvfs vfs;
    if (err == ENOSPC || err == EDQUOT)
      rc = ol_error("%s: not enough disk space for the checkpoint (%.1f MiB needed): %s", path,
                    bytes / 1048576.0, strerror(err));
    else if (err == EFBIG)
      rc = ol_error("%s: the checkpoint (%.1f MiB) is larger than the file system or the file "
                    "size limit allows: %s", path, bytes / 1048576.0, strerror(err));
    else if (fstatvfs(fd, &vfs) == 0 && (double)vfs.f_bavail * vfs.f_frsize < (double)bytes)
      rc = ol_error("%s: not enough disk space for the checkpoint (%.1f MiB needed, %.1f MiB free)",
                    path, bytes / 1048576.0, (double)vfs.f_bavail * vfs.f_frsize / 1048576.0);
  }
  if (fd >= 0) close(fd);
  ol_free(tmp);
  return rc;
}

int ol_ckpt_commit(const char *path) {
  char *tmp = ol_io_tmp_path(path);
  int fd = open(tmp, O_WRONLY);  /* give back the reserved space beyond the file's end */
  struct stat st;
  if (fd >= 0 && fstat(fd, &st) == 0)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, st.st_size, (off_t)1 << 40);
  if (fd >= 0) close(fd);
  int rc = ol_io_commit(tmp, path);
  ol_free(tmp);
  return rc;
}

void ol_ckpt_discard(const char *path) {
  char *tmp = ol_io_tmp_path(path);
  unlink(tmp);
  ol_free(tmp);
}

int ol_ckpt_finish(ol_ckpt *c) {
  OL_CHECK(c && c->tmp && !c->parallel);
  char *path = ol_calloc(strlen(c->path) + 1, 1);
  strcpy(path, c->path);
  int rc = ol_ckpt_close_written(c);
  if (rc == OL_OK) rc = ol_ckpt_commit(path);
  if (rc != OL_OK) ol_ckpt_discard(path);
  ol_free(path);
  return rc;
}

/* ---- reading ---------------------------------------------------------------------------- */

int ol_ckpt_open(const char *path, ol_ckpt **out, ol_ckpt_meta *meta) {
  *out = NULL;
  memset(meta, 0, sizeof *meta);
  ol_ckpt *c = ckpt_new(path);
  int rc = ol_h5_open_read(path, &c->file);
  if (rc == OL_OK) rc = get_meta(c->file, path, meta);
  for (int g = 0; rc == OL_OK && g < OL_GROUP_COUNT; g++) {
    htri_t exists = H5Lexists(c->file, group_names[g], H5P_DEFAULT);
    if (exists > 0) c->group[g] = H5Gopen2(c->file, group_names[g], H5P_DEFAULT);
    if (exists < 0 || (exists > 0 && c->group[g] < 0))
      rc = ol_error("%s: cannot open group '%s' (the file is corrupt)", path, group_names[g]);
    else if (exists == 0)
      rc = ol_error("%s: missing group '%s'", path, group_names[g]);
  }
  if (rc != OL_OK) {
    ckpt_close_handles(c);
    ckpt_free(c);
    return rc;
  }
  *out = c;
  return OL_OK;
}

typedef struct {
  ckpt_index *index;
  size_t cap;
} collect_ctx;

static int entry_cmp(const void *a, const void *b) {
  return strcmp(((const ckpt_entry *)a)->name, ((const ckpt_entry *)b)->name);
}

/* H5Literate callback: records one link name. */
static herr_t collect_name(hid_t group, const char *name, const H5L_info_t *info, void *data) {
  (void)group;
  (void)info;
  collect_ctx *ctx = data;
  if (ctx->index->n == ctx->cap) return 1;  /* the group grew under us: stop */
  size_t n = strlen(name) + 1;
  ckpt_entry *e = &ctx->index->e[ctx->index->n++];
  e->name = ol_calloc(n, 1);
  memcpy(e->name, name, n);
  return 0;
}

/* Records a dataset's shape in e; a link that is not a dataset of 1 to OL_MAX_DIMS dims, or
 * whose shape the file cannot hold (ol_h5_dataset_extent), fails: readers size buffers by it. */
static int entry_shape(ol_ckpt *c, ol_ckpt_group g, ckpt_entry *e) {
  hid_t dset;
  char what[512];
  snprintf(what, sizeof what, "%s/%s", group_names[g], e->name);
  OL_TRY(ol_h5_open_dataset(c->group[g], c->path, e->name, what, &dset));
  size_t numel;
  int rc = ol_h5_dataset_extent(dset, c->path, what, OL_MAX_DIMS, &e->ndim, e->shape, &numel);
  ol_h5_free(dset);
  OL_TRY(rc);
  if (e->ndim < 1)
    return ol_error("%s: dataset '%s' has %d dims, expected 1 to %d", c->path, what, e->ndim,
                    OL_MAX_DIMS);
  return OL_OK;
}

static int build_index(ol_ckpt *c, ol_ckpt_group g) {
  ckpt_index *ix = &c->index[g];
  if (ix->built) return OL_OK;
  H5G_info_t info;
  if (H5Gget_info(c->group[g], &info) < 0)
    return ol_error("%s: cannot list group '%s'", c->path, group_names[g]);
  hsize_t file_size = 0;
  H5Fget_filesize(c->file, &file_size);
  if (info.nlinks > MAX_DATASETS || info.nlinks > file_size / MIN_DATASET_BYTES)
    return ol_error("%s: group '%s' claims %llu datasets, more than the file (%llu bytes) holds "
                    "(the file is corrupt)", c->path, group_names[g],
                    (unsigned long long)info.nlinks, (unsigned long long)file_size);
  collect_ctx ctx = {ix, (size_t)info.nlinks};
  ix->e = ol_calloc(ctx.cap ? ctx.cap : 1, sizeof *ix->e);  /* (nlinks,) */
  hsize_t idx = 0;
  int rc = OL_OK;
  /* In the stored order, sorted below: HDF5 1.10 sorts a large group's names in a table whose
   * release after a corrupt entry frees garbage; the native order walks the index directly. */
  if (H5Literate(c->group[g], H5_INDEX_NAME, H5_ITER_NATIVE, &idx, collect_name, &ctx) < 0)
    rc = ol_error("%s: cannot list group '%s' (the file is corrupt)", c->path, group_names[g]);
  if (rc == OL_OK) qsort(ix->e, ix->n, sizeof *ix->e, entry_cmp);
  for (size_t i = 0; rc == OL_OK && i < ix->n; i++) rc = entry_shape(c, g, &ix->e[i]);
  if (rc != OL_OK) {
    index_clear(ix);
    return rc;
  }
  ix->built = 1;
  return OL_OK;
}

int ol_ckpt_count(ol_ckpt *c, ol_ckpt_group g, size_t *n) {
  OL_CHECK(c && !c->tmp && (unsigned)g < OL_GROUP_COUNT);
  OL_TRY(build_index(c, g));
  *n = c->index[g].n;
  return OL_OK;
}

int ol_ckpt_info(ol_ckpt *c, ol_ckpt_group g, size_t i, char *name, size_t name_size, int *ndim,
                 size_t *shape) {
  OL_CHECK(c && !c->tmp && (unsigned)g < OL_GROUP_COUNT);
  OL_TRY(build_index(c, g));
  const ckpt_index *ix = &c->index[g];
  if (i >= ix->n)
    return ol_error("%s: group '%s' has %zu datasets, no index %zu", c->path, group_names[g],
                    ix->n, i);
  const ckpt_entry *e = &ix->e[i];
  if (strlen(e->name) >= name_size)
    return ol_error("%s: dataset name '%s/%s' is longer than %zu bytes", c->path, group_names[g],
                    e->name, name_size - 1);
  ol_strlcpy(name, e->name, name_size);
  *ndim = e->ndim;
  memcpy(shape, e->shape, (size_t)e->ndim * sizeof *shape);
  return OL_OK;
}

int ol_ckpt_read(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim, const size_t *shape,
                 float *dst) {
  OL_CHECK(c && !c->tmp && (unsigned)g < OL_GROUP_COUNT);
  OL_CHECK(ndim >= 1 && ndim <= OL_MAX_DIMS);
  char what[512];
  snprintf(what, sizeof what, "%s/%s", group_names[g], name);
  OL_TRY(ol_h5_check_name(c->path, name));
  hid_t dset;
  OL_TRY(ol_h5_open_dataset(c->group[g], c->path, name, what, &dset));
  int rc = ol_h5_check_shape(dset, c->path, what, ndim, shape);
  size_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  if (rc == OL_OK && n > 0) rc = ol_h5_read_floats(dset, H5S_ALL, H5S_ALL, n, c->path, what, dst);
  ol_h5_free(dset);
  return rc;
}

int ol_ckpt_read_slice(ol_ckpt *c, ol_ckpt_group g, const char *name, int ndim,
                       const size_t *shape, const size_t *start, const size_t *count, float *dst) {
  OL_CHECK(c && !c->tmp && (unsigned)g < OL_GROUP_COUNT);
  OL_CHECK(ndim >= 1 && ndim <= OL_MAX_DIMS);
  char what[512];
  snprintf(what, sizeof what, "%s/%s", group_names[g], name);
  OL_TRY(ol_h5_check_name(c->path, name));
  for (int i = 0; i < ndim; i++) OL_CHECK(start[i] <= shape[i] && count[i] <= shape[i] - start[i]);
  hid_t dset;
  OL_TRY(ol_h5_open_dataset(c->group[g], c->path, name, what, &dset));
  int rc = ol_h5_check_shape(dset, c->path, what, ndim, shape);
  if (rc == OL_OK) rc = ol_h5_read_slice(dset, c->path, what, ndim, start, count, dst);
  ol_h5_free(dset);
  return rc;
}

void ol_ckpt_close(ol_ckpt *c) {
  if (!c) return;
  ckpt_close_handles(c);
  /* a writer closed without finishing: discard its tmp file (a parallel one's is the caller's) */
  if (c->tmp && !c->parallel) unlink(c->tmp);
  ckpt_free(c);
}

/* ---- the checkpoint directory ---------------------------------------------------------- */

void ol_ckpt_path(char *buf, size_t size, const char *dir, int64_t step) {
  snprintf(buf, size, "%s/step-%08lld.h5", dir, (long long)step);
}

/* The step of a file name "step-<digits>.h5" (suffix "" ) or "step-<digits>.h5.tmp" (".tmp"),
 * else -1. */
static int64_t step_of(const char *name, const char *suffix) {
  if (strncmp(name, "step-", 5) != 0) return -1;
  const char *p = name + 5, *q = p;
  while (*q >= '0' && *q <= '9') q++;
  if (q - p < 8 || q - p > 18) return -1;
  char rest[16];
  snprintf(rest, sizeof rest, ".h5%s", suffix);
  if (strcmp(q, rest) != 0) return -1;
  return strtoll(p, NULL, 10);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* The steps of the files in dir named like a checkpoint (suffix "") or its temporary file
 * (".tmp"), ascending. A missing directory holds none. */
static int list_steps(const char *dir, const char *suffix, int64_t **steps, size_t *n) {
  *steps = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (!d) {
    if (errno == ENOENT) return OL_OK;
    return ol_error("%s: cannot list the checkpoint directory: %s", dir, strerror(errno));
  }
  size_t cap = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    int64_t s = step_of(e->d_name, suffix);
    if (s < 0) continue;
    *steps = ol_grow(*steps, *n, &cap, sizeof **steps);
    (*steps)[(*n)++] = s;
  }
  closedir(d);
  if (*n) qsort(*steps, *n, sizeof **steps, cmp_i64);
  return OL_OK;
}

int ol_ckpt_list(const char *dir, int64_t **steps, size_t *n) {
  return list_steps(dir, "", steps, n);
}

int ol_ckpt_prune(const char *dir, size_t keep) {
  int64_t *steps, *tmps;
  size_t n, nt;
  OL_TRY(list_steps(dir, "", &steps, &n));
  int rc = list_steps(dir, ".tmp", &tmps, &nt);
  char path[4096];
  for (size_t i = 0; rc == OL_OK && keep > 0 && i + keep < n; i++) {
    ol_ckpt_path(path, sizeof path, dir, steps[i]);
    if (unlink(path) != 0 && errno != ENOENT)
      rc = ol_error("%s: cannot delete an old checkpoint: %s", path, strerror(errno));
  }
  /* temporary files of writes that died, older than the newest complete checkpoint */
  for (size_t i = 0; rc == OL_OK && n > 0 && i < nt && tmps[i] <= steps[n - 1]; i++) {
    ol_ckpt_path(path, sizeof path, dir, tmps[i]);
    ol_ckpt_discard(path);
  }
  ol_free(steps);
  ol_free(tmps);
  return rc;
}
