/* onelora inspect: a checkpoint's header, per-tensor statistics (L2 norm, min, max, mean |x|,
 * computed in double precision), the per-layer L2 norms of the trained tensors and, with --diff,
 * each tensor's change against a reference checkpoint. Every dataset of each file is read in
 * full, so every Fletcher32 checksum is verified, whatever is printed. Output formats:
 * docs/FORMATS.md, "Inspecting a checkpoint". With --trajectory: a run's checkpoints, one value and
 * one change per (layer, projection) and checkpoint (below; "Checkpoint trajectories"). */
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "onelora/backend/backend.h"
#include "onelora/peft/adapter.h"
#include "onelora/peft/linear.h"
#include "onelora/peft/method.h"
#include "onelora/io/weights.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/files.h"
#include "onelora/core/config.h"
#include "onelora/core/core.h"

#define NAME_LEN 256
/* per-layer columns: the seven projections, then the two RMSNorms */
#define N_MODULES (OL_PROJ_COUNT + 2)

typedef struct {
  char name[NAME_LEN];
  int ndim;
  size_t shape[OL_MAX_DIMS];
} entry;

typedef enum { IN_BOTH, CKPT_ONLY, OTHER_ONLY } presence;

typedef struct {
  ol_ckpt_group group;
  entry e;
  size_t numel;
  presence in;                    /* CKPT_ONLY for every row without --diff */
  double l2, min, max, mean_abs;  /* of CKPT's tensor a (not set for OTHER_ONLY) */
  double diff_abs, ref_l2;        /* ||a - b|| and ||b||, b = OTHER's tensor (IN_BOTH only) */
} row;

typedef struct {
  row *r;  /* (n,) in group order, then name order */
  size_t n, cap;
} row_list;

typedef struct {
  const char *path;
  ol_ckpt *c;
  ol_ckpt_meta meta;
  size_t n_verified;  /* datasets read in full: their checksums held */
} ckpt_file;

typedef struct {
  float *x;  /* (cap,) */
  size_t cap;
} buffer;

typedef struct {
  int csv, per_layer, moments;
} options;

/* The groups in the order they are printed; all are read (and verified) either way. */
static const ol_ckpt_group group_order[OL_GROUP_COUNT] = {OL_GROUP_PARAMS, OL_GROUP_FROZEN,
                                                          OL_GROUP_ADAM_M, OL_GROUP_ADAM_V};

static int group_shown(ol_ckpt_group g, const options *o) {
  return g == OL_GROUP_PARAMS || g == OL_GROUP_FROZEN || o->moments;
}

static size_t numel_of(const entry *e) {
  size_t n = 1;
  for (int i = 0; i < e->ndim; i++) n *= e->shape[i];
  return n;
}

