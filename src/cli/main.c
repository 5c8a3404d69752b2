/* onelora: one binary, one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);                  /* a single-process tool */
  int (*run_mpi)(int argc, char **argv, ol_grid *grid); /* runs on MPI ranks */
  const char *summary;
} command;

static const command commands[] = {
    {"train", NULL, ol_cmd_train, "fine-tune a model with a PEFT method"},
    {"init", ol_cmd_init, NULL, "write a random model from a preset or an explicit shape"},
    {"tokenize", ol_cmd_tokenize, NULL, "byte-level tokenizer: text files to a data file"},
    {"bench", NULL, ol_cmd_bench, "measure training throughput and memory on a random model"},
    {"merge", ol_cmd_merge, NULL, "fold a checkpoint into the model weights"},
    {"convert", ol_cmd_convert, NULL, "Hugging Face directory to an onelora model file"},
    {"plan", ol_cmd_plan, NULL, "count what a method trains on a model (before running it)"},
    {"inspect", ol_cmd_inspect, NULL, "tensor and per-layer norms of a checkpoint; verifies checksums"},
    {"generate", NULL, ol_cmd_generate, "sample text from a model with a checkpoint's adapters"},
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
  ol_backend_set(ol_backend_cpu());
  if (!cmd->run_mpi) return cmd->run(argc - 1, argv + 1);
  ol_grid grid = {.world_size = 1, .tp = 1, .pp = 1, .dp = 1};
  if (!help) ol_grid_init(&argc, &argv, &grid);  // --help needs no MPI start-up
  int rc = cmd->run_mpi(argc - 1, argv + 1, &grid);
  if (!help) ol_grid_finalize(&grid);
  return rc;
}
