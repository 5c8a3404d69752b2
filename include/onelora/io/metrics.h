/* onelora io: the JSON-lines log, CSV results and directories. */
#ifndef ONELORA_IO_METRICS_H
#define ONELORA_IO_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/core.h"

/* ---- metrics: JSON-lines log ---------------------------------------------------------------- */
typedef struct ol_metrics ol_metrics;
/* Truncates, or appends (a resumed run continues its log); NULL path = no log. */
int ol_metrics_open(const char *path, int append, ol_metrics **out);
/* Appends one JSON object. keys[i] -> values[i] (numbers); `kind` becomes {"kind": kind}. */
int ol_metrics_write(ol_metrics *m, const char *kind, int n, const char *const *keys,
                     const double *values);
void ol_metrics_close(ol_metrics *m);
/* Appends one line `row` to a CSV file, writing the `header` line first when the file is new
 * or empty. */
int ol_csv_append(const char *path, const char *header, const char *row);

/* Creates directory `dir` and any missing parents; an existing directory is fine. */
int ol_io_make_dir(const char *dir);

#endif
