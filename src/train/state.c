/* Moving the trainable state between the ranks' flat buffers and checkpoint files (DESIGN §6).
 *
 * Writing is collective: every rank lays out the whole model at the run's TP degree (the
 * "plan": every tensor's full logical shape and its shard's extent, in one order all ranks
 * share) and makes the same create/write calls for every tensor; the one rank that holds a
 * tensor's slice for the file (replica 0, its stage, its TP shard or TP rank 0 for a replicated
 * tensor) writes it, the others write nothing. Chunks are the shards, so no two ranks write
 * one chunk. Reading is per rank: each reads its own slices of the full tensors, whatever
 * layout wrote them, which is what makes a resume under another layout work. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef ONELORA_TEST_HOOKS
#include <unistd.h>
#endif

#include "onelora/backend/backend.h"
#include "onelora/io/files.h"
#include "onelora/train/state.h"

static const ol_ckpt_group state_groups[3] = {OL_GROUP_PARAMS, OL_GROUP_ADAM_M, OL_GROUP_ADAM_V};

static float *state_buffer(const ol_params *p, int g) { return g == 0 ? p->data : g == 1 ? p->m : p->v; }

static size_t numel_of(int ndim, const size_t *shape) {
  return ndim == 2 ? shape[0] * shape[1] : shape[0];
}

/* The trainable state's values and moments in host memory, for the checkpoint file: p's own
 * buffers on a host-visible backend, else a copy in *host_copy (ol_free it; NULL when none) with
 * `to_host` the device's values copied in. A device's state reaches the host only here. */
static ol_params host_state(const ol_params *p, int to_host, float **host_copy) {
  ol_params h = *p;
  *host_copy = NULL;
  if (ol_bk->host_visible) return h;
  *host_copy = ol_calloc(3 * p->total + 1, sizeof(float));  // (3, total) values, m, v
  h.data = *host_copy, h.m = h.data + p->total, h.v = h.m + p->total, h.grad = NULL;
  for (int k = 0; to_host && k < 3; k++)
    ol_bk->to_host(state_buffer(&h, k), state_buffer(p, k), p->total * sizeof(float));
  return h;
}

/* A generated frozen tensor's values in host memory: e->data itself, or a copy in *host_copy. */
static float *host_tensor(const ol_frozen_entry *e, int to_host, float **host_copy) {
  *host_copy = NULL;
  if (ol_bk->host_visible) return e->data;
  const size_t n = numel_of(e->ndim, e->shape);
  *host_copy = ol_calloc(n + 1, sizeof(float));  // (the tensor's shape)
  if (to_host) ol_bk->to_host(*host_copy, e->data, n * sizeof(float));
  return *host_copy;
}

/* The whole model's layout at this TP degree, shard 0: full shapes and shard extents. */
static int plan_layout(ol_model *plan, const ol_model *m, uint64_t seed) {
  ol_stage all = {0, (size_t)m->cfg.n_layers, 1, 1, m->stage.tp ? m->stage.tp : 1, 0, OL_DTYPE_F32};
  return ol_model_layout_stage(plan, &m->cfg, &m->method, seed, &all);
}

#ifdef ONELORA_TEST_HOOKS
/* Test hook, compiled only with -DONELORA_TEST_HOOKS=ON (the builds of tests/run.sh), so that
 * no production binary sleeps on an environment variable: ONELORA_TEST_CKPT_PAUSE=STEP pauses
 * every rank for 60 s in the middle of the write of checkpoint STEP, so that
 * tests/mpi/resume.py --in-write-only can kill a rank inside a checkpoint write. */
static void test_pause(int64_t step, int world_rank) {
  const char *s = getenv("ONELORA_TEST_CKPT_PAUSE");
  if (!s || strtoll(s, NULL, 10) != step) return;
  if (world_rank == 0) {
    fprintf(stderr, "onelora: test hook: pausing inside the write of checkpoint step %lld\n",
            (long long)step);
    fflush(stderr);
  }
  sleep(60);
}
#else
static void test_pause(int64_t step, int world_rank) { (void)step, (void)world_rank; }
#endif

