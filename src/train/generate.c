/* onelora generate's driver: the frozen model with a checkpoint's adapters applied unmerged
 * (exactly as training runs them), a prefill of the prompt, then one token per step.
 *
 * Every rank of a TP x PP layout (DP = 1) runs its stage of each step: the first stage embeds
 * the step's tokens, each stage hands its (n, D) output to the next (ol_pp_send_next), and the
 * last stage's TP ranks gather the vocab-parallel logits of the last position (gather_from_tp),
 * so each holds the whole vocabulary's and samples the same token with the same uniform draw;
 * the token is then broadcast to every rank. Each rank draws one uniform per step from the
 * seeded stream whether it samples or not, so the streams stay aligned and a seed gives the same
 * tokens on every layout (up to the rounding of the reordered TP sums at a near-tie).
 *
 * With the KV cache (the default) a step runs only its new tokens through the blocks: the
 * prefill keeps every layer's K (after RoPE) and V of the prompt, and each decode step attends
 * its one query over them and appends its own. --no-cache recomputes the whole sequence every
 * step instead, which is what the cache is tested against. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/io/checkpoint.h"
#include "onelora/model/acts.h"
#include "onelora/parallel/pipeline.h"
#include "onelora/parallel/tp.h"
#include "onelora/peft/adapter.h"
#include "onelora/train/generate.h"
#include "onelora/train/state.h"

/* The checkpoint's method (or none without one) and the model: built for this rank's stage, the
 * frozen weights loaded, then the trainable values and the generated frozen tensors. */
static int load_model(const ol_generate_opts *o, ol_model *m, ol_config *cfg) {
  ol_grid *g = o->grid;
  ol_ckpt *c = NULL;
  ol_ckpt_meta meta;
  ol_weights *mf = NULL;
  ol_method method;
  uint64_t seed = 0;
  char what[4200];
  int rc = OL_OK;
  if (o->ckpt_path) {
    rc = ol_ckpt_open(o->ckpt_path, &c, &meta);
    if (rc == OL_OK)
      rc = ol_method_parse(meta.method, meta.targets, meta.rank,
                           (double)meta.alpha_x1000 / 1000.0, &method);
    seed = meta.seed;
  } else {
    rc = ol_method_parse("none", "all", 1, 1.0, &method);
  }
  if (rc == OL_OK) rc = ol_weights_open(o->model_path, &mf, cfg);
  if (rc == OL_OK && c) {
    snprintf(what, sizeof what, "checkpoint %s", o->ckpt_path);
    rc = ol_config_match(&meta.cfg, cfg, what);
  }
  if (rc == OL_OK && c) {  // a corrupt rank must not size the model
    const int64_t widest = cfg->dim > cfg->ffn_dim ? cfg->dim : cfg->ffn_dim;
    if (method.rank > widest)
      rc = ol_error("%s: rank %lld is more than the model's widest layer (%lld): the file is "
                    "corrupt", o->ckpt_path, (long long)method.rank, (long long)widest);
  }
  if (rc == OL_OK && cfg->n_layers < g->pp)
    rc = ol_error("--pp %d: the model has only %lld layers, fewer than the pipeline stages",
                  g->pp, (long long)cfg->n_layers);
  if (rc == OL_OK) rc = ol_method_check(&method, g->tp, o->weights_dtype);
  if (rc == OL_OK) {
    ol_stage stage = ol_pipeline_stage(cfg, g->pp, g->pp_rank);
    stage.tp = g->tp, stage.tp_rank = g->tp_rank;
    stage.weights_dtype = o->weights_dtype;
    // a device cannot map the file: its weights are read and copied to it
    rc = ol_model_build_mapped(m, cfg, &method, seed, &stage, ol_bk->host_visible ? mf : NULL);
    if (rc == OL_OK) ol_model_bind_tp(m, ol_grid_tp(g));
  }
  if (rc == OL_OK) rc = ol_model_load(m, mf);
  if (rc == OL_OK) {
    ol_model_init_adapters(m, seed);  // then overwritten by the checkpoint's values
    if (c) rc = ol_state_load(&m->params, &m->generated, c, 0);
  }
  ol_weights_close(mf);
  if (c) ol_ckpt_close(c);
  return rc;
}

