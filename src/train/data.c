/* The data loader: which tokens each rank reads at each step (DESIGN §6). */
#include <string.h>

#include "onelora/train/data.h"

struct ol_loader {
  ol_loader_opts o;
  size_t G;            /* sequences per global batch: B * M * DP */
  ol_dataset *data;    /* NULL with random tokens */
  int32_t *window;     /* (T+1) one sample's tokens, read from the file; NULL with random tokens */
};

size_t ol_sample_position(uint64_t seed, int shuffle, int64_t step, size_t G, size_t j, size_t n,
                          size_t T) {
  size_t range = n - T - 1;
  uint64_t index = (uint64_t)step * G + j;
  if (!shuffle) return (size_t)((index * T) % range);
  return (size_t)(ol_hash64(seed ^ ol_hash64(index)) % range);
}

static int check_data(const ol_loader *l) {
  const ol_loader_opts *o = &l->o;
  if (ol_dataset_vocab(l->data) > o->vocab_size)
    return ol_error("data %s has vocab_size %lld, larger than the model's %lld", o->path,
                    (long long)ol_dataset_vocab(l->data), (long long)o->vocab_size);
  if (ol_dataset_len(l->data, OL_SPLIT_TRAIN) < o->T + 2)
    return ol_error("data %s: train split has %zu tokens, fewer than --seq-len + 2 = %zu",
                    o->path, ol_dataset_len(l->data, OL_SPLIT_TRAIN), o->T + 2);
  if (o->need_val && ol_dataset_len(l->data, OL_SPLIT_VAL) < o->T + 2)
    return ol_error("data %s: val split has %zu tokens, fewer than --seq-len + 2 = %zu (needed by "
                    "--eval-every)", o->path, ol_dataset_len(l->data, OL_SPLIT_VAL), o->T + 2);
  return OL_OK;
}

int ol_loader_open(const ol_loader_opts *o, ol_loader **out) {
  ol_loader *l = ol_calloc(1, sizeof *l);
  l->o = *o;
  l->G = o->B * o->M * (size_t)o->dp;
  int rc = OL_OK;
  if (o->path) {
    l->window = ol_calloc(o->T + 1, sizeof(int32_t));
    rc = ol_dataset_open(o->path, &l->data);
    if (rc == OL_OK) rc = check_data(l);
  }
  if (rc != OL_OK) {
    ol_loader_close(l);
    l = NULL;
  }
  *out = l;
  return rc;
}

/* Micro-batch mb of a step from split s: tokens and targets (B, T). */
static int load_micro_batch(ol_loader *l, ol_split s, int64_t step, size_t mb, int32_t *tokens,
                            int32_t *targets) {
  const ol_loader_opts *o = &l->o;
  const size_t B = o->B, T = o->T;
  const size_t first = (size_t)o->dp_rank * B * o->M + mb * B;  // global sample
  if (!l->data) {  // random tokens, a pure function of (seed, split, step, sample)
    uint64_t V = (uint64_t)o->vocab_size;
    for (size_t i = 0; i < B; i++) {
      uint64_t sample = ol_hash64(o->seed ^ ol_hash64(((uint64_t)step * l->G + first + i) * 2 + s));
      for (size_t x = 0; x < T; x++) {
        uint64_t h = ol_hash64(sample ^ x);
        tokens[i * T + x] = (int32_t)(h % V);
        targets[i * T + x] = (int32_t)((h >> 32) % V);
      }
    }
    return OL_OK;
  }
  size_t n = ol_dataset_len(l->data, s);
  int shuffle = s == OL_SPLIT_TRAIN && o->shuffle;
  for (size_t i = 0; i < B; i++) {
    size_t p = ol_sample_position(o->seed, shuffle, step, l->G, first + i, n, T);
    OL_TRY(ol_dataset_read(l->data, s, p, T + 1, l->window));
    memcpy(tokens + i * T, l->window, T * sizeof(int32_t));
    memcpy(targets + i * T, l->window + 1, T * sizeof(int32_t));
  }
  return OL_OK;
}

int ol_loader_step(ol_loader *l, ol_split s, int64_t step, int32_t *tokens, int32_t *targets) {
  const size_t BT = l->o.B * l->o.T;
  for (size_t mb = 0; mb < l->o.M; mb++)
    OL_TRY(load_micro_batch(l, s, step, mb, tokens + mb * BT, targets + mb * BT));
  return OL_OK;
}

void ol_loader_close(ol_loader *l) {
  if (!l) return;
  ol_dataset_close(l->data);
  ol_free(l->window);
  ol_free(l);
}
