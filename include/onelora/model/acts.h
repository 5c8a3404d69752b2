/* onelora model: the activations of one micro-batch, and the forward and backward of a stage. */
#ifndef ONELORA_MODEL_ACTS_H
#define ONELORA_MODEL_ACTS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/model/model.h"

/* ---- activations: what forward keeps for backward (DESIGN §4) ------------------------------ */
typedef struct {
  float *rstd1;            /* (N) input_layernorm 1/rms */
  float *q;                /* (N, H/TP*hd) this rank's query heads, after RoPE */
  float *k, *v;            /* (N, Hkv/TP*hd), k after RoPE */
  float *lse;              /* (B, H/TP, T) attention log-sum-exp */
  float *x2;               /* (N, D) residual stream after attention */
  float *rstd2;            /* (N) post_attention_layernorm 1/rms */
  float *g, *u;            /* (N, F/TP) gate and up outputs (this rank's rows) */
  float *saved[OL_PROJ_COUNT]; /* (N, saved_per_token) what each linear keeps */
} ol_block_acts;

/* One named buffer of the activations' table (llm.c's fill_in_activation_sizes): kept for
 * backward, transient workspace, or the LM head's logits chunk (workspace too, counted apart
 * because it grows with the vocabulary) */
typedef enum { OL_ACT_KEPT, OL_ACT_WORK, OL_ACT_LOGITS } ol_act_kind;
typedef struct {
  const char *name;        /* the field, e.g. "q" or "saved.down" */
  int slot;                /* its block slot, or -1 outside the blocks */
  ol_act_kind kind;
  size_t count, size;      /* count values of `size` bytes (float, or double for ce_sum) */
  size_t bytes;            /* count * size rounded up to 64, so every buffer is 64-byte aligned */
  size_t offset;           /* bytes into the one allocation */
  float **f;               /* the pointer the carving sets: a float buffer's, */
  double **d;              /* or a double one's */
} ol_act_entry;

typedef struct {
  size_t B, T, N;          /* micro-batch, sequence length, N = B*T tokens */
  size_t L;                /* layers held */
  int recompute;           /* --recompute: one block slot shared by the layers, refilled in
                            * backward by re-running the blocks' forwards from xs */
  size_t n_blocks;         /* block slots: L, or 1 with recompute */
  float *xs;               /* (L+1, N, D) residual stream at each block boundary */
  ol_block_acts *blocks;   /* (n_blocks) layer l's, or with recompute the one every layer uses */
  float *rstd_final;       /* (N) */
  /* transient workspace, reused by every block */
  float *xn;               /* (N, D) normed input / its gradient */
  float *att;              /* (N, D) attention output (N, H/TP*hd) / its gradient; the LM
                            * head's d(normed input) (N, D) */
  float *h;                /* (N, F/TP) SwiGLU output / its gradient */
  float *dq;               /* (N, H/TP*hd) */
  float *dk, *dv;          /* (N, Hkv/TP*hd) */
  float *dres;             /* (N, D) gradient of the residual stream */
  float *logits;           /* (head_chunk, V/TP) LM head logits / dlogits of one token chunk */
  float *ce_mx, *ce_zt;    /* (head_chunk) row maxima and target logits of the chunk */
  double *ce_sum;          /* (head_chunk) row sums of exp(logit - max) */
  float *lin_work;         /* (N, max out) scratch of rescaling adapters, NULL when none */
  float *wide;             /* gemm_half scratch: f32 tiles of 2-byte weights, NULL when none */
  float *rope_cos, *rope_sin; /* (T, hd/2) */
  float *attn_scratch;     /* attention_scratch_floats(T) */
  size_t head_chunk;       /* tokens per LM-head chunk */
  size_t bytes_kept;       /* bytes that forward keeps for backward (the table's kept entries;
                            * with recompute xs and the final norm's 1/rms: the shared slot is
                            * workspace) */
  size_t bytes_logits;     /* the logits chunk's bytes (workspace) */
  size_t bytes_total;      /* all activation + workspace bytes: the one allocation */
  ol_act_entry *table;     /* (n_table) every buffer above, in allocation order */
  size_t n_table, cap_table;
  void *memory;            /* the one backend allocation the table is carved from */
} ol_acts;

