/* onelora generate: sample text from the frozen model with a checkpoint's adapters applied
 * unmerged (src/train/generate.c), on the TP x PP layouts of training. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "onelora/core/core.h"
#include "onelora/train/generate.h"

static const char *usage_text =
    "--model M.h5|DIR [--ckpt C.h5] (--prompt TEXT | --prompt-ids I,J,...) --tokens N\n"
    "       [--temperature T] [--top-k K] [--seed S] [--print-ids] [--tp N --pp N]\n"
    "       [--weights-dtype f32|f16|bf16] [--no-cache] [--print-scores]\n\n"
    "Samples N new tokens after the prompt from the model, with the checkpoint's adapters (its\n"
    "method, targets, rank and trained values) applied unmerged; without --ckpt, the base model.\n"
    "--temperature 0 is greedy (the argmax, the lowest id on ties); otherwise each token is drawn\n"
    "from softmax(logits / T) over the K largest logits (K = 0: all), with a seeded RNG, so a\n"
    "seed gives the same text on every layout. A byte-level model (vocab_size 256, as onelora\n"
    "tokenize writes) prints the prompt and its continuation as text; --print-ids prints them as\n"
    "one comma-separated line of ids instead (any model). The prompt is prefilled in one forward\n"
    "and every layer's keys and values are cached; --no-cache recomputes the whole sequence at\n"
    "every step. Runs on mpirun -np TP*PP ranks (no data parallelism).\n"
    "--print-scores adds, after the text or ids, one line per new token:\n"
    "  score STEP ID LOGPROB MARGIN KGAP\n"
    "STEP counts the new tokens from 0; LOGPROB is log p(ID) under the distribution drawn from\n"
    "(softmax(logits / T) over the K largest; greedy: softmax(logits) over all ids); MARGIN is\n"
    "how near another id was: greedy, the largest minus the second-largest logit; sampled, the\n"
    "distance in probability of the draw u from the bounds of ID's interval of the cumulative\n"
    "distribution (ids in order); KGAP is the K-th minus the (K+1)-th largest logit when the\n"
    "top-k cut applies, else inf.";

/* "I,J,..." -> ids (ol_free them) */
static int parse_ids(const char *s, int32_t **out, size_t *n) {
  size_t cap = 1;
  for (const char *p = s; *p; p++) cap += *p == ',';
  int32_t *ids = ol_calloc(cap, sizeof(int32_t));  // (cap)
  size_t k = 0;
  const char *p = s;
  for (;;) {
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (errno || end == p || (*end != ',' && *end != '\0') || v < 0 || v > INT32_MAX) {
      ol_free(ids);
      return ol_error("--prompt-ids: expected comma-separated token ids (non-negative integers), "
                      "got '%s'", s);
    }
    ids[k++] = (int32_t)v;
    if (*end == '\0') break;
    p = end + 1;
  }
  *out = ids, *n = k;
  return OL_OK;
}

/* --print-scores: one line per new token (scores: (n_tokens, 3), ol_generate_run's). */
static void print_scores(const int32_t *new_ids, const double *scores, size_t n_tokens) {
  for (size_t t = 0; t < n_tokens; t++)
    printf("score %zu %ld %.9g %.9g %.9g\n", t, (long)new_ids[t], scores[3 * t],
           scores[3 * t + 1], scores[3 * t + 2]);
  fflush(stdout);
}

/* The prompt and its continuation: as text on a byte-level model, else (or with --print-ids)
 * as one line of comma-separated ids. */
static void print_ids(const int32_t *ids, size_t n, int as_ids) {
  if (as_ids) {
    for (size_t i = 0; i < n; i++) printf("%s%ld", i ? "," : "", (long)ids[i]);
  } else {
    for (size_t i = 0; i < n; i++) putchar((unsigned char)ids[i]);  // bytes, as tokenize reads
  }
  putchar('\n');
  fflush(stdout);
}

