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
typedef enum { OL_AD_ONELORA = 0, OL_AD_COUNT } ol_adapter_kind;

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
typedef struct ol_adapter ol_adapter;

/* An adapter method: a small vtable. Every function works on this rank's shard. */
typedef struct {
  const char *name;         /* the --method name */
  const char *param_suffix; /* e.g. "onelora_b" */
  /* declares its trainable tensors for this linear into the table */
  void (*declare)(ol_adapter *a, const struct ol_linear *lin, ol_params *p);
  /* initialises its tensors once they are allocated and bound (a->value, a->grad) */
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
  /* W(d,k) += its update, so that the plain linear equals the adapted one */
  void (*merge)(const ol_adapter *a, struct ol_linear *lin);
} ol_adapter_ops;

struct ol_adapter {
  const ol_adapter_ops *ops;
  size_t param[4];          /* entry indices of its tensors in the table */
  int n_param;
  float *value[4];          /* bound into the flat buffers after allocation */
  float *grad[4];
};

/* Points a->value/a->grad at the allocated flat buffers. */
void ol_adapter_bind(ol_adapter *a, const ol_params *p);

const ol_adapter_ops *ol_adapter_lookup(ol_adapter_kind k);
extern const ol_adapter_ops ol_onelora_ops;

/* ---- the linear layer ---------------------------------------------------------------------- */
#define OL_MAX_ADAPTERS 4
typedef struct ol_linear {
  char name[96];            /* HF module, e.g. "model.layers.3.self_attn.q_proj" */
  size_t out, in;           /* this rank's shard: d, k */
  ol_par_kind par;
  float *W;                 /* (out, in) frozen or trainable weight shard */
  long w_param;             /* entry index when W is trainable, else -1 */
  float *dW;                /* (out, in) its gradient when trainable, else NULL */
  ol_adapter adapters[OL_MAX_ADAPTERS];
  int n_adapters;
  int n_detached;           /* adapters set aside by ol_model_attach_adapters */
} ol_linear;

/* floats per token this linear keeps between its forward and its backward */
size_t ol_linear_saved_per_token(const ol_linear *lin);
/* y(N,out) = beta*y + x(N,in) W^T + adapters; saved (N, saved_per_token) */
void ol_linear_forward(ol_linear *lin, const float *x, float *y, size_t N, float beta,
                       float *saved);
/* dx(N,in) = beta*dx + dy(N,out) W + adapters; accumulates trainable gradients */
void ol_linear_backward(ol_linear *lin, const float *dy, float *dx, size_t N, float beta,
                        float *saved);

#endif
