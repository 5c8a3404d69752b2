/* Hugging Face LLaMA directories as model input (docs/FORMATS.md, "Hugging Face input"):
 * config.json gives the config; the weights are model.safetensors, or the shards that
 * model.safetensors.index.json maps each tensor name to. Every JSON file is parsed by jansson,
 * size-bounded first; every shard's header is validated by ol_st_open before any byte is used. */
#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>

#include "hf.h"
#include "onelora/core/core.h"

#define MAX_CONFIG_BYTES ((off_t)1 << 20) /* config.json: a few hundred bytes in practice */
#define MAX_INDEX_BYTES ((off_t)64 << 20) /* the index of a 70B model is about 60 KiB */
#define MAX_SHARDS 4096

struct ol_hf {
  char *dir;
  size_t n_shards;
  ol_st_reader **shards;  /* (n_shards) */
  char **shard_names;     /* (n_shards) file names inside dir */
  size_t n_map;
  char **map_names;       /* (n_map) tensor names of the index, NULL without an index */
  size_t *map_shard;      /* (n_map) the shard of each */
  int tied;               /* tie_word_embeddings: lm_head.weight is model.embed_tokens.weight */
};

static char *str_dup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = ol_calloc(n, 1);
  memcpy(d, s, n);
  return d;
}

static char *join(const char *dir, const char *file) {
  size_t n = strlen(dir) + strlen(file) + 2, d = strlen(dir);
  char *p = ol_calloc(n, 1);
  snprintf(p, n, "%s%s%s", dir, d && dir[d - 1] == '/' ? "" : "/", file);
  return p;
}

/* Loads a JSON object from path, refusing files over max bytes (before reading them). */
static int load_json(const char *path, off_t max, json_t **out) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) != 0) return ol_error("%s: cannot open: %s", path, strerror(errno));
  if (!S_ISREG(st.st_mode)) return ol_error("%s: not a regular file", path);
  if (st.st_size > max)
    return ol_error("%s: %lld bytes, more than the %lld accepted", path, (long long)st.st_size,
                    (long long)max);
  json_error_t jerr;
  json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) return ol_error("%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
  if (!json_is_object(root)) {
    json_decref(root);
    return ol_error("%s: not a JSON object", path);
  }
  *out = root;
  return OL_OK;
}

/* An integer field in [1, max]; absent fields take `dflt` unless it is 0 (required). */
static int get_int(json_t *root, const char *path, const char *key, int64_t dflt, int64_t max,
                   int64_t *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    if (!dflt) return ol_error("%s: missing '%s'", path, key);
    *out = dflt;
    return OL_OK;
  }
  if (!json_is_integer(v)) return ol_error("%s: '%s' is not an integer", path, key);
  json_int_t x = json_integer_value(v);
  if (x < 1 || x > max)
    return ol_error("%s: '%s' is %lld, outside 1..%lld", path, key, (long long)x, (long long)max);
  *out = (int64_t)x;
  return OL_OK;
}

static int get_real(json_t *root, const char *path, const char *key, double dflt, double *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = dflt;
    return OL_OK;
  }
  if (!json_is_number(v)) return ol_error("%s: '%s' is not a number", path, key);
  *out = json_number_value(v);
  return OL_OK;
}

static int get_bool(json_t *root, const char *path, const char *key, int64_t *out) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = 0;
    return OL_OK;
  }
  if (!json_is_boolean(v)) return ol_error("%s: '%s' is not true or false", path, key);
  *out = json_is_true(v);
  return OL_OK;
}

/* config.json -> cfg. Defaults are LlamaConfig's (transformers): num_key_value_heads =
 * num_attention_heads, max_position_embeddings 2048, rms_norm_eps 1e-6, rope_theta 10000. */
