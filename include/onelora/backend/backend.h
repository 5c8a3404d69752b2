/* onelora backend: the numeric kernels behind one table of function pointers.
 * cpu.c implements it with CBLAS + OpenMP, cuda/ with cuBLAS and onelora's own kernels.
 * All tensors are f32 (frozen weights may be 2-byte: gemm_half), row-major, contiguous, in
 * memory the backend owns (alloc/free; host memory for cpu).
 * Shapes are given in comments; N = number of tokens (B*T), D = width, F = ffn width,
 * H = query heads, Hkv = kv heads, hd = head dim, V = vocab. "+=" means the op accumulates. */
#ifndef ONELORA_BACKEND_BACKEND_H
#define ONELORA_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  const char *name;

  /* Every buffer a kernel touches comes from here (device memory on a GPU): `bytes` zeroed,
   * 64-byte aligned; running out of memory is fatal. free(NULL) is a no-op. */
  void *(*alloc)(size_t bytes);
  void (*free)(void *p);

  /* ---- where the buffers live (a device backend's buffers are not host memory) ---- */
  /* 1 when host code may read and write alloc's buffers directly (cpu); 0 on a device. Code
   * outside the backend touches a buffer's bytes only through the copies below when it is 0. */
  int host_visible;
  /* bytes from host memory into a buffer and out of one: each has completed when it returns
   * (after the kernels queued before it); copy, between two buffers, is queued like a kernel */
  void (*to_device)(void *dst, const void *host_src, size_t bytes);
  void (*to_host)(void *host_dst, const void *src, size_t bytes);
  void (*copy)(void *dst, const void *src, size_t bytes);
  /* waits for every queued kernel (a no-op on cpu): before MPI reads or writes a buffer */
  void (*sync)(void);
  /* page-locked host memory for staging transfers (cpu: ordinary zeroed memory) */
  void *(*host_alloc)(size_t bytes);
  void (*host_free)(void *p);
  /* the CUDA stream (a cudaStream_t) the kernels are queued on, for NCCL; NULL on cpu */
  void *(*queue)(void);
  /* the most bytes alloc has held at once, and the device's total memory (0 on cpu: the
   * process's resident set is the measure there) */
  size_t (*peak_bytes)(void);
  size_t (*total_bytes)(void);

  /* C(M,N) = alpha * op(A) * op(B) + beta * C; op(A) is (M,K), op(B) is (K,N).
   * trans_a: A stored as (K,M); trans_b: B stored as (N,K). Leading dims are row strides. */
  void (*gemm)(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
               const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
               size_t ldc);
  /* The same with a 2-byte matrix W (bf16 when w_bf16, else IEEE f16), row-major with row
   * stride ldw: C(M,N) = alpha * X(M,K) op(W) + beta * C, where trans_w: W is stored (N,K)
   * (y = x W^T), else (K,N) (dx = dy W). Frozen weights kept at 2 bytes use it: the CPU widens
   * column blocks of op(W) (never splitting the K sum) into f32 scratch of
   * gemm_half_scratch_floats(N, K) floats for the f32 GEMM. */
  void (*gemm_half)(int trans_w, size_t M, size_t N, size_t K, float alpha, const float *X,
                    size_t ldx, const uint16_t *W, size_t ldw, int w_bf16, float beta, float *C,
                    size_t ldc, float *scratch);
  size_t (*gemm_half_scratch_floats)(size_t N, size_t K);
  /* dst(rows, cols) = src widened to f32; src 2-byte (bf16 when bf16) with row stride ld */
  void (*widen)(float *dst, const uint16_t *src, size_t rows, size_t cols, size_t ld, int bf16);

  /* y(M) = alpha * op(A) x + beta * y; A is (M,N) stored row-major, or (N,M) when trans. */
  void (*gemv)(int trans, size_t M, size_t N, float alpha, const float *A, size_t lda,
               const float *x, float beta, float *y);

  /* out(N,D) = row tokens[n] - v0 of table(V,D), this rank's vocabulary rows [v0, v0 + V)
   * (f32, or 2-byte in table16: bf16 when bf16, else f16, widened); a zero row for a token
   * outside them (the vocab-parallel embedding sums the shards' rows over TP) */
  void (*embedding_forward)(float *out, const int32_t *tokens, const float *table,
                            const uint16_t *table16, int bf16, size_t N, size_t D, int64_t v0,
                            size_t V);
  /* dtable(V,D) += scatter of dout(N,D) by tokens, for the tokens in [v0, v0 + V) */
  void (*embedding_backward)(float *dtable, const int32_t *tokens, const float *dout, size_t N,
                             size_t D, int64_t v0, size_t V);

  /* out(N,D) = x / rms(x) * w; rstd(N) = 1/sqrt(mean(x^2)+eps) is kept for backward */
  void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *w, size_t N,
                          size_t D, float eps);
  /* dx(N,D) += d/dx; dw(D) += d/dw when dw != NULL */
  void (*rmsnorm_backward)(float *dx, float *dw, const float *dout, const float *x,
                           const float *w, const float *rstd, size_t N, size_t D);

  /* cos, sin (T, hd/2) for positions 0..T-1: angle = t * theta^(-2i/hd) (Hugging Face) */
  void (*rope_table)(float *cos_t, float *sin_t, size_t T, size_t hd, double theta);
  /* In place on x(B,T,nh,hd): HF rotate_half, x = x*cos + rotate_half(x)*sin.
   * inverse != 0 applies the transpose rotation (the backward of the forward). */
  void (*rope_apply)(float *x, const float *cos_t, const float *sin_t, size_t B, size_t T,
                     size_t nh, size_t hd, int inverse);

  /* Causal attention. q(B,T,H,hd), k,v(B,T,Hkv,hd) -> out(B,T,H,hd); lse(B,H,T) is the
   * log-sum-exp of each scaled score row, kept so backward can rebuild the softmax from q,k.
   * scratch holds attention_scratch_floats(T) floats. */
  size_t (*attention_scratch_floats)(size_t T);
  void (*attention_forward)(float *out, float *lse, const float *q, const float *k,
                            const float *v, size_t B, size_t T, size_t H, size_t Hkv, size_t hd,
                            float *scratch);
  /* dq(B,T,H,hd), dk,dv(B,T,Hkv,hd) are overwritten. */
  void (*attention_backward)(float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *lse, size_t B,
                             size_t T, size_t H, size_t Hkv, size_t hd, float *scratch);

  /* h(N,F) = silu(g) * u */
  void (*swiglu_forward)(float *h, const float *g, const float *u, size_t n);
  /* dg, du (N,F) overwritten */
  void (*swiglu_backward)(float *dg, float *du, const float *dh, const float *g, const float *u,
                          size_t n);

  /* Cross-entropy of logits(N,V) against targets(N). Returns the sum of the N losses (double).
   * When grad_scale != 0, logits are overwritten by dlogits = (softmax - onehot) * grad_scale. */
  double (*cross_entropy)(float *logits, const int32_t *targets, size_t N, size_t V,
                          float grad_scale);

  /* y(n) += alpha * x */
  void (*axpy)(float *y, const float *x, float alpha, size_t n);
  /* sum of squares, accumulated in double */
  double (*sumsq)(const float *x, size_t n);
  void (*scale)(float *x, float alpha, size_t n);
  /* x(rows, cols) = std * ol_hash_normal(ol_counter_hash(key, r0 + i, c0 + j)): the block at
   * (r0, c0) of the counter-based normal matrix keyed by `key` (core.h), the same values
   * whatever the block or the thread count */
  void (*counter_normal)(float *x, size_t rows, size_t cols, uint64_t key, size_t r0, size_t c0,
                         float std);

  /* 1LoRA helpers. s(N) = row sums of x(N,k) */
  void (*row_sums)(float *s, const float *x, size_t N, size_t k);
  /* y(N,d) = beta * y + s(N) outer b(d) */
  void (*outer)(float *y, const float *s, const float *b, size_t N, size_t d, float beta);
  /* x(N,k) = beta * x + c(N) broadcast along each row */
  void (*broadcast_rows)(float *x, const float *c, size_t N, size_t k, float beta);
  /* y(N,d) = beta * y + bias(d) added to every row */
  void (*add_bias)(float *y, const float *bias, size_t N, size_t d, float beta);
  /* db(d) += column sums of dy(N,d) */
  void (*col_sums)(float *db, const float *dy, size_t N, size_t d);
  /* One pass over dy(N,d): c(N) = dy b(d), and db(d) += dy^T s(N) */
  void (*rowdot_accum)(float *c, float *db, const float *dy, const float *s, const float *b,
                       size_t N, size_t d);

  /* AdamW (PyTorch semantics, decoupled weight decay), step counted from 1 */
  void (*adamw)(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                float beta2, float eps, float weight_decay, int64_t step);

  /* lora/dora */
  /* y(N,d) = x(N,d) with column i scaled by g(i) in every row; y may be x */
  void (*scale_cols)(float *y, const float *x, const float *g, size_t N, size_t d);
  /* acc(d) += g(d) * (column sums of a(N,d) * b(N,d), elementwise) */
  void (*col_dots_accum)(float *acc, const float *a, const float *b, const float *g, size_t N,
                         size_t d);
  /* DoRA's squared row norms n2(i) = |W_i|^2 + B_i . P_i for W(d,k) and B, P (d,r), summed in
   * double; with P = 2s W A^T + s^2 B A A^T this is |W_i + s (B A)_i|^2 (under row-parallel TP,
   * with this rank's columns of W and A, its partial sum over them) */
  void (*dora_sq_norms)(float *n2, const float *W, const float *B, const float *P, size_t d,
                        size_t k, size_t r);
  /* x(n) = 1 / sqrt(x) in place, with a floor that keeps a zero x finite */
  void (*inv_sqrt)(float *x, size_t n);

  /* Vocab-parallel cross-entropy (DESIGN §5): this rank holds logits(N,V) of the vocabulary
   * rows [v0, v0 + V); the caller reduces mx (max), sum and zt (sums) over TP between the
   * pieces. The loss of row n is log(sum_n) + mx_n - zt_n. */
  /* mx(N) = per-row maximum of logits; zt(N) = the target's logit when it lies in this shard,
   * else 0 */
  void (*vp_ce_local)(const float *logits, const int32_t *targets, size_t N, size_t V,
                      int64_t v0, float *mx, float *zt);
  /* sum(N) = per-row sum of exp(logit - mx) in double, given the global maxima mx(N); with
   * `store`, the exps overwrite logits (for vp_ce_grad) */
  void (*vp_ce_sumexp)(float *logits, const float *mx, size_t N, size_t V, double *sum,
                       int store);
  /* logits(N,V), holding the exps, become dlogits = (exp / sum - onehot) * grad_scale, given
   * the global sums sum(N) */
  void (*vp_ce_grad)(float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0,
                     const double *sum, float grad_scale);
  /* The summed loss: sum over n of log(sum_n) + mx_n - zt_n, in row order */
  double (*vp_ce_loss)(const float *mx, const float *zt, const double *sum, size_t N);
  /* ---- fills, conversions and the adapters' index maps, so that no code outside the backend
   * loops over a tensor's elements ---- */
  /* x(n) = value */
  void (*fill)(float *x, float value, size_t n);
  /* dst(n) = src(n) rounded to 2 bytes, to nearest even (bf16 when bf16, else IEEE f16): the
   * inverse of widen, as ol_f32_to_bf16 and ol_f32_to_f16 round */
  void (*narrow)(uint16_t *dst, const float *src, size_t n, int bf16);
  /* x(N,k): row i multiplied by g(i) in place, each product rounded once (as scale per row) */
  void (*scale_rows)(float *x, const float *g, size_t N, size_t k);
  /* n2(N) = (float) sumsq of each row of x(N,k): every row is summed as sumsq sums it, in
   * double, and only the row's total is rounded to f32 */
  void (*row_sumsq)(float *n2, const float *x, size_t N, size_t k);
  /* x(n) = sqrtf(x) in place */
  void (*sqrt_inplace)(float *x, size_t n);
  /* VeRA's scaled block S(n,r) = diag(lb(n)) B(n,r) diag(ld(r)): S_ij = (lb_i B_ij) ld_j */
  void (*diag_scale)(float *S, const float *lb, const float *B, const float *ld, size_t n,
                     size_t r);
  /* The gradients of the diagonals of S = diag(lb) B diag(ld) from dS(n,r), with q_ij =
   * dS_ij B_ij: dlb(n) += sum_j q_ij ld_j (each row summed in f32 in j order, then added) and
   * dld(r) += sum_i q_ij lb_i (added row after row, in i order). B, lb, ld as diag_scale. */
  void (*diag_scale_backward)(float *dlb, float *dld, const float *dS, const float *B,
                              const float *lb, const float *ld, size_t n, size_t r);
  /* MoRA's index map, row by row for n rows: dst(n, nd) = beta dst + the map of src(n, ns),
   * dst[t, (p + a) mod nd] += src[t, (p + b) mod ns] for p = 0 .. len - 1 in that order (a
   * position reached twice sums in p order); beta 0 writes dst without reading it. Compression,
   * padding, tiling and folding are all this one map; the phases a, b place a tensor-parallel
   * shard within the whole layer. */
  void (*cyclic_rows)(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b,
                      size_t len, size_t n, float beta);

  /* ---- generation (onelora generate): one query row at a time against a KV cache ---- */
  /* Causal attention of n new query rows at positions t0 .. t0+n-1 over a cache:
   * q(n,H,hd); k, v (t0+n, Hkv, hd) hold positions 0 .. t0+n-1, the new rows included; row i
   * attends to keys 0 .. t0+i, query head h to kv head h / (H/Hkv), as attention_forward does
   * -> out(n,H,hd), equal to rows t0 .. t0+n-1 of attention_forward over the whole sequence up
   * to the rounding of the reordered sums. scratch: t0+n floats. */
  void (*attention_cached)(float *out, const float *q, const float *k, const float *v, size_t n,
                           size_t t0, size_t H, size_t Hkv, size_t hd, float *scratch);
  /* A token id drawn from logits(V): temperature 0 is the argmax (the lowest id on ties);
   * otherwise p_i ~ exp((logit_i - max) / temperature) over the ids whose logit is at least
   * the top_k-th largest (top_k 0 or >= V: all ids), summed in double in id order, and the id
   * is the first whose cumulative sum exceeds u * total, u uniform in [0, 1).
   * scratch: V floats. */
  int64_t (*sample)(const float *logits, size_t V, float temperature, size_t top_k, double u,
                    float *scratch);
} ol_backend;