/* Writes every tensor of the plan: this rank's slices where it is the writer, nothing else.
 * The ranks agree after every tensor, so that one rank's failure (a full disk) stops them all
 * at the same call instead of leaving the others in a collective. */
static int write_all(ol_ckpt *c, const ol_model *plan, const ol_model *m, ol_grid *g,
                     int64_t step) {
  static const size_t none[2] = {0, 0};
  float *host_copy;
  const ol_params host = host_state(&m->params, 1, &host_copy), *mine = &host;
  int rc = OL_OK;
  for (int k = 0; rc == OL_OK && k < 3; k++) {
    size_t j = 0;  // the next of this rank's entries: they appear in plan order
    for (size_t i = 0; rc == OL_OK && i < plan->params.count; i++) {
      const ol_param_entry *e = &plan->params.entries[i];
      const ol_param_entry *own = j < mine->count && strcmp(mine->entries[j].name, e->name) == 0
                                      ? &mine->entries[j++] : NULL;
      int writer = own && g->dp_rank == 0 && (ol_param_sharded(own) || g->tp_rank == 0);
      rc = ol_grid_agree(g, ol_ckpt_write_slice(
                                c, state_groups[k], e->name, e->ndim, e->shape, e->count,
                                writer ? own->start : none, writer ? own->count : none,
                                writer ? state_buffer(mine, k) + own->offset : NULL));
    }
    OL_CHECK(rc != OL_OK || j == mine->count);  // every entry of this rank is in the plan
    if (k == 0) test_pause(step, g->world_rank);
  }
  ol_free(host_copy);
  OL_TRY(rc);
  // generated frozen tensors are whole on every TP rank; a per-layer one lives on one stage,
  // a shared one (VeRA's A and B) on every stage, and is written by the first
  for (size_t i = 0; i < plan->generated.count; i++) {
    const ol_frozen_entry *e = &plan->generated.entries[i];
    const ol_frozen_entry *own = ol_frozen_find(&m->generated, e->name);
    int shared = strncmp(e->name, "model.layers.", 13) != 0;
    int writer = own && g->dp_rank == 0 && g->tp_rank == 0 && (!shared || g->pp_rank == 0);
    float *values = writer ? host_tensor(own, 1, &host_copy) : (host_copy = NULL);
    rc = ol_ckpt_write_slice(c, OL_GROUP_FROZEN, e->name, e->ndim, e->shape, NULL, none,
                             writer ? e->shape : none, values);
    ol_free(host_copy);
    OL_TRY(ol_grid_agree(g, rc));
  }
  return OL_OK;
}

/* Tensor i of the plan's group k: 0-2 the trainable table (params, adam_m, adam_v), 3 the
 * generated frozen tensors; at full logical shape. */
typedef struct {
  const char *name;
  int ndim;
  const size_t *shape;
} plan_tensor;

static size_t plan_count(const ol_model *plan, int k) {
  return k < 3 ? plan->params.count : plan->generated.count;
}

static plan_tensor plan_get(const ol_model *plan, int k, size_t i) {
  if (k < 3) {
    const ol_param_entry *e = &plan->params.entries[i];
    return (plan_tensor){e->name, e->ndim, e->shape};
  }
  const ol_frozen_entry *e = &plan->generated.entries[i];
  return (plan_tensor){e->name, e->ndim, e->shape};
}

/* Disk bytes a checkpoint of the plan needs at most: its floats, plus HDF5's object header,
 * chunk index and name for each dataset (measured: ~3 KiB each), plus the root's attributes. */
static size_t checkpoint_bytes(const ol_model *plan) {
  size_t bytes = (size_t)256 << 10;
  for (int k = 0; k < 4; k++)
    for (size_t i = 0; i < plan_count(plan, k); i++) {
      plan_tensor t = plan_get(plan, k, i);
      bytes += numel_of(t.ndim, t.shape) * sizeof(float) + 8192;
    }
  return bytes;
}

