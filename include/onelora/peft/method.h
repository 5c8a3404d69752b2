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
/* Adapters one linear layer carries at most (one per method of a --method list). */
#define OL_MAX_ADAPTERS 4

/* What a run trains. The adapter methods are the registry's (src/peft/methods.def, one line a
 * method; peft/adapter.h); none, full and norms are not adapters but choices of which model
 * tensors are trainable. */
typedef struct {
  char text[128];          /* the --method value, normalised */
  char targets_text[128];  /* the --targets value */
  unsigned adapters;       /* bitmask over the registry's indices (ol_adapter_at) */
  unsigned targets;        /* bitmask over ol_proj */
  int full;                /* every weight trainable */
  int norms;               /* RMSNorm weights trainable */
  int64_t rank;            /* for rank-r methods */
  double alpha;
} ol_method;

/* Parses "--method" (comma list; "none" = frozen) and "--targets" (all | attn | mlp | q,k,...). */
int ol_method_parse(const char *methods, const char *targets, int64_t rank, double alpha,
                    ol_method *out);
/* Every --method name: "none, full, norms, " then the registry's, in its order (for --help and
 * errors). Static storage. */
const char *ol_method_names(void);

#endif
