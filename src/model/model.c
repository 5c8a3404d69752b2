/* LLaMA presets and the parameter layout: which tensors exist, which are trainable, and where
 * each lives (the frozen arena or the flat trainable buffer). */
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/model/acts.h"

typedef struct {
  const char *name;
  ol_config cfg;
} preset;

static const preset presets[] = {
    {"tiny", {64, 2, 4, 2, 176, 256, 128, 1e-5, 10000.0, 0, 0}},
    {"small", {256, 4, 8, 4, 688, 256, 256, 1e-5, 10000.0, 0, 0}},
    {"llama2-7b", {4096, 32, 32, 32, 11008, 32000, 4096, 1e-5, 10000.0, 0, 0}},
    {"llama2-13b", {5120, 40, 40, 40, 13824, 32000, 4096, 1e-5, 10000.0, 0, 0}},
    {"llama2-70b", {8192, 80, 64, 8, 28672, 32000, 4096, 1e-5, 10000.0, 0, 0}},
};

int ol_preset(const char *name, ol_config *out) {
  for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
    if (strcmp(name, presets[i].name) == 0) {
      *out = presets[i].cfg;
      return OL_OK;
    }
  return ol_error("--preset: unknown preset '%s' (known: %s)", name, ol_preset_names());
}

const char *ol_preset_names(void) { return "tiny, small, llama2-7b, llama2-13b, llama2-70b"; }

static void tensor_set(ol_tensor *t, const char *name, size_t rows, size_t cols) {
  ol_strlcpy(t->name, name, sizeof t->name);
  t->ndim = cols ? 2 : 1;
  t->shape[0] = rows;
  t->shape[1] = cols;
  t->start[0] = t->start[1] = 0;
  t->count[0] = rows;
  t->count[1] = cols;
  t->param = -1;
  t->place = OL_PLACE_REPLICATED;
}

/* This rank holds rows [part*rows/tp, ...) (dim 0) or columns (dim 1) of t: its TP shard. */
static void tensor_shard(ol_tensor *t, int dim, int tp, int part) {
  t->count[dim] = t->shape[dim] / (size_t)tp;
  t->start[dim] = t->count[dim] * (size_t)part;
  t->place = dim == 0 ? OL_PLACE_ROWS : OL_PLACE_COLS;
}

static size_t tensor_numel(const ol_tensor *t) {
  return t->ndim == 2 ? t->count[0] * t->count[1] : t->count[0];
}

/* Declares t as trainable when `trainable`, else counts it into the frozen arena. */
static void tensor_place(ol_model *m, ol_tensor *t, int trainable) {
  if (trainable)
    t->param = (long)ol_params_declare(&m->params, t->name, t->ndim, t->shape, t->place,
                                       t->start[t->place == OL_PLACE_COLS], t->count[t->place == OL_PLACE_COLS]);
  else if (t->ndim == 2 && m->stage.weights_dtype != OL_DTYPE_F32)
    m->frozen_halves += tensor_numel(t);  // a frozen matrix at 2 bytes
  else
    m->frozen_floats += tensor_numel(t);
  m->tensors[m->n_tensors++] = t;
}

/* Largest full (unsharded) in/out of the linears the method adapts: VeRA's shared matrices have
 * these shapes whatever the layout. */
static void adapted_extent(const ol_model *m, size_t *k_max, size_t *d_max) {
  *k_max = *d_max = 0;
  if (!m->method.adapters) return;
  for (int p = 0; p < OL_PROJ_COUNT; p++)
    if (m->method.targets & (1u << p)) {
      const ol_linear *lin = &m->blocks[0].lin[p];
      if (lin->in_full > *k_max) *k_max = lin->in_full;
      if (lin->out_full > *d_max) *d_max = lin->out_full;
    }
}

