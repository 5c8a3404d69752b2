/* onelora model: LLaMA config presets, the parameter layout, and forward/backward of each stage.
 * Forward is embed, the blocks, final norm and LM head with the loss; backward runs in reverse. */
#ifndef ONELORA_MODEL_MODEL_H
#define ONELORA_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/core/tp.h"
#include "onelora/io/weights.h"
#include "onelora/peft/linear.h"

/* Named shapes: tiny, small, llama2-7b, llama2-13b, llama2-70b (GQA, 8 kv heads). */
int ol_preset(const char *name, ol_config *out);
const char *ol_preset_names(void);

/* A weight or norm vector of the model as it appears in the model file. */
typedef struct {
  char name[128];          /* HF name, e.g. "model.layers.0.mlp.up_proj.weight" */
  int ndim;
  size_t shape[2];         /* full shape on disk */
  size_t start[2];         /* this rank's slice of it (TP shard; 0 without TP) */
  size_t count[2];         /* the slice's extent (= shape without TP) */
  ol_placement place;      /* how it lies across TP (ROWS or COLS when sharded, else REPLICATED:
                            * norms, and row-parallel biases, have the same gradient everywhere) */
  float *data;             /* this rank's storage (frozen arena or flat trainable buffer), or
                            * NULL when the tensor is kept at 2 bytes in `half` */
  uint16_t *half;          /* a frozen matrix kept as f16/bf16 (the model's weights_dtype) */
  size_t ld;               /* row stride of data/half in values: count[1], or shape[1] when mapped */
  int mapped;              /* data/half point into a read-only mapping of the weights file */
  long param;              /* entry in the trainable table, or -1 when frozen */
  int not_in_file;         /* the file loaded from has no such tensor (a bias that merging
                            * BitFit adds to a model without biases): ol_model_load zeroes it */
} ol_tensor;

typedef struct {
  ol_tensor w[OL_PROJ_COUNT];   /* projection weights; lin[p].W points at w[p].data */
  ol_tensor bias[OL_PROJ_COUNT];/* (out) biases when the config has them (lin[p].bias) */
  ol_linear lin[OL_PROJ_COUNT];
  ol_tensor attn_norm;     /* (D) input_layernorm */
  ol_tensor mlp_norm;      /* (D) post_attention_layernorm */
} ol_block;

/* The layers a pipeline stage holds: [first_layer, first_layer + n_layers), plus the embedding
 * on the first stage and the final norm and LM head on the last. */
typedef struct {
  size_t first_layer, n_layers;
  int has_embed, has_head;
  int tp, tp_rank;         /* tensor-parallel shards of every layer and this rank's (0 = 1, 0) */
  ol_dtype weights_dtype;  /* frozen matrices in memory: f32 (0), or f16/bf16 at 2 bytes; norms,
                            * biases and everything trainable stay f32 */
} ol_stage;
/* Stage pp_rank of pp: contiguous layer ranges, the first L mod pp stages one layer longer. */
ol_stage ol_pipeline_stage(const ol_config *cfg, int pp, int pp_rank);

typedef struct {
  ol_config cfg;
  ol_method method;
  ol_stage stage;          /* what this rank holds (the whole model unless pipelined) */
  const ol_tp *tp;         /* the TP group's regions (NULL alone: no collectives), bound once by
                            * ol_model_bind_tp; sizes come from stage.tp and stage.tp_rank */
  size_t v0, Vl;           /* this rank's vocabulary rows [v0, v0 + Vl) of embed and lm_head */
  size_t hd;               /* head dim D/H */
  ol_block *blocks;        /* (stage.n_layers) this stage's layers */
  ol_tensor embed;         /* (V, D) */
  ol_tensor final_norm;    /* (D) */
  ol_tensor lm_head;       /* (V, D) */
  ol_tensor **tensors;     /* every model-file tensor in file order, for load/save/merge */
  size_t n_tensors;
  ol_params params;        /* the flat trainable state */
  ol_frozen generated;     /* frozen tensors the methods generate (checkpoint group `frozen`) */
  float *frozen;           /* one arena for every frozen f32 tensor */
  size_t frozen_floats;
  uint16_t *frozen_half;   /* one arena for the frozen matrices kept at 2 bytes */
  size_t frozen_halves;
  ol_map *maps;            /* (n_tensors) the mappings of mapped frozen matrices */
  size_t mapped_tensors, mapped_bytes; /* how many frozen matrices are mapped, and their bytes */
  char map_why[160];       /* why the first unmapped frozen matrix is not mapped ("" = all are) */
} ol_model;

/* Lays out the model for a method: every tensor, the trainable table and the generated frozen
 * tensors, without allocating weights or trainable state (enough for counting). */
int ol_model_layout(ol_model *m, const ol_config *cfg, const ol_method *method, uint64_t seed);
/* Layout, then allocates frozen and trainable storage and binds adapters. Weights are
 * uninitialised until loaded or randomised. */
