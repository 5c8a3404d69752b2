/* onelora train: the planner (src/train/plan.c). */
#ifndef ONELORA_TRAIN_PLAN_H
#define ONELORA_TRAIN_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/parallel/grid.h"
#include "onelora/peft/method.h"

/* The planner (src/train/plan.c): a layout's per-rank memory, FLOPs and traffic, predicted. */
typedef struct {
  const ol_config *cfg;
  const ol_method *method;
  int tp, pp, dp;
  int64_t micro_batch, micro_batches, seq_len;
  ol_dtype weights_dtype;
  int recompute;           /* --recompute */
  int mapped;              /* frozen matrices mapped from the model file (its dtype = weights') */
  int gpipe;
  int device;              /* 1: a CUDA GPU's memory (--device cuda); 0: the host's */
} ol_plan_inputs;

typedef struct {
  int pp_rank, tp_rank;    /* the rank whose memory is the largest */
  /* its peak resident bytes, by part */
  double frozen_owned;     /* frozen weights in onelora's own memory */
  double frozen_mapped;    /* frozen matrices mapped from the file (file pages, shared by the
                            * ranks of a node) */
  double kept;             /* activations forward keeps for backward, every pipeline slot */
  double workspace;        /* transient activation workspace (the logits chunk excluded) */
  double logits;           /* the LM head's logits chunk */
  double trainable_state;  /* values, gradients, Adam m and v (+ generated frozen tensors and
                            * the adapters' per-layer state) */
  double comm_buffers;     /* the pipeline inbox and MPI's reduction temporary (a device: the
                            * packed partial gradients and the inbox) */
  double backend_workspace; /* a device backend's own workspaces (CUDA: gemm_half's narrowed
                             * input, the reductions' partial sums, attention's delta) */
  double library;          /* MPI, HDF5, OpenBLAS and the process image (measured constant; a
                            * device: 0, its CUDA context and cuBLAS workspace are outside) */
  double total;
  /* the largest over ranks, per optimizer step */
  double flops;            /* matrix-product FLOPs issued (recompute included) */
  double comm[OL_COMM_COUNT]; /* payload bytes sent, by kind, as the run's log counts them */
} ol_plan;

/* Plans every rank of the layout; fills the plan of the rank with the most memory, with the
 * largest FLOPs and traffic of any rank. */
int ol_plan_layout(const ol_plan_inputs *in, ol_plan *worst);

#endif
