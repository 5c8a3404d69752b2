/* The CUDA backend's host-side arithmetic: launch geometry, chunking and the 2-byte float
 * conversions. Plain C shared by the .cu files and the CPU unit test (tests/unit/test_cuda_launch.c),
 * so every index and size decision is tested on a machine without a GPU. */
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

/* ---- 2-byte floats, the same rounding as core's ol_f32_to_bf16 / ol_f32_to_f16 (to nearest,
 * ties to even; NaN stays NaN) so a tensor narrowed on the GPU equals the CPU's bit for bit ---- */
OL_HD uint32_t ol_cuda_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
OL_HD float ol_cuda_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
OL_HD uint16_t ol_cuda_f32_to_bf16(float f) {
  uint32_t u = ol_cuda_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
OL_HD float ol_cuda_bf16_to_f32(uint16_t h) { return ol_cuda_bits_f32((uint32_t)h << 16); }

/* IEEE binary16, round to nearest even, with subnormals; overflow to infinity */
OL_HD uint16_t ol_cuda_f32_to_f16(float f) {
  uint32_t u = ol_cuda_f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to >= 65520: infinity
  if (a < 0x38800000u) {  // below 2^-14: subnormal or zero
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): zero
    uint32_t mant = (a & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)(a >> 23);  // 14 - exp + 23 - 10 + 1 ... bits to drop minus 13
    // value = mant * 2^(e-150); subnormal unit 2^-24: q = mant * 2^(e-126) -> drop (126-e) bits
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);  // round the 13 dropped bits to even
  return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}
OL_HD float ol_cuda_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return ol_cuda_bits_f32(sign | 0x7f800000u | (m << 13));
  if (e == 0) {  // zero or subnormal: m * 2^-24
    float v = (float)m * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return ol_cuda_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

#endif