/* The active backend (set once at start-up) */
extern const ol_backend *ol_bk;
const ol_backend *ol_backend_cpu(void);
void ol_backend_set(const ol_backend *b);

/* The CUDA backend on GPU `device` (src/backend/cuda/), made current for this process. NULL
 * after an `onelora: error:` line naming the reason when this build has no CUDA backend
 * (ONELORA_CUDA=OFF, or no nvcc at build time), no GPU is visible or the device cannot be
 * used. ol_cuda_device_count() is 0 in those cases. */
const ol_backend *ol_backend_cuda(int device);
int ol_cuda_device_count(void);
/* 1 when the CUDA backend was compiled in */
int ol_cuda_built(void);
/* A one-line description of the device (name, memory, compute capability) for the log. */
const char *ol_cuda_device_name(void);

/* Test hook (ONELORA_TEST_HOOKS builds; NULL otherwise): the device emulator of
 * src/backend/staged.c, the cpu kernels behind buffers that host code cannot touch (a fault)
 * and that every op checks (host memory passed to a kernel aborts, naming the op), so that every
 * staging path a device takes (uploads, downloads, staged collectives, checkpoint copies) runs,
 * and is proven, on the CPU; its results equal the cpu backend's bit for bit. */
const ol_backend *ol_backend_cpu_staged(void);
/* The memory behind one of cpu-staged's buffers (p itself for any other pointer), for the
 * communication layer's emulated CUDA-aware MPI, which reads device buffers directly. */
void *ol_backend_staged_real(const void *p);

#endif
