/* The shared part of the fuzz targets: the temporary file, the clean-rejection contract and the
 * open-id check (fuzz.h). */
#include "fuzz.h"

#include <hdf5.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

size_t fuzz_inputs_run, fuzz_inputs_rejected;

static char temp_path[512];

void fuzz_fail(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "fuzz: FINDING: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  fflush(stderr);
  abort();
}

static void remove_temp(void) {
  if (temp_path[0]) unlink(temp_path);
}

const char *fuzz_setup(const char *name) {
  if (temp_path[0]) return temp_path;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  ol_backend_set(ol_backend_cpu());
  const char *dir = getenv("TMPDIR");
  if (!dir || !dir[0]) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(temp_path, sizeof temp_path, "%s/onelora-fuzz-%ld-%s.h5", dir, (long)getpid(), name);
  atexit(remove_temp);
  return temp_path;
}

void fuzz_write_input(const char *path, const uint8_t *data, size_t size) {
  FILE *f = fopen(path, "wb");
  if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
    fprintf(stderr, "fuzz: cannot write the input to %s\n", path);
    exit(2);
  }
}

void fuzz_expect_clean(int rc, const char *path) {
  fuzz_inputs_run++;
  if (rc == OL_OK) return;
  fuzz_inputs_rejected++;
  const char *msg = ol_last_error();
  if (!strstr(msg, path)) fuzz_fail("the error does not name the file %s: '%s'", path, msg);
  if (strchr(msg, '\n')) fuzz_fail("the error spans lines: '%s'", msg);
  ol_clear_error();
}

void fuzz_expect_no_open_ids(const char *path) {
  ssize_t open_ids = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open_ids != 0)
    fuzz_fail("%zd HDF5 objects are still open after reading %s", open_ids, path);
}
