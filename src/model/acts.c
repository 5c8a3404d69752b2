/* The activations of one micro-batch, laid out as llm.c does (fill_in_activation_sizes,
 * malloc_and_point_activations): one table of named buffers filled once from the model's
 * shapes, then ONE backend allocation of their total, carved into the named pointers. The
 * planner reads the same table without allocating, so what it predicts is what the trainer
 * allocates, and the kept / logits / workspace byte counts are sums over the table.
 *
 * What forward keeps for backward is exactly ol_block_acts (DESIGN §4; see forward.c). With
 * --recompute only the block inputs xs and the final norm's 1/rms are kept: every layer writes
 * one shared block slot, sized for the largest layer, which then counts as workspace. */
#include <string.h>

#include "onelora/backend/backend.h"
#include "onelora/model/acts.h"

#define HEAD_CHUNK 256
#define ALIGN ((size_t)64)  /* every buffer starts on a cache line, as ol_calloc gave each before */

/* Under AddressSanitizer every buffer is followed by a poisoned gap, from its last byte to the
 * next buffer, so an overrun from one named buffer into the next is reported as it was when each
 * had its own allocation. Elsewhere the buffers are packed. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define REDZONE ALIGN
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define REDZONE ((size_t)0)
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static const char *const saved_names[OL_PROJ_COUNT] = {
    "saved.q", "saved.k", "saved.v", "saved.o", "saved.gate", "saved.up", "saved.down"};

/* Appends count values of `size` bytes to the table; exactly one of f, d is the pointer to set. */
static void add(ol_acts *a, const char *name, int slot, ol_act_kind kind, size_t count,
                size_t size, float **f, double **d) {
  OL_CHECK(a->n_table < a->cap_table);
  OL_CHECK(count <= (SIZE_MAX - ALIGN) / size);
  ol_act_entry *e = &a->table[a->n_table++];
  e->name = name, e->slot = slot, e->kind = kind;
  e->count = count, e->size = size;
  e->bytes = (count * size + ALIGN - 1) & ~(ALIGN - 1);
  e->f = f, e->d = d;
}

static void add_f(ol_acts *a, const char *name, int slot, ol_act_kind kind, size_t count,
                  float **p) {
  add(a, name, slot, kind, count, sizeof(float), p, NULL);
}

/* Fills a's shapes and its table for a micro-batch of B sequences of T tokens on m's stage
 * (nothing that a kernel touches is allocated: the table and the block structs are host
 * bookkeeping), and sums the table's bytes by kind. */
