/* CUDA backend: embedding, RMSNorm, RoPE, SwiGLU, cross-entropy (plain and vocab-parallel),
 * the vector helpers, AdamW, fills and 2-byte conversions, and sampling.
 *
 * Every op computes what cpu.c computes, in the same shapes. Where the CPU's result is a fixed
 * sequence of f32 operations (no reordered sum), this file performs the same sequence with the
 * round-to-nearest intrinsics (__fmul_rn, __fadd_rn, ...), which nvcc never fuses into an FMA,
 * so the bits equal the CPU's: axpy, scale, AdamW, RoPE, SwiGLU, fills, conversions, the
 * embedding. The exponentials are cpu.c's exp (its Cephes polynomial and range reduction,
 * exp_cephes below), so SwiGLU and the softmax numerators match the CPU bit for bit too; only
 * the sums (RMSNorm's mean square, the softmax sums, sumsq, the losses) are reordered.
 *
 * Reductions that return a value to the host are deterministic: per-block (or per-row) partial
 * sums in double in workspace slot 1, then one block sums them in a fixed order, and the double
 * is copied back through the pinned host scratch. counter_normal, rope_table and sample run on
 * the host (called at set-up or once per generated token) so that their values are the CPU's. */
#include "common.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * shared helpers */

/* the first grid-stride index of this thread, and the stride */
static __device__ inline size_t grid_index(void) {
  return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}
static __device__ inline size_t grid_stride(void) { return (size_t)gridDim.x * blockDim.x; }

/* Blocks of a row kernel (one block per row, grid-stride over the rows): min(rows, 65535). */
static unsigned row_blocks(size_t rows) { return ol_cuda_blocks(rows, 1); }

/* exp(x) exactly as cpu.c's v8_exp computes each lane: 2^k exp(r), k = round(x / ln 2),
 * r = x - k ln 2 (ln 2 in two parts), exp(r) by the Cephes expf polynomial; below -87 it is 0,
 * above 88 +inf, NaN propagates. Every step rounds as there (no FMA), so the bits agree. */
static __device__ inline float exp_cephes(float x) {
  const bool below = x < -87.0f, above = x > 88.0f;  // both false for NaN
  const float xc = below ? -87.0f : (above ? 88.0f : x);
  float kf = __fmul_rn(xc, 1.44269504088896341f);
  kf = __fsub_rn(__fadd_rn(kf, 12582912.0f), 12582912.0f);  // round to nearest integer
  float r = __fsub_rn(xc, __fmul_rn(kf, 0.693359375f));
  r = __fadd_rn(r, __fmul_rn(kf, 2.12194440e-4f));
  float p = 1.9875691500e-4f;
  p = __fadd_rn(__fmul_rn(p, r), 1.3981999507e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 8.3334519073e-3f);
  p = __fadd_rn(__fmul_rn(p, r), 4.1665795894e-2f);
  p = __fadd_rn(__fmul_rn(p, r), 1.6666665459e-1f);
  p = __fadd_rn(__fmul_rn(p, r), 5.0000001201e-1f);
  p = __fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(p, r), r), r), 1.0f);
  const int k = (int)kf;  // an integer in [-126, 127] for xc in [-87, 88]
  const float two_k = __int_as_float((k + 127) << 23);
  const float y = __fmul_rn(p, two_k);
  return below ? 0.0f : (above ? INFINITY : y);
}

/* sigmoid(g) = 1 / (1 + exp(-g)), as cpu.c's SwiGLU rounds it */
static __device__ inline float sigmoid_cpu(float g) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_cephes(-g)));
}

/* Sums in(count) in double into *out, in an order fixed by count alone (deterministic).
 * Launch: 1 block x 1024 threads. */
static __global__ void __launch_bounds__(1024)
    sum_doubles_kernel(const double *in, size_t count, double *out) {
  __shared__ double red[32];
  double acc = 0.0;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) acc += in[i];
  acc = ol_block_sum(acc, red);
  if (threadIdx.x == 0) *out = acc;
}

/* partials (count + 1) doubles in device memory holding count partial sums: their total, summed
 * on the device into partials[count] and returned to the host (waits for the stream) */