int ol_model_layout_stage(ol_model *m, const ol_config *cfg, const ol_method *method,
                          uint64_t seed, const ol_stage *stage) {
  memset(m, 0, sizeof *m);
  OL_TRY(ol_config_validate(cfg, "model config"));
  m->cfg = *cfg;
  m->method = *method;
  ol_stage whole = {0, (size_t)cfg->n_layers, 1, 1, 1, 0, OL_DTYPE_F32};
  m->stage = stage ? *stage : whole;
  OL_CHECK(m->stage.first_layer + m->stage.n_layers <= (size_t)cfg->n_layers);
  if (m->stage.tp < 1) m->stage.tp = 1;
  if (m->stage.tp == 1) m->stage.tp_rank = 0;
  const int tp = m->stage.tp, tpr = m->stage.tp_rank;
  const struct { const char *name; int64_t n; } split[4] = {
      {"n_heads", cfg->n_heads}, {"n_kv_heads", cfg->n_kv_heads}, {"ffn_dim", cfg->ffn_dim},
      {"vocab_size", cfg->vocab_size}};
  for (int i = 0; i < 4; i++)  // heads, ffn rows and vocabulary rows are split across TP
    if (split[i].n % tp)
      return ol_error("--tp %d: the model's %s %lld is not divisible by %d", tp, split[i].name,
                      (long long)split[i].n, tp);
  const size_t D = (size_t)cfg->dim, L = m->stage.n_layers, F = (size_t)cfg->ffn_dim;
  const size_t V = (size_t)cfg->vocab_size;
  m->Vl = V / (size_t)tp, m->v0 = m->Vl * (size_t)tpr;
  m->hd = D / (size_t)cfg->n_heads;
  const size_t kvD = (size_t)cfg->n_kv_heads * m->hd;
  const int full = method->full, norms = method->full || method->norms;
  const size_t outs[OL_PROJ_COUNT] = {D, kvD, kvD, D, F, F, D};
  const size_t ins[OL_PROJ_COUNT] = {D, D, D, D, D, D, F};

  m->blocks = ol_calloc(L, sizeof *m->blocks);
  m->tensors = ol_calloc(3 + L * (2 + 2 * OL_PROJ_COUNT), sizeof *m->tensors);
  for (size_t l = 0; l < L; l++)  // shapes first: adapters may need every layer's extent
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *lin = &m->blocks[l].lin[p];
      snprintf(lin->name, sizeof lin->name, "model.layers.%zu.%s", m->stage.first_layer + l,
               ol_proj_module(p));
      lin->par = (p == OL_O || p == OL_DOWN) ? OL_PAR_ROW : OL_PAR_COLUMN;
      // column-parallel: rows (heads, ffn rows) split; row-parallel: input columns split
      const size_t split_out = lin->par == OL_PAR_COLUMN ? (size_t)tp : 1;
      const size_t split_in = lin->par == OL_PAR_ROW ? (size_t)tp : 1;
      lin->out = outs[p] / split_out, lin->in = ins[p] / split_in;
      lin->out_full = outs[p];
      lin->out_start = lin->par == OL_PAR_COLUMN ? lin->out * (size_t)tpr : 0;
      lin->in_full = ins[p];
      lin->in_start = lin->par == OL_PAR_ROW ? lin->in * (size_t)tpr : 0;
    }
  ol_peft_ctx ctx = {&m->params, &m->generated, &m->method, seed, 0, 0};
  const ol_adapter_ops *ops[32];  // the method's adapters, attached to every target
  const int n_ops = ol_method_adapters(method, ops);
  OL_CHECK(n_ops <= OL_MAX_ADAPTERS);  // ol_method_parse refuses more
  adapted_extent(m, &ctx.k_max, &ctx.d_max);

  char name[128];
  tensor_set(&m->embed, "model.embed_tokens.weight", V, D);
  tensor_shard(&m->embed, 0, tp, tpr);
  if (m->stage.has_embed) tensor_place(m, &m->embed, full);
  for (size_t l = 0; l < L; l++) {
    ol_block *b = &m->blocks[l];
    const size_t layer = m->stage.first_layer + l;  // global index, in every name
    snprintf(name, sizeof name, "model.layers.%zu.input_layernorm.weight", layer);
    tensor_set(&b->attn_norm, name, D, 0);
    tensor_place(m, &b->attn_norm, norms);
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      if (p == OL_GATE) {  // file order: attention, then the MLP's norm, then the MLP
        snprintf(name, sizeof name, "model.layers.%zu.post_attention_layernorm.weight", layer);
        tensor_set(&b->mlp_norm, name, D, 0);
        tensor_place(m, &b->mlp_norm, norms);
      }
      ol_linear *lin = &b->lin[p];
      snprintf(name, sizeof name, "%s.weight", lin->name);
      tensor_set(&b->w[p], name, outs[p], ins[p]);
      tensor_shard(&b->w[p], lin->par == OL_PAR_COLUMN ? 0 : 1, tp, tpr);
      tensor_place(m, &b->w[p], full);
      lin->w_param = b->w[p].param;
      if (p <= OL_O ? cfg->attention_bias : cfg->mlp_bias) {
        snprintf(name, sizeof name, "%s.bias", lin->name);
        tensor_set(&b->bias[p], name, outs[p], 0);
        if (lin->par == OL_PAR_COLUMN) tensor_shard(&b->bias[p], 0, tp, tpr);
        tensor_place(m, &b->bias[p], full);
      }
      if (method->targets & (1u << p))
        for (int i = 0; i < n_ops; i++) {
          ol_adapter *a = &lin->adapters[lin->n_adapters++];
          a->ops = ops[i];
          a->ops->declare(a, lin, &ctx);
        }
    }
  }
  tensor_set(&m->final_norm, "model.norm.weight", D, 0);
  tensor_set(&m->lm_head, "lm_head.weight", V, D);
  tensor_shard(&m->lm_head, 0, tp, tpr);
  if (m->stage.has_head) {
    tensor_place(m, &m->final_norm, norms);
    tensor_place(m, &m->lm_head, full);
  }
  return OL_OK;
}