static int same_shape(const entry *a, const entry *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

/* "[d0, d1]" for people, "d0xd1" for CSV cells */
static const char *shape_str(const entry *e, const char *open, const char *sep, const char *close,
                             char *buf, size_t size) {
  size_t used = (size_t)snprintf(buf, size, "%s", open);
  for (int i = 0; i < e->ndim && used < size; i++)
    used += (size_t)snprintf(buf + used, size - used, "%s%zu", i ? sep : "", e->shape[i]);
  if (used < size) snprintf(buf + used, size - used, "%s", close);
  return buf;
}

static int entry_cmp(const void *a, const void *b) {
  return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

/* The datasets of group g, sorted by name with strcmp (the merge below relies on that order).
 * Their count and shapes come from the file; the reader has bounded both by the file's size
 * (io/checkpoint.c), so the buffers sized by them here and in read_entry are too. */
static int list_group(ckpt_file *f, ol_ckpt_group g, entry **out, size_t *n) {
  *out = NULL;
  OL_TRY(ol_ckpt_count(f->c, g, n));
  entry *e = ol_calloc(*n ? *n : 1, sizeof *e);  /* (n,) */
  for (size_t i = 0; i < *n; i++) {
    int rc = ol_ckpt_info(f->c, g, i, e[i].name, sizeof e[i].name, &e[i].ndim, e[i].shape);
    if (rc != OL_OK) {
      ol_free(e);
      return rc;
    }
  }
  qsort(e, *n, sizeof *e, entry_cmp);
  *out = e;
  return OL_OK;
}

/* Reads a whole dataset into buf (grown as needed); the read verifies its checksum. */
static int read_entry(ckpt_file *f, ol_ckpt_group g, const entry *e, buffer *buf) {
  size_t n = numel_of(e);
  if (n > buf->cap) {
    ol_free(buf->x);
    buf->x = ol_calloc(n, sizeof(float));  /* (n,) */
    buf->cap = n;
  }
  OL_TRY(ol_ckpt_read(f->c, g, e->name, e->ndim, e->shape, buf->x));
  f->n_verified++;
  return OL_OK;
}

static void tensor_stats(row *r, const float *x /* (numel,) */) {
  double sq = 0, abs_sum = 0, lo = INFINITY, hi = -INFINITY;
  for (size_t i = 0; i < r->numel; i++) {
    double v = x[i];
    sq += v * v;
    abs_sum += fabs(v);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  r->l2 = sqrt(sq);
  r->mean_abs = r->numel ? abs_sum / (double)r->numel : NAN;
  r->min = r->numel ? lo : NAN;
  r->max = r->numel ? hi : NAN;
}

static double l2_of(const float *x, size_t n) {
  double sq = 0;
  for (size_t i = 0; i < n; i++) sq += (double)x[i] * x[i];
  return sqrt(sq);
}

static double diff_l2(const float *a, const float *b, size_t n) {
  double sq = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - (double)b[i];
    sq += d * d;
  }
  return sqrt(sq);
}

/* ||a - b|| / ||b||: inf when b = 0 and a differs, 0 when both are zero (no change). */
static double diff_rel(const row *r) {
  if (r->ref_l2 > 0) return r->diff_abs / r->ref_l2;
  return r->diff_abs > 0 ? INFINITY : 0.0;
}

static size_t group_rows(const row_list *rows, ol_ckpt_group g) {
  size_t n = 0;
  for (size_t i = 0; i < rows->n; i++) n += rows->r[i].group == g;
  return n;
}

static row *add_row(row_list *rows, ol_ckpt_group g, const entry *e, presence in) {
  rows->r = ol_grow(rows->r, rows->n, &rows->cap, sizeof *rows->r);
  row *r = &rows->r[rows->n++];
  r->group = g;
  r->e = *e;
  r->numel = numel_of(e);
  r->in = in;
  return r;
}

/* One group of a (and of b with --diff): reads every dataset of both, merging the two sorted
 * name lists into rows. */
static int collect_group(ckpt_file *a, ckpt_file *b, ol_ckpt_group g, row_list *rows,
                         buffer *ba, buffer *bb) {
  entry *ea = NULL, *eb = NULL;
  size_t na = 0, nb = 0, i = 0, j = 0;
  int rc = list_group(a, g, &ea, &na);
  if (rc == OL_OK && b) rc = list_group(b, g, &eb, &nb);
  const char *gname = ol_ckpt_group_name(g);
  while (rc == OL_OK && (i < na || j < nb)) {
    int cmp = i == na ? 1 : j == nb ? -1 : strcmp(ea[i].name, eb[j].name);
    if (cmp > 0) {  /* only in b: read it all the same, to verify it */
      rc = read_entry(b, g, &eb[j], bb);
      if (rc == OL_OK) add_row(rows, g, &eb[j], OTHER_ONLY);
      j++;
      continue;
    }
    if (cmp == 0 && !same_shape(&ea[i], &eb[j])) {
      char sa[96], sb[96];
      rc = ol_error("onelora inspect: tensor '%s/%s' has shape %s in %s but %s in %s", gname,
                    ea[i].name, shape_str(&ea[i], "[", ", ", "]", sa, sizeof sa), a->path,
                    shape_str(&eb[j], "[", ", ", "]", sb, sizeof sb), b->path);
      break;
    }
    rc = read_entry(a, g, &ea[i], ba);
    if (rc == OL_OK && cmp == 0) rc = read_entry(b, g, &eb[j], bb);
    if (rc == OL_OK) {
      row *r = add_row(rows, g, &ea[i], cmp == 0 ? IN_BOTH : CKPT_ONLY);
      tensor_stats(r, ba->x);
      if (cmp == 0) {
        r->diff_abs = diff_l2(ba->x, bb->x, r->numel);
        r->ref_l2 = l2_of(bb->x, r->numel);
      }
    }
    i++;
    j += cmp == 0;
  }
  ol_free(ea);
  ol_free(eb);
  return rc;
}

/* ---- per-layer summary -------------------------------------------------------------------- */

typedef struct {
  size_t n_layers;
  double *sq;         /* (n_layers, N_MODULES) sum of squares of the cell's tensors */
  unsigned char *has; /* (n_layers, N_MODULES) the cell holds at least one tensor */
  int col_used[N_MODULES];
} layer_table;

static const char *module_short(int m) {
  return m < OL_PROJ_COUNT ? ol_proj_short((ol_proj)m)
                           : m == OL_PROJ_COUNT ? "input_norm" : "post_norm";
}

static const char *module_path(int m) {
  return m < OL_PROJ_COUNT ? ol_proj_module((ol_proj)m)
                           : m == OL_PROJ_COUNT ? "input_layernorm" : "post_attention_layernorm";
}

/* "model.layers.{i}.<module path>.<param>" -> (i, module); 0 for a name outside the layers. */
static int layer_module(const char *name, size_t n_layers, size_t *layer, int *module) {
  static const char prefix[] = "model.layers.";
  if (strncmp(name, prefix, sizeof prefix - 1) != 0) return 0;
  const char *p = name + sizeof prefix - 1;
  if (*p < '0' || *p > '9') return 0;
  char *end;
  unsigned long long l = strtoull(p, &end, 10);
  if (*end != '.' || l >= n_layers) return 0;
  for (int m = 0; m < N_MODULES; m++) {
    size_t k = strlen(module_path(m));
    if (strncmp(end + 1, module_path(m), k) == 0 && end[1 + k] == '.') {
      *layer = (size_t)l;
      *module = m;
      return 1;
    }
  }
  return 0;
}

static size_t cell(size_t layer, int module) { return layer * N_MODULES + (size_t)module; }

static void layer_table_build(layer_table *t, const row_list *rows, size_t n_layers) {
  memset(t, 0, sizeof *t);
  t->n_layers = n_layers;
  t->sq = ol_calloc(n_layers * N_MODULES, sizeof *t->sq);
  t->has = ol_calloc(n_layers * N_MODULES, 1);
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    size_t l;
    int m;
    if (r->group != OL_GROUP_PARAMS || r->in == OTHER_ONLY ||
        !layer_module(r->e.name, n_layers, &l, &m))
      continue;
    t->sq[cell(l, m)] += r->l2 * r->l2;
    t->has[cell(l, m)] = 1;
    t->col_used[m] = 1;
  }
}

static void layer_table_free(layer_table *t) {
  ol_free(t->sq);
  ol_free(t->has);
}

/* Params tensors outside the layers (embeddings, final norm, LM head) */
static int outside_layers(const row *r, size_t n_layers) {
  size_t l;
  int m;
  return r->group == OL_GROUP_PARAMS && r->in != OTHER_ONLY &&
         !layer_module(r->e.name, n_layers, &l, &m);
}

static double row_total(const layer_table *t, size_t l) {
  double sq = 0;
  for (int m = 0; m < N_MODULES; m++) sq += t->sq[cell(l, m)];
  return sqrt(sq);
}

static double col_total(const layer_table *t, int m) {
  double sq = 0;
  for (size_t l = 0; l < t->n_layers; l++) sq += t->sq[cell(l, m)];
  return sqrt(sq);
}

static double grand_total(const layer_table *t) {
  double sq = 0;
  for (size_t i = 0; i < t->n_layers * N_MODULES; i++) sq += t->sq[i];
  return sqrt(sq);
}

static int any_col(const layer_table *t) {
  for (int m = 0; m < N_MODULES; m++)
    if (t->col_used[m]) return 1;
  return 0;
}

static void print_layers(const layer_table *t, const row_list *rows) {
  printf("\nper-layer L2 norm of the trained tensors (params; a module's cell covers all its "
         "tensors, total = L2 over the row or column)\n");
  if (!any_col(t)) {
    printf("  (no trained tensor inside the layers)\n");
  } else {
    printf("%7s", "layer");
    for (int m = 0; m < N_MODULES; m++)
      if (t->col_used[m]) printf(" %11s", module_short(m));
    printf(" %11s\n", "total");
    for (size_t l = 0; l < t->n_layers; l++) {
      printf("%7zu", l);
      for (int m = 0; m < N_MODULES; m++) {
        if (!t->col_used[m]) continue;
        if (t->has[cell(l, m)]) printf(" %11.4e", sqrt(t->sq[cell(l, m)]));
        else printf(" %11s", "-");
      }
      printf(" %11.4e\n", row_total(t, l));
    }
    printf("%7s", "total");
    for (int m = 0; m < N_MODULES; m++)
      if (t->col_used[m]) printf(" %11.4e", col_total(t, m));
    printf(" %11.4e\n", grand_total(t));
  }
  int first = 1;
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    if (!outside_layers(r, t->n_layers)) continue;
    printf("%s %s %.4e", first ? "outside the layers:" : ",", r->e.name, r->l2);
    first = 0;
  }
  if (!first) printf("\n");
}

/* --csv --per-layer: one row per cell, then the totals, then the tensors outside the layers. */
static void print_layers_csv(const layer_table *t, const row_list *rows) {
  printf("layer,module,l2\n");
  for (size_t l = 0; l < t->n_layers; l++) {
    int any = 0;
    for (int m = 0; m < N_MODULES; m++)
      if (t->has[cell(l, m)]) {
        printf("%zu,%s,%.17g\n", l, module_short(m), sqrt(t->sq[cell(l, m)]));
        any = 1;
      }
    if (any) printf("%zu,total,%.17g\n", l, row_total(t, l));
  }
  for (int m = 0; m < N_MODULES; m++)
    if (t->col_used[m]) printf("all,%s,%.17g\n", module_short(m), col_total(t, m));
  if (any_col(t)) printf("all,total,%.17g\n", grand_total(t));
  for (size_t i = 0; i < rows->n; i++)
    if (outside_layers(&rows->r[i], t->n_layers))
      printf("outside,%s,%.17g\n", rows->r[i].e.name, rows->r[i].l2);
}

/* ---- header, tables, diff summary --------------------------------------------------------- */