static double finish_sum(double *partials, size_t count) {
  cudaStream_t stream = ol_cuda_stream();
  sum_doubles_kernel<<<1, 1024, 0, stream>>>(partials, count, partials + count);
  OL_CUDA_LAUNCHED();
  double *host = (double *)ol_cuda_host_scratch(sizeof(double));
  OL_CUDA_CHECK(cudaMemcpyAsync(host, partials + count, sizeof(double), cudaMemcpyDeviceToHost,
                                stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(stream));
  return *host;
}

/* Blocks of a grid-stride reduction over n elements at OL_CUDA_THREADS threads: enough to fill
 * the device, few enough that the final sum is small; a function of n only (deterministic). */
static unsigned reduce_blocks(size_t n) {
  const unsigned b = ol_cuda_blocks(n, OL_CUDA_THREADS);
  return b < 1024u ? b : 1024u;
}

/* Copies `bytes` from pinned host memory to the device on the stream and waits, so the pinned
 * scratch may be reused as soon as it returns. */
static void upload_and_wait(void *dst, const void *host, size_t bytes) {
  cudaStream_t stream = ol_cuda_stream();
  OL_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

/* ---------------------------------------------------------------------------------------------
 * 2-byte conversions */

/* dst(rows, cols) = widened src (row stride ld), bf16 or f16.
 * Launch: grid (column blocks of OL_CUDA_THREADS, min(rows, 65535)), both grid-strided. */
static __global__ void widen_kernel(float *dst, const uint16_t *src, size_t rows, size_t cols,
                                    size_t ld, int bf16) {
  for (size_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const uint16_t *s = src + i * ld;
    float *d = dst + i * cols;
    for (size_t j = grid_index(); j < cols; j += grid_stride())
      d[j] = bf16 ? ol_bf16_to_f32(s[j]) : ol_f16_to_f32(s[j]);
  }
}

void ol_cuda_widen(float *dst, const uint16_t *src, size_t rows, size_t cols, size_t ld,
                   int bf16) {
  if (rows == 0 || cols == 0) return;
  const dim3 grid(ol_cuda_blocks(cols, OL_CUDA_THREADS), row_blocks(rows));
  widen_kernel<<<grid, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(dst, src, rows, cols, ld, bf16);
  OL_CUDA_LAUNCHED();
}

/* dst(n) = src(n) narrowed to bf16 or f16, to nearest even (core's rounding).
 * Launch: ol_cuda_blocks(n) x OL_CUDA_THREADS, grid-stride. */
static __global__ void narrow_kernel(uint16_t *dst, const float *src, size_t n, int bf16) {
  for (size_t i = grid_index(); i < n; i += grid_stride())
    dst[i] = bf16 ? ol_f32_to_bf16(src[i]) : ol_f32_to_f16(src[i]);
}

void ol_cuda_narrow(uint16_t *dst, const float *src, size_t n, int bf16) {
  if (n == 0) return;
  narrow_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      dst, src, n, bf16);
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * embedding */

/* out(N, D): row n = table row tokens[n] - v0 (f32 table, or 2-byte table16 widened), or zeros
 * when the token lies outside this shard's rows [v0, v0 + V) (a negative token, which the CPU
 * rejects as a bug, also gives zeros here). Launch: min(N, 65535) blocks (grid-stride over
 * rows) x OL_CUDA_THREADS threads over the columns. */
static __global__ void embedding_forward_kernel(float *out, const int32_t *tokens,
                                                const float *table, const uint16_t *table16,
                                                int bf16, size_t N, size_t D, int64_t v0,
                                                size_t V) {
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t token = tokens[n];
    const int64_t t = (int64_t)token - v0;
    float *o = out + n * D;
    if (token < 0 || t < 0 || t >= (int64_t)V) {
      for (size_t j = threadIdx.x; j < D; j += blockDim.x) o[j] = 0.0f;
    } else if (table16) {
      const uint16_t *s = table16 + (size_t)t * D;
      for (size_t j = threadIdx.x; j < D; j += blockDim.x)
        o[j] = bf16 ? ol_bf16_to_f32(s[j]) : ol_f16_to_f32(s[j]);
    } else {
      const float *s = table + (size_t)t * D;
      for (size_t j = threadIdx.x; j < D; j += blockDim.x) o[j] = s[j];
    }
  }
}

void ol_cuda_embedding_forward(float *out, const int32_t *tokens, const float *table,
                               const uint16_t *table16, int bf16, size_t N, size_t D, int64_t v0,
                               size_t V) {
  if (N == 0 || D == 0) return;
  embedding_forward_kernel<<<row_blocks(N), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      out, tokens, table, table16, bf16, N, D, v0, V);
  OL_CUDA_LAUNCHED();
}

/* dtable(V, D) += the rows of dout(N, D) by token, deterministic and without atomics, in the
 * CPU's order (so the bits equal the CPU's). Block n takes token position n: when n is the first
 * position of its token it owns that table row and adds the dout rows of all the token's
 * positions in increasing order; otherwise it stops at the first earlier position it finds.
 * The positions are scanned a chunk of OL_CUDA_THREADS tokens at a time, flags in shared
 * memory. Cost: O(N^2 / threads) token compares, and an owner's adds are sequential (a token
 * repeated very often is one block's work). Launch: min(N, 65535) blocks (grid-stride over
 * positions) x OL_CUDA_THREADS threads (the flag array's size). */
