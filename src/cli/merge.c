/* onelora merge: fold a checkpoint's trained state into the model's weights and write a plain
 * model file that needs no adapters. */
#include <stdio.h>

#include "cli.h"
#include "onelora/io.h"
#include "onelora/model.h"
#include "onelora/train.h"

static int merge(const char *model_path, const char *ckpt_path, const char *out, ol_dtype dtype) {
  ol_ckpt *c = NULL;
  ol_h5model *mf = NULL;
  ol_ckpt_meta meta;
  ol_config cfg;
  ol_method method;
  ol_model m = {0};
  char what[4200];
  snprintf(what, sizeof what, "checkpoint %s", ckpt_path);
  int rc = ol_ckpt_open(ckpt_path, &c, &meta);
  if (rc == OL_OK) rc = ol_h5model_open(model_path, &mf, &cfg);
  if (rc == OL_OK) rc = ol_config_match(&meta.cfg, &cfg, what);
  if (rc == OL_OK)
    rc = ol_method_parse(meta.method, meta.targets, meta.rank, (double)meta.alpha_x1000 / 1000.0,
                         &method);
  if (rc == OL_OK) rc = ol_model_build(&m, &cfg, &method, meta.seed);
  if (rc == OL_OK) rc = ol_model_load(&m, mf);
  if (rc == OL_OK) rc = ol_checkpoint_load(&m.params, &m.generated, c, ckpt_path, 0);
  if (rc == OL_OK) {
    ol_model_merge(&m);
    rc = ol_model_save(&m, out, dtype);
  }
  if (rc == OL_OK)
    ol_info("merged %s (method %s, step %lld) into %s -> %s (%s)", ckpt_path, meta.method,
            (long long)meta.step, model_path, out, ol_dtype_name(dtype));
  if (mf) ol_h5model_close(mf);
  if (c) ol_ckpt_close(c);
  ol_model_free(&m);
  return rc;
}

int ol_cmd_merge(int argc, char **argv) {
  const char *model = NULL, *ckpt = NULL, *out = NULL, *dtype_s = "f32";
  const ol_arg args[] = {
      {"--model", OL_ARG_STR, &model, "M.h5", "the model file the checkpoint was trained from"},
      {"--ckpt", OL_ARG_STR, &ckpt, "C.h5", "checkpoint file"},
      {"--out", OL_ARG_STR, &out, "OUT.h5", "merged model file"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 on disk (f32)"},
  };
  int help;
  if (ol_args_parse("merge", "--model M.h5 --ckpt C.h5 --out OUT.h5 [--dtype f16]\n\nFolds the "
                    "checkpoint's adapters (or fully trained weights) into the model.",
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
  if (rc == OL_OK) rc = merge(model, ckpt, out, dtype);
  return rc == OL_OK ? 0 : ol_cli_fail();
}
