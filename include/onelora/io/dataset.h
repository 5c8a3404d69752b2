/* onelora io: token data files (HDF5, DESIGN §6). */
#ifndef ONELORA_IO_DATASET_H
#define ONELORA_IO_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "onelora/core/config.h"
#include "onelora/core/core.h"

/* ---- data file (HDF5): datasets "train" and "val", 1-D uint16/uint32, attr vocab_size ---- */
typedef struct ol_dataset ol_dataset;
typedef enum { OL_SPLIT_TRAIN = 0, OL_SPLIT_VAL = 1 } ol_split;

int ol_dataset_open(const char *path, ol_dataset **out);
int64_t ol_dataset_vocab(const ol_dataset *d);
size_t ol_dataset_len(const ol_dataset *d, ol_split s);   /* number of tokens */
/* Reads tokens [start, start+count) of a split as int32. Any token >= vocab_size is an error. */
int ol_dataset_read(ol_dataset *d, ol_split s, size_t start, size_t count, int32_t *dst);
void ol_dataset_close(ol_dataset *d);
/* Writes a data file (tmp + rename). Tokens stored as uint16 when vocab_size <= 65536. */
int ol_dataset_write(const char *path, int64_t vocab_size, const int32_t *train, size_t n_train,
                     const int32_t *val, size_t n_val);

#endif
