/* Fuzz target: a Hugging Face directory's JSON (io/hf.c, jansson): config.json and
 * model.safetensors.index.json. The input is the config's bytes, then optionally a NUL and the
 * index's bytes (without: an index mapping tensor "pad" to a.safetensors); the directory
 * "<tmp>.d" gets them as its files, beside a.safetensors, one f32 tensor "pad" of 64 KiB: enough
 * bytes for the seeds' config. There is no model.safetensors, so the index is followed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#include "onelora/core/core.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"

#define PAD_FLOATS 16384

static char dir[4200], config[4300], index_path[4300], shard[4300];

static void remove_dir(void) {
  unlink(config), unlink(index_path), unlink(shard), rmdir(dir);
}

static void write_shard(void) {
  static float pad[PAD_FLOATS];  /* (PAD_FLOATS) zeros */
  ol_st_tensor t = {"pad", 1, {PAD_FLOATS}};
  ol_safetensors *s;
  if (ol_safetensors_create(shard, &t, 1, OL_DTYPE_F32, &s) != OL_OK ||
      ol_safetensors_write(s, "pad", pad) != OL_OK || ol_safetensors_finish(s) != OL_OK)
    fuzz_fail("cannot write %s: %s", shard, ol_last_error());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_setup("hf");
  if (!dir[0]) {
    snprintf(dir, sizeof dir, "%s.d", path);
    snprintf(config, sizeof config, "%s/config.json", dir);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    snprintf(shard, sizeof shard, "%s/a.safetensors", dir);
    mkdir(dir, 0700);
    atexit(remove_dir);
    write_shard();
  }
  const uint8_t *nul = memchr(data, 0, size);
  size_t n_config = nul ? (size_t)(nul - data) : size;
  fuzz_write_input(config, data, n_config);
  static const char default_index[] = "{\"weight_map\": {\"pad\": \"a.safetensors\"}}";
  if (nul) fuzz_write_input(index_path, nul + 1, size - n_config - 1);
  else fuzz_write_input(index_path, (const uint8_t *)default_index, sizeof default_index - 1);
  ol_config cfg;
  ol_weights *w = NULL;
  int rc = ol_weights_open(dir, &w, &cfg);
  ol_weights_close(w);
  fuzz_expect_clean(rc, path);
  return 0;
}