int ol_model_build(ol_model *m, const ol_config *cfg, const ol_method *method, uint64_t seed);
/* The same for one pipeline stage (stage NULL = the whole model). */
int ol_model_layout_stage(ol_model *m, const ol_config *cfg, const ol_method *method,
                          uint64_t seed, const ol_stage *stage);
int ol_model_build_stage(ol_model *m, const ol_config *cfg, const ol_method *method,
                         uint64_t seed, const ol_stage *stage);
/* The same, mapping read-only from `weights` (DESIGN §4) each frozen matrix whose file dtype is
 * the stage's weights_dtype and whose bytes are contiguous, instead of allocating it: the ranks
 * of a node then share one copy in the page cache. The others are allocated (map_why says why)
 * and ol_model_load reads them. */
int ol_model_build_mapped(ol_model *m, const ol_config *cfg, const ol_method *method,
                          uint64_t seed, const ol_stage *stage, struct ol_weights *weights);
/* Binds the model and every linear to the TP group's regions (NULL: one rank), once, before
 * the adapters are initialised (DoRA's m sums a row-parallel layer's columns over TP). */
void ol_model_bind_tp(ol_model *m, const ol_tp *tp);
/* Initialises adapters (their own init rules) from seed. */
void ol_model_init_adapters(ol_model *m, uint64_t seed);
/* Synthetic weights: normal(0, 0.02) per matrix, ones for norms and biases. Counter-based:
 * element (r, c) of a matrix is 0.02 * ol_hash_normal(ol_counter_hash(key, r, c)) with key =
 * hash(seed, FNV-1a of its name) (core.h), so every layout holds the same values and a rank
 * computes only its own slice, in time proportional to the slice. */
void ol_model_randomize(ol_model *m, uint64_t seed);
/* The same for one tensor's slice [start, start + count), into data (numel floats, row-major
 * (count[0], count[1])): init streams big models through it a block of rows at a time. */
void ol_tensor_randomize(const ol_tensor *t, float *data, uint64_t seed);
size_t ol_tensor_numel(const ol_tensor *t);
/* Fills t->half, this rank's slice of a matrix kept at 2 bytes, a block of rows at a time:
 * fill(ctx, rows, buf) writes the f32 values of `rows` (t narrowed to the block's rows) into buf
 * (rows.count[0], count[1]), a backend buffer, which are then rounded to dtype (to nearest even)
 * by the backend. Returns the first error of fill. */
typedef int (*ol_fill_fn)(void *ctx, const ol_tensor *rows, float *buf);
int ol_tensor_fill_half(const ol_tensor *t, ol_dtype dtype, ol_fill_fn fill, void *ctx);
void ol_model_free(ol_model *m);
/* Number of trainable values */
size_t ol_model_trainable(const ol_model *m);
/* The gradient of a model tensor in the flat buffer, or NULL when it is frozen */
float *ol_model_grad(const ol_model *m, const ol_tensor *t);
/* Looks up a weight by HF name, NULL if absent */
ol_tensor *ol_model_tensor(ol_model *m, const char *name);


/* Reads every tensor of the model (this rank's slices) from open weights (a model file or a
 * Hugging Face directory), after checking that each is present with its shape. */
int ol_model_load(ol_model *m, struct ol_weights *f);
/* Writes the model's weights as a model file (f32 or f16 on disk). */
int ol_model_save(const ol_model *m, const char *path, int dtype);
/* Writes the model for Hugging Face with the model file's tensor names (f32 or f16): OUT is a
 * directory (created if missing) that gets config.json and model.safetensors, or a path
 * ending in .safetensors, written with config.json beside it. */
int ol_model_save_hf(const ol_model *m, const char *out, int dtype);

/* Matrix-product FLOPs of one training step of this rank over `tokens` tokens of sequences of
 * length T: its linear shards (forward, dx, and dW where trainable), causal attention over its
 * query heads as the backend runs it (forward 2 T qD, backward 5 T qD per token and layer, with
 * qD = H/TP * hd; the recomputed scores included) and its V/TP rows of the LM head. Adapters'
 * O(d+k) work per token is not counted. */
double ol_model_flops(const ol_model *m, size_t tokens, size_t T);
/* The FLOPs a step issues: ol_model_flops, plus with recompute the forwards of the blocks it
 * re-runs (all of the stage's but the last). */
double ol_model_step_flops(const ol_model *m, size_t tokens, size_t T, int recompute);

/* Detaches (on = 0) or reattaches (on = 1) every adapter: detached, forward and backward do
 * exactly --method none's work. For timing the adapters' cost within one run. */
void ol_model_attach_adapters(ol_model *m, int on);

/* Folds every adapter into its linear weight (W += delta). */
void ol_model_merge(ol_model *m);

#endif
