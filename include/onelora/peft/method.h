/* onelora peft: the projections of a block, the --method and --targets a run trains. */
#ifndef ONELORA_PEFT_METHOD_H
#define ONELORA_PEFT_METHOD_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"

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

#endif