int ol_state_save(ol_grid *g, const ol_model *m, const ol_ckpt_meta *meta,
                       const char *path) {
  ol_model plan = {0};
  int rc = plan_layout(&plan, m, meta->seed);
  ol_ckpt *c = NULL;
  if (rc == OL_OK) rc = ol_ckpt_create(path, meta, ol_grid_io_comm(g), &c);
  rc = ol_grid_agree(g, rc);
  const size_t bytes = checkpoint_bytes(&plan);
  if (rc == OL_OK) rc = ol_grid_agree(g, ol_ckpt_check_size_limit(path, bytes));
  if (rc == OL_OK) rc = ol_grid_agree(g, g->world_rank == 0 ? ol_ckpt_reserve(path, bytes) : OL_OK);
  if (rc == OL_OK) {
    char first[1024] = "";  // the write's error outlives the close's
    if (write_all(c, &plan, m, g, meta->step) != OL_OK) ol_strlcpy(first, ol_last_error(), sizeof first);
    rc = ol_grid_agree(g, ol_ckpt_close_written(c));
    if (first[0]) rc = ol_error("%s", first);
  } else if (c) {
    ol_ckpt_close(c);
  }
  if (rc == OL_OK && g->world_rank == 0) rc = ol_ckpt_commit(path);
  if (rc != OL_OK && g->world_rank == 0) ol_ckpt_discard(path);
  ol_model_free(&plan);
  return ol_grid_agree(g, rc);
}

int ol_state_load(ol_params *p, ol_frozen *gen, ol_ckpt *c, int moments) {
  float *host_copy;
  ol_params host = host_state(p, 0, &host_copy);  // read on the host, then to the device
  int rc = OL_OK;
  for (int k = 0; rc == OL_OK && k < (moments ? 3 : 1); k++) {
    for (size_t i = 0; rc == OL_OK && i < p->count; i++) {
      const ol_param_entry *e = &p->entries[i];
      rc = ol_ckpt_read_slice(c, state_groups[k], e->name, e->ndim, e->shape, e->start, e->count,
                              state_buffer(&host, k) + e->offset);
    }
    if (rc == OL_OK && host_copy)
      ol_bk->to_device(state_buffer(p, k), state_buffer(&host, k), p->total * sizeof(float));
  }
  ol_free(host_copy);
  // the generated frozen tensors as trained (they are regenerated from the seed too; the
  // stored copy keeps a checkpoint self-contained)
  for (size_t i = 0; rc == OL_OK && i < gen->count; i++) {
    ol_frozen_entry *e = &gen->entries[i];
    float *values = host_tensor(e, 0, &host_copy);
    rc = ol_ckpt_read(c, OL_GROUP_FROZEN, e->name, e->ndim, e->shape, values);
    if (rc == OL_OK && host_copy)
      ol_bk->to_device(e->data, values, numel_of(e->ndim, e->shape) * sizeof(float));
    ol_free(host_copy);
  }
  return rc;
}

/* Checks that group k holds exactly the plan's tensors at their full shapes, reading each whole
 * so that every chunk's checksum is verified. */
static int verify_group(ol_ckpt *c, const char *path, int k, const ol_model *plan) {
  const ol_ckpt_group grp = k < 3 ? state_groups[k] : OL_GROUP_FROZEN;
  const size_t want = plan_count(plan, k);
  size_t n, biggest = 1;
  OL_TRY(ol_ckpt_count(c, grp, &n));
  if (n != want)
    return ol_error("%s: group '%s' holds %zu tensors, this model and method have %zu", path,
                    ol_ckpt_group_name(grp), n, want);
  for (size_t i = 0; i < want; i++) {
    plan_tensor t = plan_get(plan, k, i);
    if (numel_of(t.ndim, t.shape) > biggest) biggest = numel_of(t.ndim, t.shape);
  }
  float *buf = ol_calloc(biggest, sizeof(float));  // (biggest tensor)
  int rc = OL_OK;
  for (size_t i = 0; rc == OL_OK && i < want; i++) {
    plan_tensor t = plan_get(plan, k, i);
    rc = ol_ckpt_read(c, grp, t.name, t.ndim, t.shape, buf);
  }
  ol_free(buf);
  return rc;
}