static __global__ void embedding_backward_kernel(float *dtable, const int32_t *tokens,
                                                 const float *dout, size_t N, size_t D,
                                                 int64_t v0, size_t V) {
  __shared__ int hit[OL_CUDA_THREADS];  // hit[j]: position m0 + j holds this block's token
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t token = tokens[n];
    const int64_t t = (int64_t)token - v0;
    if (token < 0 || t < 0 || t >= (int64_t)V) continue;  // not this shard's (uniform)
    float *dst = dtable + (size_t)t * D;
    int owner = 1;
    for (size_t m0 = 0; m0 < N && owner; m0 += blockDim.x) {
      const size_t m = m0 + threadIdx.x;
      __syncthreads();  // the previous chunk's (or row's) readers of hit are done
      hit[threadIdx.x] = m < N && tokens[m] == token;
      if (!__syncthreads_or(hit[threadIdx.x])) continue;
      // every thread walks the same flags, so the branches below are uniform
      for (unsigned j = 0; j < blockDim.x; j++) {
        if (!hit[j]) continue;
        if (m0 + j < n) {  // an earlier position owns the row
          owner = 0;
          break;
        }
        const float *src = dout + (m0 + j) * D;
        for (size_t c = threadIdx.x; c < D; c += blockDim.x) dst[c] += src[c];
      }
    }
  }
}

void ol_cuda_embedding_backward(float *dtable, const int32_t *tokens, const float *dout, size_t N,
                                size_t D, int64_t v0, size_t V) {
  if (N == 0 || D == 0) return;
  embedding_backward_kernel<<<row_blocks(N), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      dtable, tokens, dout, N, D, v0, V);
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * RMSNorm (Hugging Face LlamaRMSNorm): y = x * rsqrt(mean(x^2) + eps) * w */

/* out(N, D) = x * r * w, rstd(N) = r = 1 / sqrt(mean(x^2) + eps) in f32 as the CPU.
 * Launch: min(N, 65535) blocks (grid-stride over rows) x ol_cuda_row_threads(D). */
static __global__ void __launch_bounds__(1024)
    rmsnorm_forward_kernel(float *out, float *rstd, const float *x, const float *w, size_t N,
                           size_t D, float eps) {
  __shared__ float red[32];
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float *xn = x + n * D;
    float *on = out + n * D;
    float ss = 0.0f;
    for (size_t i = threadIdx.x; i < D; i += blockDim.x) ss += xn[i] * xn[i];
    ss = ol_block_sum(ss, red);
    const float r = 1.0f / sqrtf(ss / (float)D + eps);
    if (threadIdx.x == 0) rstd[n] = r;
    for (size_t i = threadIdx.x; i < D; i += blockDim.x)
      on[i] = __fmul_rn(__fmul_rn(xn[i], r), w[i]);
  }
}

void ol_cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, size_t N,
                             size_t D, float eps) {
  if (N == 0) return;
  rmsnorm_forward_kernel<<<row_blocks(N), ol_cuda_row_threads(D), 0, ol_cuda_stream()>>>(
      out, rstd, x, w, N, D, eps);
  OL_CUDA_LAUNCHED();
}

/* dx(N, D) += r (w dy - x r^2 mean(dy w x)) per row, r = rstd[n] (the CPU's formula and order).
 * Launch: min(N, 65535) blocks (grid-stride over rows) x ol_cuda_row_threads(D). */
static __global__ void __launch_bounds__(1024)
    rmsnorm_backward_dx_kernel(float *dx, const float *dout, const float *x, const float *w,
                               const float *rstd, size_t N, size_t D) {
  __shared__ float red[32];
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float *xn = x + n * D, *dyn = dout + n * D;
    float *dxn = dx + n * D;
    const float r = rstd[n];
    float dot = 0.0f;
    for (size_t i = threadIdx.x; i < D; i += blockDim.x) dot += dyn[i] * w[i] * xn[i];
    dot = ol_block_sum(dot, red);
    const float c = r * r * r * dot / (float)D;
    for (size_t i = threadIdx.x; i < D; i += blockDim.x)
      dxn[i] += __fsub_rn(__fmul_rn(__fmul_rn(r, w[i]), dyn[i]), __fmul_rn(c, xn[i]));
  }
}

/* Column tiles of the dw reduction: RMS_DW_COLS columns x RMS_DW_ROWS row lanes per block */
#define RMS_DW_COLS 32
#define RMS_DW_ROWS 8
/* Rows summed by one block of the dw reduction (the last chunk may have fewer) */
#define RMS_DW_CHUNK_ROWS 128

