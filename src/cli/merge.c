/* onelora merge: fold a checkpoint's trained state into the model's weights and write a plain
 * model that needs no adapters: an HDF5 model file (OUT.h5) or a Hugging Face directory
 * (config.json + model.safetensors). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/train/state.h"
#include "onelora/io/files.h"
#include "onelora/core/core.h"

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* BitFit merges into per-projection biases. Hugging Face's flags cover a whole group (q,k,v,o or
 * gate,up,down), so a targeted group gets biases on every projection, zero where untargeted. */
static void bitfit_bias_flags(const ol_method *method, ol_config *cfg) {
  if (!ol_method_with(method, offsetof(ol_adapter_ops, merges_bias))) return;
  const unsigned attn = 1u << OL_Q | 1u << OL_K | 1u << OL_V | 1u << OL_O;
  const unsigned mlp = 1u << OL_GATE | 1u << OL_UP | 1u << OL_DOWN;
  if (method->targets & attn) cfg->attention_bias = 1;
  if (method->targets & mlp) cfg->mlp_bias = 1;
}

/* The biases the merged model has and the source file's config does not start at zero. */
static void mark_new_biases(ol_model *m, const ol_config *src) {
  for (size_t l = 0; l < (size_t)m->cfg.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_tensor *b = &m->blocks[l].bias[p];
      if (b->ndim && !(p <= OL_O ? src->attention_bias : src->mlp_bias)) b->not_in_file = 1;
    }
}

/* The model is built from the checkpoint's method and rank before any tensor is read, so a
 * corrupt rank must not size it: it is at most the model's widest layer, and the checkpoint
 * holds every trainable value (4 bytes each, in group params). */
static int check_ckpt_fits(const char *ckpt_path, const ol_config *cfg, const ol_method *method,
                           uint64_t seed) {
  int64_t widest = cfg->dim > cfg->ffn_dim ? cfg->dim : cfg->ffn_dim;
  if (method->rank > widest)
    return ol_error("%s: rank %lld is more than the model's widest layer (%lld): the file is "
                    "corrupt", ckpt_path, (long long)method->rank, (long long)widest);
  size_t bytes;
  OL_TRY(ol_file_size(ckpt_path, &bytes));
  ol_model plan = {0};
  OL_TRY(ol_model_layout(&plan, cfg, method, seed));
  size_t trainable = ol_model_trainable(&plan);
  ol_model_free(&plan);
  if ((double)trainable * sizeof(float) > (double)bytes)
    return ol_error("%s: method '%s' trains %zu values, more than the file's %zu bytes hold: "
                    "the file is truncated or corrupt", ckpt_path, method->text, trainable, bytes);
  return OL_OK;
}

static int merge(const char *model_path, const char *ckpt_path, const char *out, ol_dtype dtype,
                 int hf) {
  ol_ckpt *c = NULL;
  ol_weights *mf = NULL;
  ol_ckpt_meta meta;
  ol_config cfg, merged_cfg;
  ol_method method;
  ol_model m = {0};
  char what[4200];
  snprintf(what, sizeof what, "checkpoint %s", ckpt_path);
  int rc = ol_ckpt_open(ckpt_path, &c, &meta);
  if (rc == OL_OK) rc = ol_weights_open(model_path, &mf, &cfg);
  if (rc == OL_OK) rc = ol_config_match(&meta.cfg, &cfg, what);
  if (rc == OL_OK)
    rc = ol_method_parse(meta.method, meta.targets, meta.rank, (double)meta.alpha_x1000 / 1000.0,
                         &method);
  if (rc == OL_OK) {
    merged_cfg = cfg;
    bitfit_bias_flags(&method, &merged_cfg);
    rc = check_ckpt_fits(ckpt_path, &merged_cfg, &method, meta.seed);
  }
  if (rc == OL_OK) rc = ol_model_build(&m, &merged_cfg, &method, meta.seed);
  if (rc == OL_OK) {
    mark_new_biases(&m, &cfg);
    rc = ol_model_load(&m, mf);
  }
  if (rc == OL_OK) rc = ol_state_load(&m.params, &m.generated, c, 0);
  if (rc == OL_OK) {
    ol_model_merge(&m);
    rc = hf ? ol_model_save_hf(&m, out, dtype) : ol_model_save(&m, out, dtype);
  }
  if (rc == OL_OK)
    ol_info("merged %s (method %s, step %lld) into %s -> %s (%s%s)", ckpt_path, meta.method,
            (long long)meta.step, model_path, out, hf ? "Hugging Face directory, " : "",
            ol_dtype_name(dtype));
  ol_weights_close(mf);
  if (c) ol_ckpt_close(c);
  ol_model_free(&m);
  return rc;
}

int ol_cmd_merge(int argc, char **argv) {
  const char *model = NULL, *ckpt = NULL, *out = NULL, *dtype_s = "f32";
  const ol_arg args[] = {
      {"--model", OL_ARG_STR, &model, "M.h5|DIR", "the model the checkpoint was trained from (file or HF directory)"},
      {"--ckpt", OL_ARG_STR, &ckpt, "C.h5", "checkpoint file"},
      {"--out", OL_ARG_STR, &out, "OUT", "OUT.h5, OUT.safetensors or a Hugging Face directory"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 on disk (f32)"},
  };
  int help;
  if (ol_args_parse("merge",
                    "--model M.h5 --ckpt C.h5 --out OUT.h5|OUT.safetensors|DIR [--dtype f16]\n\n"
                    "Folds the checkpoint's adapters (or fully trained weights) into the model.\n"
                    "--out ending in .h5 writes a model file; ending in .safetensors, that file\n"
                    "with a Hugging Face config.json beside it; any other path is a directory\n"
                    "(created if missing) that gets Hugging Face config.json + model.safetensors,\n"
                    "with the model file's tensor names. BitFit merges into biases: the merged\n"
                    "config sets attention_bias / mlp_bias for each group it targeted.",
                    argc, argv, args, sizeof args / sizeof args[0], &help, NULL, 0, NULL) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  ol_dtype dtype;
  int rc = OL_OK;
  if (!model) rc = ol_error("onelora merge: --model is required");
  else if (!ckpt) rc = ol_error("onelora merge: --ckpt is required");
  else if (!out) rc = ol_error("onelora merge: --out is required");
  else if (ol_dtype_parse(dtype_s, &dtype) != OL_OK || dtype == OL_DTYPE_BF16)
    rc = ol_error("--dtype: expected f32 or f16, got '%s'", dtype_s);
  if (rc == OL_OK) rc = merge(model, ckpt, out, dtype, !ends_with(out, ".h5"));
  return rc == OL_OK ? 0 : ol_cli_fail();
}
