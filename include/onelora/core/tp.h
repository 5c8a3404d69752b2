/* onelora core: the tensor-parallel group as model and adapter code sees it (DESIGN §5).
 *
 * Code below src/parallel/ never calls MPI. It marks where a tensor enters and leaves a
 * tensor-parallel region, as Megatron-core's mappings do, and src/parallel/tp.c implements each
 * region's collective half over the grid's TP communicator (ol_grid_tp). Every region is a
 * pair, forward and backward; one half is the identity:
 *
 *   copy_to_tp      forward: identity          backward: all-reduce of the partial dx
 *                   (a replicated input entering column-parallel layers: q, k, v; gate, up;
 *                   the LM head)
 *   reduce_from_tp  forward: all-reduce         backward: identity
 *                   (the partial outputs of row-parallel layers o and down, of the
 *                   vocab-parallel embedding, and partial sums a method forms on its way to a
 *                   replicated value, such as DoRA's squared row norms)
 *
 * plus the vocab-parallel cross-entropy, whose three reductions (row maxima, target logits,
 * sums of exponentials) live inside one op, and, for generation only, gather_from_tp (forward:
 * all-gather of the vocab-parallel logits of one position; it has no backward). A NULL group is one rank: every region is the
 * identity and callers use the single-rank kernels. */
#ifndef ONELORA_CORE_TP_H
#define ONELORA_CORE_TP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct ol_tp ol_tp;

typedef struct {
  void (*copy_to_backward)(const ol_tp *tp, float *dx, size_t n);      /* dx (n) summed */
  void (*reduce_from_forward)(const ol_tp *tp, float *x, size_t n);    /* x (n) summed */
  /* Loss summed over the n rows of logits (n, Vl), this rank's vocabulary rows [v0, v0 + Vl);
   * the same on every rank. With grad_scale != 0 the logits become this rank's dlogits =
   * (softmax - onehot) * grad_scale. Scratch: mx, zt (n) floats, sum (n) doubles. */
  double (*vocab_cross_entropy)(const ol_tp *tp, float *logits, const int32_t *targets,
                                size_t n, size_t Vl, int64_t v0, float grad_scale, float *mx,
                                float *zt, double *sum);
  /* gather_from_tp, forward only (generation): out (TP * n) = every rank's x (n) in TP rank
   * order, the same on every rank (the vocab-parallel logits of one position become the whole
   * vocabulary's). */
  void (*gather_forward)(const ol_tp *tp, const float *x, size_t n, float *out);
} ol_tp_ops;

struct ol_tp {
  const ol_tp_ops *ops;
  void *grid;           /* the ol_grid whose TP communicator this is (src/parallel only) */
};

/* copy_to_tp */
static inline void ol_copy_to_tp_forward(const ol_tp *tp, const float *x, size_t n) {
  (void)tp, (void)x, (void)n;  // the input is already replicated
}
static inline void ol_copy_to_tp_backward(const ol_tp *tp, float *dx, size_t n) {
  if (tp) tp->ops->copy_to_backward(tp, dx, n);
}
/* reduce_from_tp */
static inline void ol_reduce_from_tp_forward(const ol_tp *tp, float *x, size_t n) {
  if (tp) tp->ops->reduce_from_forward(tp, x, n);
}
static inline void ol_reduce_from_tp_backward(const ol_tp *tp, const float *dx, size_t n) {
  (void)tp, (void)dx, (void)n;  // the gradient of a sum reaches every partial unchanged
}

/* gather_from_tp (forward only: nothing trains through generation); one rank: out = x */
static inline void ol_gather_from_tp_forward(const ol_tp *tp, const float *x, size_t n,
                                             float *out) {
  if (tp) tp->ops->gather_forward(tp, x, n, out);
  else if (out != x) memcpy(out, x, n * sizeof(float));
}

#endif
