/* The CUDA backend's shared pieces for the .cu files: C linkage for onelora's headers, the
 * stream every kernel is queued on, device workspaces, error checks and block reductions.
 * cuda.cu implements the functions declared here and owns the table (ol_cuda_module_backend). */
#ifndef ONELORA_BACKEND_CUDA_COMMON_CUH
#define ONELORA_BACKEND_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "onelora/backend/backend.h"
#include "onelora/core/core.h"
}
#include "launch.h"

extern "C" {
/* The stream of this process's GPU: every kernel and copy is queued on it, in order. */
cudaStream_t ol_cuda_stream(void);
/* Fatal: a CUDA or cuBLAS call failed (a bug or a lost device, never user input). */
void ol_cuda_fail(const char *what, const char *why, const char *file, int line)
    __attribute__((noreturn));
/* Device scratch of at least `bytes`, one of OL_CUDA_WORKSPACES independent slots, grown on
 * demand and kept (so after the first step no op allocates): valid until the next call with the
 * same slot. Slots: 0 gemm_half's narrowed input, 1 reductions' partial sums, 2 attention,
 * 3 free for any op's temporary. */
void *ol_cuda_workspace(int slot, size_t bytes);
/* Pinned host scratch of at least `bytes` (for results copied back: a reduction's double) */
void *ol_cuda_host_scratch(size_t bytes);

/* The kernel table's entries, one group per file. Each has the signature and semantics of the
 * ol_backend entry of the same name (backend/backend.h): the buffers are device memory, every
 * kernel is queued on ol_cuda_stream(), and an op that returns a value (a loss, a sum of
 * squares) waits for it. */
/* elementwise.cu: embedding, norms, RoPE, SwiGLU, losses, optimizer, fills and conversions */
void ol_cuda_widen(float *dst, const uint16_t *src, size_t rows, size_t cols, size_t ld, int bf16);
void ol_cuda_embedding_forward(float *out, const int32_t *tokens, const float *table, const uint16_t *table16, int bf16, size_t N, size_t D, int64_t v0, size_t V);
void ol_cuda_embedding_backward(float *dtable, const int32_t *tokens, const float *dout, size_t N, size_t D, int64_t v0, size_t V);
void ol_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, size_t N, size_t D, float eps);
void ol_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd, size_t N, size_t D);
void ol_cuda_rope_table(float *cos_t, float *sin_t, size_t T, size_t hd, double theta);
void ol_cuda_rope_apply(float *x, const float *cos_t, const float *sin_t, size_t B, size_t T, size_t nh, size_t hd, int inverse);
void ol_cuda_swiglu_forward(float *h, const float *g, const float *u, size_t n);
void ol_cuda_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
double ol_cuda_cross_entropy(float *logits, const int32_t *targets, size_t N, size_t V, float grad_scale);
void ol_cuda_axpy(float *y, const float *x, float alpha, size_t n);
double ol_cuda_sumsq(const float *x, size_t n);
void ol_cuda_scale(float *x, float alpha, size_t n);
void ol_cuda_counter_normal(float *x, size_t rows, size_t cols, uint64_t key, size_t r0, size_t c0, float std);
void ol_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t step);
void ol_cuda_vp_ce_local(const float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0, float *mx, float *zt);
void ol_cuda_vp_ce_sumexp(float *logits, const float *mx, size_t N, size_t V, double *sum, int store);
void ol_cuda_vp_ce_grad(float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0, const double *sum, float grad_scale);
double ol_cuda_vp_ce_loss(const float *mx, const float *zt, const double *sum, size_t N);
void ol_cuda_fill(float *x, float value, size_t n);
void ol_cuda_narrow(uint16_t *dst, const float *src, size_t n, int bf16);
int64_t ol_cuda_sample(const float *logits, size_t V, float temperature, size_t top_k, double u, float *scratch);

/* peft.cu: the adapters' ops */
void ol_cuda_row_sums(float *s, const float *x, size_t N, size_t k);
void ol_cuda_outer(float *y, const float *s, const float *b, size_t N, size_t d, float beta);
void ol_cuda_broadcast_rows(float *x, const float *c, size_t N, size_t k, float beta);
void ol_cuda_add_bias(float *y, const float *bias, size_t N, size_t d, float beta);
void ol_cuda_col_sums(float *db, const float *dy, size_t N, size_t d);
void ol_cuda_rowdot_accum(float *c, float *db, const float *dy, const float *s, const float *b, size_t N, size_t d);
void ol_cuda_scale_cols(float *y, const float *x, const float *g, size_t N, size_t d);
void ol_cuda_col_dots_accum(float *acc, const float *a, const float *b, const float *g, size_t N, size_t d);
void ol_cuda_dora_sq_norms(float *n2, const float *W, const float *B, const float *P, size_t d, size_t k, size_t r);
void ol_cuda_inv_sqrt(float *x, size_t n);
void ol_cuda_scale_rows(float *x, const float *g, size_t N, size_t k);
void ol_cuda_row_sumsq(float *n2, const float *x, size_t N, size_t k);
void ol_cuda_sqrt_inplace(float *x, size_t n);
void ol_cuda_diag_scale(float *S, const float *lb, const float *B, const float *ld, size_t n, size_t r);
void ol_cuda_diag_scale_backward(float *dlb, float *dld, const float *dS, const float *B, const float *lb, const float *ld, size_t n, size_t r);
void ol_cuda_cyclic_rows(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b, size_t len, size_t n, float beta);

/* attention.cu: causal attention, flash-style (no T x T matrix), and the cached rows of generation */
size_t ol_cuda_attention_scratch_floats(size_t T);
void ol_cuda_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, size_t B, size_t T, size_t H, size_t Hkv, size_t hd, float *scratch);
void ol_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k, const float *v, const float *lse, size_t B, size_t T, size_t H, size_t Hkv, size_t hd, float *scratch);
void ol_cuda_attention_cached(float *out, const float *q, const float *k, const float *v, size_t n, size_t t0, size_t H, size_t Hkv, size_t hd, float *scratch);
}

#define OL_CUDA_WORKSPACES 4

#define OL_CUDA_CHECK(call)                                                                   \
  do {                                                                                        \
    cudaError_t ol_err_ = (call);                                                             \
    if (ol_err_ != cudaSuccess) ol_cuda_fail(#call, cudaGetErrorString(ol_err_), __FILE__, __LINE__); \
  } while (0)
/* after a <<<...>>> launch: a bad configuration is reported where it happened */
#define OL_CUDA_LAUNCHED() OL_CUDA_CHECK(cudaGetLastError())

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the
 * total. `shared` holds 32 values; the function may be called again with the same buffer. */
template <typename T>
__device__ inline T ol_block_sum(T v, T *shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // a previous call's readers are done with shared
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
/* Maximum of v over the block, as ol_block_sum */
__device__ inline float ol_block_max(float v, float *shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < warps ? shared[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

#endif