int ol_model_layout(ol_model *m, const ol_config *cfg, const ol_method *method, uint64_t seed) {
  return ol_model_layout_stage(m, cfg, method, seed, NULL);
}

/* Maps frozen matrix i of m from w when it can (tensor fields set, counted); else records why
 * (the first reason only). */
static int map_tensor(ol_model *m, size_t i, ol_weights *w) {
  ol_tensor *t = m->tensors[i];
  const ol_dtype dtype = m->stage.weights_dtype;
  char why[160] = "";
  const void *p = NULL;
  const ol_adapter_ops *reader = ol_method_with(&m->method, offsetof(ol_adapter_ops, reads_w));
  if (reader && t->count[1] != t->shape[1])
    snprintf(why, sizeof why, "%s reads the rows of a row-parallel shard contiguously", reader->name);
  else
    OL_TRY(ol_weights_map(w, t->name, t->shape, t->start, t->count, dtype, &m->maps[i], &p, why,
                          sizeof why));
  if (!p) {
    if (!m->map_why[0]) ol_strlcpy(m->map_why, why, sizeof m->map_why);
    return OL_OK;
  }
  if (dtype == OL_DTYPE_F32) t->data = (float *)(uintptr_t)p;  // read-only: frozen, never written
  else t->half = (uint16_t *)(uintptr_t)p;
  t->ld = t->shape[1];
  t->mapped = 1;
  m->mapped_tensors++;
  m->mapped_bytes += tensor_numel(t) * (dtype == OL_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t));
  return OL_OK;
}

int ol_model_build_mapped(ol_model *m, const ol_config *cfg, const ol_method *method,
                          uint64_t seed, const ol_stage *stage, ol_weights *weights) {
  OL_TRY(ol_model_layout_stage(m, cfg, method, seed, stage));
  // storage: trainables in the flat buffer, mapped frozen matrices in the file's pages,
  // everything else in one frozen arena (f32) or, for matrices kept at 2 bytes, another
  ol_params_alloc(&m->params);
  m->maps = ol_calloc(m->n_tensors, sizeof *m->maps);
  const int half = m->stage.weights_dtype != OL_DTYPE_F32;
  m->frozen_floats = m->frozen_halves = 0;
  for (size_t i = 0; i < m->n_tensors; i++) {
    ol_tensor *t = m->tensors[i];
    t->ld = t->ndim == 2 ? t->count[1] : t->count[0];
    if (t->param >= 0) continue;
    if (weights && t->ndim == 2) {
      int rc = map_tensor(m, i, weights);
      if (rc != OL_OK) {
        ol_model_free(m);
        return rc;
      }
      if (t->mapped) continue;
    }
    if (t->ndim == 2 && half) m->frozen_halves += tensor_numel(t);
    else m->frozen_floats += tensor_numel(t);
  }
  m->frozen = ol_bk->alloc(m->frozen_floats * sizeof(float));  // (frozen_floats)
  m->frozen_half = m->frozen_halves ? ol_bk->alloc(m->frozen_halves * sizeof(uint16_t)) : NULL;
  size_t off = 0, off_half = 0;
  for (size_t i = 0; i < m->n_tensors; i++) {
    ol_tensor *t = m->tensors[i];
    if (t->param >= 0) {
      t->data = ol_params_value(&m->params, (size_t)t->param);
    } else if (t->mapped) {
    } else if (t->ndim == 2 && half) {
      t->half = m->frozen_half + off_half;
      off_half += tensor_numel(t);
    } else {
      t->data = m->frozen + off;
      off += tensor_numel(t);
    }
  }
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_block *b = &m->blocks[l];
      ol_linear *lin = &b->lin[p];
      lin->W = b->w[p].data;
      lin->W16 = b->w[p].half;
      lin->ldw = b->w[p].ld;
      lin->w_bf16 = m->stage.weights_dtype == OL_DTYPE_BF16;
      lin->dW = ol_model_grad(m, &b->w[p]);
      lin->bias = b->bias[p].ndim ? b->bias[p].data : NULL;
      lin->dbias = lin->bias ? ol_model_grad(m, &b->bias[p]) : NULL;
      for (int i = 0; i < lin->n_adapters; i++) {
        ol_adapter *a = &lin->adapters[i];
        ol_adapter_bind(a, &m->params);
        if (a->state_floats) a->state = ol_bk->alloc(a->state_floats * sizeof(float));
      }
    }
  return OL_OK;
}

