/* Fuzz target: the model reader as `onelora train` and `merge` run it (open and validate the
 * config, build the model the config describes, load every tensor from the file), in-process. */
#include <string.h>

#include "fuzz.h"

#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"
#include "onelora/model/acts.h"
#include "onelora/peft/linear.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_setup("model");
  fuzz_write_input(path, data, size);
  ol_weights *file = NULL;
  ol_config cfg;
  ol_method method;
  ol_model model;
  memset(&model, 0, sizeof model);
  int rc = ol_weights_open(path, &file, &cfg);
  if (rc == OL_OK && ol_method_parse("1lora", "all", 1, 1.0, &method) != OL_OK)
    fuzz_fail("cannot parse the method: %s", ol_last_error());
  if (rc == OL_OK) rc = ol_model_build(&model, &cfg, &method, 1);
  if (rc == OL_OK) rc = ol_model_load(&model, file);
  ol_model_free(&model);
  ol_weights_close(file);
  fuzz_expect_clean(rc, path);
  fuzz_expect_no_open_ids(path);
  return 0;
}
