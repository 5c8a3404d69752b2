/* Forward and backward of the LLaMA stages, in pairs. One micro-batch of B sequences of T tokens
 * flows as N = B*T rows. What forward keeps for backward is exactly ol_block_acts (DESIGN §4):
 *  - RMSNorm keeps its input (the residual stream, which exists anyway) and 1/rms per token;
 *  - attention keeps q, k, v and the softmax log-sum-exp (O(T) per head) and recomputes the
 *    probabilities in backward, instead of keeping the O(T^2) probability matrix;
 *  - SwiGLU keeps its two inputs g and u;
 *  - frozen linears keep nothing; adapters keep what their own backward needs.
 * The LM head runs in token chunks with its backward fused in, so logits are never kept.
 * With --recompute only the block inputs xs and the final norm's 1/rms are kept: every layer
 * writes one shared ol_block_acts, and backward re-runs a block's forward from its input to
 * refill it. The recomputation runs the same kernels on the same inputs in the same order, so
 * the results are bit-identical; under TP it repeats the forward all-reduces (o, down, DoRA's
 * row norms) on every TP rank alike, and the TP byte counters include them. */
#include <math.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/model/acts.h"

/* Points every linear at these activations' scratch (rescaling adapters, 2-byte weights). */
static void set_linear_work(ol_model *m, ol_acts *a) {
  for (size_t l = 0; l < a->L; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      m->blocks[l].lin[p].work = a->lin_work;
      m->blocks[l].lin[p].wide = a->wide;
    }
}

/* This rank's ffn rows F/TP, query heads H/TP and kv heads Hkv/TP (all of them without TP). */
static void rank_widths(const ol_model *m, size_t *F, size_t *H, size_t *Hkv) {
  const size_t tp = (size_t)m->stage.tp;
  *F = (size_t)m->cfg.ffn_dim / tp;
  *H = (size_t)m->cfg.n_heads / tp;
  *Hkv = (size_t)m->cfg.n_kv_heads / tp;
}

/* Generation's attention of block l (B = 1): the a->N new tokens' q and k turned by RoPE at
 * their positions t0 = cache->len .., their k and v appended to layer l's cache, and their
 * queries attending over positions 0 .. t0 + N - 1. The prefill (t0 = 0) is the plain causal
 * attention of the new tokens, so a prompt runs exactly as a training forward does. */
static void cached_attention(ol_model *m, ol_acts *a, size_t l, ol_block_acts *ba,
                             ol_kv_cache *cache, size_t H, size_t Hkv) {
  const size_t N = a->N, hd = m->hd, t0 = cache->len, kvD = cache->kvD;
  OL_CHECK(a->B == 1 && t0 + N <= cache->T_max && kvD == Hkv * hd);
  const float *cos_t = cache->rope_cos + t0 * (hd / 2), *sin_t = cache->rope_sin + t0 * (hd / 2);
  ol_bk->rope_apply(ba->q, cos_t, sin_t, 1, N, H, hd, 0);
  ol_bk->rope_apply(ba->k, cos_t, sin_t, 1, N, Hkv, hd, 0);
  float *kc = cache->k + l * cache->T_max * kvD;  // (T_max, Hkv/TP*hd) layer l's keys
  float *vc = cache->v + l * cache->T_max * kvD;  // (T_max, Hkv/TP*hd) and values
  ol_bk->copy(kc + t0 * kvD, ba->k, N * kvD * sizeof(float));
  ol_bk->copy(vc + t0 * kvD, ba->v, N * kvD * sizeof(float));
  if (t0 == 0)
    ol_bk->attention_forward(a->att, ba->lse, ba->q, ba->k, ba->v, 1, N, H, Hkv, hd,
                             a->attn_scratch);
  else
    ol_bk->attention_cached(a->att, ba->q, kc, vc, N, t0, H, Hkv, hd, cache->scores);
}

/* x (N, D) -> out (N, D) through block l; fills its block_acts. Under TP the attention runs on
 * this rank's H/TP query and Hkv/TP kv heads, the MLP on its F/TP rows; the row-parallel o and
 * down sum their partial outputs over TP themselves (one all-reduce each, in ol_linear_forward)
 * and add them to the residual, which is the same on every rank. With a KV cache (generation)
 * the attention reads and extends it (cached_attention). */
