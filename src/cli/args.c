/* A small table-driven flag parser: every value is checked, every error names the flag. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

static void print_help(const char *cmd, const char *usage, const ol_arg *args, size_t nargs) {
  printf("usage: onelora %s %s\n\n%s\n", cmd, usage ? usage : "[options]", nargs ? "options:" : "");
  for (size_t i = 0; i < nargs; i++) {
    char left[64];
    snprintf(left, sizeof left, "%s%s%s", args[i].name, args[i].meta ? " " : "",
             args[i].meta ? args[i].meta : "");
    printf("  %-26s %s\n", left, args[i].help);
  }
  printf("  %-26s %s\n", "--help", "show this help");
}

static int parse_int(const char *cmd, const char *flag, const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end)
    return ol_error("onelora %s: %s expects an integer, got '%s'", cmd, flag, s);
  *out = v;
  return OL_OK;
}

static int parse_float(const char *cmd, const char *flag, const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !isfinite(v))
    return ol_error("onelora %s: %s expects a finite number, got '%s'", cmd, flag, s);
  *out = v;
  return OL_OK;
}

int ol_args_parse(const char *cmd, const char *usage, int argc, char **argv, const ol_arg *args,
                  size_t nargs, int *help, char **pos, int max_pos, int *npos) {
  *help = 0;
  if (npos) *npos = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      print_help(cmd, usage, args, nargs);
      *help = 1;
      return OL_OK;
    }
    if (strncmp(a, "--", 2) != 0) {
      if (!pos || !npos || *npos >= max_pos)
        return ol_error("onelora %s: unexpected argument '%s' (see onelora %s --help)", cmd, a, cmd);
      pos[(*npos)++] = argv[i];
      continue;
    }
    const ol_arg *spec = NULL;
    for (size_t j = 0; j < nargs; j++)
      if (strcmp(args[j].name, a) == 0) spec = &args[j];
    if (!spec) return ol_error("onelora %s: unknown flag '%s' (see onelora %s --help)", cmd, a, cmd);
    if (spec->kind == OL_ARG_FLAG) {
      *(int *)spec->dst = 1;
      continue;
    }
    if (i + 1 >= argc) return ol_error("onelora %s: %s needs a value", cmd, a);
    const char *val = argv[++i];
    switch (spec->kind) {
      case OL_ARG_STR: *(const char **)spec->dst = val; break;
      case OL_ARG_INT: OL_TRY(parse_int(cmd, a, val, (int64_t *)spec->dst)); break;
      case OL_ARG_FLOAT: OL_TRY(parse_float(cmd, a, val, (double *)spec->dst)); break;
      case OL_ARG_STRS: {
        ol_strs *s = spec->dst;
        s->items = &argv[i];
        s->count = 1;
        while (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0) {
          i++;
          s->count++;
        }
        break;
      }
      case OL_ARG_FLAG: break;
    }
  }
  return OL_OK;
}

int ol_cli_use_device(ol_grid *g, const char *device) {
  OL_TRY(ol_grid_use_device(g, device));
  // on stderr, so generate's stdout stays its text; the cpu's plain MPI goes without saying
  if (g->world_rank == 0 && !ol_bk->host_visible) {
    const char *name = ol_cuda_device_name();
    fprintf(stderr, "onelora: device %s%s%s%s | communication: %s\n", ol_bk->name,
            *name ? " (" : "", name, *name ? ")" : "", ol_grid_comm_path(g));
  }
  return OL_OK;
}

int ol_cli_fail(void) {
  ol_error_report();
  return 1;
}
