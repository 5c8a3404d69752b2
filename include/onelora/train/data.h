/* onelora train: the data order (DESIGN §6). */
#ifndef ONELORA_TRAIN_DATA_H
#define ONELORA_TRAIN_DATA_H

#include <stddef.h>
#include <stdint.h>

/* Start position in the token stream of global sample j of step s (DESIGN §6).
 * Unshuffled: ((s*G + j)*T) mod (n - T - 1). Shuffled: a counter-based hash of (seed, s*G + j),
 * so the order depends only on the seed, never on the layout. */
size_t ol_sample_position(uint64_t seed, int shuffle, int64_t step, size_t G, size_t j, size_t n,
                          size_t T);

#endif
