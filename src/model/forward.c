/* Forward and backward of the LLaMA stages, in pairs. One micro-batch of B sequences of T tokens
 * flows as N = B*T rows. What forward keeps for backward is exactly ol_block_acts (DESIGN §4):
 *  - RMSNorm keeps its input (the residual stream, which exists anyway) and 1/rms per token;
 *  - attention keeps q, k, v and the softmax log-sum-exp (O(T) per head) and recomputes the
 *    probabilities in backward, instead of keeping the O(T^2) probability matrix;
 *  - SwiGLU keeps its two inputs g and u;
 *  - frozen linears keep nothing; adapters keep what their own backward needs.
 * The LM head runs in token chunks with its backward fused in, so logits are never kept. */
#include <math.h>
#include <string.h>

#include "onelora/backend.h"
#include "onelora/model.h"

#define HEAD_CHUNK 256

void ol_acts_alloc(ol_acts *a, const ol_model *m, size_t B, size_t T) {
  memset(a, 0, sizeof *a);
  const ol_config *c = &m->cfg;
  const size_t D = (size_t)c->dim, F = (size_t)c->ffn_dim, L = m->stage.n_layers;
  const size_t H = (size_t)c->n_heads, kvD = (size_t)c->n_kv_heads * m->hd, V = (size_t)c->vocab_size;
  const size_t N = B * T;
  a->B = B, a->T = T, a->N = N, a->L = L;
  size_t kept = 0;
  a->xs = ol_calloc((L + 1) * N * D, sizeof(float));
  kept += (L + 1) * N * D;
  a->blocks = ol_calloc(L, sizeof *a->blocks);
  for (size_t l = 0; l < L; l++) {
    ol_block_acts *ba = &a->blocks[l];
    ba->rstd1 = ol_calloc(N, sizeof(float));
    ba->q = ol_calloc(N * D, sizeof(float));
    ba->k = ol_calloc(N * kvD, sizeof(float));
    ba->v = ol_calloc(N * kvD, sizeof(float));
    ba->lse = ol_calloc(B * H * T, sizeof(float));
    ba->x2 = ol_calloc(N * D, sizeof(float));
    ba->rstd2 = ol_calloc(N, sizeof(float));
    ba->g = ol_calloc(N * F, sizeof(float));
    ba->u = ol_calloc(N * F, sizeof(float));
    kept += 2 * N + N * D + 2 * N * kvD + B * H * T + N * D + 2 * N * F;
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      size_t s = ol_linear_saved_per_token(&m->blocks[l].lin[p]);
      ba->saved[p] = s ? ol_calloc(N * s, sizeof(float)) : NULL;
      kept += N * s;
    }
  }
  a->rstd_final = ol_calloc(N, sizeof(float));
  kept += N;
  a->head_chunk = N < HEAD_CHUNK ? N : HEAD_CHUNK;
  a->xn = ol_calloc(N * D, sizeof(float));
  a->att = ol_calloc(N * D, sizeof(float));
  a->h = ol_calloc(N * F, sizeof(float));
  a->dq = ol_calloc(N * D, sizeof(float));
  a->dk = ol_calloc(N * kvD, sizeof(float));
  a->dv = ol_calloc(N * kvD, sizeof(float));
  a->dres = ol_calloc(N * D, sizeof(float));
  a->logits = ol_calloc(a->head_chunk * V, sizeof(float));
  a->rope_cos = ol_calloc(T * m->hd / 2, sizeof(float));
  a->rope_sin = ol_calloc(T * m->hd / 2, sizeof(float));
  size_t scratch = ol_bk->attention_scratch_floats(T);
  a->attn_scratch = ol_calloc(scratch, sizeof(float));
  ol_bk->rope_table(a->rope_cos, a->rope_sin, T, m->hd, c->rope_theta);
  size_t work = 5 * N * D + N * F + 2 * N * kvD + a->head_chunk * V + T * m->hd + scratch;
  for (size_t l = 0; l < L && !a->lin_work; l++)  // one scratch for every rescaling adapter
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      for (int i = 0; i < m->blocks[l].lin[p].n_adapters; i++)
        if (m->blocks[l].lin[p].adapters[i].ops->rescale_forward && !a->lin_work) {
          a->lin_work = ol_calloc(N * (D > F ? D : F), sizeof(float));
          work += N * (D > F ? D : F);
        }
  a->bytes_kept = kept * sizeof(float);
  a->bytes_total = (kept + work) * sizeof(float);
}