static void block_forward(ol_model *m, ol_acts *a, size_t l, const float *x, float *out,
                          ol_kv_cache *cache) {
  ol_block *b = &m->blocks[l];
  ol_block_acts *ba = ol_acts_block(a, l);
  const size_t N = a->N, D = (size_t)m->cfg.dim, hd = m->hd;
  size_t F, H, Hkv;
  rank_widths(m, &F, &H, &Hkv);
  const float eps = (float)m->cfg.norm_eps;

  ol_bk->rmsnorm_forward(a->xn, ba->rstd1, x, b->attn_norm.data, N, D, eps);
  float *qkv[3] = {ba->q, ba->k, ba->v};
  ol_linears_forward(&b->lin[OL_Q], 3, a->xn, qkv, N, &ba->saved[OL_Q]);
  if (cache) {
    cached_attention(m, a, l, ba, cache, H, Hkv);
  } else {
    ol_bk->rope_apply(ba->q, a->rope_cos, a->rope_sin, a->B, a->T, H, hd, 0);
    ol_bk->rope_apply(ba->k, a->rope_cos, a->rope_sin, a->B, a->T, Hkv, hd, 0);
    ol_bk->attention_forward(a->att, ba->lse, ba->q, ba->k, ba->v, a->B, a->T, H, Hkv, hd,
                             a->attn_scratch);
  }
  ol_bk->copy(ba->x2, x, N * D * sizeof(float));  // x2 = x + o(att)
  ol_linear_forward(&b->lin[OL_O], a->att, ba->x2, N, 1.0f, ba->saved[OL_O]);

  ol_bk->rmsnorm_forward(a->xn, ba->rstd2, ba->x2, b->mlp_norm.data, N, D, eps);
  float *gate_up[2] = {ba->g, ba->u};
  ol_linears_forward(&b->lin[OL_GATE], 2, a->xn, gate_up, N, &ba->saved[OL_GATE]);
  ol_bk->swiglu_forward(a->h, ba->g, ba->u, N * F);
  ol_bk->copy(out, ba->x2, N * D * sizeof(float));  // out = x2 + down(h)
  ol_linear_forward(&b->lin[OL_DOWN], a->h, out, N, 1.0f, ba->saved[OL_DOWN]);
}

/* a->dres (N, D) holds d(out) on entry and d(x) on exit; x (N, D) is the block input. Under TP
 * the column-parallel layers' dx is a partial sum (adapter terms included): one all-reduce after
 * q, k, v and one after gate, up. */
static void block_backward(ol_model *m, ol_acts *a, size_t l, const float *x) {
  ol_block *b = &m->blocks[l];
  ol_block_acts *ba = ol_acts_block(a, l);
  const size_t N = a->N, D = (size_t)m->cfg.dim, hd = m->hd;
  size_t F, H, Hkv;
  rank_widths(m, &F, &H, &Hkv);
  float *dnorm1 = ol_model_grad(m, &b->attn_norm), *dnorm2 = ol_model_grad(m, &b->mlp_norm);

  // MLP: out = x2 + down(silu(gate(xn2)) * up(xn2))
  float *dh = a->h;                                   // (N, F)
  ol_linear_backward(&b->lin[OL_DOWN], a->dres, dh, N, 0.0f, ba->saved[OL_DOWN]);
  ol_bk->swiglu_backward(ba->g, ba->u, dh, ba->g, ba->u, N * F);  // in place: g, u -> dg, du
  float *dxn = a->xn;                                 // (N, D)
  const float *dgate_up[2] = {ba->g, ba->u};
  ol_linears_backward(&b->lin[OL_GATE], 2, dgate_up, dxn, N, &ba->saved[OL_GATE]);
  ol_bk->rmsnorm_backward(a->dres, dnorm2, dxn, ba->x2, b->mlp_norm.data, ba->rstd2, N, D);

  // attention: x2 = x + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
  float *datt = a->att;                               // (N, H/TP*hd)
  ol_linear_backward(&b->lin[OL_O], a->dres, datt, N, 0.0f, ba->saved[OL_O]);
  ol_bk->attention_backward(a->dq, a->dk, a->dv, datt, ba->q, ba->k, ba->v, ba->lse, a->B, a->T,
                            H, Hkv, hd, a->attn_scratch);
  ol_bk->rope_apply(a->dq, a->rope_cos, a->rope_sin, a->B, a->T, H, hd, 1);
  ol_bk->rope_apply(a->dk, a->rope_cos, a->rope_sin, a->B, a->T, Hkv, hd, 1);
  const float *dqkv[3] = {a->dq, a->dk, a->dv};
  ol_linears_backward(&b->lin[OL_Q], 3, dqkv, dxn, N, &ba->saved[OL_Q]);
  ol_bk->rmsnorm_backward(a->dres, dnorm1, dxn, x, b->attn_norm.data, ba->rstd1, N, D);
}

