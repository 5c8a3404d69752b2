/* onelora inspect: a checkpoint's header, per-tensor statistics (L2 norm, min, max, mean |x|,
 * computed in double precision), the per-layer L2 norms of the trained tensors and, with --diff,
 * each tensor's change against a reference checkpoint. Every dataset of each file is read in
 * full, so every Fletcher32 checksum is verified, whatever is printed. Output formats:
 * docs/FORMATS.md, "Inspecting a checkpoint". */
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "onelora/peft/linear.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/files.h"
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

int ol_cmd_inspect(int argc, char **argv) {
  const char *other = NULL;
  options o = {0};
  const ol_arg args[] = {
      {"--diff", OL_ARG_STR, &other, "OTHER.h5",
       "per tensor ||a-b|| and ||a-b||/||b|| against OTHER (the reference b)"},
      {"--csv", OL_ARG_FLAG, &o.csv, NULL,
       "CSV instead of tables: group,name,shape,numel,l2,min,max,mean_abs"},
      {"--per-layer", OL_ARG_FLAG, &o.per_layer, NULL,
       "with --csv: the per-layer summary instead, layer,module,l2"},
      {"--moments", OL_ARG_FLAG, &o.moments, NULL, "also show the AdamW moments adam_m, adam_v"},
  };
  char *pos[2];
  int npos = 0, help;
  if (ol_args_parse(
          "inspect",
          "CKPT.h5 [--diff OTHER.h5] [--csv [--per-layer]] [--moments]\n\n"
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
          "for trained tensors outside the layers. See docs/FORMATS.md.",
          argc, argv, args, sizeof args / sizeof args[0], &help, pos, 2, &npos) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  int rc = OL_OK;
  if (npos == 0)
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
