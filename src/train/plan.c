/* The memory, FLOP and communication planner (`onelora plan`, docs/PERFORMANCE.md "Planner"):
 * what each rank of a layout holds and does per step, from the layouts alone. Every figure is the
 * sum of the allocations the trainer makes for that rank (the same layout, activation and
 * parameter code computes them), plus the libraries' own memory, a measured constant. */
#include <math.h>
#include <string.h>

#include "onelora/model/acts.h"
#include "onelora/parallel/dp.h"
#include "onelora/parallel/pipeline.h"
#include "onelora/train/plan.h"

/* Resident memory of a rank beyond onelora's own allocations: the process image with Open MPI,
 * HDF5 and OpenBLAS loaded and initialised, OpenBLAS's GEMM buffers, glibc's arenas. Measured:
 * `onelora bench --preset tiny --seq-len 64 --steps 2` peaks at 25.7-26.1 MiB, of which its own
 * planned allocations are 2.5 MiB (docs/PERFORMANCE.md, "Planner"). */
#define LIBRARY_BYTES (24.0 * 1048576.0)

/* Open MPI's reduction of an in-place MPI_Allreduce needs a temporary of the message (its ring
 * and recursive-doubling algorithms receive into one): the largest collective a rank makes. */
static double largest_collective(const ol_model *m, size_t N, const ol_plan_inputs *in) {
  const double D = (double)m->cfg.dim;
  double biggest = 0.0;
  if (in->tp > 1) biggest = (double)N * D * sizeof(float);  // activations, dx
  if (in->dp > 1 && (double)m->params.total * sizeof(float) > biggest)
    biggest = (double)m->params.total * sizeof(float);  // the gradient, in 2^30-float pieces
  return biggest;
}

/* Floats of the replicated parameters' partial gradients, all-reduced over TP once per step */
static double partial_floats(const ol_model *m) {
  double partial = 0.0;
  for (size_t i = 0; i < m->params.count; i++)
    if (m->params.entries[i].place == OL_PLACE_PARTIAL) partial += (double)m->params.entries[i].numel;
  return partial;
}

/* Payload bytes this rank sends per step by kind, as the collectives count them (g->bytes). */
static void step_comm(const ol_model *m, size_t N, const ol_plan_inputs *in, double *comm) {
  memset(comm, 0, OL_COMM_COUNT * sizeof *comm);
  const double D = (double)m->cfg.dim, L = (double)m->stage.n_layers, Mb = (double)in->micro_batches;
  const double act = (double)N * D * sizeof(float);  // one (N, D) activation
  if (in->tp > 1) {
    // o and down; recompute runs each block's forward again but the stage's last
    const double blocks = L + (in->recompute && L > 0 ? L - 1 : 0);
    double fwd = blocks * 2 * act;
    if (m->stage.has_embed) fwd += act;
    if (m->stage.has_head) fwd += (double)N * (2 * sizeof(float) + sizeof(double));  // max, target, sum
    double bwd = L * 2 * act;                           // q/k/v and gate/up dx
    if (m->stage.has_head) bwd += act;
    comm[OL_COMM_TP_FWD] = fwd * Mb;
    comm[OL_COMM_TP_BWD] = bwd * Mb + partial_floats(m) * sizeof(float);
  }
  if (in->pp > 1) {  // each stage sends its output forward and its input gradient back
    const double sends = (double)(m->stage.has_head ? 0 : 1) + (double)(m->stage.has_embed ? 0 : 1);
    comm[OL_COMM_PP] = sends * act * Mb;
  }
  if (in->dp > 1) comm[OL_COMM_DP] = ol_dp_step_bytes(&m->params);
}

/* The CUDA backend's workspaces (src/backend/cuda/: ol_cuda_workspace's slots, each grown to
 * 1.25 times its largest request and kept) for a stage of m at N tokens a micro-batch:
 *   slot 0, gemm_half's input rounded to 2 bytes: the largest M x K operand, a linear's input or
 *     output gradient (N rows of its widest side) or the LM head's chunk of logits gradients;
 *   slot 1, the column reductions' partial sums (1LoRA's db, biases, DoRA's dm): a (N/64, d)
 *     block of group sums and a (d/256, N) block of row partials at the widest d (an upper
 *     bound: the other reductions' partials are smaller);
 *   slot 2, attention backward's delta (B, H/TP, T). */
static double cuda_workspaces(const ol_model *m, size_t B, size_t T, size_t head_chunk) {
  const double N = (double)(B * T);
  double widest = (double)m->cfg.dim;  // the widest side of any linear on this rank
  for (size_t l = 0; l < m->stage.n_layers; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      const ol_linear *lin = &m->blocks[l].lin[p];
      if ((double)lin->in > widest) widest = (double)lin->in;
      if ((double)lin->out > widest) widest = (double)lin->out;
    }
  double slot0 = 0.0;
  if (m->stage.weights_dtype != OL_DTYPE_F32) {
    slot0 = N * widest * 2.0;
    if (m->stage.has_head && (double)head_chunk * (double)m->Vl * 2.0 > slot0)
      slot0 = (double)head_chunk * (double)m->Vl * 2.0;
  }
  const double slot1 = (ceil(N / 64.0) * widest + ceil(widest / 256.0) * N) * sizeof(float);
  const double heads = (double)m->cfg.n_heads / (double)(m->stage.tp ? m->stage.tp : 1);
  const double slot2 = (double)B * heads * (double)T * sizeof(float);
  return 1.25 * (slot0 + slot1 + slot2);
}

