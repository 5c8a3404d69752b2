/* onelora init: a random model from a preset, with any field overridden by a flag. */
#include <string.h>

#include "cli.h"
#include "onelora/model/model.h"
#include "onelora/core/core.h"

/* Generates rows [r0, r0 + n) of a tensor: its synthetic values as a slice of rows. */
typedef struct {
  const ol_tensor *t;
  uint64_t seed;
} synthetic_rows;

static const float *generate_rows(void *ctx, size_t r0, size_t n, float *scratch) {
  const synthetic_rows *g = ctx;
  ol_tensor slab = *g->t;
  slab.start[0] = r0, slab.count[0] = n;
  ol_tensor_randomize(&slab, scratch, g->seed);  // scratch (n, shape[1]) or (n)
  return scratch;
}

int ol_cmd_init(int argc, char **argv) {
  const char *out = NULL, *dtype_s = "f32";
  int64_t seed = 0;
  ol_shape_args shape;
  ol_arg args[3 + OL_SHAPE_NARGS] = {
      {"--out", OL_ARG_STR, &out, "M.h5", "output model file"},
      {"--seed", OL_ARG_INT, &seed, "S", "random seed (0)"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 | bf16 on disk (f32)"},
  };
  ol_shape_flags(&shape, args + 3);
  int help;
  if (ol_args_parse("init", "--out M.h5 [--preset P] [overrides]\n\nWrites a model file with "
                    "weights ~ N(0, 0.02) and norms = 1.", argc, argv, args,
                    sizeof args / sizeof args[0], &help, NULL, 0, NULL) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  ol_config cfg;
  ol_dtype dtype;
  if (!out) {
    ol_error("onelora init: --out is required");
    return ol_cli_fail();
  }
  if (ol_shape_config(&shape, &cfg) != OL_OK || ol_dtype_parse(dtype_s, &dtype) != OL_OK)
    return ol_cli_fail();
  if (seed < 0) {
    ol_error("--seed must be >= 0, got %lld", (long long)seed);
    return ol_cli_fail();
  }
  ol_method frozen;
  ol_model m;  // laid out only: tensors are generated and written a block of rows at a time,
               // so a 70B model needs a few MiB, not the model's size
  if (ol_method_parse("none", "all", 1, 1.0, &frozen) != OL_OK ||
      ol_model_layout(&m, &cfg, &frozen, (uint64_t)seed) != OL_OK)
    return ol_cli_fail();
  size_t total = 0, done = 0;  // values in the model, values written so far
  for (size_t i = 0; i < m.n_tensors; i++) total += ol_tensor_numel(m.tensors[i]);
  ol_h5model *f = NULL;
  int rc = ol_h5model_create(out, &cfg, &f);
  double t0 = ol_now(), last = t0;
  for (size_t i = 0; rc == OL_OK && i < m.n_tensors; i++) {
    const ol_tensor *t = m.tensors[i];
    synthetic_rows gen = {t, (uint64_t)seed};
    rc = ol_h5model_write_rows(f, t->name, t->ndim, t->shape, dtype, generate_rows, &gen);
    done += ol_tensor_numel(t);
    if (ol_now() - last > 5.0) {  // progress on long writes
      last = ol_now();
      const double frac = (double)done / (double)total, bytes = dtype == OL_DTYPE_F16 ? 2 : 4;
      ol_info("init: %zu/%zu tensors, %.2f/%.2f GB (%.0f%%), %.0f s, ETA %.0f s", i + 1,
              m.n_tensors, (double)done * bytes / 1e9, (double)total * bytes / 1e9, 100 * frac,
              last - t0, (last - t0) * (1 - frac) / frac);
    }
  }
  if (f && rc != OL_OK) ol_h5model_close(f);  // discards the temporary file: nothing committed
  else if (f) rc = ol_h5model_finish(f);
  ol_model_free(&m);
  if (rc != OL_OK) return ol_cli_fail();
  ol_info("wrote %s: D=%lld L=%lld H=%lld Hkv=%lld F=%lld V=%lld max_seq_len=%lld (%s) in %.1f s, "
          "peak RSS %.1f MiB", out, (long long)cfg.dim, (long long)cfg.n_layers,
          (long long)cfg.n_heads, (long long)cfg.n_kv_heads, (long long)cfg.ffn_dim,
          (long long)cfg.vocab_size, (long long)cfg.max_seq_len, ol_dtype_name(dtype),
          ol_now() - t0, (double)ol_peak_rss_bytes() / 1048576.0);
  return 0;
}