static void print_header(const ckpt_file *f, long long size) {
  const ol_ckpt_meta *m = &f->meta;
  const ol_config *c = &m->cfg;
  double kib = (double)size / 1024.0;
  printf("checkpoint  %s (%lld bytes, %.1f %s)\n", f->path, size,
         kib >= 1048576 ? kib / 1048576 : kib >= 1024 ? kib / 1024 : kib,
         kib >= 1048576 ? "GiB" : kib >= 1024 ? "MiB" : "KiB");
  printf("format      onelora-checkpoint version %lld\n", (long long)m->version);
  printf("step        %lld    loss %.6f    seed %llu    data cursor %llu samples\n",
         (long long)m->step, m->loss, (unsigned long long)m->seed,
         (unsigned long long)m->data_cursor);
  printf("method      %s    targets %s", m->method, m->targets);
  /* rank and alpha only for the methods that use them; a method this build does not know is
   * printed as it is */
  ol_method method;
  if (ol_method_parse(m->method, m->targets, m->rank, (double)m->alpha_x1000 / 1000.0, &method) ==
      OL_OK) {
    if (ol_method_with(&method, offsetof(ol_adapter_ops, uses_rank)))
      printf("    rank %lld", (long long)m->rank);
    if (ol_method_with(&method, offsetof(ol_adapter_ops, uses_alpha)))
      printf("    alpha %g", (double)m->alpha_x1000 / 1000.0);
  }
  ol_clear_error();
  printf("\nmodel       dim %lld, %lld layers, %lld heads (%lld kv), ffn %lld, vocab %lld, "
         "max_seq_len %lld\n", (long long)c->dim, (long long)c->n_layers, (long long)c->n_heads,
         (long long)c->n_kv_heads, (long long)c->ffn_dim, (long long)c->vocab_size,
         (long long)c->max_seq_len);
  printf("layout      tp %lld x pp %lld x dp %lld at write time\n", (long long)m->tp,
         (long long)m->pp, (long long)m->dp);
}

static void print_table(const row_list *rows, ol_ckpt_group g, const ckpt_file *a,
                        const ckpt_file *b) {
  size_t wn = 4, ws = 5, n = 0, values = 0;
  char sh[96];
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    if (r->group != g) continue;
    size_t k = strlen(r->e.name), s = strlen(shape_str(&r->e, "[", ", ", "]", sh, sizeof sh));
    wn = k > wn ? k : wn;
    ws = s > ws ? s : ws;
    if (r->in != OTHER_ONLY) n++, values += r->numel;
  }
  printf("\n%s%s: %zu tensors, %zu values\n", ol_ckpt_group_name(g),
         g == OL_GROUP_FROZEN ? " (generated by the method, not trained)" : "", n, values);
  if (!n && !b) return;
  printf("  %-*s %*s %11s %11s %11s %11s", (int)wn, "name", (int)ws, "shape", "l2", "min", "max",
         "mean|x|");
  if (b) printf(" %11s %11s", "diff_abs", "diff_rel");
  printf("\n");
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    if (r->group != g) continue;
    printf("  %-*s %*s", (int)wn, r->e.name, (int)ws,
           shape_str(&r->e, "[", ", ", "]", sh, sizeof sh));
    if (r->in == OTHER_ONLY) {
      printf("   (only in %s)\n", b->path);
      continue;
    }
    printf(" %11.4e %11.4e %11.4e %11.4e", r->l2, r->min, r->max, r->mean_abs);
    if (r->in == IN_BOTH) printf(" %11.4e %11.4e", r->diff_abs, diff_rel(r));
    else if (b) printf("   (only in %s)", a->path);
    printf("\n");
  }
}

static void print_csv(const row_list *rows, const options *o, int diff) {
  printf("group,name,shape,numel,l2,min,max,mean_abs%s\n",
         diff ? ",diff_abs,diff_rel,present" : "");
  static const char *const present[] = {"both", "ckpt_only", "other_only"};
  char sh[96];
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    if (!group_shown(r->group, o)) continue;
    printf("%s,%s,%s,%zu", ol_ckpt_group_name(r->group), r->e.name,
           shape_str(&r->e, "", "x", "", sh, sizeof sh), r->numel);
    if (r->in == OTHER_ONLY) printf(",,,,");
    else printf(",%.17g,%.17g,%.17g,%.17g", r->l2, r->min, r->max, r->mean_abs);
    if (diff && r->in == IN_BOTH) printf(",%.17g,%.17g", r->diff_abs, diff_rel(r));
    else if (diff) printf(",,");
    printf("%s%s\n", diff ? "," : "", diff ? present[r->in] : "");
  }
}

static void print_diff_summary(const row_list *rows, const options *o, const ckpt_file *b) {
  const row *worst = NULL;
  size_t n_both = 0, n_a = 0, n_b = 0;
  for (size_t i = 0; i < rows->n; i++) {
    const row *r = &rows->r[i];
    if (!group_shown(r->group, o)) continue;
    n_both += r->in == IN_BOTH;
    n_a += r->in == CKPT_ONLY;
    n_b += r->in == OTHER_ONLY;
    if (r->in == IN_BOTH && (!worst || diff_rel(r) > diff_rel(worst))) worst = r;
  }
  printf("\ndiff        %zu tensors compared, %zu only in the checkpoint, %zu only in the "
         "reference %s\n", n_both, n_a, n_b, b->path);
  if (worst)
    printf("max change  %.4e relative (||a-b|| %.4e, ||b|| %.4e) in %s/%s\n", diff_rel(worst),
           worst->diff_abs, worst->ref_l2, ol_ckpt_group_name(worst->group), worst->e.name);
}

/* ---- the command ------------------------------------------------------------------------- */

static int open_file(ckpt_file *f, const char *path) {
  memset(f, 0, sizeof *f);
  f->path = path;
  return ol_ckpt_open(path, &f->c, &f->meta);
}

static int inspect(const char *path, const char *other, const options *o) {
  ckpt_file a, b;
  row_list rows = {0};
  buffer ba = {0}, bb = {0};
  size_t bytes = 0;
  int rc = open_file(&a, path);
  if (rc == OL_OK && other) rc = open_file(&b, other);
  for (int k = 0; rc == OL_OK && k < OL_GROUP_COUNT; k++)
    rc = collect_group(&a, other ? &b : NULL, group_order[k], &rows, &ba, &bb);
  if (rc == OL_OK && other) {
    size_t common = 0;
    for (size_t i = 0; i < rows.n; i++)
      common += rows.r[i].group == OL_GROUP_PARAMS && rows.r[i].in == IN_BOTH;
    if (!common)
      rc = ol_error("onelora inspect: %s (method '%s') and %s (method '%s') have no trained "
                    "tensor in common: nothing to compare", path, a.meta.method, other,
                    b.meta.method);
  }
  if (rc == OL_OK) rc = ol_file_size(path, &bytes);
  if (rc == OL_OK) {
    layer_table t;
    layer_table_build(&t, &rows, (size_t)a.meta.cfg.n_layers);
    if (o->csv && o->per_layer) {
      print_layers_csv(&t, &rows);
    } else if (o->csv) {
      print_csv(&rows, o, other != NULL);
    } else {
      print_header(&a, (long long)bytes);
      if (other)
        printf("diff        a = this checkpoint, b = %s (the reference): diff_abs = ||a-b||, "
               "diff_rel = ||a-b||/||b||\n", other);
      for (int k = 0; k < OL_GROUP_COUNT; k++)
        if (group_shown(group_order[k], o) &&
            (group_order[k] != OL_GROUP_FROZEN || group_rows(&rows, OL_GROUP_FROZEN)))
          print_table(&rows, group_order[k], &a, other ? &b : NULL);
      print_layers(&t, &rows);
      printf("\nchecksums   all %zu datasets of %s read and verified (Fletcher32)", a.n_verified,
             path);
      if (other) printf("; all %zu of %s", b.n_verified, other);
      printf("\n");
      if (other) print_diff_summary(&rows, o, &b);
    }
    layer_table_free(&t);
  }
  if (a.c) ol_ckpt_close(a.c);
  if (other && b.c) ol_ckpt_close(b.c);
  ol_free(rows.r);
  ol_free(ba.x);
  ol_free(bb.x);
  return rc;
}