/* Vocab-parallel embedding: this rank holds rows [v0, v0 + Vl) of the table (Vl, D); tokens
 * outside them give zero rows, and reduce_from_tp sums the shards' rows. */
static void embed_forward(ol_model *m, float *out, const int32_t *tokens, size_t N) {
  const size_t D = (size_t)m->cfg.dim;
  ol_bk->embedding_forward(out, tokens, m->embed.data, m->embed.half,
                           m->stage.weights_dtype == OL_DTYPE_BF16, N, D, (int64_t)m->v0, m->Vl);
  ol_reduce_from_tp_forward(m->tp, out, N * D);
}

/* d(table) (Vl, D) += the rows of dout (N, D) whose tokens lie in this rank's shard (the
 * backward of reduce_from_tp is the identity). */
static void embed_backward(ol_model *m, float *dtable, const int32_t *tokens, const float *dout,
                           size_t N) {
  ol_reduce_from_tp_backward(m->tp, dout, N * (size_t)m->cfg.dim);
  ol_bk->embedding_backward(dtable, tokens, dout, N, (size_t)m->cfg.dim, (int64_t)m->v0, m->Vl);
}

/* Cross-entropy of one chunk's logits (n, Vl); vocab-parallel under TP. With grad_scale != 0
 * the logits become this rank's dlogits. Returns the chunk's summed loss (the same on every TP
 * rank). */
static double head_loss(ol_model *m, ol_acts *a, float *logits, const int32_t *targets, size_t n,
                        float grad_scale) {
  if (m->stage.tp == 1) return ol_bk->cross_entropy(logits, targets, n, m->Vl, grad_scale);
  OL_CHECK(m->tp != NULL);  // a TP shard computes its loss with the other shards
  return m->tp->ops->vocab_cross_entropy(m->tp, logits, targets, n, m->Vl, (int64_t)m->v0,
                                         grad_scale, a->ce_mx, a->ce_zt, a->ce_sum);
}

/* The LM head's products with its weight (V/TP, D), f32 or kept at 2 bytes: logits (n, V/TP) =
 * xn (n, D) W^T (trans_w), or dxn (n, D) = dlogits (n, V/TP) W. */
static void head_gemm(const ol_model *m, ol_acts *a, int trans_w, size_t n, const float *x,
                      float *C) {
  const size_t D = (size_t)m->cfg.dim, V = m->Vl;
  const size_t cols = trans_w ? V : D, K = trans_w ? D : V;
  if (m->lm_head.half)
    ol_bk->gemm_half(trans_w, n, cols, K, 1.0f, x, K, m->lm_head.half, D,
                     m->stage.weights_dtype == OL_DTYPE_BF16, 0.0f, C, cols, a->wide);
  else
    ol_bk->gemm(0, trans_w, n, cols, K, 1.0f, x, K, m->lm_head.data, D, 0.0f, C, cols);
}

double ol_model_forward(ol_model *m, ol_acts *a, const int32_t *tokens, const int32_t *targets,
                        float grad_scale) {
  const ol_config *c = &m->cfg;
  const size_t N = a->N, D = (size_t)c->dim, V = m->Vl, L = m->stage.n_layers;
  float *xs = a->xs;  // (L+1, N, D): xs[0] is the stage input, xs[L] its output
  set_linear_work(m, a);
  if (m->stage.has_embed) embed_forward(m, xs, tokens, N);
  for (size_t l = 0; l < L; l++) block_forward(m, a, l, xs + l * N * D, xs + (l + 1) * N * D, NULL);
  if (!m->stage.has_head) return 0.0;  // a pipeline stage hands xs[L] on

  // final norm, then the LM head and the loss in chunks of tokens, backward fused in; under TP
  // each rank holds V/TP rows of the head and d(xn) is a partial sum, all-reduced once
  const float *xl = xs + L * N * D;   // (N, D)
  float *xn = a->xn;                  // (N, D) normed
  float *dxn = a->att;                // (N, D) its gradient
  ol_bk->rmsnorm_forward(xn, a->rstd_final, xl, m->final_norm.data, N, D, (float)c->norm_eps);
  float *dhead = ol_model_grad(m, &m->lm_head);
  ol_copy_to_tp_forward(m->tp, xn, N * D);  // the head's rows are split over TP
  double loss = 0.0;
  for (size_t t0 = 0; t0 < N; t0 += a->head_chunk) {
    size_t n = N - t0 < a->head_chunk ? N - t0 : a->head_chunk;
    float *logits = a->logits;  // (n, V/TP)
    head_gemm(m, a, 1, n, xn + t0 * D, logits);
    loss += head_loss(m, a, logits, targets + t0, n, grad_scale);
    if (grad_scale == 0.0f) continue;
    head_gemm(m, a, 0, n, logits, dxn + t0 * D);
    if (dhead) ol_bk->gemm(1, 0, V, D, n, 1.0f, logits, V, xn + t0 * D, D, 1.0f, dhead, D);
  }
  if (grad_scale != 0.0f) {
    ol_copy_to_tp_backward(m->tp, dxn, N * D);
    float *dnorm = ol_model_grad(m, &m->final_norm);
    ol_bk->fill(a->dres, 0.0f, N * D);  // (N, D)
    ol_bk->rmsnorm_backward(a->dres, dnorm, dxn, xl, m->final_norm.data, a->rstd_final, N, D);
  }
  return loss;
}

