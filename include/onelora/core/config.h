/* The LLaMA model configuration, as stored in the model file's root attributes. */
#ifndef ONELORA_CORE_CONFIG_H
#define ONELORA_CORE_CONFIG_H

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

/* The largest values a model file or config.json may declare (checked before anything is sized
 * by them). */
#define OL_MAX_WIDTH ((int64_t)1 << 20)   /* dim, heads */
#define OL_MAX_LAYERS ((int64_t)1 << 14)
#define OL_MAX_FFN ((int64_t)1 << 22)
#define OL_MAX_VOCAB ((int64_t)1 << 31)   /* token ids are int32 */
#define OL_MAX_SEQ_LEN ((int64_t)1 << 31)

/* Checks the config for internal consistency; on failure records a message naming `what`
 * (a file or preset name) and the bad field. */
int ol_config_validate(const ol_config *c, const char *what);
/* The values of the embedding and the layers' projections: a lower bound on the weights a
 * file of this config holds, checked before a model is sized by its config. Fields within the
 * OL_MAX_* bounds cannot overflow it. */
uint64_t ol_config_min_values(const ol_config *c);
/* Checks that a (e.g. a checkpoint's) has the same shape as b (the model); errors name `what`. */
int ol_config_match(const ol_config *a, const ol_config *b, const char *what);

#endif
