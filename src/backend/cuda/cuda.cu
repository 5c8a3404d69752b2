/* The CUDA backend: one GPU per process, one stream, cuBLAS for the matrix products and the
 * kernels of elementwise.cu, peft.cu and attention.cu for the rest. This file owns the device:
 * initialisation, memory (every buffer a kernel touches, counted for the peak), the copies
 * between host and device, the workspaces and the table. The backend is the module
 * libonelora_cuda.so; src/backend/backend.c opens it and calls its three entry points,
 * ol_cuda_module_backend, ol_cuda_module_device_count and ol_cuda_module_device_name.
 *
 * Numerics: f32 GEMMs run as true f32 (CUBLAS_COMPUTE_32F, no TF32), so the f32 path differs
 * from the CPU only by the order of its sums. 2-byte frozen weights (gemm_half) are multiplied
 * in their own type on the tensor cores: the f32 input is rounded to the weight's type
 * (bf16 or f16) and the products are summed in f32 (cublasGemmEx, CUBLAS_COMPUTE_32F). That
 * rounding is the one error the GPU adds to the CPU's (which widens the weights instead):
 * relative 2^-8 per input element for bf16 (8 significant bits), 2^-11 for f16 (11) (tests/gpu
 * justify the tolerances). */
#include <cublas_v2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

/* ---- the device and its state ---------------------------------------------------------- */

typedef struct {
  void *ptr;
  size_t bytes;
} allocation;

static struct {
  int device;
  cudaStream_t stream;
  cublasHandle_t blas;
  char name[640];
  size_t total;                          // the device's memory, bytes
  allocation *live;                      // (n_live) the buffers alloc handed out and not freed
  size_t n_live, cap_live;
  size_t held, peak;                     // bytes held now, and the most ever held
  void *work[OL_CUDA_WORKSPACES];        // device scratch by slot, grown on demand
  size_t work_bytes[OL_CUDA_WORKSPACES];
  void *host;                            // pinned host scratch
  size_t host_bytes;
} gpu;

extern "C" void ol_cuda_fail(const char *what, const char *why, const char *file, int line) {
  ol_fatal(file, line, "CUDA: %s failed: %s (device %d)", what, why, gpu.device);
}

static const char *blas_status(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialised";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "error";
  }
}
#define BLAS_CHECK(call)                                                                      \
  do {                                                                                        \
    cublasStatus_t ol_st_ = (call);                                                           \
    if (ol_st_ != CUBLAS_STATUS_SUCCESS) ol_cuda_fail(#call, blas_status(ol_st_), __FILE__, __LINE__); \
  } while (0)

extern "C" cudaStream_t ol_cuda_stream(void) { return gpu.stream; }

/* Out of device memory is the user's sizing problem, not a bug: one clear line, then exit (MPI
 * ends the job when a rank exits without finalising). */
static void *device_malloc(size_t bytes) {
  void *p = NULL;
  if (bytes == 0) bytes = 1;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    fprintf(stderr,
            "onelora: error: out of GPU memory on device %d (%s): %.1f MiB requested with %.1f MiB "
            "held of %.1f MiB (onelora plan --device cuda predicts the need)\n",
            gpu.device, gpu.name, bytes / 1048576.0, gpu.held / 1048576.0, gpu.total / 1048576.0);
    exit(1);
  }
  gpu.held += bytes;
  if (gpu.held > gpu.peak) gpu.peak = gpu.held;
  return p;
}

static void track(void *p, size_t bytes) {
  gpu.live = (allocation *)ol_grow(gpu.live, gpu.n_live, &gpu.cap_live, sizeof(allocation));
  gpu.live[gpu.n_live++] = allocation{p, bytes == 0 ? 1 : bytes};
}

static void *cuda_alloc(size_t bytes) {
  void *p = device_malloc(bytes);
  OL_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, gpu.stream));
  track(p, bytes);
  return p;
}

