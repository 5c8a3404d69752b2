/* onelora peft: the adapter seam (DESIGN §3): generated frozen tensors, the vtable every method
 * fills, and an adapter's state on one linear. */
#ifndef ONELORA_PEFT_ADAPTER_H
#define ONELORA_PEFT_ADAPTER_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"
#include "onelora/peft/method.h"
#include "onelora/peft/params.h"

struct ol_linear;
typedef struct ol_adapter ol_adapter;

/* ---- frozen tensors that methods generate themselves (VeRA's shared A and B, 1lora-random's
 * compression vectors): stored in the checkpoint's `frozen` group ---------------------------- */
typedef struct {
  char name[128];
  int ndim;
  size_t shape[2];
  float *data;           /* owned by the list */
} ol_frozen_entry;

typedef struct {
  ol_frozen_entry *entries;
  size_t count, cap;
} ol_frozen;

/* Adds a zeroed tensor and returns its storage; NULL when the name is already present. */
float *ol_frozen_add(ol_frozen *f, const char *name, int ndim, const size_t *shape);
ol_frozen_entry *ol_frozen_find(const ol_frozen *f, const char *name);
void ol_frozen_free(ol_frozen *f);

/* What adapters see while the model is laid out */
typedef struct {
  ol_params *params;       /* declare trainable tensors here */
  ol_frozen *frozen;       /* generated frozen tensors */
  const ol_method *method; /* rank, alpha */
  uint64_t seed;           /* --seed: generated tensors and inits derive from it */
  size_t k_max, d_max;     /* largest in and out of the adapted linears (VeRA's shared shapes) */
} ol_peft_ctx;

/* An adapter method: a small vtable, one per file in src/peft/, registered by one line in
 * src/peft/methods.def. Every function works on this rank's shard; the flags let the rest of the
 * program ask the method instead of knowing it. */
typedef struct {
  const char *name;         /* the --method name */
  int supports_tp;          /* its tensor-parallel derivation is implemented (docs/PARALLEL.md) */
  int reads_w;              /* it reads W's rows itself (DoRA's norms): W must be f32 in memory
                             * with contiguous rows (no --weights-dtype f16/bf16, no mapped
                             * row-parallel view) */
  int uses_rank, uses_alpha;/* --rank and --alpha mean something to it (reports) */
  int merges_bias;          /* merge adds to the layer's bias, not W (the model creates a zero
                             * bias to merge into when the model file has none) */
  /* declares its trainable tensors for this linear (ctx->params) and creates or looks up the
   * frozen tensors it generates (ctx->frozen, filled right away from ctx->seed); sets
   * a->state_floats when it needs per-layer scratch that persists across calls */
  void (*declare)(ol_adapter *a, const struct ol_linear *lin, ol_peft_ctx *ctx);
  /* initialises its trainable tensors once they are allocated and bound (a->value, a->grad);
   * rng is a stream private to this adapter */
  void (*init)(ol_adapter *a, const struct ol_linear *lin, ol_rng *rng);
  /* floats per token it keeps from forward for its backward */
  size_t (*saved_per_token)(const ol_adapter *a, const struct ol_linear *lin);
  /* y(N,d) = beta*y + its contribution for x(N,k) (beta is 0 or 1; adapters run before the
   * frozen GEMM, so the first one initialises y); writes saved(N, saved_per_token) */
  void (*forward)(ol_adapter *a, const struct ol_linear *lin, const float *x, float *y, size_t N,
                  float beta, float *saved);
  /* dx(N,k) = beta*dx + its contribution for dy(N,d); accumulates its own gradients. `saved`
   * is dead after this call, so backward may reuse it as scratch. */
  void (*backward)(ol_adapter *a, const struct ol_linear *lin, const float *dy, float *dx,
                   size_t N, float beta, float *saved);
  /* W(d,k) += its update (or the bias, for bitfit), so that the plain linear equals the
   * adapted one */
  void (*merge)(const ol_adapter *a, struct ol_linear *lin);

  /* Optional, for methods that rescale the layer's whole output (DoRA). When set, the linear
   * computes z(N,d) = x W^T + the additive adapters (this one's forward included) into a
   * scratch, then rescale_forward(z) in place, then y = beta*y + z. In backward,
   * rescale_backward turns dy(N,d) into dz(N,d) (its own gradients accumulated; x is its saved
   * input), and everything else back-propagates dz. On a row-parallel layer z is summed over TP
   * before rescale_forward sees it, and dy (hence dz) is the same on every rank. */
  void (*rescale_forward)(ol_adapter *a, const struct ol_linear *lin, float *z, size_t N,
                          float *saved);
  void (*rescale_backward)(ol_adapter *a, const struct ol_linear *lin, const float *dy,
                           float *dz, size_t N, float *saved);
} ol_adapter_ops;

struct ol_adapter {
  const ol_adapter_ops *ops;
  size_t param[4];          /* entry indices of its tensors in the table */
  int n_param;
  float *value[4];          /* bound into the flat buffers after allocation */
  float *grad[4];
  const float *frozen[2];   /* generated frozen tensors it reads (set in declare) */
  size_t state_floats;      /* persistent per-layer scratch it asked for in declare */
  float *state;             /* (state_floats) allocated with the model */
  int state_ready;          /* the fixed part of state has been computed (mora6's tables) */
  /* constants a method fixes in declare, since the vtable's calls see no ol_method */
  size_t rank;              /* its inner size (lora, dora, vera: r; mora, mora6: r^) */
  float scale;              /* its output scaling (lora, dora: s = alpha / r) */
  size_t k_max;             /* vera: the row stride of the shared A (the model's k_max) */
};

/* Points a->value/a->grad at the allocated flat buffers. */
void ol_adapter_bind(ol_adapter *a, const ol_params *p);

/* ---- the registry (src/peft/methods.def) ---- */
size_t ol_adapter_count(void);
const ol_adapter_ops *ol_adapter_at(size_t i);
/* The method named `name`, or NULL */
const ol_adapter_ops *ol_adapter_find(const char *name);
/* The adapters of m, in registry order, into ops (room for 32); returns how many. */
int ol_method_adapters(const ol_method *m, const ol_adapter_ops **ops);
/* Whether any adapter of m sets flag (e.g. offsetof(ol_adapter_ops, reads_w)); NULL when none,
 * else the first such adapter. */
const ol_adapter_ops *ol_method_with(const ol_method *m, size_t flag_offset);
/* One line naming the flag, when method m cannot run with TP degree tp or frozen weights held as
 * weights_dtype; OL_OK when it can. Shared by train and plan. */
int ol_method_check(const ol_method *m, int tp, ol_dtype weights_dtype);

/* LoRA scaling s = alpha / rank, shared by lora and dora */
float ol_lora_scale(const ol_method *m);
/* MoRA's square size r^ = floor(sqrt((k + d) r) + 1/2) */
size_t ol_mora_rhat(size_t k, size_t d, int64_t rank);

#endif
