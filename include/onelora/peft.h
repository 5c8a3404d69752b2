/* onelora peft: the trainable-parameter table, linear layers, and the adapter seam (DESIGN §3).
 * Block code calls ol_linear_forward/ol_linear_backward and never knows which method runs. */
#ifndef ONELORA_PEFT_H
#define ONELORA_PEFT_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core.h"

/* ---- the flat trainable state of a rank ------------------------------------------------ */
typedef struct {
  char name[128];        /* checkpoint name, e.g. "model.layers.3.self_attn.q_proj.onelora_b" */
  size_t offset;         /* into the flat buffers */
  size_t numel;          /* floats held by this rank */
  int ndim;
  size_t shape[2];       /* full logical shape */
  size_t start[2];       /* this rank's slice of it (all of it on one rank) */
  size_t count[2];       /* the slice's extent per dimension (numel = their product) */
  int tp_partial;        /* replicated value whose gradient is a partial sum over TP */
} ol_param_entry;

typedef struct {
  ol_param_entry *entries;
  size_t count, cap;
  size_t total;          /* floats in each flat buffer */
  float *data;           /* (total) values */
  float *grad;           /* (total) gradients, accumulated over micro-batches */
  float *m, *v;          /* (total) AdamW moments */
} ol_params;

/* Declares a tensor before allocation; returns its entry index. */
size_t ol_params_declare(ol_params *p, const char *name, int ndim, const size_t *shape);
/* Declares this rank's slice [start, start + count) of a tensor of full logical shape `shape`. */
size_t ol_params_declare_slice(ol_params *p, const char *name, int ndim, const size_t *shape,
                               const size_t *start, const size_t *count);
/* 1 when the entry holds only a slice of its logical tensor (a TP shard) */
int ol_param_sharded(const ol_param_entry *e);
void ol_params_alloc(ol_params *p);   /* allocates the four flat buffers, zeroed */
float *ol_params_value(const ol_params *p, size_t index);
float *ol_params_grad(const ol_params *p, size_t index);
void ol_params_free(ol_params *p);

/* ---- the projections of a LLaMA block ------------------------------------------------------ */
typedef enum { OL_Q, OL_K, OL_V, OL_O, OL_GATE, OL_UP, OL_DOWN, OL_PROJ_COUNT } ol_proj;
const char *ol_proj_short(ol_proj p);    /* "q", "k", ..., "down" */
const char *ol_proj_module(ol_proj p);   /* "self_attn.q_proj", ..., "mlp.down_proj" */

typedef enum { OL_PAR_COLUMN, OL_PAR_ROW, OL_PAR_REPLICATED } ol_par_kind;

/* ---- methods ------------------------------------------------------------------------------- */
typedef enum {
  OL_AD_ONELORA = 0,   /* 1lora: y += b sum(x) */
  OL_AD_ONELORA_RANDOM,/* 1lora-random: y += b (v . x), v a fixed seeded random vector */
  OL_AD_LORA,          /* lora: y += (alpha/r) B A x */
  OL_AD_DORA,          /* dora: y = m / |W + sBA|_row * (W x + s B A x) */
  OL_AD_VERA,          /* vera: y += lambda_b * B (lambda_d * A x), A and B frozen, shared */
  OL_AD_MORA,          /* mora: y += tile(M compress(x)), type 1 */
  OL_AD_MORA6,         /* mora6: type 6, RoPE-rotated groups */
  OL_AD_BITFIT,        /* bitfit: y += beta */
  OL_AD_COUNT
} ol_adapter_kind;

typedef struct {
  char text[128];          /* the --method value, normalised */
  char targets_text[128];  /* the --targets value */
  unsigned adapters;       /* bitmask over ol_adapter_kind */
  unsigned targets;        /* bitmask over ol_proj */
  int full;                /* every weight trainable */
  int norms;               /* RMSNorm weights trainable */
  int64_t rank;            /* for rank-r methods */
  double alpha;
} ol_method;

