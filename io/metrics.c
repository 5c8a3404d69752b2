/* Metrics log: one JSON object per line, flushed per line so `tail -f` and a crash both see
 * every completed record. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "onelora/core/core.h"
#include "onelora/io/metrics.h"
#include "json.h"

struct ol_metrics {
  FILE *fp;    /* NULL: no log */
  char *path;
};

int ol_metrics_open(const char *path, int append, ol_metrics **out) {
  *out = NULL;
  ol_metrics *m = ol_calloc(1, sizeof *m);
  if (path) {
    m->fp = fopen(path, append ? "a" : "w");
    if (!m->fp) {
      int err = errno;
      ol_free(m);
      return ol_error("%s: cannot open metrics log: %s", path, strerror(err));
    }
    size_t n = strlen(path) + 1;
    m->path = ol_calloc(n, 1);
    memcpy(m->path, path, n);
  }
  *out = m;
  return OL_OK;
}

static void put_string(FILE *fp, const char *s) {
  char *q = ol_json_quote(s);
  fputs(q, fp);
  ol_free(q);
}

/* Exact integers print as integers ("step": 3), other numbers with %.9g, non-finite as null. */
static void put_number(FILE *fp, double v) {
  if (!isfinite(v))
    fputs("null", fp);
  else if (v == floor(v) && fabs(v) < 9007199254740992.0) /* 2^53 */
    fprintf(fp, "%lld", (long long)v);
  else
    fprintf(fp, "%.9g", v);
}

int ol_metrics_write(ol_metrics *m, const char *kind, int n, const char *const *keys,
                     const double *values) {
  if (!m || !m->fp) return OL_OK;
  fputs("{\"kind\": ", m->fp);
  put_string(m->fp, kind);
  for (int i = 0; i < n; i++) {
    fputs(", ", m->fp);
    put_string(m->fp, keys[i]);
    fputs(": ", m->fp);
    put_number(m->fp, values[i]);
  }
  fputs("}\n", m->fp);
  if (fflush(m->fp) != 0 || ferror(m->fp))
    return ol_error("%s: cannot write metrics: %s", m->path, strerror(errno));
  return OL_OK;
}

void ol_metrics_close(ol_metrics *m) {
  if (!m) return;
  if (m->fp) fclose(m->fp);
  ol_free(m->path);
  ol_free(m);
}

int ol_csv_append(const char *path, const char *header, const char *row) {
  FILE *fp = fopen(path, "a");
  if (!fp) return ol_error("%s: cannot open results file: %s", path, strerror(errno));
  fseek(fp, 0, SEEK_END);
  int ok = (ftell(fp) > 0 || fprintf(fp, "%s\n", header) >= 0) && fprintf(fp, "%s\n", row) >= 0;
  int err = errno;
  if (fclose(fp) != 0 && ok) {
    ok = 0;
    err = errno;
  }
  return ok ? OL_OK : ol_error("%s: cannot append to results file: %s", path, strerror(err));
}
