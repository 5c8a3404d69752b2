/* Plain files: the few disk accesses outside the formats (a checkpoint's size, deleting a
 * benchmark's file, reading text to tokenize). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "onelora/core/core.h"
#include "onelora/io/files.h"

int ol_file_size(const char *path, size_t *bytes) {
  *bytes = 0;
  struct stat st;
  if (stat(path, &st) != 0) return ol_error("%s: cannot stat: %s", path, strerror(errno));
  *bytes = (size_t)st.st_size;
  return OL_OK;
}

int ol_file_remove(const char *path) {
  if (unlink(path) != 0 && errno != ENOENT)
    return ol_error("%s: cannot delete: %s", path, strerror(errno));
  return OL_OK;
}

/* The buffer starts at the file's size, so a regular file is read with no copy; a stream
 * (a pipe, /dev/stdin) has no size and grows it by doubling. The bound counts the bytes read,
 * not the size stat reports, so an endless device is refused too. */
int ol_file_read(const char *path, size_t max_bytes, unsigned char **data, size_t *len) {
  *data = NULL, *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return ol_error("%s: cannot read: %s", path, strerror(errno));
  struct stat st;
  size_t cap = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
  if (cap > max_bytes) {
    fclose(f);
    return ol_error("%s: %zu bytes, more than the %zu accepted", path, cap, max_bytes);
  }
  cap = cap + 1 > 1 << 16 ? cap + 1 : 1 << 16;  // +1: the end of a regular file is seen in one read
  unsigned char *buf = ol_calloc(cap, 1);        // (cap,) bytes
  size_t n = 0, got;
  int rc = OL_OK;
  while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n > max_bytes) {
      rc = ol_error("%s: more than the %zu bytes accepted", path, max_bytes);
      break;
    }
    if (n == cap) {
      unsigned char *bigger = ol_calloc(2 * cap, 1);  // (2 cap,) bytes
      memcpy(bigger, buf, n);
      ol_free(buf);
      buf = bigger, cap *= 2;
    }
  }
  if (rc == OL_OK && ferror(f)) rc = ol_error("%s: cannot read: %s", path, strerror(errno));
  fclose(f);
  if (rc != OL_OK) {
    ol_free(buf);
    return rc;
  }
  *data = buf, *len = n;
  return OL_OK;
}