static void cuda_free(void *p) {
  if (!p) return;
  for (size_t i = 0; i < gpu.n_live; i++)
    if (gpu.live[i].ptr == p) {
      OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));  // no queued kernel still uses it
      OL_CUDA_CHECK(cudaFree(p));
      gpu.held -= gpu.live[i].bytes;
      gpu.live[i] = gpu.live[--gpu.n_live];
      return;
    }
  OL_CHECK(!"cuda_free of a pointer cuda_alloc did not return");
}

extern "C" void *ol_cuda_workspace(int slot, size_t bytes) {
  OL_CHECK(slot >= 0 && slot < OL_CUDA_WORKSPACES);
  if (bytes > gpu.work_bytes[slot]) {
    size_t grown = bytes + bytes / 4;  // room for the next, slightly larger, request
    OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));
    if (gpu.work[slot]) {
      OL_CUDA_CHECK(cudaFree(gpu.work[slot]));
      gpu.held -= gpu.work_bytes[slot];
    }
    gpu.work[slot] = device_malloc(grown);
    gpu.work_bytes[slot] = grown;
  }
  return gpu.work[slot];
}

extern "C" void *ol_cuda_host_scratch(size_t bytes) {
  if (bytes > gpu.host_bytes) {
    OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));
    if (gpu.host) OL_CUDA_CHECK(cudaFreeHost(gpu.host));
    gpu.host_bytes = bytes < 4096 ? 4096 : bytes;
    OL_CUDA_CHECK(cudaMallocHost(&gpu.host, gpu.host_bytes));
  }
  return gpu.host;
}

/* ---- copies and synchronisation -------------------------------------------------------- */

static void cuda_to_device(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return;
  OL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, gpu.stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));  // the host buffer may be reused at once
}
static void cuda_to_host(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return;
  OL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, gpu.stream));
  OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream));
}
static void cuda_copy(void *dst, const void *src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  OL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, gpu.stream));
}
static void cuda_sync(void) { OL_CUDA_CHECK(cudaStreamSynchronize(gpu.stream)); }
static void *cuda_host_alloc(size_t bytes) {
  void *p = NULL;
  OL_CUDA_CHECK(cudaMallocHost(&p, bytes == 0 ? 1 : bytes));
  memset(p, 0, bytes);
  return p;
}
static void cuda_host_free(void *p) {
  if (p) OL_CUDA_CHECK(cudaFreeHost(p));
}
static void *cuda_queue(void) { return (void *)gpu.stream; }
static size_t cuda_peak_bytes(void) { return gpu.peak; }
static size_t cuda_total_bytes(void) { return gpu.total; }

/* ---- matrix products ------------------------------------------------------------------- *
 * The operands are row-major; cuBLAS is column-major. A row-major (R, C) matrix with row stride
 * ld is the column-major (C, R) matrix with leading dimension ld, i.e. its transpose, so
 * C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T with the operands swapped. */

static cublasOperation_t op(int trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }
static int as_int(size_t n) {
  OL_CHECK(n <= (size_t)INT32_MAX);  // cuBLAS takes int dimensions
  return (int)n;
}

