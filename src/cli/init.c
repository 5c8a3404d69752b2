/* onelora init: a random model from a preset, with any field overridden by a flag. */
#include <string.h>

#include "cli.h"
#include "onelora/io.h"
#include "onelora/model.h"

int ol_cmd_init(int argc, char **argv) {
  const char *preset = "tiny", *out = NULL, *dtype_s = "f32";
  int64_t seed = 0, dim = -1, layers = -1, heads = -1, kv = -1, ffn = -1, vocab = -1, maxt = -1;
  const ol_arg args[] = {
      {"--preset", OL_ARG_STR, &preset, "P", "tiny | small | llama2-7b | llama2-13b (tiny)"},
      {"--out", OL_ARG_STR, &out, "M.h5", "output model file"},
      {"--seed", OL_ARG_INT, &seed, "S", "random seed (0)"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 on disk (f32)"},
      {"--dim", OL_ARG_INT, &dim, "D", "override the model width"},
      {"--layers", OL_ARG_INT, &layers, "L", "override the number of layers"},
      {"--heads", OL_ARG_INT, &heads, "H", "override the number of query heads"},
      {"--kv-heads", OL_ARG_INT, &kv, "K", "override the number of key/value heads"},
      {"--ffn", OL_ARG_INT, &ffn, "F", "override the SwiGLU width"},
      {"--vocab", OL_ARG_INT, &vocab, "V", "override the vocabulary size"},
      {"--max-seq-len", OL_ARG_INT, &maxt, "T", "override the longest sequence"},
  };
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
  if (ol_preset(preset, &cfg) != OL_OK || ol_dtype_parse(dtype_s, &dtype) != OL_OK)
    return ol_cli_fail();
  if (dtype == OL_DTYPE_BF16) {
    ol_error("--dtype bf16: model files hold f32 or f16");
    return ol_cli_fail();
  }
  if (seed < 0) {
    ol_error("--seed must be >= 0, got %lld", (long long)seed);
    return ol_cli_fail();
  }
  if (dim >= 0) cfg.dim = dim;
  if (layers >= 0) cfg.n_layers = layers;
  if (heads >= 0) cfg.n_heads = heads;
  if (kv >= 0) cfg.n_kv_heads = kv;
  if (ffn >= 0) cfg.ffn_dim = ffn;
  if (vocab >= 0) cfg.vocab_size = vocab;
  if (maxt >= 0) cfg.max_seq_len = maxt;
  if (ol_config_validate(&cfg, "onelora init") != OL_OK) return ol_cli_fail();
  ol_method frozen;
  ol_model m;
  if (ol_method_parse("none", "all", 1, 1.0, &frozen) != OL_OK ||
      ol_model_build(&m, &cfg, &frozen) != OL_OK)
    return ol_cli_fail();
  ol_model_randomize(&m, (uint64_t)seed);
  int rc = ol_model_save(&m, out, dtype);
  ol_model_free(&m);
  if (rc != OL_OK) return ol_cli_fail();
  ol_info("wrote %s: D=%lld L=%lld H=%lld Hkv=%lld F=%lld V=%lld max_seq_len=%lld (%s)", out,
          (long long)cfg.dim, (long long)cfg.n_layers, (long long)cfg.n_heads,
          (long long)cfg.n_kv_heads, (long long)cfg.ffn_dim, (long long)cfg.vocab_size,
          (long long)cfg.max_seq_len, ol_dtype_name(dtype));
  return 0;
}