int ol_state_verify(const char *path, const ol_model *m, const ol_ckpt_meta *run,
                         ol_ckpt_meta *found, int *mismatch) {
  *mismatch = 0;
  ol_ckpt *c;
  OL_TRY(ol_ckpt_open(path, &c, found));
  const ol_ckpt_meta *f = found;
  int rc = ol_config_match(&f->cfg, &m->cfg, path);
  if (rc != OL_OK) {
  } else if (strcmp(f->method, run->method) != 0 || strcmp(f->targets, run->targets) != 0) {
    rc = ol_error("%s: trained with --method %s --targets %s, this run has --method %s "
                  "--targets %s", path, f->method, f->targets, run->method, run->targets);
  } else if (f->rank != run->rank || f->alpha_x1000 != run->alpha_x1000) {
    rc = ol_error("%s: trained with --rank %lld --alpha %g, this run has --rank %lld --alpha %g",
                  path, (long long)f->rank, f->alpha_x1000 / 1000.0, (long long)run->rank,
                  run->alpha_x1000 / 1000.0);
  } else if (f->seed != run->seed || f->shuffle != run->shuffle) {
    rc = ol_error("%s: trained with --seed %llu%s, this run has --seed %llu%s: the data order "
                  "would change", path, (unsigned long long)f->seed, f->shuffle ? "" : " --no-shuffle",
                  (unsigned long long)run->seed, run->shuffle ? "" : " --no-shuffle");
  } else if (f->global_batch != run->global_batch || f->seq_len != run->seq_len) {
    rc = ol_error("%s: trained with a global batch of %lld sequences of %lld tokens, this run has "
                  "%lld of %lld (global batch = --micro-batch x --micro-batches x DP): the data "
                  "order would change", path, (long long)f->global_batch, (long long)f->seq_len,
                  (long long)run->global_batch, (long long)run->seq_len);
  } else if (f->step < 0 || f->data_cursor != (uint64_t)f->step * (uint64_t)f->global_batch) {
    rc = ol_error("%s: inconsistent attributes step %lld and data_cursor %llu", path,
                  (long long)f->step, (unsigned long long)f->data_cursor);
  }
  *mismatch = rc != OL_OK;
  ol_model plan = {0};
  if (rc == OL_OK) rc = plan_layout(&plan, m, run->seed);
  for (int k = 0; rc == OL_OK && k < 4; k++) rc = verify_group(c, path, k, &plan);
  ol_model_free(&plan);
  ol_ckpt_close(c);
  return rc;
}

ol_ckpt_meta ol_state_meta(const ol_train_opts *o, const ol_config *cfg, int64_t step,
                                double loss) {
  const ol_grid *g = o->grid;
  ol_ckpt_meta meta = {0};
  meta.version = OL_CKPT_VERSION;
  meta.step = step;
  ol_strlcpy(meta.method, o->method.text, sizeof meta.method);
  ol_strlcpy(meta.targets, o->method.targets_text, sizeof meta.targets);
  meta.cfg = *cfg;
  meta.tp = g->tp, meta.pp = g->pp, meta.dp = g->dp;
  meta.seed = o->seed;
  meta.loss = loss;
  meta.rank = o->method.rank;
  meta.alpha_x1000 = (int64_t)llround(o->method.alpha * 1000.0);
  meta.global_batch = o->micro_batch * o->micro_batches * g->dp;
  meta.seq_len = o->seq_len;
  meta.data_cursor = (uint64_t)step * (uint64_t)meta.global_batch;
  meta.shuffle = o->shuffle;
  return meta;
}

