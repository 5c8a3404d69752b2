/* LoRA (Hu et al. 2021): y = W x + s B A x, s = alpha / r, with A (r, k) and B (d, r)
 * trainable, A ~ U(-1/sqrt(k), +1/sqrt(k)) (PyTorch's kaiming_uniform_ with a = sqrt(5)) and
 * B = 0, so training starts from the frozen model.
 *
 * Memory: dA = dt^T x needs the input, so LoRA keeps x (k floats per token) and t = x A^T
 * (r floats per token) in its saved slot: 4 (k + r) bytes per token per adapted layer.
 *   forward:  t(N,r) = x A^T;  y(N,d) = beta y + s t B^T
 *   backward: dB += s dy^T t;  dt = s dy B (into t's slot);  dA += dt^T x;  dx = beta dx + dt A
 * dora.c reuses this file's forward, backward and init through ol_lora_ops. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/peft/linear.h"

/* Under TP (docs/PARALLEL.md): on a column-parallel layer A is replicated (x is) and B sharded
 * like W's rows; t = x A^T is the same on every rank, dt = s dy B is a partial sum, so dA is
 * partial (summed over TP) and dt A joins dx's all-reduce. On a row-parallel layer A is sharded
 * like W's columns and B replicated; each rank adds s t_partial B^T to its partial output, which
 * the layer's all-reduce sums; dB = s dy^T t_partial is partial (summed over TP); dt = s dy B
 * is the same everywhere, so dA and dx stay local. No new collective. */
static void lora_declare(ol_adapter *a, const ol_linear *lin, ol_peft_ctx *ctx) {
  const size_t r = (size_t)ctx->method->rank;
  const size_t shape_a[2] = {r, ol_linear_in_full(lin)}, shape_b[2] = {ol_linear_out_full(lin), r};
  ol_adapter_param(a, lin, ctx, "lora_A", 2, shape_a, ol_split_in(lin, OL_PLACE_PARTIAL));
  ol_adapter_param(a, lin, ctx, "lora_B", 2, shape_b, ol_split_out(lin, OL_PLACE_PARTIAL));
  a->rank = r;
  a->scale = ol_lora_scale(ctx->method);
}

static void lora_init(ol_adapter *a, const ol_linear *lin, ol_rng *rng) {
  const size_t r = a->rank, k = lin->in;
  const size_t k_full = lin->in_full ? lin->in_full : k;
  const float bound = 1.0f / sqrtf((float)k_full);  // fan-in of the whole layer
  // B (d, r) = 0: the parameter buffer starts zeroed (ol_params_alloc). A is drawn here, on
  // the host, from the adapter's sequential stream (ol_rng has no counter form to hand to a
  // kernel), then copied to the backend: set-up data written once, never a step's work
  float *A = ol_calloc(r * k, sizeof(float));  // (r, k) this rank's columns [in_start, +k) of (r, k_full)
  for (size_t i = 0; i < r; i++)  // the full tensor's stream: the same values under any TP
    for (size_t j = 0; j < k_full; j++) {
      float u = bound * (2.0f * ol_rng_uniform(rng) - 1.0f);
      if (j >= lin->in_start && j < lin->in_start + k) A[i * k + j - lin->in_start] = u;
    }
  ol_bk->to_device(a->value[0], A, r * k * sizeof(float));
  ol_free(A);
}

static size_t lora_saved(const ol_adapter *a, const ol_linear *lin) {
  return lin->in + a->rank;
}

static void lora_forward(ol_adapter *a, const ol_linear *lin, const float *x, float *y, size_t N,
                         float beta, float *saved) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float *A = a->value[0];  // (r, k)
  const float *B = a->value[1];  // (d, r)
  float *xs = saved;             // (N, k) the input, kept for dA
  float *t = saved + N * k;      // (N, r) t = x A^T, kept for dB
  ol_bk->copy(xs, x, N * k * sizeof(float));
  ol_bk->gemm(0, 1, N, r, k, 1.0f, x, k, A, k, 0.0f, t, r);
  ol_bk->gemm(0, 1, N, d, r, a->scale, t, r, B, r, beta, y, d);  // y (N, d) = beta y + s t B^T
}

static void lora_backward(ol_adapter *a, const ol_linear *lin, const float *dy, float *dx,
                          size_t N, float beta, float *saved) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  const float *A = a->value[0];  // (r, k)
  const float *B = a->value[1];  // (d, r)
  float *dA = a->grad[0];        // (r, k)
  float *dB = a->grad[1];        // (d, r)
  const float *xs = saved;       // (N, k)
  float *t = saved + N * k;      // (N, r) t, then dt = s dy B once dB has used it
  ol_bk->gemm(1, 0, d, r, N, a->scale, dy, d, t, r, 1.0f, dB, r);   // dB += s dy^T t
  ol_bk->gemm(0, 0, N, r, d, a->scale, dy, d, B, r, 0.0f, t, r);    // dt = s dy B
  ol_bk->gemm(1, 0, r, k, N, 1.0f, t, r, xs, k, 1.0f, dA, k);       // dA += dt^T x
  ol_bk->gemm(0, 0, N, k, r, 1.0f, t, r, A, k, beta, dx, k);        // dx = beta dx + dt A
}

static void lora_merge(const ol_adapter *a, ol_linear *lin) {
  const size_t r = a->rank, k = lin->in, d = lin->out;
  // W (d, k) += s B (d, r) A (r, k)
  ol_bk->gemm(0, 0, d, k, r, a->scale, a->value[1], r, a->value[0], k, 1.0f, lin->W, k);
}

const ol_adapter_ops ol_lora_ops = {
    .name = "lora", .supports_tp = 1, .uses_rank = 1, .uses_alpha = 1,
    .declare = lora_declare, .init = lora_init, .saved_per_token = lora_saved,
    .forward = lora_forward, .backward = lora_backward, .merge = lora_merge,
};