/* ---- --trajectory: a run's checkpoints, one value and one change per (layer, projection) ---- */

/* For every checkpoint DIR/step-%08d.h5 in step order and every (layer, projection) cell that
 * holds trained tensors:
 *   value  the norm of what the method put there: ||b|| (1lora, 1lora-random), ||beta||
 *          (bitfit), ||delta W||_F of lora's s B A, dora's directional part s B A, vera's
 *          diag(lambda_b) B_d diag(lambda_d) A_k and mora's / mora6's merged update; for a
 *          tensor with no adapter form (norms, full), ||theta||, or ||theta - theta_model||
 *          with --model. Several of them in one cell add in squares.
 *   delta  ||theta_t - theta_{t-1}|| over the cell's trained tensors (dora's m included); none
 *          for the first checkpoint.
 * delta W is formed a block of rows at a time by the backend (gemm, cyclic_rows, rope_apply:
 * the same arithmetic as the method's merge) and never whole; one cell's tensors are in memory
 * at a time. Tensors outside the layers (full's embedding, final norm and LM head) have no
 * cell. Format: docs/FORMATS.md, "Checkpoint trajectories". */

enum { TRAJ_BLOCK_FLOATS = 1 << 22 };  /* a block of rows of delta W: at most 16 MiB */

typedef struct {
  entry e;
  size_t layer;
  int module;         /* 0 .. N_MODULES - 1 */
  const char *param;  /* into e.name: "lora_A", "onelora_b", "weight", ... */
} traj_tensor;

typedef struct {
  float *x;  /* (cap,) from ol_bk->alloc */
  size_t cap;
} bk_buffer;

static float *bk_reserve(bk_buffer *b, size_t n) {
  if (n > b->cap) {
    ol_bk->free(b->x);
    b->x = ol_bk->alloc((n ? n : 1) * sizeof(float));
    b->cap = n;
  }
  return b->x;
}

/* The checkpoint and its predecessor while one step is read */
typedef struct {
  const char *dir, *model_path;
  ol_weights *model;
  ol_ckpt_meta first_meta;      /* of the first checkpoint: every other must match it */
  char first_path[4096];
  int mora6, full;              /* the method trains mora6 (its mora_M), every weight */
  float lora_scale;             /* s = alpha / r, as lora.c and dora.c compute it */
  traj_tensor *t;               /* (nt,) params tensors inside the layers, by (layer, module) */
  size_t nt;
  size_t n_cells;               /* distinct (layer, module) among them */
  size_t *cell_first;           /* (n_cells + 1,) index of each cell's first tensor in t */
  size_t va_shape[2], vb_shape[2];  /* frozen vera_A (r, k_max), vera_B (d_max, r), if any */
  int has_vera_frozen;
  bk_buffer cur[OL_MAX_ADAPTERS + 4];  /* one cell's tensors of this checkpoint */
  bk_buffer prev, block, tables;
  bk_buffer wa, wb;             /* (r, k_max), (d_max, r): this checkpoint's vera_A, vera_B */
} traj_run;

/* Output columns: the projections, then the norm before attention and the one before the MLP */
static const char *traj_short(int m) {
  return m < OL_PROJ_COUNT ? ol_proj_short((ol_proj)m) : m == OL_PROJ_COUNT ? "attn_norm" : "mlp_norm";
}

/* The (d, k) of projection p, the frozen W (out, in) of DESIGN §6 */
static void proj_dims(const ol_config *c, int p, size_t *d, size_t *k) {
  const size_t D = (size_t)c->dim, F = (size_t)c->ffn_dim;
  const size_t kv = (size_t)(c->dim / c->n_heads * c->n_kv_heads);
  static const int out_kind[OL_PROJ_COUNT] = {0, 1, 1, 0, 2, 2, 0};  /* D, kv, F */
  *d = out_kind[p] == 0 ? D : out_kind[p] == 1 ? kv : F;
  *k = p == OL_DOWN ? F : D;
}

static int traj_tensor_cmp(const void *a, const void *b) {
  const traj_tensor *x = a, *y = b;
  if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
  if (x->module != y->module) return x->module < y->module ? -1 : 1;
  return strcmp(x->e.name, y->e.name);
}

static int meta_differs(const ol_ckpt_meta *a, const ol_ckpt_meta *b, char *what, size_t size) {
  if (strcmp(a->method, b->method))
    snprintf(what, size, "method '%s' against '%s'", b->method, a->method);
  else if (strcmp(a->targets, b->targets))
    snprintf(what, size, "targets '%s' against '%s'", b->targets, a->targets);
  else if (a->rank != b->rank || a->alpha_x1000 != b->alpha_x1000)
    snprintf(what, size, "rank %lld alpha %g against rank %lld alpha %g", (long long)b->rank,
             (double)b->alpha_x1000 / 1000.0, (long long)a->rank, (double)a->alpha_x1000 / 1000.0);
  else if (a->seed != b->seed)
    snprintf(what, size, "seed %llu against %llu", (unsigned long long)b->seed,
             (unsigned long long)a->seed);
  else {
    static const char *const field[] = {"dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim",
                                        "vocab_size"};
    const int64_t va[] = {a->cfg.dim, a->cfg.n_layers, a->cfg.n_heads, a->cfg.n_kv_heads,
                          a->cfg.ffn_dim, a->cfg.vocab_size};
    const int64_t vb[] = {b->cfg.dim, b->cfg.n_layers, b->cfg.n_heads, b->cfg.n_kv_heads,
                          b->cfg.ffn_dim, b->cfg.vocab_size};
    for (size_t i = 0; i < sizeof field / sizeof field[0]; i++)
      if (va[i] != vb[i]) {
        snprintf(what, size, "model shape %s %lld against %lld", field[i], (long long)vb[i],
                 (long long)va[i]);
        return 1;
      }
    return 0;
  }
  return 1;
}

