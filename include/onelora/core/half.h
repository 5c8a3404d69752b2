/* onelora core: IEEE binary16 and bfloat16 conversions, round to nearest even (NaN stays NaN,
 * f16 overflow goes to infinity, f16 subnormals kept). Inline, and host-and-device code under
 * nvcc, so the CUDA backend narrows and widens with the very functions the CPU uses: a tensor
 * narrowed on the GPU equals the CPU's bit for bit. */
#ifndef ONELORA_CORE_HALF_H
#define ONELORA_CORE_HALF_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define OL_HALF_FN __host__ __device__ static inline
#else
#define OL_HALF_FN static inline
#endif

OL_HALF_FN uint32_t ol_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

OL_HALF_FN float ol_bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

OL_HALF_FN uint16_t ol_f32_to_f16(float f) {
  const uint32_t x = ol_f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) /* inf or nan */
    return (uint16_t)(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u : 0));
  if (absx >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* overflow to inf */
  if (absx < 0x38800000u) {                                    /* subnormal or zero */
    /* scale so the subnormal LSB is 1, then round to nearest even */
    const float scaled = ol_bits_f32(absx) * 16777216.0f; /* 2^24: exact */
    uint32_t m = (uint32_t)scaled;
    const float rem = scaled - (float)m;
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) m++;
    return (uint16_t)(sign | m);
  }
  const uint32_t e = ((absx >> 23) - 127 + 15);
  const uint32_t mant = absx & 0x7FFFFFu;
  uint32_t h = (e << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return (uint16_t)(sign | h);
}

OL_HALF_FN float ol_f16_to_f32(uint16_t h) {
  const uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0) {
    const float v = (float)m * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return ol_bits_f32(sign | 0x7F800000u | (m << 13));
  return ol_bits_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}

OL_HALF_FN uint16_t ol_f32_to_bf16(float f) {
  uint32_t x = ol_f32_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
  x += 0x7FFFu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

OL_HALF_FN float ol_bf16_to_f32(uint16_t h) { return ol_bits_f32((uint32_t)h << 16); }

#endif