void ol_acts_free(ol_acts *a) {
  for (size_t l = 0; a->blocks && l < a->L; l++) {
    ol_block_acts *ba = &a->blocks[l];
    ol_free(ba->rstd1), ol_free(ba->q), ol_free(ba->k), ol_free(ba->v), ol_free(ba->lse);
    ol_free(ba->x2), ol_free(ba->rstd2), ol_free(ba->g), ol_free(ba->u);
    for (int p = 0; p < OL_PROJ_COUNT; p++) ol_free(ba->saved[p]);
  }
  ol_free(a->blocks);
  ol_free(a->xs);
  ol_free(a->rstd_final);
  ol_free(a->xn), ol_free(a->att), ol_free(a->h);
  ol_free(a->dq), ol_free(a->dk), ol_free(a->dv), ol_free(a->dres);
  ol_free(a->logits), ol_free(a->rope_cos), ol_free(a->rope_sin), ol_free(a->attn_scratch);
  ol_free(a->lin_work);
  memset(a, 0, sizeof *a);
}

/* Points every linear at these activations' scratch (for rescaling adapters). */
static void set_linear_work(ol_model *m, ol_acts *a) {
  for (size_t l = 0; l < a->L; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++) m->blocks[l].lin[p].work = a->lin_work;
}

/* x (N, D) -> out (N, D) through block l; fills a->blocks[l]. */
static void block_forward(ol_model *m, ol_acts *a, size_t l, const float *x, float *out) {
  const ol_config *c = &m->cfg;
  ol_block *b = &m->blocks[l];
  ol_block_acts *ba = &a->blocks[l];
  const size_t N = a->N, D = (size_t)c->dim, F = (size_t)c->ffn_dim, hd = m->hd;
  const size_t H = (size_t)c->n_heads, Hkv = (size_t)c->n_kv_heads;
  const float eps = (float)c->norm_eps;

  ol_bk->rmsnorm_forward(a->xn, ba->rstd1, x, b->attn_norm.data, N, D, eps);
  ol_linear_forward(&b->lin[OL_Q], a->xn, ba->q, N, 0.0f, ba->saved[OL_Q]);
  ol_linear_forward(&b->lin[OL_K], a->xn, ba->k, N, 0.0f, ba->saved[OL_K]);
  ol_linear_forward(&b->lin[OL_V], a->xn, ba->v, N, 0.0f, ba->saved[OL_V]);
  ol_bk->rope_apply(ba->q, a->rope_cos, a->rope_sin, a->B, a->T, H, hd, 0);
  ol_bk->rope_apply(ba->k, a->rope_cos, a->rope_sin, a->B, a->T, Hkv, hd, 0);
  ol_bk->attention_forward(a->att, ba->lse, ba->q, ba->k, ba->v, a->B, a->T, H, Hkv, hd,
                           a->attn_scratch);
  memcpy(ba->x2, x, N * D * sizeof(float));  // x2 = x + o(att)
  ol_linear_forward(&b->lin[OL_O], a->att, ba->x2, N, 1.0f, ba->saved[OL_O]);

  ol_bk->rmsnorm_forward(a->xn, ba->rstd2, ba->x2, b->mlp_norm.data, N, D, eps);
  ol_linear_forward(&b->lin[OL_GATE], a->xn, ba->g, N, 0.0f, ba->saved[OL_GATE]);
  ol_linear_forward(&b->lin[OL_UP], a->xn, ba->u, N, 0.0f, ba->saved[OL_UP]);
  ol_bk->swiglu_forward(a->h, ba->g, ba->u, N * F);
  memcpy(out, ba->x2, N * D * sizeof(float));  // out = x2 + down(h)
  ol_linear_forward(&b->lin[OL_DOWN], a->h, out, N, 1.0f, ba->saved[OL_DOWN]);
}

