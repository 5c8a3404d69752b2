/* onelora convert: a Hugging Face directory (or another model file) to an onelora model file,
 * tensor by tensor, so memory stays at one tensor whatever the model's size. */
#include "cli.h"
#include "onelora/model/model.h"
#include "onelora/core/core.h"

static const char *usage_text =
    "HF_DIR --out M.h5 [--dtype f32|f16|bf16]\n\n"
    "Writes the weights of a Hugging Face LLaMA directory (config.json plus model.safetensors or\n"
    "the shards of model.safetensors.index.json) as an onelora model file. Every dataset is\n"
    "contiguous and unfiltered, so a run with --weights-dtype equal to the file's dtype maps its\n"
    "slice instead of copying it. Tied embeddings are written as an explicit lm_head.weight.";

/* Reads tensor t whole from src and writes it to dst in dtype. */
static int convert_tensor(ol_weights *src, ol_h5model *dst, const ol_tensor *t, ol_dtype dtype) {
  const size_t start[2] = {0, 0};
  float *data = ol_calloc(ol_tensor_numel(t), sizeof(float));  // (numel) the whole tensor
  int rc = ol_weights_read(src, t->name, t->ndim, t->shape, start, t->shape, data);
  if (rc == OL_OK) rc = ol_h5model_write(dst, t->name, t->ndim, t->shape, data, dtype);
  ol_free(data);
  return rc;
}

int ol_cmd_convert(int argc, char **argv) {
  const char *out = NULL, *dtype_s = NULL;
  ol_arg args[] = {
      {"--out", OL_ARG_STR, &out, "M.h5", "output model file"},
      {"--dtype", OL_ARG_STR, &dtype_s, "T", "f32 | f16 | bf16 on disk (the source's)"},
  };
  char *pos[1];
  int help, npos = 0;
  if (ol_args_parse("convert", usage_text, argc, argv, args, sizeof args / sizeof args[0], &help,
                    pos, 1, &npos) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  if (npos != 1) {
    ol_error("onelora convert: give one source directory (see --help)");
    return ol_cli_fail();
  }
  if (!out) {
    ol_error("onelora convert: --out is required");
    return ol_cli_fail();
  }
  const char *src_path = pos[0];
  ol_config cfg;
  ol_weights *src = NULL;
  ol_dtype dtype = OL_DTYPE_F32;
  int rc = ol_weights_open(src_path, &src, &cfg);
  if (rc == OL_OK && dtype_s) rc = ol_dtype_parse(dtype_s, &dtype);
  else if (rc == OL_OK) rc = ol_weights_dtype(src, "model.embed_tokens.weight", &dtype);
  ol_method frozen;
  ol_model m = {0};  // laid out only: each tensor is read and written on its own
  if (rc == OL_OK) rc = ol_method_parse("none", "all", 1, 1.0, &frozen);
  if (rc == OL_OK) rc = ol_model_layout(&m, &cfg, &frozen, 0);
  for (size_t i = 0; rc == OL_OK && i < m.n_tensors; i++)  // all present before any is written
    rc = ol_weights_check(src, m.tensors[i]->name, m.tensors[i]->ndim, m.tensors[i]->shape);
  ol_h5model *dst = NULL;
  if (rc == OL_OK) rc = ol_h5model_create(out, &cfg, &dst);
  double t0 = ol_now(), last = t0;
  for (size_t i = 0; rc == OL_OK && i < m.n_tensors; i++) {
    rc = convert_tensor(src, dst, m.tensors[i], dtype);
    if (ol_now() - last > 5.0) {  // progress on long conversions
      last = ol_now();
      ol_info("convert: %zu/%zu tensors (%.0f s)", i + 1, m.n_tensors, last - t0);
    }
  }
  if (dst && rc != OL_OK) ol_h5model_close(dst);  // discards the temporary file
  else if (dst) rc = ol_h5model_finish(dst);
  if (rc == OL_OK)
    ol_info("converted %s -> %s: %zu tensors, %s%s (%.1f s)", src_path, out, m.n_tensors,
            ol_dtype_name(dtype), ol_weights_tied(src) ? ", tied lm_head written out" : "",
            ol_now() - t0);
  ol_weights_close(src);
  ol_model_free(&m);
  return rc == OL_OK ? 0 : ol_cli_fail();
}