/* The first checkpoint fixes the run: its method, its tensors (names, shapes) and their cells. */
static int traj_setup(traj_run *r, ckpt_file *f) {
  r->first_meta = f->meta;
  ol_strlcpy(r->first_path, f->path, sizeof r->first_path);
  ol_method m;
  const ol_ckpt_meta *meta = &f->meta;
  if (ol_method_parse(meta->method, meta->targets, meta->rank, (double)meta->alpha_x1000 / 1000.0,
                      &m) != OL_OK)
    return ol_error("onelora inspect: %s: method '%s', targets '%s' are not this build's (%s)",
                    f->path, meta->method, meta->targets, ol_last_error());
  const ol_adapter_ops *ops[32];
  int n_ops = ol_method_adapters(&m, ops);
  for (int i = 0; i < n_ops; i++) r->mora6 |= strcmp(ops[i]->name, "mora6") == 0;
  r->full = m.full;
  r->lora_scale = meta->rank > 0 ? ol_lora_scale(&m) : 0.0f;
  entry *e;
  size_t n;
  OL_TRY(list_group(f, OL_GROUP_PARAMS, &e, &n));
  r->t = ol_calloc(n ? n : 1, sizeof *r->t);  // (n,)
  for (size_t i = 0; i < n; i++) {
    traj_tensor *t = &r->t[r->nt];
    if (!layer_module(e[i].name, (size_t)meta->cfg.n_layers, &t->layer, &t->module)) continue;
    t->e = e[i];
    r->nt++;
  }
  ol_free(e);
  qsort(r->t, r->nt, sizeof *r->t, traj_tensor_cmp);
  r->cell_first = ol_calloc(r->nt + 1, sizeof *r->cell_first);  // (n_cells + 1,)
  for (size_t i = 0; i < r->nt; i++) {
    traj_tensor *t = &r->t[i];
    t->param = t->e.name + strlen(t->e.name);
    while (t->param > t->e.name && t->param[-1] != '.') t->param--;
    if (i == 0 || t->layer != t[-1].layer || t->module != t[-1].module)
      r->cell_first[r->n_cells++] = i;
  }
  r->cell_first[r->n_cells] = r->nt;
  if (!r->n_cells)
    return ol_error("onelora inspect: %s (method '%s') trains no tensor inside the layers: no "
                    "trajectory to show", f->path, meta->method);
  size_t nf;
  OL_TRY(list_group(f, OL_GROUP_FROZEN, &e, &nf));
  int have_a = 0, have_b = 0;
  for (size_t i = 0; i < nf; i++) {
    if (strcmp(e[i].name, "vera_A") == 0 && e[i].ndim == 2)
      r->va_shape[0] = e[i].shape[0], r->va_shape[1] = e[i].shape[1], have_a = 1;
    if (strcmp(e[i].name, "vera_B") == 0 && e[i].ndim == 2)
      r->vb_shape[0] = e[i].shape[0], r->vb_shape[1] = e[i].shape[1], have_b = 1;
  }
  ol_free(e);
  r->has_vera_frozen = have_a && have_b;
  return OL_OK;
}

/* Every later checkpoint: the same run (method, targets, rank, alpha, seed, model shape) and the
 * same trained tensors in the layers, so that values and deltas compare like with like. */
static int traj_check_same_run(traj_run *r, ckpt_file *f) {
  char what[512];
  if (meta_differs(&r->first_meta, &f->meta, what, sizeof what))
    return ol_error("onelora inspect: %s is not from the run of %s: %s; one directory, one run",
                    f->path, r->first_path, what);
  entry *e;
  size_t n, k = 0;
  OL_TRY(list_group(f, OL_GROUP_PARAMS, &e, &n));
  int rc = OL_OK;
  for (size_t i = 0; i < n && rc == OL_OK; i++) {
    size_t l;
    int m;
    if (!layer_module(e[i].name, (size_t)f->meta.cfg.n_layers, &l, &m)) continue;
    k++;
    const traj_tensor *t = NULL;
    for (size_t j = 0; j < r->nt && !t; j++)
      if (strcmp(r->t[j].e.name, e[i].name) == 0) t = &r->t[j];
    char sa[96], sb[96];
    if (!t)
      rc = ol_error("onelora inspect: %s has tensor 'params/%s', which %s lacks; one directory, "
                    "one run", f->path, e[i].name, r->first_path);
    else if (!same_shape(&t->e, &e[i]))
      rc = ol_error("onelora inspect: tensor 'params/%s' has shape %s in %s but %s in %s", e[i].name,
                    shape_str(&e[i], "[", ", ", "]", sa, sizeof sa), f->path,
                    shape_str(&t->e, "[", ", ", "]", sb, sizeof sb), r->first_path);
  }
  ol_free(e);
  if (rc == OL_OK && k != r->nt)
    rc = ol_error("onelora inspect: %s has %zu trained tensors in the layers, %s has %zu; one "
                  "directory, one run", f->path, k, r->first_path, r->nt);
  return rc;
}

static const traj_tensor *cell_find(const traj_run *r, size_t cell_i, const char *param,
                                    size_t *slot) {
  for (size_t i = r->cell_first[cell_i]; i < r->cell_first[cell_i + 1]; i++)
    if (strcmp(r->t[i].param, param) == 0) {
      *slot = i - r->cell_first[cell_i];
      return &r->t[i];
    }
  return NULL;
}

static int shape_error(const ckpt_file *f, const traj_tensor *t, const char *want) {
  char s[96];
  return ol_error("onelora inspect: %s: tensor 'params/%s' has shape %s, expected %s", f->path,
                  t->e.name, shape_str(&t->e, "[", ", ", "]", s, sizeof s), want);
}

/* ||s B A||_F^2 with A (r, k) and B (d, r): delta W a block of rows at a time, as lora's merge
 * forms it (one f32 GEMM; the sum of squares in double) */
static double lora_sq(traj_run *r, const float *A, const float *B, size_t d, size_t k, size_t rk,
                      float s) {
  const size_t rows = TRAJ_BLOCK_FLOATS / k ? TRAJ_BLOCK_FLOATS / k : 1;
  float *D = bk_reserve(&r->block, (rows < d ? rows : d) * k);  // (rows, k) rows of delta W
  double sq = 0;
  for (size_t i0 = 0; i0 < d; i0 += rows) {
    const size_t n = d - i0 < rows ? d - i0 : rows;
    ol_bk->gemm(0, 0, n, k, rk, s, B + i0 * rk, rk, A, k, 0.0f, D, k);
    sq += ol_bk->sumsq(D, n * k);
  }
  return sq;
}

/* ||diag(lb) B_d diag(ld) A_k||_F^2, A (r, k_max) and B (d_max, r) the shared frozen matrices
 * sliced as vera.c slices them (A[:, :k], B[:d, :]) */
static double vera_sq(traj_run *r, const float *lb, const float *ld, const float *A, size_t kmax,
                      const float *B, size_t d, size_t k, size_t rk) {
  const size_t rows = TRAJ_BLOCK_FLOATS / k ? TRAJ_BLOCK_FLOATS / k : 1;
  const size_t nb = rows < d ? rows : d;
  float *D = bk_reserve(&r->block, nb * k + nb * rk);  // (rows, k) rows of delta W
  float *S = D + nb * k;                               // (rows, r) rows of B~
  double sq = 0;
  for (size_t i0 = 0; i0 < d; i0 += rows) {
    const size_t n = d - i0 < rows ? d - i0 : rows;
    ol_bk->diag_scale(S, lb + i0, B + i0 * rk, ld, n, rk);
    ol_bk->gemm(0, 0, n, k, rk, 1.0f, S, rk, A, kmax, 0.0f, D, k);
    sq += ol_bk->sumsq(D, n * k);
  }
  return sq;
}

/* MoRA type 1 (mora.c's merge): rows i0 .. i0 + r^ of delta W, from a multiple of r^, are
 * M (r^, r^) spread cyclically over the k_pad inputs, W[i, p mod k] += M[i mod r^, p mod r^]:
 * every full block of r^ rows is the same block, so it is formed once. */
static double mora_sq(traj_run *r, const float *M, size_t rhat, size_t d, size_t k) {
  const size_t kp = (k + rhat - 1) / rhat * rhat, n = d < rhat ? d : rhat;
  float *D = bk_reserve(&r->block, n * k);  // (n, k) the first n rows of delta W
  ol_bk->cyclic_rows(D, k, 0, M, rhat, 0, kp, n, 0.0f);
  const size_t full = d / rhat, rem = d % rhat;  // whole blocks of r^ rows, then the first rem
  const double block = full ? ol_bk->sumsq(D, rhat * k) : 0.0;
  return (double)full * block + ol_bk->sumsq(D, rem * k);
}

