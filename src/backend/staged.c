/* The test device cpu-staged (ONELORA_TEST_HOOKS builds): a device emulator made of the cpu
 * kernels, so that host code which would break on a GPU breaks here too, on a machine with none.
 *
 * Its buffers are handles, not memory: alloc hands out addresses in a reserved range mapped
 * PROT_NONE, each backed by the same offset in a second, readable range. Host code that reads
 * or writes a buffer directly (instead of to_host / to_device / copy) faults at once, as it
 * would on device memory; every op checks that each buffer argument lies in a live allocation
 * (host memory passed to a kernel aborts with the op and argument named) and runs the cpu
 * kernel on the translated addresses. A CUDA-aware MPI reads device memory itself: the
 * communication layer asks ol_backend_staged_real for the memory behind a handle on that path.
 * Allocations are never reused (a bump allocator; freed pages are returned to the system), so
 * a use after free faults or is caught too. Results equal the cpu backend's bit for bit. */
#define _DEFAULT_SOURCE  // MAP_ANONYMOUS, MAP_NORESERVE, madvise
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

#ifdef ONELORA_TEST_HOOKS

#define ARENA_BYTES ((size_t)32 << 30) /* virtual: each range is reserved, not committed */
#define ALIGN 64

typedef struct {
  size_t offset, bytes;
  int live;
} region;

static struct {
  char *handles;  /* ARENA_BYTES, PROT_NONE: what alloc returns */
  char *real;     /* ARENA_BYTES, the memory behind each handle at the same offset */
  size_t used, held, peak;
  region *regions; /* (n) in address order: the bump allocator hands them out so */
  size_t n, cap;
} arena;

static const ol_backend *cpu;
static ol_backend table;

static void die(const char *op, const char *arg, const void *p, const char *why) {
  fprintf(stderr, "onelora: cpu-staged: %s: argument %s (%p) %s\n", op, arg, p, why);
  fflush(stderr);
  abort();
}

static int is_handle(const void *p) {
  return arena.handles && (const char *)p >= arena.handles &&
         (const char *)p < arena.handles + ARENA_BYTES;
}

/* The live region holding handle offset `at`, or NULL */
static const region *region_at(size_t at) {
  size_t lo = 0, hi = arena.n;  // the last region starting at or before `at`
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (arena.regions[mid].offset <= at) lo = mid + 1;
    else hi = mid;
  }
  if (lo == 0) return NULL;
  const region *r = &arena.regions[lo - 1];
  return at < r->offset + r->bytes ? r : NULL;
}

/* The memory behind buffer p of `bytes` bytes (0: at least its first byte) for op's argument
 * arg; NULL stays NULL. Aborts when p is not inside one live allocation. */
static void *real(const void *p, size_t bytes, const char *op, const char *arg) {
  if (!p) return NULL;
  if (!is_handle(p)) die(op, arg, p, "is not a backend buffer (host memory passed to a kernel?)");
  const size_t at = (size_t)((const char *)p - arena.handles);
  const region *r = region_at(at);
  if (!r) die(op, arg, p, "is outside every allocation");
  if (!r->live) die(op, arg, p, "points into a freed buffer");
  if (bytes && at + bytes > r->offset + r->bytes) die(op, arg, p, "runs past the end of its buffer");
  return arena.real + at;
}
#define R(p, n) real((p), (n), __func__, #p)
#define F(n) ((n) * sizeof(float))

void *ol_backend_staged_real(const void *p) {
  return is_handle(p) ? real(p, 0, "MPI", "buffer") : (void *)p;
}

