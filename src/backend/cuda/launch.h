/* The CUDA backend's host-side arithmetic: launch geometry and chunking (the 2-byte float
 * conversions are core's, onelora/core/half.h). Plain C shared by the .cu files and the CPU unit
 * test (tests/unit/test_cuda_launch.c), so every index and size decision is tested on a machine
 * without a GPU. */
#ifndef ONELORA_BACKEND_CUDA_LAUNCH_H
#define ONELORA_BACKEND_CUDA_LAUNCH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define OL_HD __host__ __device__ inline
#else
#define OL_HD static inline
#endif

/* Threads per block of the elementwise and row kernels, and the grid-stride cap: a grid never
 * has more than OL_CUDA_MAX_BLOCKS blocks; each thread strides over the rest. */
#define OL_CUDA_THREADS 256
#define OL_CUDA_MAX_BLOCKS 65535u

/* Blocks for n elements at `threads` per block: ceil(n / threads), at least 1 (a launch of zero
 * blocks is an error), at most OL_CUDA_MAX_BLOCKS (grid-stride loops cover the rest). */
OL_HD unsigned ol_cuda_blocks(size_t n, unsigned threads) {
  size_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > OL_CUDA_MAX_BLOCKS) b = OL_CUDA_MAX_BLOCKS;
  return (unsigned)b;
}

/* Threads for a kernel that gives one block to each row of `cols` elements: a multiple of the
 * warp size (32) from 32 to 1024, the smallest that covers the row in one pass, else 1024. */
OL_HD unsigned ol_cuda_row_threads(size_t cols) {
  size_t t = 32;
  while (t < cols && t < 1024) t *= 2;
  return (unsigned)t;
}

/* A 2-D launch over (rows, cols) as one row per grid.y index is limited to 65535 rows: the
 * number of row groups of at most OL_CUDA_MAX_BLOCKS rows each that a host loop launches. */
OL_HD size_t ol_cuda_row_chunks(size_t rows) {
  return rows == 0 ? 0 : (rows + OL_CUDA_MAX_BLOCKS - 1) / OL_CUDA_MAX_BLOCKS;
}

#endif