/* MoRA type 6 (mora.c's merge): row i of delta W is rot_g^T(M_a), q = i mod k_pad, g = q / r^,
 * a = q mod r^, at the inputs (g r^ + s) mod k, s < r^. Rows q and q + k_pad are equal, so the
 * min(d, k_pad) distinct rows are formed, a group's block at a time, and counted d / k_pad times
 * (once more for q < d mod k_pad). With r^ <= k the r^ inputs are distinct and the row is
 * rot_g^T(M_a) itself; otherwise cyclic_rows sums the positions reached twice, as merge does. */
static double mora6_sq(traj_run *r, const float *M, size_t rhat, size_t d, size_t k) {
  const size_t kp = (k + rhat - 1) / rhat * rhat, G = kp / rhat, half = rhat / 2;
  float *cos_t = bk_reserve(&r->tables, 2 * G * half);  // (G, r^/2) cos, then sin
  float *sin_t = cos_t + G * half;
  ol_bk->rope_table(cos_t, sin_t, G, rhat, 10000.0);
  float *V = bk_reserve(&r->block, rhat * rhat + (rhat > k ? rhat * k : 0));  // (r^, r^)
  float *D = V + rhat * rhat;  // (r^, k) when r^ > k: the rows of delta W
  const size_t qmax = d < kp ? d : kp, full = d / kp, qb = d % kp;
  double sq = 0;
  for (size_t g = 0; g < G && g * rhat < qmax; g++) {
    const size_t q0 = g * rhat, q1 = q0 + rhat < qmax ? q0 + rhat : qmax, n = q1 - q0;
    ol_bk->copy(V, M, n * rhat * sizeof(float));  // rows 0 .. n of M
    ol_bk->rope_apply(V, cos_t + g * half, sin_t + g * half, 1, 1, n, rhat, 1);  // rot_g^T
    const float *rows = V;
    size_t width = rhat;
    if (rhat > k) {
      ol_bk->cyclic_rows(D, k, g * rhat, V, rhat, 0, rhat, n, 0.0f);
      rows = D, width = k;
    }
    const size_t split = qb <= q0 ? 0 : qb >= q1 ? n : qb - q0;  // rows counted full + 1 times
    sq += (double)(full + 1) * ol_bk->sumsq(rows, split * width) +
          (double)full * ol_bk->sumsq(rows + split * width, (n - split) * width);
  }
  return sq;
}

/* Reads one trained tensor of checkpoint f into b */
static int traj_read(ckpt_file *f, const traj_tensor *t, bk_buffer *b) {
  float *x = bk_reserve(b, numel_of(&t->e));
  return ol_ckpt_read(f->c, OL_GROUP_PARAMS, t->e.name, t->e.ndim, t->e.shape, x);
}

/* value^2 of cell i of checkpoint f, whose tensors are in r->cur */
static int cell_value_sq(traj_run *r, ckpt_file *f, size_t ci, double *out) {
  const traj_tensor *first = &r->t[r->cell_first[ci]];
  const size_t nt = r->cell_first[ci + 1] - r->cell_first[ci];
  const int p = first->module;
  size_t d = 0, k = 0;
  if (p < OL_PROJ_COUNT) proj_dims(&f->meta.cfg, p, &d, &k);
  int used[OL_MAX_ADAPTERS + 4] = {0};
  double sq = 0;
  size_t ia = 0, ib = 0, il = 0, id = 0, im = 0;
  const traj_tensor *A = cell_find(r, ci, "lora_A", &ia), *B = cell_find(r, ci, "lora_B", &ib);
  if (A || B) {  // lora, dora: s B A
    if (!A || !B)
      return ol_error("onelora inspect: %s: '%s' without its partner lora_%s", f->path,
                      (A ? A : B)->e.name, A ? "B" : "A");
    const size_t rk = A->e.shape[0];
    char want[96];
    snprintf(want, sizeof want, "[%zu, %zu] and [%zu, %zu]", rk, k, d, rk);
    if (A->e.ndim != 2 || B->e.ndim != 2 || A->e.shape[1] != k || B->e.shape[0] != d ||
        B->e.shape[1] != rk)
      return shape_error(f, A, want);
    sq += lora_sq(r, r->cur[ia].x, r->cur[ib].x, d, k, rk, r->lora_scale);
    used[ia] = used[ib] = 1;
  }
  const traj_tensor *lb = cell_find(r, ci, "vera_lambda_b", &il),
                    *ld = cell_find(r, ci, "vera_lambda_d", &id);
  if (lb || ld) {  // vera: diag(lambda_b) B_d diag(lambda_d) A_k
    if (!lb || !ld || !r->has_vera_frozen)
      return ol_error("onelora inspect: %s: '%s' without %s", f->path, (lb ? lb : ld)->e.name,
                      r->has_vera_frozen ? "its partner vera_lambda" : "the frozen vera_A and vera_B");
    const size_t rk = ld->e.shape[0], kmax = r->va_shape[1];
    if (lb->e.ndim != 1 || lb->e.shape[0] != d || ld->e.ndim != 1 || r->va_shape[0] != rk ||
        r->vb_shape[1] != rk || k > kmax || d > r->vb_shape[0])
      return ol_error("onelora inspect: %s: vera tensors of layer %zu %s do not fit: lambda_b [%zu], "
                      "lambda_d [%zu], vera_A [%zu, %zu], vera_B [%zu, %zu] for a (%zu, %zu) "
                      "projection", f->path, first->layer, traj_short(p), lb->e.shape[0], rk,
                      r->va_shape[0], r->va_shape[1], r->vb_shape[0], r->vb_shape[1], d, k);
    sq += vera_sq(r, r->cur[il].x, r->cur[id].x, r->wa.x, kmax, r->wb.x, d, k, rk);
    used[il] = used[id] = 1;
  }
  const traj_tensor *M = cell_find(r, ci, "mora_M", &im);
  if (M) {  // mora, mora6: the merged update
    const size_t rhat = M->e.shape[0];
    if (M->e.ndim != 2 || M->e.shape[1] != rhat || rhat == 0 || (r->mora6 && rhat % 2))
      return shape_error(f, M, r->mora6 ? "[r^, r^] with r^ even" : "[r^, r^]");
    sq += r->mora6 ? mora6_sq(r, r->cur[im].x, rhat, d, k) : mora_sq(r, r->cur[im].x, rhat, d, k);
    used[im] = 1;
  }
  if (cell_find(r, ci, "dora_m", &id)) used[id] = 1;  // its value needs W: delta only
  for (size_t j = 0; j < nt; j++) {
    if (used[j]) continue;
    // 1lora's b, bitfit's beta, a norm's gamma, full's weights: the tensor itself, or its change
    // from the model (--model) for the model's own tensors (norms, full)
    const traj_tensor *t = &r->t[r->cell_first[ci] + j];
    const size_t n = numel_of(&t->e);
    float *x = r->cur[j].x;  // (n,)
    const int from_model = strcmp(t->param, "weight") == 0 || (r->full && strcmp(t->param, "bias") == 0);
    if (r->model && from_model) {
      const size_t start[OL_MAX_DIMS] = {0};
      float *w = bk_reserve(&r->prev, n);  // (n,) the model's tensor, then theta - theta_model
      OL_TRY(ol_weights_read(r->model, t->e.name, t->e.ndim, t->e.shape, start, t->e.shape, w));
      ol_bk->axpy(w, x, -1.0f, n);
      sq += ol_bk->sumsq(w, n);
    } else {
      sq += ol_bk->sumsq(x, n);
    }
  }
  *out = sq;
  return OL_OK;
}