static void *staged_alloc(size_t bytes) {
  if (!arena.handles) {
    arena.handles = mmap(NULL, ARENA_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                         -1, 0);
    arena.real = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (arena.handles == MAP_FAILED || arena.real == MAP_FAILED) {
      fprintf(stderr, "onelora: cpu-staged: cannot reserve %zu GiB of address space\n",
              ARENA_BYTES >> 30);
      exit(1);
    }
  }
  const size_t size = (bytes ? bytes : 1);
  const size_t rounded = (size + ALIGN - 1) / ALIGN * ALIGN;
  if (rounded > ARENA_BYTES - arena.used) {
    fprintf(stderr, "onelora: cpu-staged: the emulated device's %zu GiB are used up\n",
            ARENA_BYTES >> 30);
    exit(1);
  }
  arena.regions = ol_grow(arena.regions, arena.n, &arena.cap, sizeof(region));
  arena.regions[arena.n++] = (region){arena.used, size, 1};
  void *handle = arena.handles + arena.used;  // fresh pages behind it: zeroed
  arena.used += rounded + ALIGN;  // a gap: one past the end is in no allocation
  arena.held += size;
  if (arena.held > arena.peak) arena.peak = arena.held;
  return handle;
}

static void staged_free(void *p) {
  if (!p) return;
  if (!is_handle(p)) die("free", "p", p, "is not a backend buffer");
  const size_t at = (size_t)((char *)p - arena.handles);
  region *r = (region *)region_at(at);
  if (!r || r->offset != at || !r->live) die("free", "p", p, "is not a live allocation's start");
  r->live = 0;
  arena.held -= r->bytes;
  const size_t page = 4096, first = (at + page - 1) / page * page, end = (at + r->bytes) / page * page;
  if (end > first) madvise(arena.real + first, end - first, MADV_DONTNEED);
}

static void staged_to_device(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return;
  if (is_handle(src)) die(__func__, "src", src, "is a backend buffer, not host memory");
  memcpy(R(dst, bytes), src, bytes);
}
static void staged_to_host(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return;
  if (is_handle(dst)) die(__func__, "dst", dst, "is a backend buffer, not host memory");
  memcpy(dst, R(src, bytes), bytes);
}
static void staged_copy(void *dst, const void *src, size_t bytes) {
  if (bytes == 0) return;
  memmove(R(dst, bytes), R(src, bytes), bytes);
}
static size_t staged_peak_bytes(void) { return arena.peak; }
static size_t staged_total_bytes(void) { return ARENA_BYTES; }

/* ---- the kernels: every buffer argument checked and translated, then the cpu's ---- */