/* partial(chunks, D): partial[k][c] = sum over the rows n of chunk k (rows_per_chunk rows from
 * k * rows_per_chunk) of dout[n][c] x[n][c] rstd[n]; no atomics, a fixed order.
 * Launch: grid (ceil(D / RMS_DW_COLS), chunks) x block (RMS_DW_COLS, RMS_DW_ROWS): thread
 * (tx, ty) sums the rows ty, ty + RMS_DW_ROWS, .. of its chunk for column tx of its tile (a
 * warp reads 32 consecutive floats of a row), then the block adds its RMS_DW_ROWS lanes. */
static __global__ void rmsnorm_dw_partial_kernel(float *partial, const float *dout,
                                                 const float *x, const float *rstd, size_t N,
                                                 size_t D, size_t rows_per_chunk) {
  __shared__ float lanes[RMS_DW_ROWS][RMS_DW_COLS + 1];
  const size_t c = (size_t)blockIdx.x * RMS_DW_COLS + threadIdx.x;
  const size_t n0 = (size_t)blockIdx.y * rows_per_chunk;
  const size_t n1 = n0 + rows_per_chunk < N ? n0 + rows_per_chunk : N;
  float acc = 0.0f;
  if (c < D)
    for (size_t n = n0 + threadIdx.y; n < n1; n += RMS_DW_ROWS)
      acc += dout[n * D + c] * x[n * D + c] * rstd[n];
  lanes[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float sum = 0.0f;
    for (int l = 0; l < RMS_DW_ROWS; l++) sum += lanes[l][threadIdx.x];
    partial[(size_t)blockIdx.y * D + c] = sum;
  }
}

/* dw(D) += sum over k of partial[k][c], k in order. Launch: ol_cuda_blocks(D) x
 * OL_CUDA_THREADS, grid-stride over the columns. */
static __global__ void rmsnorm_dw_finish_kernel(float *dw, const float *partial, size_t chunks,
                                                size_t D) {
  for (size_t c = grid_index(); c < D; c += grid_stride()) {
    float sum = 0.0f;
    for (size_t k = 0; k < chunks; k++) sum += partial[k * D + c];
    dw[c] += sum;
  }
}

