/* Random numbers: splitmix64. Counter-based hashing makes data order and initialisation
 * independent of how work is split across ranks. */
#include <math.h>

#include "onelora/core/core.h"

/* splitmix64's increment (2^64 / golden ratio) */
#define GAMMA 0x9E3779B97F4A7C15ull

uint64_t ol_hash64(uint64_t x) {
  x += GAMMA;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void ol_rng_seed(ol_rng *r, uint64_t seed) { r->state = ol_hash64(seed ^ 0x6F6E656C6F7261ull); }

uint64_t ol_rng_u64(ol_rng *r) {
  r->state += GAMMA;
  return ol_hash64(r->state);
}

/* The top 24 bits of a 64-bit random number as a float in [0, 1) (exact: 24 bits fit). */
static float uniform24(uint64_t bits) { return (float)(bits >> 40) * (1.0f / 16777216.0f); }

float ol_rng_uniform(ol_rng *r) { return uniform24(ol_rng_u64(r)); }

/* Box-Muller, cosine branch; u1 in (0, 1] so the log is finite. */
static float box_muller(float u1, float u2) {
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}

float ol_rng_normal(ol_rng *r) {
  float u1 = 1.0f - ol_rng_uniform(r);
  float u2 = ol_rng_uniform(r);
  return box_muller(u1, u2);
}

uint64_t ol_counter_hash(uint64_t key, uint64_t row, uint64_t col) {
  return ol_hash64(ol_hash64(key ^ row) + col * GAMMA);
}

float ol_hash_normal(uint64_t h) { return box_muller(1.0f - uniform24(h), uniform24(h << 24)); }
