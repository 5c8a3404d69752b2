/* The model-shape flags shared by init and bench: a preset, then any field overridden. */
#include "cli.h"
#include "onelora/model/model.h"
#include "onelora/core/core.h"

void ol_shape_flags(ol_shape_args *s, ol_arg *out) {
  s->preset = "tiny";
  s->dim = s->layers = s->heads = s->kv = s->ffn = s->vocab = s->maxt = -1;
  const ol_arg args[OL_SHAPE_NARGS] = {
      {"--preset", OL_ARG_STR, &s->preset, "P",
       "tiny | small | llama2-7b | llama2-13b | llama2-70b (tiny)"},
      {"--dim", OL_ARG_INT, &s->dim, "D", "override the model width"},
      {"--layers", OL_ARG_INT, &s->layers, "L", "override the number of layers"},
      {"--heads", OL_ARG_INT, &s->heads, "H", "override the number of query heads"},
      {"--kv-heads", OL_ARG_INT, &s->kv, "K", "override the number of key/value heads"},
      {"--ffn", OL_ARG_INT, &s->ffn, "F", "override the SwiGLU width"},
      {"--vocab", OL_ARG_INT, &s->vocab, "V", "override the vocabulary size"},
      {"--max-seq-len", OL_ARG_INT, &s->maxt, "T", "override the longest sequence"},
  };
  for (int i = 0; i < OL_SHAPE_NARGS; i++) out[i] = args[i];
}

int ol_shape_config(const ol_shape_args *s, ol_config *cfg) {
  OL_TRY(ol_preset(s->preset, cfg));
  if (s->dim >= 0) cfg->dim = s->dim;
  if (s->layers >= 0) cfg->n_layers = s->layers;
  if (s->heads >= 0) cfg->n_heads = s->heads;
  if (s->kv >= 0) cfg->n_kv_heads = s->kv;
  if (s->ffn >= 0) cfg->ffn_dim = s->ffn;
  if (s->vocab >= 0) cfg->vocab_size = s->vocab;
  if (s->maxt >= 0) cfg->max_seq_len = s->maxt;
  return ol_config_validate(cfg, s->preset);
}