static void cuda_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
                      const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
                      size_t ldc) {
  if (M == 0 || N == 0) return;
  BLAS_CHECK(cublasGemmEx(gpu.blas, op(trans_b), op(trans_a), as_int(N), as_int(M), as_int(K),
                          &alpha, B, CUDA_R_32F, as_int(ldb), A, CUDA_R_32F, as_int(lda), &beta, C,
                          CUDA_R_32F, as_int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* Xh(M, K) = X(M, K) (row stride ldx) rounded to 2 bytes; one thread per element of a row
 * block: grid (ceil(K / threads), rows in chunks of 65535) */
__global__ static void narrow_rows(uint16_t *Xh, const float *X, size_t ldx, size_t K, size_t r0,
                                   size_t rows, int bf16) {
  const size_t r = r0 + blockIdx.y;
  if (blockIdx.y >= rows) return;
  for (size_t c = (size_t)blockIdx.x * blockDim.x + threadIdx.x; c < K;
       c += (size_t)gridDim.x * blockDim.x) {
    const float x = X[r * ldx + c];
    Xh[r * K + c] = bf16 ? ol_f32_to_bf16(x) : ol_f32_to_f16(x);
  }
}

static void cuda_gemm_half(int trans_w, size_t M, size_t N, size_t K, float alpha, const float *X,
                           size_t ldx, const uint16_t *W, size_t ldw, int w_bf16, float beta,
                           float *C, size_t ldc, float *scratch) {
  (void)scratch;  // the narrowed input lives in workspace 0
  if (M == 0 || N == 0) return;
  uint16_t *Xh = (uint16_t *)ol_cuda_workspace(0, M * K * sizeof(uint16_t));  // (M, K)
  const unsigned threads = OL_CUDA_THREADS;
  for (size_t r0 = 0; r0 < M; r0 += OL_CUDA_MAX_BLOCKS) {
    const size_t rows = M - r0 < OL_CUDA_MAX_BLOCKS ? M - r0 : OL_CUDA_MAX_BLOCKS;
    dim3 grid(ol_cuda_blocks(K, threads) < 64 ? ol_cuda_blocks(K, threads) : 64, (unsigned)rows);
    narrow_rows<<<grid, threads, 0, gpu.stream>>>(Xh, X, ldx, K, r0, rows, w_bf16);
    OL_CUDA_LAUNCHED();
  }
  const cudaDataType_t t = w_bf16 ? CUDA_R_16BF : CUDA_R_16F;
  // C^T (N, M) = op(W)^T (N, K) X^T (K, M): W stored (N, K) when trans_w, else (K, N)
  BLAS_CHECK(cublasGemmEx(gpu.blas, op(trans_w), CUBLAS_OP_N, as_int(N), as_int(M), as_int(K),
                          &alpha, W, t, as_int(ldw), Xh, t, as_int(K), &beta, C, CUDA_R_32F,
                          as_int(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/* no caller-provided scratch: the narrowed input is the backend's own workspace */
static size_t cuda_gemm_half_scratch_floats(size_t N, size_t K) {
  (void)N, (void)K;
  return 0;
}

static void cuda_gemv(int trans, size_t M, size_t N, float alpha, const float *A, size_t lda,
                      const float *x, float beta, float *y) {
  if (M == 0) return;
  // A(M, N) row-major is the column-major (N, M) A^T: y = A x is (A^T)^T x; stored (N, M) when
  // trans, whose column-major view is the (M, N) matrix A^T itself
  if (trans) BLAS_CHECK(cublasSgemv(gpu.blas, CUBLAS_OP_N, as_int(M), as_int(N), &alpha, A, as_int(lda), x, 1, &beta, y, 1));
  else BLAS_CHECK(cublasSgemv(gpu.blas, CUBLAS_OP_T, as_int(N), as_int(M), &alpha, A, as_int(lda), x, 1, &beta, y, 1));
}

/* ---- the table ------------------------------------------------------------------------- */

static ol_backend table;

static void fill_table(void) {
  ol_backend *b = &table;
  b->name = "cuda";
  b->alloc = cuda_alloc;
  b->free = cuda_free;
  b->host_visible = 0;
  b->to_device = cuda_to_device;
  b->to_host = cuda_to_host;
  b->copy = cuda_copy;
  b->sync = cuda_sync;
  b->host_alloc = cuda_host_alloc;
  b->host_free = cuda_host_free;
  b->queue = cuda_queue;
  b->peak_bytes = cuda_peak_bytes;
  b->total_bytes = cuda_total_bytes;
  b->gemm = cuda_gemm;
  b->gemm_half = cuda_gemm_half;
  b->gemm_half_scratch_floats = cuda_gemm_half_scratch_floats;
  b->widen = ol_cuda_widen;
  b->gemv = cuda_gemv;
  b->embedding_forward = ol_cuda_embedding_forward;
  b->embedding_backward = ol_cuda_embedding_backward;
  b->rmsnorm_forward = ol_cuda_rmsnorm_forward;
  b->rmsnorm_backward = ol_cuda_rmsnorm_backward;
  b->rope_table = ol_cuda_rope_table;
  b->rope_apply = ol_cuda_rope_apply;
  b->attention_scratch_floats = ol_cuda_attention_scratch_floats;
  b->attention_forward = ol_cuda_attention_forward;
  b->attention_backward = ol_cuda_attention_backward;
  b->swiglu_forward = ol_cuda_swiglu_forward;
  b->swiglu_backward = ol_cuda_swiglu_backward;
  b->cross_entropy = ol_cuda_cross_entropy;
  b->axpy = ol_cuda_axpy;
  b->sumsq = ol_cuda_sumsq;
  b->scale = ol_cuda_scale;
  b->counter_normal = ol_cuda_counter_normal;
  b->row_sums = ol_cuda_row_sums;
  b->outer = ol_cuda_outer;
  b->broadcast_rows = ol_cuda_broadcast_rows;
  b->add_bias = ol_cuda_add_bias;
  b->col_sums = ol_cuda_col_sums;
  b->rowdot_accum = ol_cuda_rowdot_accum;
  b->adamw = ol_cuda_adamw;
  b->scale_cols = ol_cuda_scale_cols;
  b->col_dots_accum = ol_cuda_col_dots_accum;
  b->dora_sq_norms = ol_cuda_dora_sq_norms;
  b->inv_sqrt = ol_cuda_inv_sqrt;
  b->vp_ce_local = ol_cuda_vp_ce_local;
  b->vp_ce_sumexp = ol_cuda_vp_ce_sumexp;
  b->vp_ce_grad = ol_cuda_vp_ce_grad;
  b->vp_ce_loss = ol_cuda_vp_ce_loss;
  b->fill = ol_cuda_fill;
  b->narrow = ol_cuda_narrow;
  b->scale_rows = ol_cuda_scale_rows;
  b->row_sumsq = ol_cuda_row_sumsq;
  b->sqrt_inplace = ol_cuda_sqrt_inplace;
  b->diag_scale = ol_cuda_diag_scale;
  b->diag_scale_backward = ol_cuda_diag_scale_backward;
  b->cyclic_rows = ol_cuda_cyclic_rows;
  b->attention_cached = ol_cuda_attention_cached;
  b->sample = ol_cuda_sample;
}

extern "C" int ol_cuda_module_device_count(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error of ours
    return 0;
  }
  return n;
}

extern "C" const char *ol_cuda_module_device_name(void) { return gpu.name; }

extern "C" const ol_backend *ol_cuda_module_backend(int device) {
  if (table.name) {  // already made current
    if (device != gpu.device) {
      ol_error("--device cuda: this process already uses GPU %d, not %d", gpu.device, device);
      return NULL;
    }
    return &table;
  }
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    ol_error("--device cuda: no usable GPU (%s)",
             e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
    return NULL;
  }
  if (device < 0 || device >= n) {
    ol_error("--device cuda: GPU %d does not exist (%d visible)", device, n);
    return NULL;
  }
  cudaDeviceProp prop;
  if ((e = cudaSetDevice(device)) != cudaSuccess ||
      (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) {
    ol_error("--device cuda: GPU %d cannot be used: %s", device, cudaGetErrorString(e));
    return NULL;
  }
  if (prop.major < 8) {
    ol_error("--device cuda: GPU %d (%s) has compute capability %d.%d; onelora needs 8.0 or newer "
             "(bf16 tensor cores)", device, prop.name, prop.major, prop.minor);
    return NULL;
  }
  gpu.device = device;
  gpu.total = prop.totalGlobalMem;
  snprintf(gpu.name, sizeof gpu.name, "GPU %d: %.200s, %.1f GiB, compute capability %d.%d", device,
           prop.name, prop.totalGlobalMem / 1073741824.0, prop.major, prop.minor);
  OL_CUDA_CHECK(cudaStreamCreateWithFlags(&gpu.stream, cudaStreamNonBlocking));
  BLAS_CHECK(cublasCreate(&gpu.blas));
  BLAS_CHECK(cublasSetStream(gpu.blas, gpu.stream));
  BLAS_CHECK(cublasSetMathMode(gpu.blas, CUBLAS_DEFAULT_MATH));  // f32 stays f32 (no TF32)
  fill_table();
  return &table;
}
