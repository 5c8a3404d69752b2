/* Parsing of --method and --targets, and the adapter registry: a new method is one file in
 * src/peft/ plus one line in methods.def. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

#ifdef ONELORA_TEST_HOOKS
#define OL_TEST_METHOD(ops) OL_METHOD(ops)
#else
#define OL_TEST_METHOD(ops)
#endif

#define OL_METHOD(ops) extern const ol_adapter_ops ops;
#include "methods.def"
#undef OL_METHOD
#define OL_METHOD(ops) &ops,
static const ol_adapter_ops *const registry[] = {
#include "methods.def"
};
#undef OL_METHOD
#define REGISTRY_SIZE (sizeof registry / sizeof registry[0])
_Static_assert(REGISTRY_SIZE <= 32, "ol_method.adapters is a 32-bit mask over the registry");

size_t ol_adapter_count(void) { return REGISTRY_SIZE; }

const ol_adapter_ops *ol_adapter_at(size_t i) {
  OL_CHECK(i < REGISTRY_SIZE);
  return registry[i];
}

const ol_adapter_ops *ol_adapter_find(const char *name) {
  for (size_t i = 0; i < REGISTRY_SIZE; i++)
    if (strcmp(registry[i]->name, name) == 0) return registry[i];
  return NULL;
}

int ol_method_adapters(const ol_method *m, const ol_adapter_ops **ops) {
  int n = 0;
  for (size_t i = 0; i < REGISTRY_SIZE; i++)
    if (m->adapters >> i & 1u) ops[n++] = registry[i];
  return n;
}

const ol_adapter_ops *ol_method_with(const ol_method *m, size_t flag_offset) {
  for (size_t i = 0; i < REGISTRY_SIZE; i++)
    if ((m->adapters >> i & 1u) && *(const int *)((const char *)registry[i] + flag_offset))
      return registry[i];
  return NULL;
}

int ol_method_check(const ol_method *m, int tp, ol_dtype weights_dtype) {
  for (size_t i = 0; i < REGISTRY_SIZE; i++) {
    if (!(m->adapters >> i & 1u)) continue;
    const ol_adapter_ops *ops = registry[i];
    if (tp > 1 && !ops->supports_tp)
      return ol_error("--tp %d: method %s does not support tensor parallelism", tp, ops->name);
    if (weights_dtype != OL_DTYPE_F32 && ops->reads_w)
      return ol_error("--weights-dtype %s: %s reads the rows of W itself; use f32",
                      ol_dtype_name(weights_dtype), ops->name);
  }
  return OL_OK;
}

const char *ol_method_names(void) {
  static char names[512];
  if (!names[0]) {
    ol_strlcpy(names, "none, full, norms", sizeof names);
    for (size_t i = 0; i < REGISTRY_SIZE; i++) {
      const size_t at = strlen(names);
      snprintf(names + at, sizeof names - at, ", %s", registry[i]->name);
    }
  }
  return names;
}

float ol_lora_scale(const ol_method *m) { return (float)(m->alpha / (double)m->rank); }

size_t ol_mora_rhat(size_t k, size_t d, int64_t rank) {
  return (size_t)floor(sqrt((double)(k + d) * (double)rank) + 0.5);
}

float *ol_frozen_add(ol_frozen *f, const char *name, int ndim, const size_t *shape) {
  if (ol_frozen_find(f, name)) return NULL;
  f->entries = ol_grow(f->entries, f->count, &f->cap, sizeof *f->entries);
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
  for (size_t k = 0; k < REGISTRY_SIZE; k++)
    if (strcmp(item, registry[k]->name) == 0) {
      if (m->adapters & (1u << k)) return ol_error("%s: '%s' is listed twice", flag, item);
      m->adapters |= 1u << k;
      return OL_OK;
    }
  return ol_error("%s: unknown method '%s' (known: %s)", flag, item, ol_method_names());
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
  const ol_adapter_ops *ops[32];
  const int n = ol_method_adapters(out, ops);
  for (int i = 0; i < n && n > 1; i++)
    if (ops[i]->rescale_forward)
      return ol_error("--method: '%s' rescales the whole layer output and cannot share layers "
                      "with another adapter ('%s'); combine it with norms only", ops[i]->name,
                      methods);
  if (n > OL_MAX_ADAPTERS)
    return ol_error("--method: at most %d adapters on one layer, '%s' has %d", OL_MAX_ADAPTERS,
                    methods, n);
  if (rank <= 0) return ol_error("--rank must be positive, got %lld", (long long)rank);
  out->rank = rank;
  out->alpha = alpha;
  ol_strlcpy(out->text, methods, sizeof out->text);
  ol_strlcpy(out->targets_text, targets, sizeof out->targets_text);
  return OL_OK;
}