static void s_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A,
                   size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc) {
  cpu->gemm(ta, tb, M, N, K, alpha, R(A, 0), lda, R(B, 0), ldb, beta, R(C, 0), ldc);
}
static void s_gemm_half(int tw, size_t M, size_t N, size_t K, float alpha, const float *X,
                        size_t ldx, const uint16_t *W, size_t ldw, int bf16, float beta, float *C,
                        size_t ldc, float *scratch) {
  cpu->gemm_half(tw, M, N, K, alpha, R(X, 0), ldx, R(W, 0), ldw, bf16, beta, R(C, 0), ldc,
                 R(scratch, 0));
}
static void s_widen(float *dst, const uint16_t *src, size_t rows, size_t cols, size_t ld, int bf16) {
  cpu->widen(R(dst, F(rows * cols)), R(src, 0), rows, cols, ld, bf16);
}
static void s_gemv(int trans, size_t M, size_t N, float alpha, const float *A, size_t lda,
                   const float *x, float beta, float *y) {
  cpu->gemv(trans, M, N, alpha, R(A, 0), lda, R(x, 0), beta, R(y, 0));
}
static void s_embedding_forward(float *out, const int32_t *tokens, const float *tab,
                                const uint16_t *tab16, int bf16, size_t N, size_t D, int64_t v0,
                                size_t V) {
  cpu->embedding_forward(R(out, F(N * D)), R(tokens, N * sizeof(int32_t)), R(tab, 0), R(tab16, 0),
                         bf16, N, D, v0, V);
}
static void s_embedding_backward(float *dtab, const int32_t *tokens, const float *dout, size_t N,
                                 size_t D, int64_t v0, size_t V) {
  cpu->embedding_backward(R(dtab, 0), R(tokens, N * sizeof(int32_t)), R(dout, F(N * D)), N, D, v0, V);
}
static void s_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, size_t N,
                              size_t D, float eps) {
  cpu->rmsnorm_forward(R(out, F(N * D)), R(rstd, F(N)), R(x, F(N * D)), R(w, F(D)), N, D, eps);
}
static void s_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                               const float *w, const float *rstd, size_t N, size_t D) {
  cpu->rmsnorm_backward(R(dx, F(N * D)), R(dw, F(D)), R(dout, F(N * D)), R(x, F(N * D)), R(w, F(D)),
                        R(rstd, F(N)), N, D);
}
static void s_rope_table(float *c, float *s, size_t T, size_t hd, double theta) {
  cpu->rope_table(R(c, F(T * hd / 2)), R(s, F(T * hd / 2)), T, hd, theta);
}
static void s_rope_apply(float *x, const float *c, const float *s, size_t B, size_t T, size_t nh,
                         size_t hd, int inverse) {
  cpu->rope_apply(R(x, F(B * T * nh * hd)), R(c, 0), R(s, 0), B, T, nh, hd, inverse);
}
static void s_attention_forward(float *out, float *lse, const float *q, const float *k,
                                const float *v, size_t B, size_t T, size_t H, size_t Hkv,
                                size_t hd, float *scratch) {
  cpu->attention_forward(R(out, F(B * T * H * hd)), R(lse, F(B * H * T)), R(q, F(B * T * H * hd)),
                         R(k, F(B * T * Hkv * hd)), R(v, F(B * T * Hkv * hd)), B, T, H, Hkv, hd,
                         R(scratch, 0));
}
static void s_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                 const float *q, const float *k, const float *v, const float *lse,
                                 size_t B, size_t T, size_t H, size_t Hkv, size_t hd,
                                 float *scratch) {
  const size_t nq = B * T * H * hd, nkv = B * T * Hkv * hd;
  cpu->attention_backward(R(dq, F(nq)), R(dk, F(nkv)), R(dv, F(nkv)), R(dout, F(nq)), R(q, F(nq)),
                          R(k, F(nkv)), R(v, F(nkv)), R(lse, F(B * H * T)), B, T, H, Hkv, hd,
                          R(scratch, 0));
}
static void s_swiglu_forward(float *h, const float *g, const float *u, size_t n) {
  cpu->swiglu_forward(R(h, F(n)), R(g, F(n)), R(u, F(n)), n);
}
static void s_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                              size_t n) {
  cpu->swiglu_backward(R(dg, F(n)), R(du, F(n)), R(dh, F(n)), R(g, F(n)), R(u, F(n)), n);
}
static double s_cross_entropy(float *logits, const int32_t *targets, size_t N, size_t V,
                              float grad_scale) {
  return cpu->cross_entropy(R(logits, F(N * V)), R(targets, N * sizeof(int32_t)), N, V, grad_scale);
}
static void s_axpy(float *y, const float *x, float alpha, size_t n) {
  cpu->axpy(R(y, F(n)), R(x, F(n)), alpha, n);
}
static double s_sumsq(const float *x, size_t n) { return cpu->sumsq(R(x, F(n)), n); }
static void s_scale(float *x, float alpha, size_t n) { cpu->scale(R(x, F(n)), alpha, n); }
static void s_counter_normal(float *x, size_t rows, size_t cols, uint64_t key, size_t r0, size_t c0,
                             float std) {
  cpu->counter_normal(R(x, F(rows * cols)), rows, cols, key, r0, c0, std);
}
static void s_row_sums(float *s, const float *x, size_t N, size_t k) {
  cpu->row_sums(R(s, F(N)), R(x, F(N * k)), N, k);
}
static void s_outer(float *y, const float *s, const float *b, size_t N, size_t d, float beta) {
  cpu->outer(R(y, F(N * d)), R(s, F(N)), R(b, F(d)), N, d, beta);
}
static void s_broadcast_rows(float *x, const float *c, size_t N, size_t k, float beta) {
  cpu->broadcast_rows(R(x, F(N * k)), R(c, F(N)), N, k, beta);
}
static void s_add_bias(float *y, const float *bias, size_t N, size_t d, float beta) {
  cpu->add_bias(R(y, F(N * d)), R(bias, F(d)), N, d, beta);
}
static void s_col_sums(float *db, const float *dy, size_t N, size_t d) {
  cpu->col_sums(R(db, F(d)), R(dy, F(N * d)), N, d);
}
static void s_rowdot_accum(float *c, float *db, const float *dy, const float *s, const float *b,
                           size_t N, size_t d) {
  cpu->rowdot_accum(R(c, F(N)), R(db, F(d)), R(dy, F(N * d)), R(s, F(N)), R(b, F(d)), N, d);
}
static void s_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                    float b2, float eps, float wd, int64_t step) {
  cpu->adamw(R(p, F(n)), R(g, F(n)), R(m, F(n)), R(v, F(n)), n, lr, b1, b2, eps, wd, step);
}
static void s_scale_cols(float *y, const float *x, const float *g, size_t N, size_t d) {
  cpu->scale_cols(R(y, F(N * d)), R(x, F(N * d)), R(g, F(d)), N, d);
}
static void s_col_dots_accum(float *acc, const float *a, const float *b, const float *g, size_t N,
                             size_t d) {
  cpu->col_dots_accum(R(acc, F(d)), R(a, F(N * d)), R(b, F(N * d)), R(g, F(d)), N, d);
}
static void s_dora_sq_norms(float *n2, const float *W, const float *B, const float *P, size_t d,
                            size_t k, size_t r) {
  cpu->dora_sq_norms(R(n2, F(d)), R(W, 0), R(B, 0), R(P, 0), d, k, r);
}
static void s_inv_sqrt(float *x, size_t n) { cpu->inv_sqrt(R(x, F(n)), n); }
static void s_vp_ce_local(const float *logits, const int32_t *targets, size_t N, size_t V,
                          int64_t v0, float *mx, float *zt) {
  cpu->vp_ce_local(R(logits, F(N * V)), R(targets, N * sizeof(int32_t)), N, V, v0, R(mx, F(N)),
                   R(zt, F(N)));
}
static void s_vp_ce_sumexp(float *logits, const float *mx, size_t N, size_t V, double *sum,
                           int store) {
  cpu->vp_ce_sumexp(R(logits, F(N * V)), R(mx, F(N)), N, V, R(sum, N * sizeof(double)), store);
}
static void s_vp_ce_grad(float *logits, const int32_t *targets, size_t N, size_t V, int64_t v0,
                         const double *sum, float grad_scale) {
  cpu->vp_ce_grad(R(logits, F(N * V)), R(targets, N * sizeof(int32_t)), N, V, v0,
                  R(sum, N * sizeof(double)), grad_scale);
}
static double s_vp_ce_loss(const float *mx, const float *zt, const double *sum, size_t N) {
  return cpu->vp_ce_loss(R(mx, F(N)), R(zt, F(N)), R(sum, N * sizeof(double)), N);
}
static void s_fill(float *x, float value, size_t n) { cpu->fill(R(x, F(n)), value, n); }
static void s_narrow(uint16_t *dst, const float *src, size_t n, int bf16) {
  cpu->narrow(R(dst, n * sizeof(uint16_t)), R(src, F(n)), n, bf16);
}
static void s_scale_rows(float *x, const float *g, size_t N, size_t k) {
  cpu->scale_rows(R(x, F(N * k)), R(g, F(N)), N, k);
}
static void s_row_sumsq(float *n2, const float *x, size_t N, size_t k) {
  cpu->row_sumsq(R(n2, F(N)), R(x, F(N * k)), N, k);
}
static void s_sqrt_inplace(float *x, size_t n) { cpu->sqrt_inplace(R(x, F(n)), n); }
static void s_diag_scale(float *S, const float *lb, const float *B, const float *ld, size_t n,
                         size_t r) {
  cpu->diag_scale(R(S, F(n * r)), R(lb, F(n)), R(B, F(n * r)), R(ld, F(r)), n, r);
}
static void s_diag_scale_backward(float *dlb, float *dld, const float *dS, const float *B,
                                  const float *lb, const float *ld, size_t n, size_t r) {
  cpu->diag_scale_backward(R(dlb, F(n)), R(dld, F(r)), R(dS, F(n * r)), R(B, F(n * r)), R(lb, F(n)),
                           R(ld, F(r)), n, r);
}
static void s_cyclic_rows(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b,
                          size_t len, size_t n, float beta) {
  cpu->cyclic_rows(R(dst, 0), nd, a, R(src, 0), ns, b, len, n, beta);
}
static void s_attention_cached(float *out, const float *q, const float *k, const float *v, size_t n,
                               size_t t0, size_t H, size_t Hkv, size_t hd, float *scratch) {
  cpu->attention_cached(R(out, F(n * H * hd)), R(q, F(n * H * hd)), R(k, F((t0 + n) * Hkv * hd)),
                        R(v, F((t0 + n) * Hkv * hd)), n, t0, H, Hkv, hd, R(scratch, 0));
}
static int64_t s_sample(const float *logits, size_t V, float temperature, size_t top_k, double u,
                        float *scratch) {
  return cpu->sample(R(logits, F(V)), V, temperature, top_k, u, R(scratch, F(V)));
}