/* ---- the checkpoint benchmark ---------------------------------------------------------- */

int ol_state_bench(const ol_train_opts *o, const ol_config *cfg, const char *path,
                        ol_state_bench_result *out) {
  ol_grid *g = o->grid;
  memset(out, 0, sizeof *out);
  OL_TRY(ol_grid_layout(g, o->tp, o->pp));
  if (cfg->n_layers < g->pp)
    return ol_error("--pp %d: the model has only %lld layers", g->pp, (long long)cfg->n_layers);
  // the trainable state only: no frozen weights, so 13B shapes fit on a laptop
  ol_stage stage = ol_pipeline_stage(cfg, g->pp, g->pp_rank);
  stage.tp = g->tp, stage.tp_rank = g->tp_rank;
  ol_model m = {0};
  int rc = ol_model_layout_stage(&m, cfg, &o->method, o->seed, &stage);
  OL_TRY(ol_grid_agree(g, rc));
  ol_params_alloc(&m.params);
  const size_t total = m.params.total;
  float *written = ol_calloc(3 * total + 1, sizeof(float));  // (3, total) values, m, v
  float *bufs[3] = {m.params.data, m.params.m, m.params.v};  // (total) each, backend buffers
  for (int k = 0; k < 3; k++) {
    for (size_t i = 0; i < total; i++)
      written[k * total + i] = (float)(ol_hash64(i * 3 + (uint64_t)k) % 1000) * 1e-3f;
    ol_bk->to_device(bufs[k], written + k * total, total * sizeof(float));
  }
  ol_ckpt_meta meta = ol_state_meta(o, cfg, 1, 0.0);

  ol_grid_agree(g, OL_OK);  // start together
  double t0 = ol_now();
  rc = ol_state_save(g, &m, &meta, path);  // ends agreed: every rank done
  out->write_s = ol_now() - t0;
  // read back into fresh buffers, each rank its own slices, and compare
  ol_params back = m.params;
  back.data = ol_bk->alloc((3 * total + 1) * sizeof(float));  // (3, total)
  back.m = back.data + total, back.v = back.m + total;
  float *read = ol_calloc(3 * total + 1, sizeof(float));  // (3, total) back, on the host
  if (rc == OL_OK) {
    t0 = ol_now();
    ol_ckpt *c;
    ol_ckpt_meta found;
    rc = ol_ckpt_open(path, &c, &found);
    if (rc == OL_OK) {
      rc = ol_state_load(&back, &m.generated, c, 1);
      ol_ckpt_close(c);
    }
    ol_bk->to_host(read, back.data, 3 * total * sizeof(float));
    if (rc == OL_OK && memcmp(read, written, 3 * total * sizeof(float)) != 0)
      rc = ol_error("%s: the state read back differs from the state written", path);
    rc = ol_grid_agree(g, rc);
    out->read_s = ol_now() - t0;
  }
  if (rc == OL_OK && g->world_rank == 0) {
    int mismatch;
    ol_ckpt_meta found;
    t0 = ol_now();
    rc = ol_state_verify(path, &m, &meta, &found, &mismatch);
    out->verify_s = ol_now() - t0;
    size_t bytes;
    out->bytes = ol_file_size(path, &bytes) == OL_OK ? (double)bytes : 0.0;
  }
  rc = ol_grid_agree(g, rc);
  if (g->world_rank == 0) ol_file_remove(path);  // the benchmark's file, not a run's: no error
  ol_model whole = {0};
  if (rc == OL_OK) rc = ol_model_layout(&whole, cfg, &o->method, o->seed);
  out->trainable = ol_model_trainable(&whole);
  out->step_flops = ol_model_flops(&whole, (size_t)meta.global_batch * (size_t)o->seq_len,
                                   (size_t)o->seq_len);
  ol_model_free(&whole);
  ol_bk->free(back.data);
  ol_free(read), ol_free(written);
  ol_model_free(&m);
  return rc;
}
