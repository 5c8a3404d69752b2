/* Subcommands and the flag parser they share. Each subcommand returns the process exit code. */
#ifndef ONELORA_CLI_H
#define ONELORA_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/parallel/grid.h"
#include "onelora/train/trainer.h"

int ol_cmd_train(int argc, char **argv, ol_grid *grid);
int ol_cmd_init(int argc, char **argv);
int ol_cmd_tokenize(int argc, char **argv);
int ol_cmd_bench(int argc, char **argv, ol_grid *grid);
int ol_cmd_merge(int argc, char **argv);
int ol_cmd_convert(int argc, char **argv);
int ol_cmd_plan(int argc, char **argv);
int ol_cmd_inspect(int argc, char **argv);
int ol_cmd_generate(int argc, char **argv, ol_grid *grid);

typedef enum { OL_ARG_STR, OL_ARG_INT, OL_ARG_FLOAT, OL_ARG_FLAG, OL_ARG_STRS } ol_arg_kind;

typedef struct {
  const char *name;   /* "--steps" */
  ol_arg_kind kind;
  void *dst;          /* const char** | int64_t* | double* | int* | ol_strs* */
  const char *meta;   /* "N", "PATH", ... for --help */
  const char *help;
} ol_arg;

typedef struct {      /* a flag that takes one or more values, e.g. --in A.txt B.txt */
  char **items;
  int count;
} ol_strs;

/* Parses argv[1..argc) into the table. `--help` prints usage + the table and sets *help.
 * Positional arguments are collected into pos (up to max_pos). Errors name the flag and value. */
int ol_args_parse(const char *cmd, const char *usage, int argc, char **argv, const ol_arg *args,
                  size_t nargs, int *help, char **pos, int max_pos, int *npos);

/* Model shape flags (init, bench): --preset and per-field overrides. */
#define OL_SHAPE_NARGS 8
typedef struct {
  const char *preset;
  int64_t dim, layers, heads, kv, ffn, vocab, maxt;
} ol_shape_args;
void ol_shape_flags(ol_shape_args *s, ol_arg *out);           /* fills OL_SHAPE_NARGS entries */
int ol_shape_config(const ol_shape_args *s, ol_config *cfg);  /* preset + overrides, validated */

/* The training flags (train, bench), parsed and checked into o; `extra` flags are appended.
 * File flags (--model, --data) are required unless `synthetic`. */
int ol_train_flags(const char *cmd, const char *usage, int argc, char **argv, const ol_arg *extra,
                   size_t n_extra, int synthetic, ol_train_opts *o, int *help);

/* --device (cpu | cuda): the backend every later allocation and kernel uses, and how collectives
 * move its buffers; rank 0 logs both on stderr for a device other than the cpu. Collective over
 * the grid; call it before any model is built. */
int ol_cli_use_device(ol_grid *g, const char *device);

/* Prints "onelora: error: <last error>" to stderr and returns the exit code 1 */
int ol_cli_fail(void);

#endif
