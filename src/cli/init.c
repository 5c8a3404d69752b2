/* onelora init: a random model from a preset, with any field overridden by a flag. */
#include <string.h>

#include "cli.h"
#include "onelora/io.h"
#include "onelora/model.h"

int ol_cmd_init(int argc, char **argv) {
  const char *out = NULL, *dtype_s = "f32";
  int64_t seed = 0;
  ol_shape_args shape;
  ol_arg args[3 + OL_SHAPE_NARGS] = {
      {"--out", OL_ARG_STR, &out, "M.h5", "output model file"},
      {"--seed", OL_ARG_INT, &seed, "S", "random seed (0)"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 on disk (f32)"},
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
  if (dtype == OL_DTYPE_BF16) {
    ol_error("--dtype bf16: model files hold f32 or f16");
    return ol_cli_fail();
  }
  if (seed < 0) {
    ol_error("--seed must be >= 0, got %lld", (long long)seed);
    return ol_cli_fail();
  }
  ol_method frozen;
  ol_model m;  // laid out only: tensors are generated and written one at a time, so a 13B
               // model needs one tensor's memory, not the model's
  if (ol_method_parse("none", "all", 1, 1.0, &frozen) != OL_OK ||
      ol_model_layout(&m, &cfg, &frozen, (uint64_t)seed) != OL_OK)
    return ol_cli_fail();
  ol_h5model *f = NULL;
  int rc = ol_h5model_create(out, &cfg, &f);
  double t0 = ol_now(), last = t0;
  for (size_t i = 0; rc == OL_OK && i < m.n_tensors; i++) {
    const ol_tensor *t = m.tensors[i];
    float *data = ol_calloc(ol_tensor_numel(t), sizeof(float));  // (numel) one tensor
    ol_tensor_randomize(t, data, (uint64_t)seed);
    rc = ol_h5model_write(f, t->name, t->ndim, t->shape, data, dtype);
    ol_free(data);
    if (ol_now() - last > 5.0) {  // progress on long writes
      last = ol_now();
      ol_info("init: %zu/%zu tensors written (%.0f s)", i + 1, m.n_tensors, last - t0);
    }
  }
  if (f && rc != OL_OK) ol_h5model_close(f);  // discards the temporary file: nothing committed
  else if (f) rc = ol_h5model_finish(f);
  ol_model_free(&m);
  if (rc != OL_OK) return ol_cli_fail();
  ol_info("wrote %s: D=%lld L=%lld H=%lld Hkv=%lld F=%lld V=%lld max_seq_len=%lld (%s)", out,
          (long long)cfg.dim, (long long)cfg.n_layers, (long long)cfg.n_heads,
          (long long)cfg.n_kv_heads, (long long)cfg.ffn_dim, (long long)cfg.vocab_size,
          (long long)cfg.max_seq_len, ol_dtype_name(dtype));
  return 0;
}
