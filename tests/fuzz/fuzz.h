/* What the fuzz targets of onelora's file readers share (tests/fuzz/README.md).
 *
 * Each target defines LLVMFuzzerTestOneInput: it writes the input bytes to a temporary file and
 * runs one reader on it the way the CLI does. The contract it checks: the reader accepts the
 * file, or rejects it with one recorded error line that names the file; it never crashes,
 * hangs, allocates by garbage or leaves an HDF5 object open. A broken contract aborts, which
 * the driver (driver.c) and libFuzzer both report as a finding. */
#ifndef ONELORA_FUZZ_H
#define ONELORA_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Counters the driver prints: inputs run, and those the reader rejected with an error line. */
extern size_t fuzz_inputs_run, fuzz_inputs_rejected;

/* Once per process: HDF5's own error printing off, the cpu backend, the temporary file's path
 * "<TMPDIR or /dev/shm>/onelora-fuzz-<pid>-<name>.h5" (removed at exit). */
const char *fuzz_setup(const char *name);
/* Writes the input to the temporary file; aborts when it cannot (that is no finding). */
void fuzz_write_input(const char *path, const uint8_t *data, size_t size);
/* After a reader ran: rc = OL_OK, or an error line that names path (else abort). Counts it. */
void fuzz_expect_clean(int rc, const char *path);
/* Aborts when an HDF5 file, group, dataset, attribute or type id is still open. */
void fuzz_expect_no_open_ids(const char *path);
/* Aborts with a message: a broken contract. */
void fuzz_fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

#endif