/* The plan of one rank: (pp_rank, tp_rank) of the layout (DP replicas are alike). */
static int plan_rank(const ol_plan_inputs *in, int pp_rank, int tp_rank, ol_plan *out) {
  ol_stage stage = ol_pipeline_stage(in->cfg, in->pp, pp_rank);
  stage.tp = in->tp, stage.tp_rank = tp_rank, stage.weights_dtype = in->weights_dtype;
  ol_model m;
  OL_TRY(ol_model_layout_stage(&m, in->cfg, in->method, 0, &stage));
  memset(out, 0, sizeof *out);
  const size_t B = (size_t)in->micro_batch, T = (size_t)in->seq_len, N = B * T;
  const size_t half = in->weights_dtype == OL_DTYPE_F32 ? 0 : 1;
  // frozen matrices: mapped from the file (the same pages whatever the rank count on a node) or
  // owned; norms and biases are always owned f32
  for (size_t i = 0; i < m.n_tensors; i++) {
    const ol_tensor *t = m.tensors[i];
    if (t->param >= 0) continue;
    const double bytes = (double)ol_tensor_numel(t) * (t->ndim == 2 && half ? 2.0 : 4.0);
    if (t->ndim == 2 && in->mapped && !in->device) out->frozen_mapped += bytes;
    else out->frozen_owned += bytes;
  }
  out->trainable_state = 4.0 * (double)m.params.total * sizeof(float);  // values, grad, m, v
  for (size_t i = 0; i < m.generated.count; i++) {  // VeRA's shared frozen matrices
    const ol_frozen_entry *e = &m.generated.entries[i];
    out->trainable_state += (double)e->shape[0] * (double)(e->ndim == 2 ? e->shape[1] : 1) * sizeof(float);
  }
  for (size_t l = 0; l < m.stage.n_layers; l++)  // adapters' persistent per-layer scratch
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      for (int i = 0; i < m.blocks[l].lin[p].n_adapters; i++)
        out->trainable_state += (double)m.blocks[l].lin[p].adapters[i].state_floats * sizeof(float);
  const int slots = ol_pp_slots(in->pp, pp_rank, (int)in->micro_batches, in->gpipe);
  ol_acts_sizes sizes;
  ol_acts_plan(&m, B, T, in->recompute, &sizes);
  out->kept = (double)slots * (double)sizes.kept_bytes;
  out->logits = (double)slots * (double)sizes.logits_bytes;
  out->workspace = (double)slots * (double)(sizes.total_bytes - sizes.kept_bytes - sizes.logits_bytes);
  // the pipeline's inbox (one (N, D) activation) and the largest in-place collective's temporary
  const double inbox = in->pp > 1 ? (double)N * (double)in->cfg->dim * sizeof(float) : 0.0;
  out->comm_buffers = largest_collective(&m, N, in) + inbox;
  out->library = LIBRARY_BYTES;
  if (in->device) {  // what the GPU's allocator holds (the peak the trainer reports)
    // the CUDA kernels take no caller scratch (attention is tiled, gemm_half narrows the input
    // instead of widening W) but keep workspaces of their own; the step's tokens and targets
    out->workspace -= (double)slots * (double)sizes.backend_scratch_bytes;
    out->workspace += 2.0 * (double)(N * (size_t)in->micro_batches) * sizeof(int32_t);
    out->backend_workspace = cuda_workspaces(&m, B, T, sizes.head_chunk);
    // the partial gradients packed for their TP all-reduce, and the pipeline's inbox: device
    // memory when MPI is CUDA-aware (pinned host memory when staged; counted either way, the
    // path is chosen at run time); MPI's temporaries are host memory, NCCL's its own
    out->comm_buffers = (in->tp > 1 ? partial_floats(&m) * sizeof(float) : 0.0) + inbox;
    out->library = 0.0;
  }
  out->total = out->frozen_owned + out->frozen_mapped + out->trainable_state + out->kept +
               out->logits + out->workspace + out->comm_buffers + out->backend_workspace +
               out->library;
  out->flops = ol_model_step_flops(&m, N * (size_t)in->micro_batches, T, in->recompute);
  step_comm(&m, N, in, out->comm);
  out->pp_rank = pp_rank, out->tp_rank = tp_rank;
  ol_model_free(&m);
  return OL_OK;
}

int ol_plan_layout(const ol_plan_inputs *in, ol_plan *worst) {
  OL_TRY(ol_config_validate(in->cfg, "plan"));
  if (in->tp < 1 || in->pp < 1 || in->dp < 1)
    return ol_error("plan: --tp, --pp and --dp must be positive");
  OL_TRY(ol_method_check(in->method, in->tp, in->weights_dtype));
  if (in->pp > in->cfg->n_layers)
    return ol_error("--pp %d: the model has only %lld layers", in->pp, (long long)in->cfg->n_layers);
  // every rank differs: stages hold other layers (the first the embedding, the last the head);
  // the step waits for the slowest, so FLOPs and traffic are the largest over ranks
  double flops = 0.0, comm[OL_COMM_COUNT] = {0};
  for (int pr = 0; pr < in->pp; pr++)
    for (int tr = 0; tr < in->tp; tr++) {
      ol_plan p;
      OL_TRY(plan_rank(in, pr, tr, &p));
      if ((pr == 0 && tr == 0) || p.total > worst->total) *worst = p;
      if (p.flops > flops) flops = p.flops;
      for (int k = 0; k < OL_COMM_COUNT; k++)
        if (p.comm[k] > comm[k]) comm[k] = p.comm[k];
    }
  worst->flops = flops;
  memcpy(worst->comm, comm, sizeof comm);
  return OL_OK;
}
