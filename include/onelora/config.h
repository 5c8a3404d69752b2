/* The LLaMA model configuration, as stored in the model file's root attributes. */
#ifndef ONELORA_CONFIG_H
#define ONELORA_CONFIG_H

#include <stdint.h>

typedef struct {
  int64_t dim;          /* D, model width */
  int64_t n_layers;     /* L */
  int64_t n_heads;      /* H, query heads */
  int64_t n_kv_heads;   /* Hkv, key/value heads (GQA when < H) */
  int64_t ffn_dim;      /* F, SwiGLU hidden width */
  int64_t vocab_size;   /* V */
  int64_t max_seq_len;  /* longest T the model accepts */
  double norm_eps;      /* RMSNorm epsilon */
  double rope_theta;    /* RoPE base */
  /* Optional (absent = 0): the projections carry frozen biases, as after merging BitFit.
   * Hugging Face's config flags of the same names. */
  int64_t attention_bias; /* q, k, v, o have a "<module>.bias" dataset */
  int64_t mlp_bias;       /* gate, up, down have one */
} ol_config;

/* Checks the config for internal consistency; on failure records a message naming `what`
 * (a file or preset name) and the bad field. */
int ol_config_validate(const ol_config *c, const char *what);
/* Checks that a (e.g. a checkpoint's) has the same shape as b (the model); errors name `what`. */
int ol_config_match(const ol_config *a, const ol_config *b, const char *what);

#endif
