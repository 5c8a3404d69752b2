/* Validation of a model configuration, wherever it came from. */
#include <math.h>

#include "onelora/core/config.h"
#include "onelora/core/core.h"

int ol_config_validate(const ol_config *c, const char *what) {
  if (c->dim <= 0) return ol_error("%s: dim must be positive, got %lld", what, (long long)c->dim);
  if (c->n_layers <= 0)
    return ol_error("%s: n_layers must be positive, got %lld", what, (long long)c->n_layers);
  if (c->n_heads <= 0 || c->dim % c->n_heads != 0)
    return ol_error("%s: n_heads=%lld must be positive and divide dim=%lld", what,
                    (long long)c->n_heads, (long long)c->dim);
  if ((c->dim / c->n_heads) % 2 != 0)
    return ol_error("%s: head_dim=%lld must be even for RoPE", what, (long long)(c->dim / c->n_heads));
  if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads != 0)
    return ol_error("%s: n_kv_heads=%lld must be positive and divide n_heads=%lld", what,
                    (long long)c->n_kv_heads, (long long)c->n_heads);
  if (c->ffn_dim <= 0)
    return ol_error("%s: ffn_dim must be positive, got %lld", what, (long long)c->ffn_dim);
  if (c->vocab_size <= 1)
    return ol_error("%s: vocab_size must be at least 2, got %lld", what, (long long)c->vocab_size);
  if (c->max_seq_len <= 0)
    return ol_error("%s: max_seq_len must be positive, got %lld", what, (long long)c->max_seq_len);
  if (!(c->norm_eps > 0) || !isfinite(c->norm_eps))
    return ol_error("%s: norm_eps must be positive, got %g", what, c->norm_eps);
  if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
    return ol_error("%s: rope_theta must be positive, got %g", what, c->rope_theta);
  return OL_OK;
}

uint64_t ol_config_min_values(const ol_config *c) {
  uint64_t d = (uint64_t)c->dim, kv = d / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads;
  uint64_t per_layer = 2 * d * d + 2 * d * kv + 3 * d * (uint64_t)c->ffn_dim;  /* q o, k v, mlp */
  return (uint64_t)c->vocab_size * d + (uint64_t)c->n_layers * per_layer;
}

int ol_config_match(const ol_config *a, const ol_config *b, const char *what) {
  const int64_t va[] = {a->dim, a->n_layers, a->n_heads, a->n_kv_heads, a->ffn_dim, a->vocab_size};
  const int64_t vb[] = {b->dim, b->n_layers, b->n_heads, b->n_kv_heads, b->ffn_dim, b->vocab_size};
  const char *names[] = {"dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"};
  for (int i = 0; i < 6; i++)
    if (va[i] != vb[i])
      return ol_error("%s: %s is %lld, the model's is %lld", what, names[i], (long long)va[i],
                      (long long)vb[i]);
  return OL_OK;
}