static int parse_config(const char *path, ol_config *cfg, int *tied) {
  json_t *root;
  OL_TRY(load_json(path, MAX_CONFIG_BYTES, &root));
  memset(cfg, 0, sizeof *cfg);
  int rc = OL_OK;
  json_t *type = json_object_get(root, "model_type");
  if (type && (!json_is_string(type) || strcmp(json_string_value(type), "llama") != 0))
    rc = ol_error("%s: 'model_type' is not \"llama\"", path);
  json_t *act = json_object_get(root, "hidden_act");
  if (rc == OL_OK && act && (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
    rc = ol_error("%s: 'hidden_act' is not \"silu\" (onelora runs SwiGLU)", path);
  json_t *scaling = json_object_get(root, "rope_scaling");
  if (rc == OL_OK && scaling && !json_is_null(scaling))
    rc = ol_error("%s: 'rope_scaling' is set; onelora supports plain RoPE only", path);
  if (rc == OL_OK) rc = get_int(root, path, "hidden_size", 0, OL_MAX_WIDTH, &cfg->dim);
  if (rc == OL_OK) rc = get_int(root, path, "intermediate_size", 0, OL_MAX_FFN, &cfg->ffn_dim);
  if (rc == OL_OK) rc = get_int(root, path, "num_hidden_layers", 0, OL_MAX_LAYERS, &cfg->n_layers);
  if (rc == OL_OK) rc = get_int(root, path, "num_attention_heads", 0, OL_MAX_WIDTH, &cfg->n_heads);
  if (rc == OL_OK)
    rc = get_int(root, path, "num_key_value_heads", cfg->n_heads, OL_MAX_WIDTH, &cfg->n_kv_heads);
  if (rc == OL_OK) rc = get_int(root, path, "vocab_size", 0, OL_MAX_VOCAB, &cfg->vocab_size);
  if (rc == OL_OK)
    rc = get_int(root, path, "max_position_embeddings", 2048, OL_MAX_SEQ_LEN, &cfg->max_seq_len);
  if (rc == OL_OK) rc = get_real(root, path, "rms_norm_eps", 1e-6, &cfg->norm_eps);
  if (rc == OL_OK) rc = get_real(root, path, "rope_theta", 10000.0, &cfg->rope_theta);
  if (rc == OL_OK) rc = get_bool(root, path, "attention_bias", &cfg->attention_bias);
  if (rc == OL_OK) rc = get_bool(root, path, "mlp_bias", &cfg->mlp_bias);
  int64_t tie = 0;
  if (rc == OL_OK) rc = get_bool(root, path, "tie_word_embeddings", &tie);
  *tied = (int)tie;
  int64_t head_dim = 0;
  json_t *hd = json_object_get(root, "head_dim");
  if (rc == OL_OK && hd && !json_is_null(hd))
    rc = get_int(root, path, "head_dim", 0, OL_MAX_WIDTH, &head_dim);
  if (rc == OL_OK && head_dim && head_dim * cfg->n_heads != cfg->dim)
    rc = ol_error("%s: 'head_dim' %lld is not hidden_size / num_attention_heads", path,
                  (long long)head_dim);
  json_decref(root);
  if (rc == OL_OK) rc = ol_config_validate(cfg, path);
  return rc;
}

/* A shard's file name from the index: a plain name inside the directory. */
static int check_shard_name(const char *path, const char *tensor, const char *file) {
  if (!file[0] || strchr(file, '/') || strcmp(file, ".") == 0 || strcmp(file, "..") == 0)
    return ol_error("%s: tensor '%s': shard '%.200s' is not a file name inside the directory",
                    path, tensor, file);
  return OL_OK;
}

static size_t add_shard(ol_hf *h, const char *file) {
  for (size_t i = 0; i < h->n_shards; i++)
    if (strcmp(h->shard_names[i], file) == 0) return i;
  h->shard_names[h->n_shards] = str_dup(file);
  return h->n_shards++;
}

/* model.safetensors.index.json -> the tensor map and the shard names. */
static int parse_index(ol_hf *h, const char *path) {
  json_t *root;
  OL_TRY(load_json(path, MAX_INDEX_BYTES, &root));
  json_t *map = json_object_get(root, "weight_map");
  int rc = json_is_object(map) ? OL_OK : ol_error("%s: missing object 'weight_map'", path);
  size_t n = rc == OL_OK ? json_object_size(map) : 0;
  h->map_names = ol_calloc(n ? n : 1, sizeof *h->map_names);
  h->map_shard = ol_calloc(n ? n : 1, sizeof *h->map_shard);
  h->shard_names = ol_calloc(MAX_SHARDS, sizeof *h->shard_names);
  const char *key;
  json_t *v;
  if (rc == OL_OK) json_object_foreach(map, key, v) {
      if (!json_is_string(v)) rc = ol_error("%s: tensor '%s': shard is not a string", path, key);
      if (rc == OL_OK) rc = check_shard_name(path, key, json_string_value(v));
      if (rc == OL_OK && h->n_shards == MAX_SHARDS)
        rc = ol_error("%s: more than %d shards", path, MAX_SHARDS);
      if (rc != OL_OK) break;
      h->map_shard[h->n_map] = add_shard(h, json_string_value(v));
      h->map_names[h->n_map++] = str_dup(key);
    }
  if (rc == OL_OK && h->n_shards == 0) rc = ol_error("%s: 'weight_map' is empty", path);
  json_decref(root);
  return rc;
}

static int is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int ol_hf_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int ol_hf_open(const char *dir, ol_hf **out, ol_config *cfg) {
  *out = NULL;
  ol_hf *h = ol_calloc(1, sizeof *h);
  h->dir = str_dup(dir);
  char *cfg_path = join(dir, "config.json");
  char *single = join(dir, "model.safetensors");
  char *index = join(dir, "model.safetensors.index.json");
  int rc = parse_config(cfg_path, cfg, &h->tied);
  if (rc != OL_OK) {
  } else if (is_file(single)) {  // one file wins over an index, as in transformers
    h->shard_names = ol_calloc(1, sizeof *h->shard_names);
    h->shard_names[h->n_shards++] = str_dup("model.safetensors");
  } else if (is_file(index)) {
    rc = parse_index(h, index);
  } else {
    rc = ol_error("%s: no model.safetensors and no model.safetensors.index.json", dir);
  }
  h->shards = ol_calloc(h->n_shards ? h->n_shards : 1, sizeof *h->shards);
  for (size_t i = 0; rc == OL_OK && i < h->n_shards; i++) {
    char *p = join(dir, h->shard_names[i]);
    rc = ol_st_open(p, &h->shards[i]);
    ol_free(p);
  }
  // the config must describe weights the shards can hold (at 2 bytes a value) before a model
  // is sized by it; each tensor's shape is checked when it is read
  uint64_t bytes = 0;
  for (size_t i = 0; rc == OL_OK && i < h->n_shards; i++) bytes += ol_st_data_bytes(h->shards[i]);
  if (rc == OL_OK && ol_config_min_values(cfg) > bytes / 2)
    rc = ol_error("%s: config.json (hidden_size %lld, %lld layers, intermediate_size %lld, "
                  "vocab_size %lld) describes %llu weights, more than the %llu bytes of its "
                  "safetensors hold", dir, (long long)cfg->dim, (long long)cfg->n_layers,
                  (long long)cfg->ffn_dim, (long long)cfg->vocab_size,
                  (unsigned long long)ol_config_min_values(cfg), (unsigned long long)bytes);
  // every tensor the index names is in the shard it names
  for (size_t i = 0; rc == OL_OK && i < h->n_map; i++)
    if (!ol_st_has(h->shards[h->map_shard[i]], h->map_names[i]))
      rc = ol_error("%s: tensor '%s': the index puts it in %s, which does not hold it", index,
                    h->map_names[i], h->shard_names[h->map_shard[i]]);
  ol_free(cfg_path), ol_free(single), ol_free(index);
  if (rc != OL_OK) {
    ol_hf_close(h);
    return rc;
  }
  *out = h;
  return OL_OK;
}

/* The shard that holds tensor `name` (after the tie alias), or NULL. */
static ol_st_reader *shard_of(const ol_hf *h, const char **name) {
  if (h->tied && strcmp(*name, "lm_head.weight") == 0) *name = "model.embed_tokens.weight";
  if (!h->map_names) return ol_st_has(h->shards[0], *name) ? h->shards[0] : NULL;
  for (size_t i = 0; i < h->n_map; i++)
    if (strcmp(h->map_names[i], *name) == 0) return h->shards[h->map_shard[i]];
  return NULL;
}

int ol_hf_tied(const ol_hf *h) { return h->tied; }

int ol_hf_read(ol_hf *h, const char *name, int ndim, const size_t *shape, const size_t *start,
               const size_t *count, float *dst) {
  ol_st_reader *s = shard_of(h, &name);
  if (!s) return ol_error("%s: missing tensor '%s' (in no shard)", h->dir, name);
  return ol_st_read(s, name, ndim, shape, start, count, dst);
}

int ol_hf_check(ol_hf *h, const char *name, int ndim, const size_t *shape) {
  ol_st_reader *s = shard_of(h, &name);
  if (!s) return ol_error("%s: missing tensor '%s' (in no shard)", h->dir, name);
  return ol_st_check(s, name, ndim, shape);
}

int ol_hf_locate(ol_hf *h, const char *name, const char **path, ol_dtype *dtype,
                 uint64_t *offset) {
  ol_st_reader *s = shard_of(h, &name);
  if (!s) return ol_error("%s: missing tensor '%s' (in no shard)", h->dir, name);
  *path = ol_st_path(s);
  return ol_st_locate(s, name, dtype, offset);
}

void ol_hf_close(ol_hf *h) {
  if (!h) return;
  for (size_t i = 0; i < h->n_shards; i++) {
    if (h->shards) ol_st_close(h->shards[i]);
    ol_free(h->shard_names[i]);
  }
  for (size_t i = 0; i < h->n_map; i++) ol_free(h->map_names[i]);
  ol_free(h->shards), ol_free(h->shard_names), ol_free(h->map_names), ol_free(h->map_shard);
  ol_free(h->dir);
  ol_free(h);
}
