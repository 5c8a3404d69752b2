/* onelora core: errors and logging, allocation, RNG, timers, f16/bf16 conversion. */
#ifndef ONELORA_CORE_CORE_H
#define ONELORA_CORE_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "onelora/core/half.h"

/* ---- errors ---------------------------------------------------------------
 * Functions that can fail return OL_OK (0) or a nonzero code, after recording a
 * one-line message with ol_error(). The CLI prints "onelora: error: <message>".
 * The message names the file, flag or value that is wrong. */
enum { OL_OK = 0, OL_ERR = 1 };

int ol_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));   /* records, returns OL_ERR */
const char *ol_last_error(void);
/* Prints "onelora: error: <last error>" on stderr, from rank 0 only (errors are agreed). */
void ol_error_report(void);
void ol_clear_error(void);

/* Fatal internal invariant checks: print file:line and abort. Never for user input. */
#define OL_CHECK(cond)                                                                        \
  do {                                                                                        \
    if (!(cond)) ol_fatal(__FILE__, __LINE__, "check failed: %s", #cond);                     \
  } while (0)
void ol_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
/* Propagate a failing call's code. */
#define OL_TRY(call)                                                                          \
  do {                                                                                        \
    int ol_try_rc_ = (call);                                                                  \
    if (ol_try_rc_ != OL_OK) return ol_try_rc_;                                               \
  } while (0)

/* ---- logging (rank 0 prints info; warnings print on every rank) ------------- */
void ol_log_set_rank(int rank);
void ol_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ol_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- allocation: 64-byte aligned, zeroed; abort on out of memory ----------- */
void *ol_calloc(size_t count, size_t size);
void ol_free(void *p);
/* A growing array: returns `items` (count used elements of `size` bytes, room for *cap), moved
 * to a zeroed allocation twice as large (16 at first) when it is full, so that one more fits. */
void *ol_grow(void *items, size_t count, size_t *cap, size_t size);

/* ---- RNG: splitmix64 stream, and counter-based hashing --------------------- */
typedef struct {
  uint64_t state;
} ol_rng;
uint64_t ol_hash64(uint64_t x);             /* splitmix64 finaliser: a counter-based random number */
void ol_rng_seed(ol_rng *r, uint64_t seed);
uint64_t ol_rng_u64(ol_rng *r);
float ol_rng_uniform(ol_rng *r);            /* [0, 1) */
float ol_rng_normal(ol_rng *r);             /* N(0, 1) */
/* Counter-based normals (synthetic weights): element (row, col) of the matrix keyed by `key` is
 * ol_hash_normal(ol_counter_hash(key, row, col)), a pure function of its indices, so any block
 * of rows and columns is generated directly, in time proportional to its size. */
/* ol_hash64(ol_hash64(key ^ row) + col * 0x9E3779B97F4A7C15): row `row` reads the splitmix64
 * stream seeded by ol_hash64(key ^ row) at position `col` */
uint64_t ol_counter_hash(uint64_t key, uint64_t row, uint64_t col);
/* N(0, 1) from one 64-bit hash: Box-Muller (cosine branch) on its two top 24-bit uniforms,
 * u1 = 1 - h[40:64) / 2^24 in (0, 1] and u2 = h[16:40) / 2^24; |z| <= sqrt(48 ln 2) = 5.77 */
float ol_hash_normal(uint64_t h);

/* ---- timers and memory ------------------------------------------------------ */
double ol_now(void);                        /* seconds, monotonic */
size_t ol_peak_rss_bytes(void);             /* VmHWM of this process */
size_t ol_pss_bytes(void);                  /* its proportional set size now (smaps_rollup):
                                             * pages shared with other processes count a share */
size_t ol_rss_bytes(void);                  /* VmRSS of this process */

/* ---- optional libraries, opened at run time (the CUDA backend, NCCL) --------- */
/* Each of the n names looked up in `lib` (from dlopen) and stored in the function pointer that
 * slots[i] points to; returns NULL, or the first name lib lacks (then no slot is trusted). */
typedef void (*ol_fn)(void);
const char *ol_dl_resolve(void *lib, size_t n, const char *const names[], ol_fn *const slots[]);

/* ---- half precision (the conversions: onelora/core/half.h) ------------------ */
/* Value types of weights on disk and in memory, as the CLI spells them (--weights-dtype) */
typedef enum { OL_DTYPE_F32 = 0, OL_DTYPE_F16 = 1, OL_DTYPE_BF16 = 2 } ol_dtype;
const char *ol_dtype_name(ol_dtype t);
int ol_dtype_parse(const char *s, ol_dtype *out);  /* "f32" | "f16" | "bf16" */

/* ---- small string helpers --------------------------------------------------- */
/* Copy with truncation, always NUL-terminated. */
void ol_strlcpy(char *dst, const char *src, size_t size);

#endif
