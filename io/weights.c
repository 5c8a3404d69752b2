/* A model's weights, whatever their format: an onelora model file (HDF5) or a Hugging Face
 * directory (config.json and safetensors). A directory is read as Hugging Face's. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf.h"
#include "onelora/core/core.h"
#include "onelora/io/weights.h"

struct ol_weights {
  ol_h5model *h5;  /* exactly one of the two */
  ol_hf *hf;
  char *path;      /* the HDF5 file's path (for mapping) */
};

int ol_weights_open(const char *path, ol_weights **out, ol_config *cfg) {
  *out = NULL;
  ol_weights *w = ol_calloc(1, sizeof *w);
  int rc = ol_hf_is_dir(path) ? ol_hf_open(path, &w->hf, cfg) : ol_h5model_open(path, &w->h5, cfg);
  if (rc != OL_OK) {
    ol_free(w);
    return rc;
  }
  size_t n = strlen(path) + 1;
  w->path = ol_calloc(n, 1);
  memcpy(w->path, path, n);
  *out = w;
  return OL_OK;
}


int ol_weights_tied(const ol_weights *w) { return w->hf ? ol_hf_tied(w->hf) : 0; }

int ol_weights_check(ol_weights *w, const char *name, int ndim, const size_t *shape) {
  return w->hf ? ol_hf_check(w->hf, name, ndim, shape) : ol_h5model_check(w->h5, name, ndim, shape);
}

int ol_weights_read(ol_weights *w, const char *name, int ndim, const size_t *shape,
                    const size_t *start, const size_t *count, float *dst) {
  return w->hf ? ol_hf_read(w->hf, name, ndim, shape, start, count, dst)
               : ol_h5model_read(w->h5, name, ndim, shape, start, count, dst);
}

/* Tensor `name`'s file, stored dtype and the offset of its first byte (UINT64_MAX, with the
 * reason in why, when its bytes are not contiguous). */
static int locate(ol_weights *w, const char *name, const char **file, ol_dtype *dtype,
                  uint64_t *offset, char *why, size_t why_size) {
  *file = w->path;
  if (w->hf) return ol_hf_locate(w->hf, name, file, dtype, offset);
  return ol_h5model_locate(w->h5, name, dtype, offset, why, why_size);
}

int ol_weights_dtype(ol_weights *w, const char *name, ol_dtype *out) {
  const char *file;
  uint64_t offset;
  char why[160];
  return locate(w, name, &file, out, &offset, why, sizeof why);
}

int ol_weights_map(ol_weights *w, const char *name, const size_t *shape, const size_t *start,
                   const size_t *count, ol_dtype dtype, ol_map *map, const void **ptr, char *why,
                   size_t why_size) {
  *ptr = NULL;
  map->base = NULL, map->length = 0;
  const char *file;
  ol_dtype stored;
  uint64_t offset;
  OL_TRY(locate(w, name, &file, &stored, &offset, why, why_size));
  if (offset == UINT64_MAX) return OL_OK;
  if (stored != dtype) {
    snprintf(why, why_size, "'%s' is stored as %s, held as %s", name, ol_dtype_name(stored),
             ol_dtype_name(dtype));
    return OL_OK;
  }
  const size_t es = dtype == OL_DTYPE_F32 ? 4 : 2, row = shape[1] * es;
  if (offset % es) {  // a safetensors header not padded to alignment (the format allows it)
    snprintf(why, why_size, "'%s' starts at byte %llu, not a multiple of its %zu-byte values", name,
             (unsigned long long)offset, es);
    return OL_OK;
  }
  const uint64_t first = offset + start[0] * row + start[1] * es;  // element (start0, start1)
  const uint64_t end = offset + (start[0] + count[0]) * row;       // after the last row
  const long page = sysconf(_SC_PAGESIZE);
  const uint64_t base = first / (uint64_t)page * (uint64_t)page;
  int fd = open(file, O_RDONLY);
  if (fd < 0) return ol_error("%s: cannot open: %s", file, strerror(errno));
  struct stat st;
  int rc = fstat(fd, &st) == 0 ? OL_OK : ol_error("%s: cannot stat: %s", file, strerror(errno));
  if (rc == OL_OK && (uint64_t)st.st_size < end)  // validated headers make this a changed file
    rc = ol_error("%s: tensor '%s' ends at byte %llu, past the file's %lld", file, name,
                  (unsigned long long)end, (long long)st.st_size);
  void *p = MAP_FAILED;
  if (rc == OL_OK && count[0] > 0) {
    p = mmap(NULL, (size_t)(end - base), PROT_READ, MAP_SHARED, fd, (off_t)base);
    if (p == MAP_FAILED) snprintf(why, why_size, "mmap of '%s' failed: %s", name, strerror(errno));
  }
  close(fd);
  if (rc != OL_OK || p == MAP_FAILED) return rc;
  map->base = p, map->length = (size_t)(end - base);
  *ptr = (const char *)p + (first - base);
  return OL_OK;
}

void ol_unmap(ol_map *map) {
  if (map->base) munmap(map->base, map->length);
  map->base = NULL, map->length = 0;
}

void ol_weights_close(ol_weights *w) {
  if (!w) return;
  ol_hf_close(w->hf);
  ol_h5model_close(w->h5);
  ol_free(w->path);
  ol_free(w);
}
