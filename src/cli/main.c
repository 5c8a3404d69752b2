/* onelora: one binary, one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/backend.h"
#include "onelora/core.h"
#include "onelora/parallel.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  int mpi;  /* runs on MPI ranks; the others are single-process tools that skip MPI start-up */
  const char *summary;
} command;

static const command commands[] = {
    {"train", ol_cmd_train, 1, "fine-tune a model with a PEFT method"},
    {"init", ol_cmd_init, 0, "write a random model from a preset or an explicit shape"},
    {"tokenize", ol_cmd_tokenize, 0, "byte-level tokenizer: text files to a data file"},
    {"bench", ol_cmd_bench, 1, "measure training throughput and memory on a random model"},
    {"merge", ol_cmd_merge, 0, "fold a checkpoint into the model weights"},
    {"plan", ol_cmd_plan, 0, "count what a method trains on a model (before running it)"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: onelora SUBCOMMAND [options]   (onelora SUBCOMMAND --help for each)\n\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "onelora: error: missing subcommand (see onelora --help)\n");
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(stdout);
    return 0;
  }
  const command *cmd = NULL;
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp(argv[1], commands[i].name) == 0) cmd = &commands[i];
  if (!cmd) {
    fprintf(stderr, "onelora: error: unknown subcommand '%s' (see onelora --help)\n", argv[1]);
    return 2;
  }
  int help = 0;
  for (int i = 2; i < argc; i++) help |= strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0;
  int mpi = cmd->mpi && !help;
  ol_grid grid;
  if (mpi) ol_grid_init(&argc, &argv, &grid);
  ol_backend_set(ol_backend_cpu());
  int rc = cmd->run(argc - 1, argv + 1);
  if (mpi) ol_grid_finalize();
  return rc;
}