void ol_cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                              const float *w, const float *rstd, size_t N, size_t D) {
  if (N == 0 || D == 0) return;
  cudaStream_t stream = ol_cuda_stream();
  if (dw) {  // before dx, so dw reads dout as given even if a caller passed dx == dout
    size_t chunks = (N + RMS_DW_CHUNK_ROWS - 1) / RMS_DW_CHUNK_ROWS;
    if (chunks > 1024) chunks = 1024;
    const size_t rows_per_chunk = (N + chunks - 1) / chunks;
    chunks = (N + rows_per_chunk - 1) / rows_per_chunk;  // no empty chunk
    float *partial = (float *)ol_cuda_workspace(1, chunks * D * sizeof(float));  // (chunks, D)
    const dim3 grid((unsigned)((D + RMS_DW_COLS - 1) / RMS_DW_COLS), (unsigned)chunks);
    const dim3 block(RMS_DW_COLS, RMS_DW_ROWS);
    rmsnorm_dw_partial_kernel<<<grid, block, 0, stream>>>(partial, dout, x, rstd, N, D,
                                                          rows_per_chunk);
    OL_CUDA_LAUNCHED();
    rmsnorm_dw_finish_kernel<<<ol_cuda_blocks(D, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, stream>>>(
        dw, partial, chunks, D);
    OL_CUDA_LAUNCHED();
  }
  rmsnorm_backward_dx_kernel<<<row_blocks(N), ol_cuda_row_threads(D), 0, stream>>>(
      dx, dout, x, w, rstd, N, D);
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * RoPE (Hugging Face rotate_half convention) */

/* cos, sin (T, hd/2) computed on the host exactly as the CPU (double pow, cos, sin, rounded to
 * f32), then copied: it runs once per activation set or cache. */
void ol_cuda_rope_table(float *cos_t, float *sin_t, size_t T, size_t hd, double theta) {
  OL_CHECK(hd % 2 == 0);
  const size_t half = hd / 2, count = T * half;
  if (count == 0) return;
  float *host = (float *)ol_cuda_host_scratch(2 * count * sizeof(float));  // cos (T, half), sin
  for (size_t t = 0; t < T; t++)
    for (size_t i = 0; i < half; i++) {
      const double angle = (double)t * pow(theta, -2.0 * (double)i / (double)hd);
      host[t * half + i] = (float)cos(angle);
      host[count + t * half + i] = (float)sin(angle);
    }
  cudaStream_t stream = ol_cuda_stream();
  OL_CUDA_CHECK(cudaMemcpyAsync(cos_t, host, count * sizeof(float), cudaMemcpyHostToDevice,
                                stream));
  OL_CUDA_CHECK(cudaMemcpyAsync(sin_t, host + count, count * sizeof(float),
                                cudaMemcpyHostToDevice, stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(stream));
}

/* In place on x(B, T, nh, hd): for each pair i < half of each head at position t,
 * x1' = x1 c - x2 s, x2' = x2 c + x1 s (s -> -s for the inverse), rounded as the CPU.
 * One thread per pair p = (row * nh + h) * half + i, row = b T + t; I is the index type
 * (32-bit when every index fits, as the divisions are cheaper). Launch: ol_cuda_blocks(pairs)
 * x OL_CUDA_THREADS, grid-stride. */
template <typename I>
static __global__ void rope_apply_kernel(float *x, const float *cos_t, const float *sin_t,
                                         I pairs, I T, I nh, I hd, I half, float sgn) {
  for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < pairs;
       p += (I)gridDim.x * (I)blockDim.x) {
    const I i = p % half, head_row = p / half;  // head_row = row * nh + h
    const I t = (head_row / nh) % T;
    float *x1 = x + (size_t)head_row * hd + i, *x2 = x1 + half;
    const float c = cos_t[(size_t)t * half + i], s = sgn * sin_t[(size_t)t * half + i];
    const float a = *x1, b = *x2;
    *x1 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    *x2 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  }
}

void ol_cuda_rope_apply(float *x, const float *cos_t, const float *sin_t, size_t B, size_t T,
                        size_t nh, size_t hd, int inverse) {
  const size_t half = hd / 2, pairs = B * T * nh * half;
  if (pairs == 0) return;
  const float sgn = inverse ? -1.0f : 1.0f;
  const unsigned blocks = ol_cuda_blocks(pairs, OL_CUDA_THREADS);
  cudaStream_t stream = ol_cuda_stream();
  // 32-bit indices when p + the grid stride and every element offset stay below 2^31
  if (B * T * nh * hd + (size_t)blocks * OL_CUDA_THREADS < ((size_t)1 << 31)) {
    rope_apply_kernel<unsigned><<<blocks, OL_CUDA_THREADS, 0, stream>>>(
        x, cos_t, sin_t, (unsigned)pairs, (unsigned)T, (unsigned)nh, (unsigned)hd,
        (unsigned)half, sgn);
  } else {
    rope_apply_kernel<size_t><<<blocks, OL_CUDA_THREADS, 0, stream>>>(x, cos_t, sin_t, pairs, T,
                                                                      nh, hd, half, sgn);
  }
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * SwiGLU: h = silu(g) * u, silu(g) = g * sigmoid(g) */

/* h(n) = g sig u, sig = sigmoid(g), rounded as the CPU. Launch: ol_cuda_blocks(n) x
 * OL_CUDA_THREADS, grid-stride. */
static __global__ void swiglu_forward_kernel(float *h, const float *g, const float *u, size_t n) {
  for (size_t i = grid_index(); i < n; i += grid_stride()) {
    const float gi = g[i], sig = sigmoid_cpu(gi);
    h[i] = __fmul_rn(__fmul_rn(gi, sig), u[i]);
  }
}

void ol_cuda_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
  if (n == 0) return;
  swiglu_forward_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0,
                          ol_cuda_stream()>>>(h, g, u, n);
  OL_CUDA_LAUNCHED();
}

/* dg(n) = dh u sig (1 + g (1 - sig)), du(n) = dh g sig, rounded as the CPU.
 * Launch: ol_cuda_blocks(n) x OL_CUDA_THREADS, grid-stride. */
static __global__ void swiglu_backward_kernel(float *dg, float *du, const float *dh,
                                              const float *g, const float *u, size_t n) {
  for (size_t i = grid_index(); i < n; i += grid_stride()) {
    const float gi = g[i], ui = u[i], dhi = dh[i], sig = sigmoid_cpu(gi);
    const float slope = __fadd_rn(1.0f, __fmul_rn(gi, __fsub_rn(1.0f, sig)));
    dg[i] = __fmul_rn(__fmul_rn(__fmul_rn(dhi, ui), sig), slope);
    du[i] = __fmul_rn(__fmul_rn(dhi, gi), sig);
  }
}

void ol_cuda_swiglu_backward(float *dg, float *du, const float *dh, const float *g,
                             const float *u, size_t n) {
  if (n == 0) return;
  swiglu_backward_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0,
                           ol_cuda_stream()>>>(dg, du, dh, g, u, n);
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * Cross-entropy */

/* Per row n of logits(N, V): mx = max, sum = sum_j exp(z_j - mx) in double, row_loss[n] =
 * log(sum) + mx - z_target (NaN when the target lies outside [0, V): the CPU stops there).
 * With grad_scale != 0 the row becomes (exp(z_j - mx) * f) - grad_scale [j = target], f =
 * (float)(grad_scale / sum): the CPU's values, the exps recomputed instead of stored (3 reads
 * and 1 write of the row instead of 3 and 2). Launch: min(N, 65535) blocks (grid-stride over
 * rows) x ol_cuda_row_threads(V). */
static __global__ void __launch_bounds__(1024)
    cross_entropy_kernel(float *logits, const int32_t *targets, size_t N, size_t V,
                         float grad_scale, double *row_loss) {
  __shared__ float red_max[32];
  __shared__ double red_sum[32];
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    float *z = logits + n * V;
    const int32_t target = targets[n];
    const bool valid = target >= 0 && (size_t)target < V;
    // read before any thread can overwrite the row (block_max's barriers come first)
    const float zt = threadIdx.x == 0 && valid ? z[target] : 0.0f;
    float mx = -INFINITY;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = ol_block_max(mx, red_max);
    double sum = 0.0;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x)
      sum += (double)exp_cephes(__fsub_rn(z[j], mx));
    sum = ol_block_sum(sum, red_sum);
    if (grad_scale != 0.0f) {
      const float f = (float)((double)grad_scale / sum);
      for (size_t j = threadIdx.x; j < V; j += blockDim.x) {
        float d = __fmul_rn(exp_cephes(__fsub_rn(z[j], mx)), f);
        if (valid && j == (size_t)target) d = __fsub_rn(d, grad_scale);
        z[j] = d;
      }
    }
    if (threadIdx.x == 0) row_loss[n] = valid ? log(sum) + (double)mx - (double)zt : (double)NAN;
  }
}

double ol_cuda_cross_entropy(float *logits, const int32_t *targets, size_t N, size_t V,
                             float grad_scale) {
  if (N == 0) return 0.0;
  double *row_loss = (double *)ol_cuda_workspace(1, (N + 1) * sizeof(double));  // (N), total
  cross_entropy_kernel<<<row_blocks(N), ol_cuda_row_threads(V), 0, ol_cuda_stream()>>>(
      logits, targets, N, V, grad_scale, row_loss);
  OL_CUDA_LAUNCHED();
  return finish_sum(row_loss, N);
}

/* mx(N) = row maxima of logits(N, V); zt(N) = the target's logit when it lies in this shard
 * [v0, v0 + V), else 0. Launch: min(N, 65535) blocks (grid-stride over rows) x
 * ol_cuda_row_threads(V). */
static __global__ void __launch_bounds__(1024)
    vp_ce_local_kernel(const float *logits, const int32_t *targets, size_t N, size_t V,
                       int64_t v0, float *mx, float *zt) {
  __shared__ float red[32];
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float *z = logits + n * V;
    float m = -INFINITY;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
    m = ol_block_max(m, red);
    if (threadIdx.x == 0) {
      mx[n] = m;
      const int64_t t = (int64_t)targets[n] - v0;
      zt[n] = t >= 0 && t < (int64_t)V ? z[t] : 0.0f;
    }
  }
}