static void acts_table(ol_acts *a, const ol_model *m, size_t B, size_t T, int recompute) {
  memset(a, 0, sizeof *a);
  const ol_config *c = &m->cfg;
  // this rank's heads, ffn rows and vocabulary rows (all of them without TP)
  const size_t tp = (size_t)m->stage.tp;
  const size_t D = (size_t)c->dim, F = (size_t)c->ffn_dim / tp, L = m->stage.n_layers;
  const size_t H = (size_t)c->n_heads / tp, kvD = (size_t)c->n_kv_heads / tp * m->hd, V = m->Vl;
  const size_t qD = H * m->hd, N = B * T;
  a->B = B, a->T = T, a->N = N, a->L = L;
  a->recompute = recompute != 0;
  a->n_blocks = a->recompute ? 1 : L;
  a->head_chunk = N < HEAD_CHUNK ? N : HEAD_CHUNK;
  a->blocks = ol_calloc(a->n_blocks, sizeof *a->blocks);
  a->cap_table = 32 + a->n_blocks * (9 + OL_PROJ_COUNT);
  a->table = ol_calloc(a->cap_table, sizeof *a->table);

  add_f(a, "xs", -1, OL_ACT_KEPT, (L + 1) * N * D, &a->xs);  // (L+1, N, D)
  // the shared slot is rewritten by every block: workspace
  const ol_act_kind block = a->recompute ? OL_ACT_WORK : OL_ACT_KEPT;
  for (size_t i = 0; i < a->n_blocks; i++) {
    ol_block_acts *ba = &a->blocks[i];
    const int s = (int)i;
    add_f(a, "rstd1", s, block, N, &ba->rstd1);      // (N)
    add_f(a, "q", s, block, N * qD, &ba->q);         // (N, H/TP*hd)
    add_f(a, "k", s, block, N * kvD, &ba->k);        // (N, Hkv/TP*hd)
    add_f(a, "v", s, block, N * kvD, &ba->v);        // (N, Hkv/TP*hd)
    add_f(a, "lse", s, block, B * H * T, &ba->lse);  // (B, H/TP, T)
    add_f(a, "x2", s, block, N * D, &ba->x2);        // (N, D)
    add_f(a, "rstd2", s, block, N, &ba->rstd2);      // (N)
    add_f(a, "g", s, block, N * F, &ba->g);          // (N, F/TP)
    add_f(a, "u", s, block, N * F, &ba->u);          // (N, F/TP)
    for (int p = 0; p < OL_PROJ_COUNT; p++) {
      // floats per token of layer i's linear p; the shared slot: the most of any layer's
      const size_t l0 = a->recompute ? 0 : i, l1 = a->recompute ? L : i + 1;
      size_t per = 0;
      for (size_t l = l0; l < l1; l++)
        per = max_size(per, ol_linear_saved_per_token(&m->blocks[l].lin[p]));
      if (per) add_f(a, saved_names[p], s, block, N * per, &ba->saved[p]);  // (N, per); else NULL
    }
  }
  add_f(a, "rstd_final", -1, OL_ACT_KEPT, N, &a->rstd_final);  // (N)

  // transient workspace, reused by every block
  add_f(a, "xn", -1, OL_ACT_WORK, N * D, &a->xn);        // (N, D)
  add_f(a, "att", -1, OL_ACT_WORK, N * D, &a->att);      // (N, D)
  add_f(a, "h", -1, OL_ACT_WORK, N * F, &a->h);          // (N, F/TP)
  add_f(a, "dq", -1, OL_ACT_WORK, N * qD, &a->dq);       // (N, H/TP*hd)
  add_f(a, "dk", -1, OL_ACT_WORK, N * kvD, &a->dk);      // (N, Hkv/TP*hd)
  add_f(a, "dv", -1, OL_ACT_WORK, N * kvD, &a->dv);      // (N, Hkv/TP*hd)
  add_f(a, "dres", -1, OL_ACT_WORK, N * D, &a->dres);    // (N, D)
  add_f(a, "logits", -1, OL_ACT_LOGITS, a->head_chunk * V, &a->logits);  // (head_chunk, V/TP)
  add_f(a, "ce_mx", -1, OL_ACT_WORK, a->head_chunk, &a->ce_mx);          // (head_chunk)
  add_f(a, "ce_zt", -1, OL_ACT_WORK, a->head_chunk, &a->ce_zt);          // (head_chunk)
  add(a, "ce_sum", -1, OL_ACT_WORK, a->head_chunk, sizeof(double), NULL, &a->ce_sum);
  add_f(a, "rope_cos", -1, OL_ACT_WORK, T * m->hd / 2, &a->rope_cos);    // (T, hd/2)
  add_f(a, "rope_sin", -1, OL_ACT_WORK, T * m->hd / 2, &a->rope_sin);    // (T, hd/2)
  add_f(a, "attn_scratch", -1, OL_ACT_WORK, ol_bk->attention_scratch_floats(T), &a->attn_scratch);
  int rescaler = 0;  // one scratch for every rescaling adapter
  for (size_t l = 0; l < L; l++)
    for (int p = 0; p < OL_PROJ_COUNT; p++)
      for (int i = 0; i < m->blocks[l].lin[p].n_adapters; i++)
        rescaler |= m->blocks[l].lin[p].adapters[i].ops->rescale_forward != NULL;
  if (rescaler)  // (N, max out)
    add_f(a, "lin_work", -1, OL_ACT_WORK, N * max_size(D, F), &a->lin_work);
  int any_half = 0;  // frozen matrices kept at 2 bytes, owned or mapped
  for (size_t i = 0; i < m->n_tensors; i++)
    any_half |= m->tensors[i]->ndim == 2 && m->tensors[i]->param < 0 &&
                m->stage.weights_dtype != OL_DTYPE_F32;
  if (any_half) {  // f32 tiles of the 2-byte weights: the largest any GEMM with them needs
    size_t wide = max_size(ol_bk->gemm_half_scratch_floats(V, D),   // the LM head, forward
                           ol_bk->gemm_half_scratch_floats(D, V));  // and backward
    for (size_t l = 0; l < L; l++)
      for (int p = 0; p < OL_PROJ_COUNT; p++) {
        const ol_linear *lin = &m->blocks[l].lin[p];
        wide = max_size(wide, ol_bk->gemm_half_scratch_floats(lin->out, lin->in));
        wide = max_size(wide, ol_bk->gemm_half_scratch_floats(lin->in, lin->out));
      }
    add_f(a, "wide", -1, OL_ACT_WORK, wide, &a->wide);
  }

  for (size_t i = 0; i < a->n_table; i++) {  // offsets in table order, and the sums by kind
    ol_act_entry *e = &a->table[i];
    e->offset = a->bytes_total;
    OL_CHECK(e->bytes <= SIZE_MAX - REDZONE - a->bytes_total);
    a->bytes_total += e->bytes + REDZONE;
    if (e->kind == OL_ACT_KEPT) a->bytes_kept += e->bytes;
    if (e->kind == OL_ACT_LOGITS) a->bytes_logits += e->bytes;
  }
}