/* delta^2 of cell i: ||theta_t - theta_{t-1}||^2 over its tensors, theta_t in r->cur */
static int cell_delta_sq(traj_run *r, ckpt_file *prev, size_t ci, double *out) {
  double sq = 0;
  for (size_t i = r->cell_first[ci]; i < r->cell_first[ci + 1]; i++) {
    const traj_tensor *t = &r->t[i];
    const size_t n = numel_of(&t->e);
    OL_TRY(traj_read(prev, t, &r->prev));
    ol_bk->axpy(r->prev.x, r->cur[i - r->cell_first[ci]].x, -1.0f, n);  // theta_{t-1} - theta_t
    sq += ol_bk->sumsq(r->prev.x, n);
  }
  *out = sq;
  return OL_OK;
}

static void traj_free(traj_run *r) {
  for (size_t i = 0; i < sizeof r->cur / sizeof r->cur[0]; i++) ol_bk->free(r->cur[i].x);
  ol_bk->free(r->prev.x);
  ol_bk->free(r->wa.x);
  ol_bk->free(r->wb.x);
  ol_bk->free(r->block.x);
  ol_bk->free(r->tables.x);
  ol_free(r->t);
  ol_free(r->cell_first);
  if (r->model) ol_weights_close(r->model);
}

typedef struct {
  int64_t *steps;    /* (n_ckpt,) */
  double *loss;      /* (n_ckpt,) */
  double *value;     /* (n_ckpt, n_cells) */
  double *delta;     /* (n_ckpt, n_cells); NAN for the first checkpoint */
  size_t n_ckpt;
} traj_result;

static void print_traj_csv(const traj_run *r, const traj_result *res) {
  printf("step,layer,proj,value,delta\n");
  for (size_t s = 0; s < res->n_ckpt; s++)
    for (size_t c = 0; c < r->n_cells; c++) {
      const traj_tensor *t = &r->t[r->cell_first[c]];
      printf("%lld,%zu,%s,%.9g,", (long long)res->steps[s], t->layer, traj_short(t->module),
             res->value[s * r->n_cells + c]);
      if (s) printf("%.9g", res->delta[s * r->n_cells + c]);
      printf("\n");
    }
}

static void print_traj(const traj_run *r, const traj_result *res) {
  const ol_ckpt_meta *m = &r->first_meta;
  const size_t nc = r->n_cells, last = res->n_ckpt - 1;
  printf("trajectory  %s: %zu checkpoints, steps %lld .. %lld\n", r->dir, res->n_ckpt,
         (long long)res->steps[0], (long long)res->steps[last]);
  printf("method      %s    targets %s    %lld layers, %zu cells (layer, projection) trained\n",
         m->method, m->targets, (long long)m->cfg.n_layers, nc);
  printf("value       the norm of what the method put in each cell (||b||, ||beta||, ||delta W||_F "
         "or ||theta||%s)\n", r->model ? "; ||theta - theta_model|| for the model's tensors" : "");
  printf("delta       ||theta_t - theta_{t-1}|| over the cell's trained tensors\n\n");
  printf("%10s %12s %12s %12s  %s\n", "step", "loss", "||value||", "||delta||", "largest delta");
  for (size_t s = 0; s < res->n_ckpt; s++) {
    double vs = 0, ds = 0;
    size_t worst = 0;
    for (size_t c = 0; c < nc; c++) {
      const double v = res->value[s * nc + c], dl = res->delta[s * nc + c];
      vs += v * v;
      if (s) {
        ds += dl * dl;
        if (dl > res->delta[s * nc + worst]) worst = c;
      }
    }
    printf("%10lld %12.6f %12.4e", (long long)res->steps[s], res->loss[s], sqrt(vs));
    if (s) {
      const traj_tensor *t = &r->t[r->cell_first[worst]];
      printf(" %12.4e  layer %zu %s (%.4e)\n", sqrt(ds), t->layer, traj_short(t->module),
             res->delta[s * nc + worst]);
    } else {
      printf(" %12s  (first checkpoint)\n", "-");
    }
  }
  int used[N_MODULES] = {0};
  for (size_t c = 0; c < nc; c++) used[r->t[r->cell_first[c]].module] = 1;
  printf("\nvalue at step %lld (rows: layers)\n%7s", (long long)res->steps[last], "layer");
  for (int mo = 0; mo < N_MODULES; mo++)
    if (used[mo]) printf(" %11s", traj_short(mo));
  printf("\n");
  size_t c = 0;
  for (size_t l = 0; l < (size_t)m->cfg.n_layers; l++) {
    printf("%7zu", l);
    for (int mo = 0; mo < N_MODULES; mo++) {
      if (!used[mo]) continue;
      const traj_tensor *t = c < nc ? &r->t[r->cell_first[c]] : NULL;
      if (t && t->layer == l && t->module == mo) printf(" %11.4e", res->value[last * nc + c++]);
      else printf(" %11s", "-");
    }
    printf("\n");
  }
}