void ol_cuda_vp_ce_local(const float *logits, const int32_t *targets, size_t N, size_t V,
                         int64_t v0, float *mx, float *zt) {
  if (N == 0) return;
  vp_ce_local_kernel<<<row_blocks(N), ol_cuda_row_threads(V), 0, ol_cuda_stream()>>>(
      logits, targets, N, V, v0, mx, zt);
  OL_CUDA_LAUNCHED();
}

/* sum(N) = per row sum of exp(z - mx[n]) in double; with `store` the exps overwrite the row.
 * Launch: min(N, 65535) blocks (grid-stride over rows) x ol_cuda_row_threads(V). */
static __global__ void __launch_bounds__(1024)
    vp_ce_sumexp_kernel(float *logits, const float *mx, size_t N, size_t V, double *sum,
                        int store) {
  __shared__ double red[32];
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    float *z = logits + n * V;
    const float m = mx[n];
    double acc = 0.0;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float e = exp_cephes(__fsub_rn(z[j], m));
      if (store) z[j] = e;
      acc += (double)e;
    }
    acc = ol_block_sum(acc, red);
    if (threadIdx.x == 0) sum[n] = acc;
  }
}

void ol_cuda_vp_ce_sumexp(float *logits, const float *mx, size_t N, size_t V, double *sum,
                          int store) {
  if (N == 0) return;
  vp_ce_sumexp_kernel<<<row_blocks(N), ol_cuda_row_threads(V), 0, ol_cuda_stream()>>>(
      logits, mx, N, V, sum, store);
  OL_CUDA_LAUNCHED();
}