int ol_cmd_generate(int argc, char **argv, ol_grid *grid) {
  const char *model = NULL, *ckpt = NULL, *prompt = NULL, *prompt_ids = NULL, *wdtype = "f32";
  const char *device = "cpu";
  int64_t tokens = 0, top_k = 0, seed = 1234, tp = 1, pp = 1;
  double temperature = 1.0;
  int print_as_ids = 0, no_cache = 0, print_scores_flag = 0;
  const ol_arg args[] = {
      {"--model", OL_ARG_STR, &model, "M.h5|DIR", "model file or Hugging Face directory"},
      {"--ckpt", OL_ARG_STR, &ckpt, "C.h5", "checkpoint whose adapters apply (none: the base model)"},
      {"--prompt", OL_ARG_STR, &prompt, "TEXT", "the prompt as text (byte-level models)"},
      {"--prompt-ids", OL_ARG_STR, &prompt_ids, "I,J,...", "the prompt as token ids"},
      {"--tokens", OL_ARG_INT, &tokens, "N", "new tokens to generate"},
      {"--temperature", OL_ARG_FLOAT, &temperature, "T", "softmax temperature; 0 = greedy (1)"},
      {"--top-k", OL_ARG_INT, &top_k, "K", "sample among the K largest logits; 0 = all (0)"},
      {"--seed", OL_ARG_INT, &seed, "S", "seed of the sampling RNG (1234)"},
      {"--print-ids", OL_ARG_FLAG, &print_as_ids, NULL, "print the ids, comma-separated, not text"},
      {"--tp", OL_ARG_INT, &tp, "N", "tensor-parallel ranks (1)"},
      {"--pp", OL_ARG_INT, &pp, "N", "pipeline stages (1)"},
      {"--weights-dtype", OL_ARG_STR, &wdtype, "T", "frozen weights in memory: f32 | f16 | bf16 (f32)"},
      {"--no-cache", OL_ARG_FLAG, &no_cache, NULL, "recompute the whole sequence every step (no KV cache)"},
      {"--print-scores", OL_ARG_FLAG, &print_scores_flag, NULL,
       "after the output, one 'score STEP ID LOGPROB MARGIN KGAP' line per new token"},
      {"--device", OL_ARG_STR, &device, "D", "cpu | cuda: one GPU per rank (cpu)"},
  };
  int help;
  if (ol_args_parse("generate", usage_text, argc, argv, args, sizeof args / sizeof args[0], &help,
                    NULL, 0, NULL) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  ol_generate_opts o = {.model_path = model, .ckpt_path = ckpt, .n_tokens = tokens,
                        .temperature = temperature, .top_k = top_k, .seed = (uint64_t)seed,
                        .no_cache = no_cache, .grid = grid};
  int32_t *parsed = NULL;
  int rc = OL_OK;
  if (!model) rc = ol_error("onelora generate: --model is required");
  else if (!prompt == !prompt_ids)
    rc = ol_error("onelora generate: give the prompt with exactly one of --prompt TEXT and "
                  "--prompt-ids I,J,...");
  else if (tokens <= 0)
    rc = ol_error("--tokens %lld: expected a positive number of new tokens (--tokens N is "
                  "required)", (long long)tokens);
  else if (temperature < 0.0)
    rc = ol_error("--temperature %g: expected 0 (greedy) or more", temperature);
  else if (top_k < 0)
    rc = ol_error("--top-k %lld: expected 0 (all) or more", (long long)top_k);
  else if (tp <= 0 || tp > 65536 || pp <= 0 || pp > 65536)
    rc = ol_error("--tp %lld --pp %lld: expected positive layout sizes", (long long)tp,
                  (long long)pp);
  else if (ol_dtype_parse(wdtype, &o.weights_dtype) != OL_OK)
    rc = ol_error("--weights-dtype: expected f32, f16 or bf16, got '%s'", wdtype);
  if (rc == OL_OK && prompt) {
    o.prompt_text = prompt, o.n_prompt = strlen(prompt);
  } else if (rc == OL_OK) {
    rc = parse_ids(prompt_ids, &parsed, &o.n_prompt);
    o.prompt_ids = parsed;
  }
  o.tp = (int)tp, o.pp = (int)pp;
  int32_t *ids = NULL;
  double *scores = NULL;  // (tokens, 3) with --print-scores
  size_t n = 0;
  ol_config cfg;
  if (rc == OL_OK) rc = ol_cli_use_device(grid, device);
  if (rc == OL_OK) rc = ol_generate_run(&o, &ids, &n, print_scores_flag ? &scores : NULL, &cfg);
  if (rc == OL_OK && grid->world_rank == 0) {
    print_ids(ids, n, print_as_ids || cfg.vocab_size != 256);
    if (scores) print_scores(ids + o.n_prompt, scores, (size_t)tokens);
  }
  ol_free(ids);
  ol_free(scores);
  ol_free(parsed);
  return rc == OL_OK ? 0 : ol_cli_fail();
}
