/* Fuzz target: the safetensors reader (io/safetensors_read.c, jansson for the header) as the
 * Hugging Face import will use it: open and validate the header, then read the final norm
 * (D = 16 in the seeds) whole and as a slice. */
#include "fuzz.h"

#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_setup("safetensors");
  fuzz_write_input(path, data, size);
  ol_st_reader *r = NULL;
  int rc = ol_st_open(path, &r);
  float got[16];  /* (16) */
  size_t shape = 16, zero = 0, half = 8;
  if (rc == OL_OK && ol_st_has(r, "model.norm.weight")) {
    rc = ol_st_read(r, "model.norm.weight", 1, &shape, &zero, &shape, got);
    if (rc == OL_OK) rc = ol_st_read(r, "model.norm.weight", 1, &shape, &half, &half, got);
  }
  ol_st_close(r);
  fuzz_expect_clean(rc, path);
  return 0;
}