void ol_acts_alloc(ol_acts *a, const ol_model *m, size_t B, size_t T, int recompute) {
  acts_table(a, m, B, T, recompute);
  a->memory = ol_bk->alloc(a->bytes_total);  // zeroed, 64-byte aligned
  char *base = a->memory;
  for (size_t i = 0; i < a->n_table; i++) {
    const ol_act_entry *e = &a->table[i];
    if (e->f) *e->f = (float *)(void *)(base + e->offset);
    else *e->d = (double *)(void *)(base + e->offset);
    const size_t used = e->count * e->size;  // poison up to the next buffer (sanitizer builds)
    POISON(base + e->offset + used, e->bytes + REDZONE - used);
  }
  ol_bk->rope_table(a->rope_cos, a->rope_sin, T, m->hd, m->cfg.rope_theta);
}

void ol_acts_plan(const ol_model *m, size_t B, size_t T, int recompute, ol_acts_sizes *out) {
  ol_acts a;
  acts_table(&a, m, B, T, recompute);
  out->kept_bytes = a.bytes_kept;
  out->logits_bytes = a.bytes_logits;
  out->total_bytes = a.bytes_total;
  out->head_chunk = a.head_chunk;
  out->backend_scratch_bytes = 0;
  for (size_t i = 0; i < a.n_table; i++)
    if (strcmp(a.table[i].name, "attn_scratch") == 0 || strcmp(a.table[i].name, "wide") == 0)
      out->backend_scratch_bytes += a.table[i].bytes + REDZONE;
  ol_free(a.table);
  ol_free(a.blocks);
}

void ol_acts_free(ol_acts *a) {
  UNPOISON(a->memory, a->bytes_total);
  if (a->memory) ol_bk->free(a->memory);
  ol_free(a->table);
  ol_free(a->blocks);
  memset(a, 0, sizeof *a);
}

ol_block_acts *ol_acts_block(ol_acts *a, size_t l) { return &a->blocks[a->recompute ? 0 : l]; }