/* logits(N, V) holding exps become exp * f - grad_scale [j = target in this shard], f =
 * (float)(grad_scale / sum[n]). Launch: min(N, 65535) blocks (grid-stride over rows) x
 * OL_CUDA_THREADS over the row. */
static __global__ void vp_ce_grad_kernel(float *logits, const int32_t *targets, size_t N,
                                         size_t V, int64_t v0, const double *sum,
                                         float grad_scale) {
  for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
    float *z = logits + n * V;
    const float f = (float)((double)grad_scale / sum[n]);
    const int64_t t = (int64_t)targets[n] - v0;
    for (size_t j = threadIdx.x; j < V; j += blockDim.x) {
      float d = __fmul_rn(z[j], f);
      if ((int64_t)j == t) d = __fsub_rn(d, grad_scale);  // never true for t outside [0, V)
      z[j] = d;
    }
  }
}

void ol_cuda_vp_ce_grad(float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0,
                        const double *sum, float grad_scale) {
  if (N == 0) return;
  vp_ce_grad_kernel<<<row_blocks(N), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      logits, targets, N, V, v0, sum, grad_scale);
  OL_CUDA_LAUNCHED();
}

/* partial[block] = sum over this block's grid-stride rows n of log(sum[n]) + mx[n] - zt[n].
 * Launch: reduce_blocks(N) x OL_CUDA_THREADS. */
static __global__ void vp_ce_loss_kernel(const float *mx, const float *zt, const double *sum,
                                         size_t N, double *partial) {
  __shared__ double red[32];
  double acc = 0.0;
  for (size_t n = grid_index(); n < N; n += grid_stride())
    acc += log(sum[n]) + (double)mx[n] - (double)zt[n];
  acc = ol_block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* The CPU sums the rows serially in row order; here the order is fixed by N alone, so every TP
 * rank (with the same mx, zt, sum) still gets the same total. */
double ol_cuda_vp_ce_loss(const float *mx, const float *zt, const double *sum, size_t N) {
  if (N == 0) return 0.0;
  const unsigned blocks = reduce_blocks(N);
  double *partial = (double *)ol_cuda_workspace(1, (blocks + 1) * sizeof(double));
  vp_ce_loss_kernel<<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(mx, zt, sum, N, partial);
  OL_CUDA_LAUNCHED();
  return finish_sum(partial, blocks);
}

/* ---------------------------------------------------------------------------------------------
 * vector helpers */

/* y(n) += alpha x(n), rounded as the CPU (no FMA). Launch: ol_cuda_blocks(n) x OL_CUDA_THREADS,
 * grid-stride. */
static __global__ void axpy_kernel(float *y, const float *x, float alpha, size_t n) {
  for (size_t i = grid_index(); i < n; i += grid_stride())
    y[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i]));
}

void ol_cuda_axpy(float *y, const float *x, float alpha, size_t n) {
  if (n == 0) return;
  axpy_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      y, x, alpha, n);
  OL_CUDA_LAUNCHED();
}

/* partial[block] = sum of x^2 in double over this block's grid-stride elements.
 * Launch: reduce_blocks(n) x OL_CUDA_THREADS. */
static __global__ void sumsq_kernel(const float *x, size_t n, double *partial) {
  __shared__ double red[32];
  double acc = 0.0;
  for (size_t i = grid_index(); i < n; i += grid_stride()) acc += (double)x[i] * (double)x[i];
  acc = ol_block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

double ol_cuda_sumsq(const float *x, size_t n) {
  if (n == 0) return 0.0;
  const unsigned blocks = reduce_blocks(n);
  double *partial = (double *)ol_cuda_workspace(1, (blocks + 1) * sizeof(double));
  sumsq_kernel<<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(x, n, partial);
  OL_CUDA_LAUNCHED();
  return finish_sum(partial, blocks);
}

/* x(n) *= alpha. Launch: ol_cuda_blocks(n) x OL_CUDA_THREADS, grid-stride. */
static __global__ void scale_kernel(float *x, float alpha, size_t n) {
  for (size_t i = grid_index(); i < n; i += grid_stride()) x[i] = __fmul_rn(x[i], alpha);
}

void ol_cuda_scale(float *x, float alpha, size_t n) {
  if (n == 0) return;
  scale_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      x, alpha, n);
  OL_CUDA_LAUNCHED();
}

/* x(n) = value. Launch: ol_cuda_blocks(n) x OL_CUDA_THREADS, grid-stride. */
static __global__ void fill_kernel(float *x, float value, size_t n) {
  for (size_t i = grid_index(); i < n; i += grid_stride()) x[i] = value;
}

