/* Random numbers: splitmix64. Counter-based hashing makes data order and initialisation
 * independent of how work is split across ranks. */
#include <math.h>

#include "onelora/core.h"

uint64_t ol_hash64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

void ol_rng_seed(ol_rng *r, uint64_t seed) { r->state = ol_hash64(seed ^ 0x6F6E656C6F7261ull); }

uint64_t ol_rng_u64(ol_rng *r) {
  r->state += 0x9E3779B97F4A7C15ull;
  return ol_hash64(r->state);
}

float ol_rng_uniform(ol_rng *r) { return (float)(ol_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float ol_rng_normal(ol_rng *r) {
  /* Box-Muller; u1 in (0, 1] so the log is finite. */
  float u1 = 1.0f - ol_rng_uniform(r);
  float u2 = ol_rng_uniform(r);
  return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307179586f * u2);
}