const ol_backend *ol_backend_cpu_staged(void) {
  if (table.name) return &table;
  cpu = ol_backend_cpu();
  table = *cpu;  // the host-side entries (host_alloc, sync, sizes) as the cpu's
  table.name = "cpu-staged";
  table.host_visible = 0;
  table.alloc = staged_alloc, table.free = staged_free;
  table.to_device = staged_to_device, table.to_host = staged_to_host, table.copy = staged_copy;
  table.peak_bytes = staged_peak_bytes, table.total_bytes = staged_total_bytes;
  table.gemm = s_gemm, table.gemm_half = s_gemm_half, table.widen = s_widen, table.gemv = s_gemv;
  table.embedding_forward = s_embedding_forward;
  table.embedding_backward = s_embedding_backward;
  table.rmsnorm_forward = s_rmsnorm_forward, table.rmsnorm_backward = s_rmsnorm_backward;
  table.rope_table = s_rope_table, table.rope_apply = s_rope_apply;
  table.attention_forward = s_attention_forward, table.attention_backward = s_attention_backward;
  table.swiglu_forward = s_swiglu_forward, table.swiglu_backward = s_swiglu_backward;
  table.cross_entropy = s_cross_entropy, table.axpy = s_axpy, table.sumsq = s_sumsq;
  table.scale = s_scale, table.counter_normal = s_counter_normal, table.row_sums = s_row_sums;
  table.outer = s_outer, table.broadcast_rows = s_broadcast_rows, table.add_bias = s_add_bias;
  table.col_sums = s_col_sums, table.rowdot_accum = s_rowdot_accum, table.adamw = s_adamw;
  table.scale_cols = s_scale_cols, table.col_dots_accum = s_col_dots_accum;
  table.dora_sq_norms = s_dora_sq_norms, table.inv_sqrt = s_inv_sqrt;
  table.vp_ce_local = s_vp_ce_local, table.vp_ce_sumexp = s_vp_ce_sumexp;
  table.vp_ce_grad = s_vp_ce_grad, table.vp_ce_loss = s_vp_ce_loss, table.fill = s_fill;
  table.narrow = s_narrow, table.scale_rows = s_scale_rows, table.row_sumsq = s_row_sumsq;
  table.sqrt_inplace = s_sqrt_inplace, table.diag_scale = s_diag_scale;
  table.diag_scale_backward = s_diag_scale_backward, table.cyclic_rows = s_cyclic_rows;
  table.attention_cached = s_attention_cached, table.sample = s_sample;
  return &table;
}

#else
const ol_backend *ol_backend_cpu_staged(void) { return NULL; }
void *ol_backend_staged_real(const void *p) { return (void *)p; }
#endif
