/* Fuzz target: the token-data reader as `onelora train` runs it (open, vocab_size, both splits),
 * reading every token of both splits in windows, in-process. */
#include "fuzz.h"

#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"

#define WINDOW 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_setup("data");
  fuzz_write_input(path, data, size);
  static int32_t tokens[WINDOW];  /* (WINDOW,) one window of a split */
  ol_dataset *d = NULL;
  int rc = ol_dataset_open(path, &d);
  for (int s = 0; rc == OL_OK && s < 2; s++) {
    size_t n = ol_dataset_len(d, (ol_split)s);
    for (size_t start = 0; rc == OL_OK && start < n; start += WINDOW) {
      size_t count = n - start < WINDOW ? n - start : WINDOW;
      rc = ol_dataset_read(d, (ol_split)s, start, count, tokens);
    }
  }
  ol_dataset_close(d);
  fuzz_expect_clean(rc, path);
  fuzz_expect_no_open_ids(path);
  return 0;
}