int ol_model_build_stage(ol_model *m, const ol_config *cfg, const ol_method *method,
                         uint64_t seed, const ol_stage *stage) {
  return ol_model_build_mapped(m, cfg, method, seed, stage, NULL);
}

int ol_model_build(ol_model *m, const ol_config *cfg, const ol_method *method, uint64_t seed) {
  return ol_model_build_stage(m, cfg, method, seed, NULL);
}

ol_stage ol_pipeline_stage(const ol_config *cfg, int pp, int pp_rank) {
  // contiguous layer ranges; the first L mod pp stages take one layer more
  size_t L = (size_t)cfg->n_layers, base = L / (size_t)pp, extra = L % (size_t)pp;
  size_t r = (size_t)pp_rank;
  ol_stage s = {r * base + (r < extra ? r : extra), base + (r < extra ? 1 : 0), pp_rank == 0,
                pp_rank == pp - 1, 1, 0, OL_DTYPE_F32};
  return s;
}

void ol_model_bind_tp(ol_model *m, const ol_tp *tp) {
  m->tp = tp;
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) m->blocks[l].lin[p].tp = tp;
}

void ol_model_init_adapters(ol_model *m, uint64_t seed) {
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *lin = &m->blocks[l].lin[p];
      const uint64_t layer = m->stage.first_layer + l;
      for (int i = 0; i < lin->n_adapters; i++) {
        ol_rng rng;  // one stream per (layer, projection, adapter): independent of layout
        ol_rng_seed(&rng, ol_hash64(seed ^ (layer << 32 | (uint64_t)p << 8 | (uint64_t)i)));
        lin->adapters[i].ops->init(&lin->adapters[i], lin, &rng);
      }
    }
}

size_t ol_tensor_numel(const ol_tensor *t) { return tensor_numel(t); }