void ol_cuda_fill(float *x, float value, size_t n) {
  if (n == 0) return;
  fill_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      x, value, n);
  OL_CUDA_LAUNCHED();
}

/* Values generated on the host per upload: 32 MiB of f32 (a row at least) */
#define NORMAL_CHUNK_FLOATS ((size_t)1 << 23)

/* x(rows, cols) = std * ol_hash_normal(ol_counter_hash(key, r0 + i, c0 + j)), generated on the
 * host with core's functions (its logf / cosf are not the device's, and the values must be the
 * CPU's) and uploaded a chunk of rows at a time, by the host's OpenMP threads as on the CPU.
 * Set-up only (synthetic weights, adapter initialisations). */
void ol_cuda_counter_normal(float *x, size_t rows, size_t cols, uint64_t key, size_t r0,
                            size_t c0, float std_dev) {
  if (rows == 0 || cols == 0) return;
  size_t chunk_rows = NORMAL_CHUNK_FLOATS / cols;
  if (chunk_rows < 1) chunk_rows = 1;
  for (size_t i0 = 0; i0 < rows; i0 += chunk_rows) {
    const size_t n = rows - i0 < chunk_rows ? rows - i0 : chunk_rows;
    float *host = (float *)ol_cuda_host_scratch(n * cols * sizeof(float));  // (n, cols)
    const long long count = (long long)(n * cols);
    // the host's cores share the hashing (a 13B model is 1.3e10 values): the same values in any
    // order, a pure function of the indices
#pragma omp parallel for schedule(static)
    for (long long e = 0; e < count; e++) {
      const size_t i = (size_t)e / cols, j = (size_t)e % cols;
      host[e] = std_dev * ol_hash_normal(ol_counter_hash(key, r0 + i0 + i, c0 + j));
    }
    upload_and_wait(x + i0 * cols, host, n * cols * sizeof(float));
  }
}

/* ---------------------------------------------------------------------------------------------
 * AdamW, torch.optim.AdamW's order of operations (see cpu.c); the scalars are computed on the
 * host as the CPU computes them. */

/* p, g, m, v (n): p = p decay + (-step_size m') / (sqrt(v') / bc2_sqrt + eps), m' = m + w1 (g -
 * m), v' = v beta2 + w2 g g, every op rounded as the CPU. Launch: ol_cuda_blocks(n) x
 * OL_CUDA_THREADS, grid-stride. */
static __global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n,
                                    float decay, float step_size, float bc2_sqrt, float w1,
                                    float beta2, float w2, float eps) {
  for (size_t i = grid_index(); i < n; i += grid_stride()) {
    const float gi = g[i], m0 = m[i], v0 = v[i];
    const float pi = __fmul_rn(p[i], decay);
    const float mi = __fadd_rn(m0, __fmul_rn(w1, __fsub_rn(gi, m0)));
    const float vi = __fadd_rn(__fmul_rn(v0, beta2), __fmul_rn(__fmul_rn(w2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    m[i] = mi;
    v[i] = vi;
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(-step_size, mi), denom));
  }
}

void ol_cuda_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, int64_t step) {
  OL_CHECK(step >= 1);
  if (n == 0) return;
  const double bc1 = 1.0 - pow((double)beta1, (double)step);
  const double bc2 = 1.0 - pow((double)beta2, (double)step);
  const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
  const float step_size = (float)((double)lr / bc1);
  const float bc2_sqrt = (float)sqrt(bc2);
  const float w1 = 1.0f - beta1, w2 = 1.0f - beta2;
  adamw_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      p, g, m, v, n, decay, step_size, bc2_sqrt, w1, beta2, w2, eps);
  OL_CUDA_LAUNCHED();
}

/* ---------------------------------------------------------------------------------------------
 * sampling: on the host, the cpu backend's selection on a copy of the logits (once per generated
 * token), so both devices choose alike from alike logits */

/* logits (V) in device memory; scratch (V) is not used (device memory: the cpu sampler gets a
 * host scratch of its own) */
int64_t ol_cuda_sample(const float *logits, size_t V, float temperature, size_t top_k, double u,
                       float *scratch) {
  (void)scratch;
  OL_CHECK(V > 0);
  float *host = (float *)ol_cuda_host_scratch(2 * V * sizeof(float));  // logits (V), scratch (V)
  cudaStream_t stream = ol_cuda_stream();
  OL_CUDA_CHECK(cudaMemcpyAsync(host, logits, V * sizeof(float), cudaMemcpyDeviceToHost, stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(stream));
  return ol_backend_cpu()->sample(host, V, temperature, top_k, u, host + V);
}