/* Parses "--method" (comma list; "none" = frozen) and "--targets" (all | attn | mlp | q,k,...). */
int ol_method_parse(const char *methods, const char *targets, int64_t rank, double alpha,
                    ol_method *out);

struct ol_linear;
struct ol_grid;
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

/* An adapter method: a small vtable. Every function works on this rank's shard. */
typedef struct {
  const char *name;         /* the --method name */
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
  /* constants a method fixes in declare, since the vtable's calls see no ol_method */
  size_t rank;              /* its inner size (lora, dora, vera: r; mora, mora6: r^) */
  float scale;              /* its output scaling (lora, dora: s = alpha / r) */
  size_t k_max;             /* vera: the row stride of the shared A (the model's k_max) */
};

/* Points a->value/a->grad at the allocated flat buffers. */
void ol_adapter_bind(ol_adapter *a, const ol_params *p);

const ol_adapter_ops *ol_adapter_lookup(ol_adapter_kind k);
extern const ol_adapter_ops ol_onelora_ops, ol_onelora_random_ops, ol_lora_ops, ol_dora_ops,
    ol_vera_ops, ol_mora_ops, ol_mora6_ops, ol_bitfit_ops;

/* LoRA scaling s = alpha / rank, shared by lora and dora */
float ol_lora_scale(const ol_method *m);
/* MoRA's square size r^ = floor(sqrt((k + d) r) + 1/2) */
size_t ol_mora_rhat(size_t k, size_t d, int64_t rank);

/* ---- the linear layer ---------------------------------------------------------------------- */
#define OL_MAX_ADAPTERS 4
typedef struct ol_linear {
  char name[96];            /* HF module, e.g. "model.layers.3.self_attn.q_proj" */
  size_t out, in;           /* this rank's shard: d, k */
  size_t out_full, out_start; /* the full logical d and where this rank's rows start */
  size_t in_full, in_start;   /* the full logical k and where this rank's columns start */
  int tp_rank;              /* this rank in the TP group (0 without TP) */
  struct ol_grid *grid;     /* the TP collectives' grid (NULL on one rank), set by the model */
  ol_par_kind par;
  float *W;                 /* (out, in) frozen or trainable f32 weight shard, or NULL when W16 */
  const uint16_t *W16;      /* (out, in) a frozen shard kept at 2 bytes (--weights-dtype) */
  size_t ldw;               /* row stride of W or W16: in, or in_full when mapped from a file */
  int w_bf16;               /* W16 is bf16 (else IEEE f16) */
  float *wide;              /* scratch for widening W16 (gemm_half), from ol_acts */
  long w_param;             /* entry index when W is trainable, else -1 */
  float *dW;                /* (out, in) its gradient when trainable, else NULL */
  float *bias;              /* (out) bias when the model file has one, else NULL */
  float *dbias;             /* (out) its gradient when trainable (full), else NULL */
  float *work;              /* (N, out) scratch for a rescaling adapter (DoRA), from ol_acts */
  ol_adapter adapters[OL_MAX_ADAPTERS];
  int n_adapters;
  int n_detached;           /* adapters set aside by ol_model_attach_adapters */
} ol_linear;

/* floats per token this linear keeps between its forward and its backward */
size_t ol_linear_saved_per_token(const ol_linear *lin);
/* y(N,out) = beta*y + x(N,in) W^T + adapters; saved (N, saved_per_token). A row-parallel layer
 * under TP sums its output over the TP ranks (one all-reduce of y); y must then be the same on
 * every rank on entry (the residual stream is). */
void ol_linear_forward(ol_linear *lin, const float *x, float *y, size_t N, float beta,
                       float *saved);
/* dx(N,in) = beta*dx + dy(N,out) W + adapters; accumulates trainable gradients */
void ol_linear_backward(ol_linear *lin, const float *dy, float *dx, size_t N, float beta,
                        float *saved);

#endif