/* The key of a tensor's synthetic values: the seed hashed with the FNV-1a hash of its name. */
static uint64_t tensor_key(const char *name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull;
  for (const char *c = name; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ull;
  return ol_hash64(seed ^ h);
}

void ol_tensor_randomize(const ol_tensor *t, float *data, uint64_t seed) {
  if (t->ndim == 1) {  // norm weights and biases: ones
    ol_bk->fill(data, 1.0f, t->count[0]);  // (count[0])
    return;
  }
  // (count[0], count[1]): only the slice's values are computed
  ol_bk->counter_normal(data, t->count[0], t->count[1], tensor_key(t->name, seed), t->start[0],
                        t->start[1], 0.02f);
}

/* Values filled at a time into a matrix kept at 2 bytes: 1 MiB of f32, so that the freed
 * temporary (which glibc keeps resident) stays small beside the model. */
#define HALF_FILL_BLOCK ((size_t)1 << 18)

int ol_tensor_fill_half(const ol_tensor *t, ol_dtype dtype, ol_fill_fn fill, void *ctx) {
  const size_t cols = t->count[1];
  size_t per = cols >= HALF_FILL_BLOCK ? 1 : HALF_FILL_BLOCK / cols;
  if (per > t->count[0]) per = t->count[0];
  float *buf = ol_bk->alloc(per * cols * sizeof(float));  // (per, cols), filled by `fill`
  int rc = OL_OK;
  for (size_t r0 = 0; rc == OL_OK && r0 < t->count[0]; r0 += per) {
    ol_tensor rows = *t;  // the block: rows [r0, r0 + count) of this rank's slice
    rows.start[0] = t->start[0] + r0;
    rows.count[0] = t->count[0] - r0 < per ? t->count[0] - r0 : per;
    rc = fill(ctx, &rows, buf);
    uint16_t *dst = t->half + r0 * cols;  // (rows.count[0], cols)
    if (rc == OL_OK) ol_bk->narrow(dst, buf, rows.count[0] * cols, dtype == OL_DTYPE_BF16);
  }
  ol_bk->free(buf);
  return rc;
}

static int randomize_rows(void *seed, const ol_tensor *rows, float *buf) {
  ol_tensor_randomize(rows, buf, *(const uint64_t *)seed);  // counter-based: the same rows of the whole
  return OL_OK;
}

void ol_model_randomize(ol_model *m, uint64_t seed) {
  for (size_t i = 0; i < m->n_tensors; i++) {
    ol_tensor *t = m->tensors[i];
    if (t->data) ol_tensor_randomize(t, t->data, seed);
    else ol_tensor_fill_half(t, m->stage.weights_dtype, randomize_rows, &seed);
  }
}

size_t ol_model_trainable(const ol_model *m) { return m->params.total; }

float *ol_model_grad(const ol_model *m, const ol_tensor *t) {
  return t->param >= 0 ? ol_params_grad(&m->params, (size_t)t->param) : NULL;
}

ol_tensor *ol_model_tensor(ol_model *m, const char *name) {
  for (size_t i = 0; i < m->n_tensors; i++)
    if (strcmp(m->tensors[i]->name, name) == 0) return m->tensors[i];
  return NULL;
}

double ol_model_flops(const ol_model *m, size_t tokens, size_t T) {
  // this rank's shards: its linears' (out, in), its H/TP query heads, its V/TP vocabulary rows
  const double D = (double)m->cfg.dim, V = (double)m->Vl;
  const double qD = (double)((size_t)m->cfg.n_heads / (size_t)m->stage.tp * m->hd);
  double per_token = 0;
  for (size_t l = 0; l < m->stage.n_layers; l++) {
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      const ol_linear *lin = &m->blocks[l].lin[p];
      double mac = (double)lin->out * (double)lin->in;
      per_token += 4 * mac + (lin->w_param >= 0 ? 2 * mac : 0);  // forward + dx (+ dW)
    }
    per_token += 7 * (double)T * qD;  // attention: forward 2 T qD, backward 5 T qD
  }
  if (m->stage.has_head) per_token += 4 * D * V + (m->lm_head.param >= 0 ? 2 * D * V : 0);
  return per_token * (double)tokens;
}

double ol_model_step_flops(const ol_model *m, size_t tokens, size_t T, int recompute) {
  const size_t L = m->stage.n_layers;
  if (!recompute || L < 2) return ol_model_flops(m, tokens, T);
  // the re-run forwards: every block of the stage but the last, whose activations are still
  // in the shared slot when backward starts
  const double qD = (double)((size_t)m->cfg.n_heads / (size_t)m->stage.tp * m->hd);
  double per_token = 0;
  for (size_t l = 0; l + 1 < L; l++) {
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      per_token += 2 * (double)m->blocks[l].lin[p].out * (double)m->blocks[l].lin[p].in;
    per_token += 2 * (double)T * qD;
  }
  return ol_model_flops(m, tokens, T) + per_token * (double)tokens;
}

void ol_model_attach_adapters(ol_model *m, int on) {
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *lin = &m->blocks[l].lin[p];
      if (!on && lin->n_adapters) lin->n_detached = lin->n_adapters, lin->n_adapters = 0;
      if (on && lin->n_detached) lin->n_adapters = lin->n_detached, lin->n_detached = 0;
    }
}

void ol_model_merge(ol_model *m) {
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      ol_linear *lin = &m->blocks[l].lin[p];
      for (int i = 0; i < lin->n_adapters; i++) lin->adapters[i].ops->merge(&lin->adapters[i], lin);
      lin->n_adapters = 0;
    }
}

void ol_model_free(ol_model *m) {
  for (size_t l = 0; m->blocks && l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      for (int i = 0; i < OL_MAX_ADAPTERS; i++) ol_bk->free(m->blocks[l].lin[p].adapters[i].state);
  ol_free(m->blocks);
  ol_frozen_free(&m->generated);
  ol_free(m->tensors);
  ol_bk->free(m->frozen);
  ol_bk->free(m->frozen_half);
  for (size_t i = 0; m->maps && i < m->n_tensors; i++) ol_unmap(&m->maps[i]);
  ol_free(m->maps);
  ol_params_free(&m->params);
  memset(m, 0, sizeof *m);
}
