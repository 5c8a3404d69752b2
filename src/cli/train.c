/* onelora train: parse and check every flag, then hand over to the trainer. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "onelora/core/core.h"

static const char *usage_text =
    "--model M.h5 --data D.h5 [options]\n\n"
    "Fine-tunes the frozen model M with a PEFT method on the token data D. Rank 0 prints one line\n"
    "per step; --log writes the same as JSON lines; a checkpoint is written to --ckpt-dir at the\n"
    "end and every --ckpt-every steps.\n\n"
    "SIGTERM or SIGUSR1 to any rank: every rank stops after the current step, a checkpoint is\n"
    "written, and the exit status is 75 (rerun with --resume auto to continue).";

int ol_train_flags(const char *cmd, const char *usage, int argc, char **argv, const ol_arg *extra,
                   size_t n_extra, int synthetic, ol_train_opts *out, int *help) {
  const char *model = NULL, *data = NULL, *method = "1lora", *targets = "all";
  const char *schedule = "cosine", *ckpt_dir = NULL, *log = NULL, *device = "cpu";
  const char *wdtype = "f32", *pp_schedule = "1f1b", *resume = NULL, *results = NULL;
  int64_t steps = 100, mb = 4, mbs = 1, seq = 256, warmup = 0, eval_every = 0, eval_batches = 4;
  int64_t ckpt_every = 0, keep = 0, seed = 1234, rank = 1, tp = 1, pp = 1;
  double lr = 1e-3, min_lr = 0.0, wd = 0.0, clip = 1.0, alpha = 1.0;
  int no_shuffle = 0, no_map = 0, recompute = 0;
  char method_help[600];  // the registry's methods
  snprintf(method_help, sizeof method_help, "%s; comma-combined, e.g. 1lora,norms (1lora)",
           ol_method_names());
  const ol_arg files[] = {
      {"--model", OL_ARG_STR, &model, "M.h5|DIR", "model file (HDF5) or Hugging Face directory (config.json + safetensors)"},
      {"--data", OL_ARG_STR, &data, "D.h5", "token data file (HDF5, from onelora tokenize)"},
  };
  const ol_arg common[] = {
      {"--method", OL_ARG_STR, &method, "LIST", method_help},
      {"--targets", OL_ARG_STR, &targets, "LIST", "all | attn | mlp | q,k,v,o,gate,up,down (all)"},
      {"--rank", OL_ARG_INT, &rank, "R", "adapter rank for rank-r methods (1)"},
      {"--alpha", OL_ARG_FLOAT, &alpha, "A", "adapter scaling numerator (1)"},
      {"--steps", OL_ARG_INT, &steps, "N", "optimizer steps (100)"},
      {"--micro-batch", OL_ARG_INT, &mb, "B", "sequences per micro-batch (4)"},
      {"--micro-batches", OL_ARG_INT, &mbs, "M", "micro-batches accumulated per step (1)"},
      {"--seq-len", OL_ARG_INT, &seq, "T", "tokens per sequence (256)"},
      {"--lr", OL_ARG_FLOAT, &lr, "LR", "peak learning rate (1e-3)"},
      {"--min-lr", OL_ARG_FLOAT, &min_lr, "LR", "final learning rate of the cosine schedule (0)"},
      {"--warmup", OL_ARG_INT, &warmup, "N", "linear warmup steps (0)"},
      {"--schedule", OL_ARG_STR, &schedule, "S", "cosine | constant (cosine)"},
      {"--weight-decay", OL_ARG_FLOAT, &wd, "WD", "AdamW decoupled weight decay (0)"},
      {"--clip", OL_ARG_FLOAT, &clip, "C", "global gradient-norm clip, 0 disables (1)"},
      {"--seed", OL_ARG_INT, &seed, "S", "seed of the data order and adapter init (1234)"},
      {"--no-shuffle", OL_ARG_FLAG, &no_shuffle, NULL, "read the data in its stored order"},
      {"--tp", OL_ARG_INT, &tp, "N", "tensor-parallel ranks (1)"},
      {"--pp", OL_ARG_INT, &pp, "N", "pipeline stages (1)"},
      {"--pp-schedule", OL_ARG_STR, &pp_schedule, "S", "1f1b | gpipe (1f1b)"},
      {"--weights-dtype", OL_ARG_STR, &wdtype, "T",
       "frozen weights in memory: f32 | f16 | bf16, 2 bytes a value, widened per GEMM tile (f32)"},
      {"--no-map", OL_ARG_FLAG, &no_map, NULL,
       "read frozen weights into memory instead of mapping them from the model file (mapped "
       "when its dtype is --weights-dtype's and the tensor is contiguous)"},
      {"--recompute", OL_ARG_FLAG, &recompute, NULL,
       "keep only each block's input; recompute the block in backward"},
      {"--device", OL_ARG_STR, &device, "D",
       "cpu | cuda: one GPU per rank, local rank modulo the node's GPUs (cpu)"},
      {"--eval-every", OL_ARG_INT, &eval_every, "N", "validation loss every N steps, 0 = never (0)"},
      {"--eval-batches", OL_ARG_INT, &eval_batches, "N", "global batches per validation (4)"},
      {"--ckpt-dir", OL_ARG_STR, &ckpt_dir, "DIR", "checkpoint directory (none)"},
      {"--ckpt-every", OL_ARG_INT, &ckpt_every, "N", "checkpoint every N steps, 0 = only at the end"},
      {"--keep", OL_ARG_INT, &keep, "K", "keep the newest K checkpoints, 0 = all (0)"},
      {"--resume", OL_ARG_STR, &resume, "auto|PATH",
       "continue from a checkpoint: PATH, or auto = the newest valid one in --ckpt-dir (none: "
       "start afresh)"},
      {"--log", OL_ARG_STR, &log, "FILE", "JSON-lines log of every step (none)"},
      {"--results", OL_ARG_STR, &results, "FILE.csv", "append one CSV row summarising the run"},
  };
  // the table: files (unless synthetic), the common flags, then the caller's extras
  const size_t n_files = synthetic ? 0 : 2, n_common = sizeof common / sizeof common[0];
  ol_arg args[64];
  OL_CHECK(n_files + n_common + n_extra <= 64);
  for (size_t i = 0; i < n_files; i++) args[i] = files[i];
  for (size_t i = 0; i < n_common; i++) args[n_files + i] = common[i];
  for (size_t i = 0; i < n_extra; i++) args[n_files + n_common + i] = extra[i];
  OL_TRY(ol_args_parse(cmd, usage, argc, argv, args, n_files + n_common + n_extra, help, NULL, 0,
                       NULL));
  if (*help) return OL_OK;

  ol_train_opts o = {0};
  int rc = OL_OK;
  if (!synthetic && !model) rc = ol_error("onelora %s: --model is required", cmd);
  else if (!synthetic && !data) rc = ol_error("onelora %s: --data is required", cmd);
  else if (steps <= 0) rc = ol_error("--steps must be positive, got %lld", (long long)steps);
  else if (mb <= 0) rc = ol_error("--micro-batch must be positive, got %lld", (long long)mb);
  else if (mbs <= 0) rc = ol_error("--micro-batches must be positive, got %lld", (long long)mbs);
  else if (seq <= 0) rc = ol_error("--seq-len must be positive, got %lld", (long long)seq);
  else if (!(lr > 0)) rc = ol_error("--lr must be positive, got %g", lr);
  else if (min_lr < 0 || min_lr > lr) rc = ol_error("--min-lr must be in [0, --lr], got %g", min_lr);
  else if (warmup < 0) rc = ol_error("--warmup must be >= 0, got %lld", (long long)warmup);
  else if (wd < 0) rc = ol_error("--weight-decay must be >= 0, got %g", wd);
  else if (clip < 0) rc = ol_error("--clip must be >= 0, got %g", clip);
  else if (seed < 0) rc = ol_error("--seed must be >= 0, got %lld", (long long)seed);
  else if (eval_every < 0) rc = ol_error("--eval-every must be >= 0, got %lld", (long long)eval_every);
  else if (eval_batches <= 0) rc = ol_error("--eval-batches must be positive, got %lld", (long long)eval_batches);
  else if (ckpt_every < 0) rc = ol_error("--ckpt-every must be >= 0, got %lld", (long long)ckpt_every);
  else if (keep < 0) rc = ol_error("--keep must be >= 0, got %lld", (long long)keep);
  else if (resume && strcmp(resume, "auto") == 0 && !ckpt_dir)
    rc = ol_error("--resume auto needs --ckpt-dir, the directory to search");
  else if (tp <= 0) rc = ol_error("--tp must be positive, got %lld", (long long)tp);
  else if (pp <= 0) rc = ol_error("--pp must be positive, got %lld", (long long)pp);
  else if (strcmp(pp_schedule, "1f1b") != 0 && strcmp(pp_schedule, "gpipe") != 0)
    rc = ol_error("--pp-schedule: expected 1f1b or gpipe, got '%s'", pp_schedule);
  else if (ol_dtype_parse(wdtype, &o.weights_dtype) != OL_OK)
    rc = ol_error("--weights-dtype: expected f32, f16 or bf16, got '%s'", wdtype);
  if (rc == OL_OK) rc = ol_method_parse(method, targets, rank, alpha, &o.method);
  if (rc == OL_OK) rc = ol_schedule_parse(schedule, &o.schedule.kind);
  if (rc != OL_OK) return rc;

  o.model_path = model, o.data_path = data, o.ckpt_dir = ckpt_dir, o.log_path = log;
  o.steps = steps, o.micro_batch = mb, o.micro_batches = mbs, o.seq_len = seq;
  o.warmup = warmup, o.eval_every = eval_every, o.eval_batches = eval_batches;
  o.ckpt_every = ckpt_every, o.keep = keep;
  o.resume = resume, o.results_path = results;
  o.schedule.lr = lr, o.schedule.min_lr = min_lr, o.schedule.warmup = warmup;
  o.schedule.steps = steps;
  o.adamw = ol_adamw_defaults();
  o.adamw.weight_decay = (float)wd;
  o.clip = clip;
  o.seed = (uint64_t)seed;
  o.shuffle = !no_shuffle;
  o.map_weights = !no_map;
  o.tp = (int)tp, o.pp = (int)pp;
  o.gpipe = strcmp(pp_schedule, "gpipe") == 0;
  o.recompute = recompute;
  o.device = device;
  *out = o;
  return OL_OK;
}

int ol_cmd_train(int argc, char **argv, ol_grid *grid) {
  ol_train_opts o;
  int help;
  if (ol_train_flags("train", usage_text, argc, argv, NULL, 0, 0, &o, &help) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  o.grid = grid;
  if (ol_cli_use_device(grid, o.device) != OL_OK) return ol_cli_fail();
  ol_train_result result = {0};
  if (ol_train_run(&o, &result) != OL_OK) return ol_cli_fail();
  return result.stopped ? OL_EXIT_STOPPED : 0;
}
