/* Parsing of --method and --targets, and the adapter registry: a new method is one file in
 * src/peft/ plus one line here. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

static const ol_adapter_ops *const registry[OL_AD_COUNT] = {
    [OL_AD_ONELORA] = &ol_onelora_ops, [OL_AD_ONELORA_RANDOM] = &ol_onelora_random_ops,
    [OL_AD_LORA] = &ol_lora_ops,       [OL_AD_DORA] = &ol_dora_ops,
    [OL_AD_VERA] = &ol_vera_ops,       [OL_AD_MORA] = &ol_mora_ops,
    [OL_AD_MORA6] = &ol_mora6_ops,     [OL_AD_BITFIT] = &ol_bitfit_ops,
};

float ol_lora_scale(const ol_method *m) { return (float)(m->alpha / (double)m->rank); }

size_t ol_mora_rhat(size_t k, size_t d, int64_t rank) {
  return (size_t)floor(sqrt((double)(k + d) * (double)rank) + 0.5);
}

float *ol_frozen_add(ol_frozen *f, const char *name, int ndim, const size_t *shape) {
  if (ol_frozen_find(f, name)) return NULL;
  if (f->count == f->cap) {
    size_t cap = f->cap ? 2 * f->cap : 16;
    ol_frozen_entry *e = ol_calloc(cap, sizeof *e);
    if (f->count) memcpy(e, f->entries, f->count * sizeof *e);
    ol_free(f->entries);
    f->entries = e, f->cap = cap;
  }
  ol_frozen_entry *e = &f->entries[f->count++];
  ol_strlcpy(e->name, name, sizeof e->name);
  e->ndim = ndim;
  size_t n = 1;
  for (int i = 0; i < ndim; i++) e->shape[i] = shape[i], n *= shape[i];
  e->data = ol_bk->alloc(n * sizeof(float));
  return e->data;
}

ol_frozen_entry *ol_frozen_find(const ol_frozen *f, const char *name) {
  for (size_t i = 0; i < f->count; i++)
    if (strcmp(f->entries[i].name, name) == 0) return &f->entries[i];
  return NULL;
}

void ol_frozen_free(ol_frozen *f) {
  for (size_t i = 0; i < f->count; i++) ol_bk->free(f->entries[i].data);
  ol_free(f->entries);
  memset(f, 0, sizeof *f);
}

const ol_adapter_ops *ol_adapter_lookup(ol_adapter_kind k) {
  OL_CHECK(k < OL_AD_COUNT);
  return registry[k];
}

void ol_adapter_bind(ol_adapter *a, const ol_params *p) {
  for (int i = 0; i < a->n_param; i++) {
    a->value[i] = ol_params_value(p, a->param[i]);
    a->grad[i] = ol_params_grad(p, a->param[i]);
  }
}

static const char *const proj_short[OL_PROJ_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const proj_module[OL_PROJ_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

const char *ol_proj_short(ol_proj p) { return proj_short[p]; }
const char *ol_proj_module(ol_proj p) { return proj_module[p]; }

/* Splits a comma list into tokens and calls `each` on every one; empty items are errors. */
static int for_each_item(const char *list, const char *flag,
                         int (*each)(const char *item, const char *flag, void *ctx), void *ctx) {
  char buf[256];
  if (strlen(list) >= sizeof buf) return ol_error("%s: value too long", flag);
  ol_strlcpy(buf, list, sizeof buf);
  char *save = NULL;
  int n = 0;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), n++)
    OL_TRY(each(tok, flag, ctx));
  if (n == 0 || list[0] == ',' || list[strlen(list) - 1] == ',' || strstr(list, ",,"))
    return ol_error("%s: empty item in '%s'", flag, list);
  return OL_OK;
}

static int add_target(const char *item, const char *flag, void *ctx) {
  unsigned *mask = ctx;
  if (strcmp(item, "all") == 0) { *mask |= (1u << OL_PROJ_COUNT) - 1; return OL_OK; }
  if (strcmp(item, "attn") == 0) {
    *mask |= 1u << OL_Q | 1u << OL_K | 1u << OL_V | 1u << OL_O;
    return OL_OK;
  }
  if (strcmp(item, "mlp") == 0) { *mask |= 1u << OL_GATE | 1u << OL_UP | 1u << OL_DOWN; return OL_OK; }
  for (int p = 0; p < OL_PROJ_COUNT; p++)
    if (strcmp(item, proj_short[p]) == 0) {
      if (*mask & (1u << p)) return ol_error("%s: '%s' is listed twice", flag, item);
      *mask |= 1u << p;
      return OL_OK;
    }
  return ol_error("%s: unknown target '%s' (use all, attn, mlp or a list of q,k,v,o,gate,up,down)",
                  flag, item);
}

typedef struct {
  ol_method *m;
  int none;
} method_ctx;

static int add_method(const char *item, const char *flag, void *vctx) {
  method_ctx *ctx = vctx;
  ol_method *m = ctx->m;
  if (strcmp(item, "none") == 0) { ctx->none = 1; return OL_OK; }
  if (strcmp(item, "full") == 0) { m->full = 1; return OL_OK; }
  if (strcmp(item, "norms") == 0) { m->norms = 1; return OL_OK; }
  for (int k = 0; k < OL_AD_COUNT; k++)
    if (strcmp(item, registry[k]->name) == 0) {
      if (m->adapters & (1u << k)) return ol_error("%s: '%s' is listed twice", flag, item);
      m->adapters |= 1u << k;
      return OL_OK;
    }
  return ol_error("%s: unknown method '%s' (known: none, full, norms, 1lora, 1lora-random, lora, "
                  "dora, vera, mora, mora6, bitfit)", flag, item);
}

int ol_method_parse(const char *methods, const char *targets, int64_t rank, double alpha,
                    ol_method *out) {
  memset(out, 0, sizeof *out);
  method_ctx ctx = {out, 0};
  OL_TRY(for_each_item(methods, "--method", add_method, &ctx));
  OL_TRY(for_each_item(targets, "--targets", add_target, &out->targets));
  int parts = ctx.none + out->full + out->norms + (out->adapters != 0);
  if (ctx.none && parts > 1) return ol_error("--method: 'none' cannot be combined ('%s')", methods);
  if (out->full && parts > 1) return ol_error("--method: 'full' cannot be combined ('%s')", methods);
  if ((out->adapters & (1u << OL_AD_DORA)) && (out->adapters & ~(1u << OL_AD_DORA)))
    return ol_error("--method: 'dora' rescales the whole layer output and cannot share layers with "
                    "another adapter ('%s'); combine it with norms only", methods);
  if (rank <= 0) return ol_error("--rank must be positive, got %lld", (long long)rank);
  out->rank = rank;
  out->alpha = alpha;
  ol_strlcpy(out->text, methods, sizeof out->text);
  ol_strlcpy(out->targets_text, targets, sizeof out->targets_text);
  return OL_OK;
}
