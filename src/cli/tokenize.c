/* onelora tokenize: text files -> data file, with a byte-level tokenizer (token = byte value,
 * vocab 256). The inputs are concatenated in order; the last --val-fraction of the tokens is
 * the val split, the rest train. */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "onelora/io/dataset.h"
#include "onelora/io/files.h"
#include "onelora/core/core.h"

#define BYTE_VOCAB 256
#define MIN_SPLIT_TOKENS 2  /* one input and one target token */

typedef struct {
  int32_t *tok;  /* (n,) */
  size_t n, cap;
} token_buf;

static void append_bytes(token_buf *b, const unsigned char *bytes, size_t n) {
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->n + n) cap *= 2;
    int32_t *tok = realloc(b->tok, cap * sizeof *tok);
    if (!tok) ol_fatal(__FILE__, __LINE__, "out of memory for %zu tokens", cap);
    b->tok = tok;
    b->cap = cap;
  }
  for (size_t i = 0; i < n; i++) b->tok[b->n + i] = bytes[i];
  b->n += n;
}

/* The byte tokenizer holds 4 bytes a token beside the text itself, so one input file is at most
 * 4 GiB (16 GiB of tokens); a bigger corpus needs a real tokenizer, not this one. */
#define MAX_TEXT_BYTES ((size_t)4 << 30)

static int read_text(const char *path, token_buf *b) {
  unsigned char *text;  // (n,) bytes
  size_t n;
  if (ol_file_read(path, MAX_TEXT_BYTES, &text, &n) != OL_OK)
    return ol_error("onelora tokenize: %s", ol_last_error());
  append_bytes(b, text, n);
  ol_free(text);
  return OL_OK;
}

static int tokenize(const ol_strs *in, const char *out, double val_fraction) {
  if (in->count == 0) return ol_error("onelora tokenize: --in is required");
  if (!out) return ol_error("onelora tokenize: --out is required");
  if (!(val_fraction >= 0 && val_fraction < 1))
    return ol_error("onelora tokenize: --val-fraction must be in [0, 1), got %g", val_fraction);
  token_buf b = {0};
  int rc = OL_OK;
  for (int i = 0; rc == OL_OK && i < in->count; i++) rc = read_text(in->items[i], &b);
  size_t n_val = (size_t)(val_fraction * (double)b.n + 0.5);  /* rounded: 0.29 * 100 is 29 */
  size_t n_train = b.n - n_val;
  if (rc == OL_OK && n_train < MIN_SPLIT_TOKENS)
    rc = ol_error("onelora tokenize: only %zu train tokens from %zu bytes of input; need at "
                  "least %d", n_train, b.n, MIN_SPLIT_TOKENS);
  if (rc == OL_OK && val_fraction > 0 && n_val < MIN_SPLIT_TOKENS)
    rc = ol_error("onelora tokenize: --val-fraction %g of %zu tokens leaves %zu val tokens; "
                  "need at least %d (or --val-fraction 0)", val_fraction, b.n, n_val,
                  MIN_SPLIT_TOKENS);
  if (rc == OL_OK) rc = ol_dataset_write(out, BYTE_VOCAB, b.tok, n_train, b.tok + n_train, n_val);
  if (rc == OL_OK)
    printf("tokenize: %zu train + %zu val tokens (bytes, vocab %d) -> %s\n", n_train, n_val,
           BYTE_VOCAB, out);
  free(b.tok);
  return rc;
}

int ol_cmd_tokenize(int argc, char **argv) {
  ol_strs in = {0};
  const char *out = NULL;
  double val_fraction = 0.05;
  const ol_arg args[] = {
      {"--in", OL_ARG_STRS, &in, "TEXT...", "text files, concatenated in order"},
      {"--out", OL_ARG_STR, &out, "D.h5", "data file to write"},
      {"--val-fraction", OL_ARG_FLOAT, &val_fraction, "F",
       "last fraction of the tokens held out as val, in [0, 1) (default 0.05)"},
  };
  int help = 0;
  if (ol_args_parse("tokenize", "--in TEXT... --out D.h5 [--val-fraction F]", argc, argv, args,
                    sizeof args / sizeof args[0], &help, NULL, 0, NULL) != OL_OK)
    return ol_cli_fail();
  if (help) return 0;
  if (tokenize(&in, out, val_fraction) != OL_OK) return ol_cli_fail();
  return 0;
}