void ol_model_backward(ol_model *m, ol_acts *a, const int32_t *tokens) {
  const size_t N = a->N, D = (size_t)m->cfg.dim, L = m->stage.n_layers;
  set_linear_work(m, a);
  for (size_t l = L; l-- > 0;) {
    const float *x = a->xs + l * N * D;  // (N, D) block l's input
    // the shared slot still holds the last block's activations from forward; every earlier
    // block refills it (writing xs[l+1] again, with the values it already holds)
    if (a->recompute && l + 1 < L) block_forward(m, a, l, x, a->xs + (l + 1) * N * D, NULL);
    block_backward(m, a, l, x);
  }
  float *dembed = ol_model_grad(m, &m->embed);
  if (m->stage.has_embed && dembed) embed_backward(m, dembed, tokens, a->dres, N);
}

/* ---- generation ------------------------------------------------------------------------------ */

void ol_kv_cache_alloc(ol_kv_cache *c, const ol_model *m, size_t T_max) {
  memset(c, 0, sizeof *c);
  const size_t L = m->stage.n_layers, hd = m->hd;
  const size_t kvD = (size_t)m->cfg.n_kv_heads / (size_t)m->stage.tp * hd;
  c->L = L, c->T_max = T_max, c->kvD = kvD;
  // one backend allocation: k, v (L, T_max, kvD), rope cos, sin (T_max, hd/2), scores (T_max),
  // each rounded up to 16 floats so that every buffer stays 64-byte aligned
  const size_t kv = (L * T_max * kvD + 15) / 16 * 16, rope = (T_max * (hd / 2) + 15) / 16 * 16;
  const size_t scores = (T_max + 15) / 16 * 16;
  float *p = c->memory = ol_bk->alloc((2 * kv + 2 * rope + scores) * sizeof(float));
  c->k = p, c->v = p + kv;                                  // (L, T_max, kvD)
  c->rope_cos = p + 2 * kv, c->rope_sin = p + 2 * kv + rope; // (T_max, hd/2)
  c->scores = p + 2 * kv + 2 * rope;                        // (T_max)
  ol_bk->rope_table(c->rope_cos, c->rope_sin, T_max, hd, m->cfg.rope_theta);
}

void ol_kv_cache_free(ol_kv_cache *c) {
  if (c->memory) ol_bk->free(c->memory);
  memset(c, 0, sizeof *c);
}

void ol_model_forward_cached(ol_model *m, ol_acts *a, ol_kv_cache *cache, const int32_t *tokens,
                             float *logits) {
  const size_t N = a->N, D = (size_t)m->cfg.dim, L = m->stage.n_layers;
  OL_CHECK(a->B == 1);
  float *xs = a->xs;  // (L+1, N, D): xs[0] is the stage input, xs[L] its output
  set_linear_work(m, a);
  if (m->stage.has_embed) embed_forward(m, xs, tokens, N);
  for (size_t l = 0; l < L; l++)
    block_forward(m, a, l, xs + l * N * D, xs + (l + 1) * N * D, cache);
  if (cache) cache->len += N;
  if (!m->stage.has_head) return;  // a pipeline stage hands xs[L] on
  // the final norm and the LM head of the last position only: logits (V/TP)
  const float *last = xs + L * N * D + (N - 1) * D;  // (1, D)
  ol_bk->rmsnorm_forward(a->xn, a->rstd_final, last, m->final_norm.data, 1, D,
                         (float)m->cfg.norm_eps);
  ol_copy_to_tp_forward(m->tp, a->xn, D);  // the head's rows are split over TP
  head_gemm(m, a, 1, 1, a->xn, logits);
}