static int trajectory(const char *dir, const char *model_path, int csv) {
  traj_run r;
  memset(&r, 0, sizeof r);
  r.dir = dir;
  r.model_path = model_path;
  traj_result res = {0};
  int64_t *steps = NULL;
  size_t n = 0;
  int rc = ol_ckpt_list(dir, &steps, &n);
  size_t dir_bytes;
  if (rc == OL_OK && n == 0 && ol_file_size(dir, &dir_bytes) != OL_OK)
    rc = ol_error("onelora inspect: --trajectory %s: no such directory (%s)", dir, ol_last_error());
  else if (rc == OL_OK && n == 0)
    rc = ol_error("onelora inspect: --trajectory %s: no checkpoint (step-%%08d.h5) in that "
                  "directory (is it the run's --ckpt-dir?)", dir);
  ckpt_file files[2];  // the current checkpoint and its predecessor
  memset(files, 0, sizeof files);
  char paths[2][4096];
  if (rc == OL_OK) {
    res.steps = steps;
    res.n_ckpt = n;
    res.loss = ol_calloc(n, sizeof *res.loss);
  }
  for (size_t s = 0; rc == OL_OK && s < n; s++) {
    ckpt_file *f = &files[s % 2], *prev = s ? &files[(s + 1) % 2] : NULL;
    ol_ckpt_path(paths[s % 2], sizeof paths[0], dir, steps[s]);
    rc = open_file(f, paths[s % 2]);
    if (rc == OL_OK && s == 0) {
      rc = traj_setup(&r, f);
      if (rc == OL_OK) {
        res.value = ol_calloc(n * r.n_cells, sizeof *res.value);
        res.delta = ol_calloc(n * r.n_cells, sizeof *res.delta);
      }
      if (rc == OL_OK && model_path) {
        ol_config mc;
        rc = ol_weights_open(model_path, &r.model, &mc);
        if (rc == OL_OK && ol_config_match(&f->meta.cfg, &mc, f->path) != OL_OK)
          rc = ol_error("onelora inspect: --model %s is not the model of this run: %s", model_path,
                        ol_last_error());
      }
    } else if (rc == OL_OK) {
      rc = traj_check_same_run(&r, f);
    }
    if (rc == OL_OK && f->meta.step != steps[s])
      rc = ol_error("onelora inspect: %s holds step %lld (attribute 'step'), not the %lld of its "
                    "name", f->path, (long long)f->meta.step, (long long)steps[s]);
    if (rc == OL_OK) res.loss[s] = f->meta.loss;
    if (rc == OL_OK && r.has_vera_frozen) {  // VeRA's shared A (r, k_max) and B (d_max, r)
      rc = ol_ckpt_read(f->c, OL_GROUP_FROZEN, "vera_A", 2, r.va_shape,
                        bk_reserve(&r.wa, r.va_shape[0] * r.va_shape[1]));
      if (rc == OL_OK)
        rc = ol_ckpt_read(f->c, OL_GROUP_FROZEN, "vera_B", 2, r.vb_shape,
                          bk_reserve(&r.wb, r.vb_shape[0] * r.vb_shape[1]));
    }
    for (size_t c = 0; rc == OL_OK && c < r.n_cells; c++) {
      for (size_t i = r.cell_first[c]; rc == OL_OK && i < r.cell_first[c + 1]; i++) {
        if (i - r.cell_first[c] >= sizeof r.cur / sizeof r.cur[0])
          rc = ol_error("onelora inspect: %s: layer %zu %s holds more than %zu trained tensors",
                        f->path, r.t[i].layer, traj_short(r.t[i].module),
                        sizeof r.cur / sizeof r.cur[0]);
        else
          rc = traj_read(f, &r.t[i], &r.cur[i - r.cell_first[c]]);
      }
      double v = 0, dl = NAN;
      if (rc == OL_OK) rc = cell_value_sq(&r, f, c, &v);
      if (rc == OL_OK && prev) rc = cell_delta_sq(&r, prev, c, &dl);
      if (rc == OL_OK) {
        res.value[s * r.n_cells + c] = sqrt(v);
        res.delta[s * r.n_cells + c] = prev ? sqrt(dl) : NAN;
      }
    }
    if (prev && prev->c) {
      ol_ckpt_close(prev->c);
      prev->c = NULL;
    }
  }
  for (int i = 0; i < 2; i++)
    if (files[i].c) ol_ckpt_close(files[i].c);
  if (rc == OL_OK) {
    if (csv) print_traj_csv(&r, &res);
    else print_traj(&r, &res);
  }
  traj_free(&r);
  ol_free(steps);
  ol_free(res.loss);
  ol_free(res.value);
  ol_free(res.delta);
  return rc;
}

int ol_cmd_inspect(int argc, char **argv) {
  const char *other = NULL, *traj_dir = NULL, *model = NULL;
  options o = {0};
  const ol_arg args[] = {
      {"--diff", OL_ARG_STR, &other, "OTHER.h5",
       "per tensor ||a-b|| and ||a-b||/||b|| against OTHER (the reference b)"},
      {"--csv", OL_ARG_FLAG, &o.csv, NULL,
       "CSV instead of tables: group,name,shape,numel,l2,min,max,mean_abs (with --trajectory: "
       "step,layer,proj,value,delta)"},
      {"--per-layer", OL_ARG_FLAG, &o.per_layer, NULL,
       "with --csv: the per-layer summary instead, layer,module,l2"},
      {"--moments", OL_ARG_FLAG, &o.moments, NULL, "also show the AdamW moments adam_m, adam_v"},
      {"--trajectory", OL_ARG_STR, &traj_dir, "CKPT_DIR",
       "every checkpoint DIR/step-%08d.h5 of one run, in step order: per layer and projection the "
       "norm of the method's update and its change from the previous checkpoint"},
      {"--model", OL_ARG_STR, &model, "M",
       "with --trajectory: values of the model's own trained tensors (norms, full) as "
       "||theta - theta_model||, M the run's --model"},
  };
  char *pos[2];
  int npos = 0, help;
  if (ol_args_parse(
          "inspect",
          "CKPT.h5 [--diff OTHER.h5] [--csv [--per-layer]] [--moments]\n"
          "       onelora inspect --trajectory CKPT_DIR [--csv] [--model M]\n\n"
          "Prints a checkpoint's header (step, method, model shape, layout, loss), a table of its\n"
          "tensors (L2 norm, min, max, mean |x|, in double precision; groups params and frozen,\n"
          "with --moments also adam_m and adam_v) and the per-layer L2 norms of the trained\n"
          "tensors (rows: layers; columns: q k v o gate up down and the two norms).\n"
          "Every dataset of each file is read in full, so every checksum is verified: a corrupt\n"
          "file is an error naming the dataset.\n\n"
          "--diff: b = OTHER's tensor of the same name; diff_rel = ||a-b||/||b|| is inf when\n"
          "||b|| = 0 and a differs, 0 when both are zero. Tensors in one file only are listed.\n"
          "--csv: one header line, one row per tensor; with --diff three more columns\n"
          "diff_abs,diff_rel,present (both|ckpt_only|other_only), empty where not defined.\n"
          "Shapes are written d0xd1. --csv --per-layer: rows layer,module,l2 for each cell, then\n"
          "'<layer>,total' per layer, 'all,<module>' and 'all,total', and 'outside,<tensor name>'\n"
          "for trained tensors outside the layers.\n\n"
          "--trajectory: for each checkpoint of the directory (one run) and each trained (layer,\n"
          "projection): value = the norm of what the method put there (||b|| for 1lora and\n"
          "1lora-random, ||beta|| for bitfit, ||delta W||_F for lora, dora's s B A, vera and\n"
          "mora/mora6, ||theta|| of each tensor for norms and full, or ||theta - theta_model||\n"
          "with --model) and delta = ||theta_t - theta_{t-1}|| over its trained tensors. Tables:\n"
          "a line per checkpoint and the final values; --csv: step,layer,proj,value,delta with\n"
          "proj q,k,v,o,gate,up,down,attn_norm,mlp_norm and delta empty on the first checkpoint.\n"
          "jobs/trajectory.sh draws it. See docs/FORMATS.md.",
          argc, argv, args, sizeof args / sizeof args[0], &help, pos, 2, &npos) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  int rc = OL_OK;
  if (traj_dir) {
    if (npos > 0)
      rc = ol_error("onelora inspect: --trajectory %s reads a directory; '%s' is one checkpoint "
                    "too many", traj_dir, pos[0]);
    else if (other || o.per_layer || o.moments)
      rc = ol_error("onelora inspect: --trajectory takes only --csv and --model, not %s",
                    other ? "--diff" : o.per_layer ? "--per-layer" : "--moments");
    if (rc == OL_OK) rc = trajectory(traj_dir, model, o.csv);
    return rc == OL_OK ? 0 : ol_cli_fail();
  }
  if (model)
    rc = ol_error("onelora inspect: --model %s is for --trajectory only", model);
  else if (npos == 0)
    rc = ol_error("onelora inspect: missing the checkpoint file (see onelora inspect --help)");
  else if (npos > 1)
    rc = ol_error("onelora inspect: one checkpoint expected, got '%s' and '%s' (use --diff "
                  "OTHER.h5)", pos[0], pos[1]);
  else if (o.per_layer && !o.csv)
    rc = ol_error("onelora inspect: --per-layer needs --csv (the tables always show the per-layer "
                  "summary)");
  if (rc == OL_OK) rc = inspect(pos[0], other, &o);
  return rc == OL_OK ? 0 : ol_cli_fail();
}
