/* 1LoRA (Quercia et al. 2025): y = W x + b * sum_i(x_i), one trainable vector b (d) per layer,
 * zero-initialised, no scaling. It keeps one float per token, s = sum_i x_i.
 *   forward:  y(N,d) += s(N) outer b(d)
 *   backward: db(d) += dy^T s;  dx(N,k) += (dy b)(N) broadcast along each row.
 * On this rank b is sharded like W's rows; s is over this rank's input columns. */
#include <stdio.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

static void onelora_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  // column-parallel: b (d) sharded like W's rows; row-parallel: b whole, and its gradient
  // dy^T s (s over this rank's input columns) is a partial sum over TP
  const size_t shape[1] = {ol_linear_out_full(lin)};
  ol_adapter_param(a, lin, ctx, "onelora_b", 1, shape, ol_split_out(lin, OL_PLACE_PARTIAL));
}

static void onelora_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  (void)rng;  // b (d) = 0, the identity: the parameter buffer starts zeroed (ol_params_alloc)
}

static size_t onelora_saved(const ol_adapter *a, const ol_linear *lin) { return 1; }

static void onelora_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y,
                            size_t N, float beta, float *saved) {
  float *s = saved;                                   // (N) the feature sums, kept for backward
  ol_bk->row_sums(s, x, N, lin->in);                  // x (N, k)
  ol_bk->outer(y, s, a->value[0], N, lin->out, beta); // y (N, d) = beta y + s b^T
}

static void onelora_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                             size_t N, float beta, float *saved) {
  float *s = saved;  // (N) feature sums from forward, overwritten by c = dy b as they are used
  // one pass over dy (N, d): c = dy b and db (d) += dy^T s
  ol_bk->rowdot_accum(s, a->grad[0], dy, s, a->value[0], N, lin->out);
  ol_bk->broadcast_rows(dx, s, N, lin->in, beta);  // dx (N, k) = beta dx + c 1^T
}

static void onelora_merge(const ol_adapter *a, ol_linear *lin) {
  // W (d, k) += b (d) 1^T: beta 1 is exact (1 * w = w), so each weight is w + b_i as written
  ol_bk->broadcast_rows(lin->W, a->value[0], lin->out, lin->in, 1.0f);
}

const ol_adapter_ops ol_onelora_ops = {
    .name = "1lora", .supports_tp = 1,
    .declare = onelora_declare, .init = onelora_init, .saved_per_token = onelora_saved,
    .forward = onelora_forward, .backward = onelora_backward, .merge = onelora_merge,
};

/* 1lora-random (the paper's Table S1 ablation): the ones of the compression are replaced by a
 * fixed random vector v (k) ~ N(0, 1), one per layer, generated from --seed and the layer's name
 * and stored in the checkpoint's `frozen` group as "<module>.onelora_v":
 *   y += b (v . x);  db += dy^T s;  dx += (dy b) v^T.  It keeps one float per token, s = v . x. */
static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

/* Under TP every rank holds the whole v (k_full floats, replicated like the generated tensors);
 * a row-parallel layer uses the slice of its input columns, so v_t . x_t is a partial sum that
 * the layer's forward all-reduce completes, exactly as 1LoRA's sum (DESIGN §5). */
static void random_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  onelora_declare(a, lin, ctx);
  char name[160];
  snprintf(name, sizeof name, "%s.onelora_v", lin->name);
  size_t shape[1] = {lin->in_full ? lin->in_full : lin->in};
  float *v = ol_frozen_add(ctx->frozen, name, 1, shape);  // (k_full)
  OL_CHECK(v != NULL);
  ol_rng rng;  // drawn on the host (a sequential stream), then copied to the backend
  ol_rng_seed(&rng, ctx->seed ^ name_hash(name));
  float *host = ol_calloc(shape[0], sizeof(float));  // (k_full)
  for (size_t i = 0; i < shape[0]; i++) host[i] = ol_rng_normal(&rng);
  ol_bk->to_device(v, host, shape[0] * sizeof(float));
  ol_free(host);
  a->frozen[0] = v + lin->in_start;  // (k) this rank's columns
}

static void random_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y,
                           size_t N, float beta, float *saved) {
  float *s = saved;  // (N) s = x v, kept for backward
  ol_bk->gemv(0, N, lin->in, 1.0f, x, lin->in, a->frozen[0], 0.0f, s);
  ol_bk->outer(y, s, a->value[0], N, lin->out, beta);  // y (N, d) = beta y + s b^T
}

static void random_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                            size_t N, float beta, float *saved) {
  float *s = saved;  // (N), overwritten by c = dy b
  ol_bk->rowdot_accum(s, a->grad[0], dy, s, a->value[0], N, lin->out);
  ol_bk->outer(dx, s, a->frozen[0], N, lin->in, beta);  // dx (N, k) = beta dx + c v^T
}

static void random_merge(const ol_adapter *a, ol_linear *lin) {
  // W (d, k) += b (d) v (k)^T: beta 1 is exact, so each weight is w + b_i v_j as written
  ol_bk->outer(lin->W, a->value[0], a->frozen[0], lin->out, lin->in, 1.0f);
}

const ol_adapter_ops ol_onelora_random_ops = {
    .name = "1lora-random", .supports_tp = 1,
    .declare = random_declare, .init = onelora_init, .saved_per_token = onelora_saved,
    .forward = random_forward, .backward = random_backward, .merge = random_merge,
};