/* What ol_acts_alloc would allocate, without allocating it (the planner). */
typedef struct {
  size_t kept_bytes, logits_bytes, total_bytes;
  size_t backend_scratch_bytes;  /* of the total: the buffers the backend sizes (attention's
                                  * scratch, gemm_half's f32 tile), for another backend's plan */
  size_t head_chunk;             /* rows of the LM head's logits chunk */
} ol_acts_sizes;
void ol_acts_plan(const ol_model *m, size_t B, size_t T, int recompute, ol_acts_sizes *out);

/* Activations of one micro-batch of B sequences of T tokens on m's stage. recompute != 0 keeps
 * only each block's input (xs) and one block slot, sized for the largest layer, that forward
 * and the recomputation in backward share (DESIGN §4): the same results, bit for bit, for about
 * one more forward of the blocks. */
void ol_acts_alloc(ol_acts *a, const ol_model *m, size_t B, size_t T, int recompute);
void ol_acts_free(ol_acts *a);
/* Layer l's activations: its own slot, or with recompute the one slot every layer shares */
ol_block_acts *ol_acts_block(ol_acts *a, size_t l);

/* Forward of one micro-batch: tokens/targets (B, T). Returns the summed cross-entropy.
 * When grad_scale != 0 the LM head's backward runs fused with its forward (logits are never
 * kept) and leaves d(final residual) in a->dres; the caller then calls ol_model_backward.
 * A pipeline stage without the embedding reads its input from xs[0] (the caller fills it);
 * one without the head returns 0 and leaves its output in xs[stage.n_layers]. */
double ol_model_forward(ol_model *m, ol_acts *a, const int32_t *tokens, const int32_t *targets,
                        float grad_scale);
/* Backward through the blocks and the embedding, accumulating trainable gradients. A stage
 * without the head starts from d(output) in a->dres (the caller fills it); every stage leaves
 * d(input) in a->dres. Follows ol_model_forward of the same micro-batch on the same acts. With
 * recompute it re-runs each block's forward but the last's (whose activations the shared slot
 * still holds) from xs, TP collectives included, before that block's backward. */
void ol_model_backward(ol_model *m, ol_acts *a, const int32_t *tokens);

/* ---- generation: the KV cache of one sequence (B = 1) ------------------------------------ */
typedef struct {
  size_t L;                /* layers of this stage */
  size_t T_max;            /* positions it holds at most (the model's max_seq_len) */
  size_t kvD;              /* floats per position and layer: Hkv/TP * hd */
  size_t len;              /* positions filled, 0 .. len-1 */
  float *k, *v;            /* (L, T_max, kvD) each layer's keys (after RoPE) and values */
  float *rope_cos, *rope_sin; /* (T_max, hd/2) RoPE at every position */
  float *scores;           /* (T_max) attention_cached scratch */
  void *memory;            /* the one backend allocation */
} ol_kv_cache;
/* An empty cache for up to T_max positions of m's stage (len = 0). */
void ol_kv_cache_alloc(ol_kv_cache *c, const ol_model *m, size_t T_max);
void ol_kv_cache_free(ol_kv_cache *c);

/* Forward of the a->N new tokens of one sequence (a from ol_acts_alloc(B = 1, T = n)), for
 * generation, through the same block code as ol_model_forward. With a cache they sit at
 * positions cache->len .. cache->len + n - 1: attention reads the cached keys and values of the
 * earlier positions and appends the new ones (cache->len += n); the first call (len 0) is the
 * prefill. With cache NULL it is a plain forward of positions 0 .. n-1 (generation without a
 * cache recomputes the whole sequence). Stages as in ol_model_forward: without the embedding
 * the input is xs[0], without the head the output is left in xs[stage.n_layers]. On the stage
 * with the head, logits (V/TP) = this rank's vocabulary rows of the LM head at the last new
 * position (the final norm and the head run for that position only). Trains nothing. */
void ol_model_forward_cached(ol_model *m, ol_acts *a, ol_kv_cache *cache, const int32_t *tokens,
                             float *logits);

#endif
