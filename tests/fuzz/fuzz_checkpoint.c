/* Fuzz target: the checkpoint reader as `onelora inspect CKPT.h5 --moments` runs it (open, the
 * root attributes, list every group, read every dataset in full, the statistics and per-layer
 * tables), in-process. Its tables go to stdout, which the driver and libFuzzer discard. */
#include "fuzz.h"

#include "cli/cli.h"
#include "onelora/core/core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_setup("checkpoint");
  fuzz_write_input(path, data, size);
  char *argv[] = {"inspect", (char *)path, "--moments", NULL};
  int status = ol_cmd_inspect(3, argv);
  fuzz_expect_clean(status == 0 ? OL_OK : OL_ERR, path);
  fuzz_expect_no_open_ids(path);
  return 0;
}
