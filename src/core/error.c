/* Error recording and logging: the only global mutable state besides the backend table. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onelora/core/core.h"

static char last_error[1024];
static int log_rank;

int ol_error(const char *fmt, ...) {
  char msg[sizeof last_error];  /* formatted aside: an argument may be ol_last_error() itself */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  memcpy(last_error, msg, sizeof msg);
  return OL_ERR;
}

const char *ol_last_error(void) { return last_error[0] ? last_error : "unknown error"; }

void ol_clear_error(void) { last_error[0] = '\0'; }

void ol_fatal(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "onelora: fatal: %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  abort();
}

void ol_log_set_rank(int rank) { log_rank = rank; }

void ol_error_report(void) {
  if (log_rank != 0) return;  // errors are agreed across ranks: rank 0 speaks for all
  fprintf(stderr, "onelora: error: %s\n", ol_last_error());
  fflush(stderr);
}

void ol_info(const char *fmt, ...) {
  if (log_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fputc('\n', stdout);
  fflush(stdout);
}

void ol_warn(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "onelora: warning: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
}

void ol_strlcpy(char *dst, const char *src, size_t size) {
  if (size == 0) return;
  size_t n = strlen(src);
  if (n >= size) n = size - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}