/* a->dres (N, D) holds d(out) on entry and d(x) on exit; x (N, D) is the block input. */
static void block_backward(ol_model *m, ol_acts *a, size_t l, const float *x) {
  const ol_config *c = &m->cfg;
  ol_block *b = &m->blocks[l];
  ol_block_acts *ba = &a->blocks[l];
  const size_t N = a->N, D = (size_t)c->dim, F = (size_t)c->ffn_dim, hd = m->hd;
  const size_t H = (size_t)c->n_heads, Hkv = (size_t)c->n_kv_heads;
  float *dnorm1 = b->attn_norm.param >= 0 ? ol_params_grad(&m->params, (size_t)b->attn_norm.param) : NULL;
  float *dnorm2 = b->mlp_norm.param >= 0 ? ol_params_grad(&m->params, (size_t)b->mlp_norm.param) : NULL;

  // MLP: out = x2 + down(silu(gate(xn2)) * up(xn2))
  float *dh = a->h;                                   // (N, F)
  ol_linear_backward(&b->lin[OL_DOWN], a->dres, dh, N, 0.0f, ba->saved[OL_DOWN]);
  ol_bk->swiglu_backward(ba->g, ba->u, dh, ba->g, ba->u, N * F);  // in place: g, u -> dg, du
  float *dxn = a->xn;                                 // (N, D)
  ol_linear_backward(&b->lin[OL_GATE], ba->g, dxn, N, 0.0f, ba->saved[OL_GATE]);
  ol_linear_backward(&b->lin[OL_UP], ba->u, dxn, N, 1.0f, ba->saved[OL_UP]);
  ol_bk->rmsnorm_backward(a->dres, dnorm2, dxn, ba->x2, b->mlp_norm.data, ba->rstd2, N, D);

  // attention: x2 = x + o(attention(rope(q(xn1)), rope(k(xn1)), v(xn1)))
  float *datt = a->att;                               // (N, D)
  ol_linear_backward(&b->lin[OL_O], a->dres, datt, N, 0.0f, ba->saved[OL_O]);
  ol_bk->attention_backward(a->dq, a->dk, a->dv, datt, ba->q, ba->k, ba->v, ba->lse, a->B, a->T,
                            H, Hkv, hd, a->attn_scratch);
  ol_bk->rope_apply(a->dq, a->rope_cos, a->rope_sin, a->B, a->T, H, hd, 1);
  ol_bk->rope_apply(a->dk, a->rope_cos, a->rope_sin, a->B, a->T, Hkv, hd, 1);
  ol_linear_backward(&b->lin[OL_Q], a->dq, dxn, N, 0.0f, ba->saved[OL_Q]);
  ol_linear_backward(&b->lin[OL_K], a->dk, dxn, N, 1.0f, ba->saved[OL_K]);
  ol_linear_backward(&b->lin[OL_V], a->dv, dxn, N, 1.0f, ba->saved[OL_V]);
  ol_bk->rmsnorm_backward(a->dres, dnorm1, dxn, x, b->attn_norm.data, ba->rstd1, N, D);
}

double ol_model_forward(ol_model *m, ol_acts *a, const int32_t *tokens, const int32_t *targets,
                        float grad_scale) {
  const ol_config *c = &m->cfg;
  const size_t N = a->N, D = (size_t)c->dim, V = (size_t)c->vocab_size, L = m->stage.n_layers;
  float *xs = a->xs;  // (L+1, N, D): xs[0] is the stage input, xs[L] its output
  set_linear_work(m, a);
  if (m->stage.has_embed) ol_bk->embedding_forward(xs, tokens, m->embed.data, N, D);
  for (size_t l = 0; l < L; l++) block_forward(m, a, l, xs + l * N * D, xs + (l + 1) * N * D);
  if (!m->stage.has_head) return 0.0;  // a pipeline stage hands xs[L] on

  // final norm, then the LM head and the loss in chunks of tokens, backward fused in
  const float *xl = xs + L * N * D;   // (N, D)
  float *xn = a->xn;                  // (N, D) normed
  float *dxn = a->att;                // (N, D) its gradient
  ol_bk->rmsnorm_forward(xn, a->rstd_final, xl, m->final_norm.data, N, D, (float)c->norm_eps);
  float *dhead = m->lm_head.param >= 0 ? ol_params_grad(&m->params, (size_t)m->lm_head.param) : NULL;
  double loss = 0.0;
  for (size_t t0 = 0; t0 < N; t0 += a->head_chunk) {
    size_t n = N - t0 < a->head_chunk ? N - t0 : a->head_chunk;
    float *logits = a->logits;  // (n, V)
    ol_bk->gemm(0, 1, n, V, D, 1.0f, xn + t0 * D, D, m->lm_head.data, D, 0.0f, logits, V);
    loss += ol_bk->cross_entropy(logits, targets + t0, n, V, grad_scale);
    if (grad_scale == 0.0f) continue;
    ol_bk->gemm(0, 0, n, D, V, 1.0f, logits, V, m->lm_head.data, D, 0.0f, dxn + t0 * D, D);
    if (dhead) ol_bk->gemm(1, 0, V, D, n, 1.0f, logits, V, xn + t0 * D, D, 1.0f, dhead, D);
  }
  if (grad_scale != 0.0f) {
    float *dnorm = m->final_norm.param >= 0 ? ol_params_grad(&m->params, (size_t)m->final_norm.param) : NULL;
    memset(a->dres, 0, N * D * sizeof(float));
    ol_bk->rmsnorm_backward(a->dres, dnorm, dxn, xl, m->final_norm.data, a->rstd_final, N, D);
  }
  return loss;
}

void ol_model_backward(ol_model *m, ol_acts *a, const int32_t *tokens) {
  const size_t N = a->N, D = (size_t)m->cfg.dim, L = m->stage.n_layers;
  set_linear_work(m, a);
  for (size_t l = L; l-- > 0;) block_backward(m, a, l, a->xs + l * N * D);
  if (m->stage.has_embed && m->embed.param >= 0)
    ol_bk->embedding_backward(ol_params_grad(&m->params, (size_t)m->embed.param), tokens, a->dres,
                              N, D);
}