/* The prompt as ids into ids (n_prompt + n_tokens), checked against the model. */
static int prompt_ids(const ol_generate_opts *o, const ol_config *cfg, int32_t *ids,
                      size_t n_prompt) {
  if (o->prompt_text) {
    if (cfg->vocab_size != 256)
      return ol_error("--prompt: text needs a byte-level model (vocab_size 256, as onelora "
                      "tokenize writes); %s has vocab_size %lld: give the ids with --prompt-ids",
                      o->model_path, (long long)cfg->vocab_size);
    for (size_t i = 0; i < n_prompt; i++) ids[i] = (int32_t)(unsigned char)o->prompt_text[i];
    return OL_OK;
  }
  for (size_t i = 0; i < n_prompt; i++) {
    if (o->prompt_ids[i] < 0 || o->prompt_ids[i] >= cfg->vocab_size)
      return ol_error("--prompt-ids: id %ld (position %zu) is outside the vocabulary [0, %lld) "
                      "of %s", (long)o->prompt_ids[i], i, (long long)cfg->vocab_size,
                      o->model_path);
    ids[i] = o->prompt_ids[i];
  }
  return OL_OK;
}

static int cmp_float_desc(const void *a, const void *b) {
  const float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

/* --print-scores: how the sampler chose `token` from logits (V, host memory), in out (3):
 *   [0] log p(token) under the distribution drawn from: softmax(logits / T) over the ids the
 *       sampler keeps (logit >= the top_k-th largest); greedy (T = 0): softmax(logits), all ids;
 *   [1] the margin of the choice: greedy, the largest minus the second-largest logit; sampled,
 *       min(acc_token - r, r - acc_before) / total, the distance in probability of the draw
 *       r = u * total from the bounds of the token's interval of the cumulative sum (the sum in
 *       id order over the kept ids, exactly as cpu_sample forms it);
 *   [2] sampled with 0 < top_k < V: the top_k-th minus the (top_k + 1)-th largest logit (how
 *       near the kept set was to another); otherwise infinity.
 * sorted: V floats of scratch. */
static void score_token(const float *logits, size_t V, float temperature, size_t top_k,
                        double u, int64_t token, float *sorted, double *out) {
  memcpy(sorted, logits, V * sizeof(float));
  qsort(sorted, V, sizeof(float), cmp_float_desc);
  const double mx = sorted[0];
  const int greedy = temperature == 0.0f;
  const int has_top_k = !greedy && top_k > 0 && top_k < V;
  const float threshold = has_top_k ? sorted[top_k - 1] : -INFINITY;
  const double inv_t = greedy ? 1.0 : 1.0 / (double)temperature;
  double total = 0.0, before = 0.0;
  for (size_t i = 0; i < V; i++) {
    if (logits[i] < threshold) continue;
    if ((int64_t)i == token) before = total;
    total += exp(((double)logits[i] - mx) * inv_t);
  }
  const double p_token = exp(((double)logits[token] - mx) * inv_t);
  out[0] = ((double)logits[token] - mx) * inv_t - log(total);
  if (greedy) {
    out[1] = V > 1 ? (double)sorted[0] - (double)sorted[1] : INFINITY;
  } else {
    const double r = u * total;
    out[1] = fmin(before + p_token - r, r - before) / total;
  }
  out[2] = has_top_k ? (double)sorted[top_k - 1] - (double)sorted[top_k] : INFINITY;
}

/* One step's forward on this stage over the n tokens toks (n) at positions cache->len .. (or
 * 0 .. n-1 without a cache), its activations a (B = 1, T = n); on the last stage the whole
 * vocabulary's logits (V) of the last position, and the sampled token, on every rank. With
 * score (3) non-NULL, the token's score_token on every rank too. toks are host ids; the first
 * stage copies them into toks_bk (a backend buffer of at least n); host (2V) is the scores'. */
static int32_t step(ol_grid *g, ol_model *m, ol_acts *a, ol_kv_cache *cache,
                    const int32_t *toks, size_t n, const ol_generate_opts *o, int32_t *toks_bk,
                    float *local, float *logits, float *scratch, float *host, double u,
                    double *score) {
  const size_t D = (size_t)m->cfg.dim, L = m->stage.n_layers, V = (size_t)m->cfg.vocab_size;
  if (!m->stage.has_embed) ol_pp_recv_prev(g, a->xs, n * D);  // (n, D) the previous stage's
  else ol_bk->to_device(toks_bk, toks, n * sizeof(int32_t));  // the kernels read backend buffers
  ol_model_forward_cached(m, a, cache, toks_bk, local);
  if (!m->stage.has_head) ol_pp_send_next(g, a->xs + L * n * D, n * D);
  int64_t token = 0;
  if (m->stage.has_head) {
    const float *all = local;  // (V): one rank's logits are the whole vocabulary's
    if (m->tp) {
      ol_gather_from_tp_forward(m->tp, local, m->Vl, logits);  // (V/TP) -> (V)
      all = logits;
    }
    token = ol_bk->sample(all, V, (float)o->temperature, (size_t)o->top_k, u, scratch);
    if (score) {  // on a host copy of the logits
      ol_bk->to_host(host, all, V * sizeof(float));
      score_token(host, V, (float)o->temperature, (size_t)o->top_k, u, token, host + V, score);
    }
  }
  // the last stage's TP rank 0 (DP = 1: world rank (pp - 1) * tp) tells every rank
  ol_grid_bcast_i64(g, &token, 1, (g->pp - 1) * g->tp);
  if (score) ol_grid_bcast_f64(g, score, 3, (g->pp - 1) * g->tp);
  return (int32_t)token;
}

/* A uniform double in [0, 1) from the RNG's next 53 bits. */
static double uniform53(ol_rng *r) { return (double)(ol_rng_u64(r) >> 11) * 0x1p-53; }

int ol_generate_run(const ol_generate_opts *o, int32_t **ids_out, size_t *n_ids,
                    double **scores_out, ol_config *cfg) {
  ol_grid *g = o->grid;
  *ids_out = NULL, *n_ids = 0;
  if (scores_out) *scores_out = NULL;
  int rc = ol_grid_layout(g, o->tp, o->pp);
  if (rc == OL_OK && g->dp != 1)
    rc = ol_error("onelora generate runs on --tp x --pp ranks, without data parallelism: --tp %d "
                  "x --pp %d = %d ranks, but the job has %d (run it with mpirun -np %d)", o->tp,
                  o->pp, o->tp * o->pp, g->world_size, o->tp * o->pp);
  if (rc == OL_OK && o->n_tokens <= 0)
    rc = ol_error("--tokens %lld: expected a positive number of tokens to generate",
                  (long long)o->n_tokens);
  if (rc == OL_OK && o->n_prompt == 0) rc = ol_error("--prompt: the prompt is empty");
  if (rc == OL_OK && !(o->temperature >= 0.0))
    rc = ol_error("--temperature %g: expected 0 (greedy) or more", o->temperature);
  if (rc == OL_OK && o->top_k < 0)
    rc = ol_error("--top-k %lld: expected 0 (all) or more", (long long)o->top_k);
  rc = ol_grid_agree(g, rc);
  if (rc != OL_OK) return rc;

  ol_model m = {0};
  rc = load_model(o, &m, cfg);
  const size_t n_prompt = o->n_prompt;
  if (rc == OL_OK && (o->n_tokens > cfg->max_seq_len ||
                      (int64_t)n_prompt > cfg->max_seq_len - o->n_tokens))
    rc = ol_error("the prompt's %zu tokens and --tokens %lld exceed max_seq_len %lld of %s: "
                  "the prompt may hold at most %lld tokens", n_prompt, (long long)o->n_tokens,
                  (long long)cfg->max_seq_len, o->model_path,
                  (long long)(cfg->max_seq_len > o->n_tokens ? cfg->max_seq_len - o->n_tokens
                                                             : 0));
  const size_t total = rc == OL_OK ? n_prompt + (size_t)o->n_tokens : 0;
  int32_t *ids = rc == OL_OK ? ol_calloc(total, sizeof(int32_t)) : NULL;  // (total)
  if (rc == OL_OK) rc = prompt_ids(o, cfg, ids, n_prompt);
  rc = ol_grid_agree(g, rc);
  if (rc != OL_OK) {
    ol_free(ids);
    ol_model_free(&m);
    return rc;
  }

  if (g->world_rank == 0)
    fprintf(stderr, "onelora generate: model %s (D=%lld L=%lld V=%lld) | method %s%s%s | "
            "layout tp %d pp %d\n", o->model_path, (long long)cfg->dim,
            (long long)cfg->n_layers, (long long)cfg->vocab_size, m.method.text,
            o->ckpt_path ? " from " : "", o->ckpt_path ? o->ckpt_path : "", g->tp, g->pp);
  const size_t V = (size_t)cfg->vocab_size;
  float *local = ol_bk->alloc(m.Vl * sizeof(float));   // (V/TP) this rank's logits
  float *logits = ol_bk->alloc(V * sizeof(float));     // (V) the whole vocabulary's
  float *scratch = ol_bk->alloc(V * sizeof(float));    // (V) the sampler's
  int32_t *toks_bk = ol_bk->alloc(total * sizeof(int32_t));  // (total) a step's tokens
  float *host = scores_out ? ol_calloc(2 * V, sizeof(float)) : NULL;  // (2, V) the scores'
  // (n_tokens, 3) each new token's score_token, with --print-scores
  double *scores = scores_out ? ol_calloc((size_t)o->n_tokens * 3, sizeof(double)) : NULL;
  ol_rng rng;
  ol_rng_seed(&rng, o->seed);
  const double t_start = ol_now();
  if (o->no_cache) {
    for (size_t t = n_prompt; t < total; t++) {  // the whole sequence 0 .. t-1, every step
      ol_acts a;
      ol_acts_alloc(&a, &m, 1, t, 0);
      ids[t] = step(g, &m, &a, NULL, ids, t, o, toks_bk, local, logits, scratch, host,
                    uniform53(&rng), scores ? scores + (t - n_prompt) * 3 : NULL);
      ol_acts_free(&a);
    }
  } else {
    ol_kv_cache cache;
    ol_kv_cache_alloc(&cache, &m, total);
    ol_acts prefill, one;
    ol_acts_alloc(&prefill, &m, 1, n_prompt, 0);
    ids[n_prompt] = step(g, &m, &prefill, &cache, ids, n_prompt, o, toks_bk, local, logits,
                         scratch, host, uniform53(&rng), scores);
    ol_acts_free(&prefill);
    ol_acts_alloc(&one, &m, 1, 1, 0);
    for (size_t t = n_prompt + 1; t < total; t++)  // token t-1 at position t-1
      ids[t] = step(g, &m, &one, &cache, ids + t - 1, 1, o, toks_bk, local, logits, scratch,
                    host, uniform53(&rng), scores ? scores + (t - n_prompt) * 3 : NULL);
    ol_acts_free(&one);
    ol_kv_cache_free(&cache);
  }
  const double seconds = ol_now() - t_start;
  if (g->world_rank == 0)
    fprintf(stderr, "onelora generate: %zu prompt + %lld new tokens in %.3f s (%.1f tokens/s, %s)\n",
            n_prompt, (long long)o->n_tokens, seconds, (double)o->n_tokens / (seconds + 1e-12),
            o->no_cache ? "no cache: the whole sequence every step" : "KV cache");
  ol_bk->free(local);
  ol_bk->free(logits);
  ol_bk->free(scratch);
  ol_bk->free(toks_bk);
  ol_free(host);
  ol_model_free(&m);
  *ids_out = ids, *n_ids = total;
  if (scores_out) *scores_out = scores;
  return OL_OK;
}
