/* Hugging Face LLaMA directories as model input (io/hf.c). Private to io/: the rest of onelora
 * reads models through ol_weights (io.h), whatever their format. */
#ifndef ONELORA_IO_HF_H
#define ONELORA_IO_HF_H

#include <stddef.h>

#include "onelora/core/config.h"
#include "onelora/io/weights.h"
#include "onelora/io/dataset.h"
#include "onelora/io/checkpoint.h"
#include "onelora/io/metrics.h"

typedef struct ol_hf ol_hf;
/* 1 when path is a directory (a Hugging Face model) rather than a file. */
int ol_hf_is_dir(const char *path);
/* Reads and validates dir/config.json and opens the safetensors shard(s), validating each
 * header; errors name the file and the key or tensor at fault. */
int ol_hf_open(const char *dir, ol_hf **out, ol_config *cfg);
/* config.json's tie_word_embeddings: lm_head.weight reads model.embed_tokens.weight. */
int ol_hf_tied(const ol_hf *h);
/* An error unless tensor `name` is present with this shape. */
int ol_hf_check(ol_hf *h, const char *name, int ndim, const size_t *shape);
/* As ol_st_read, from the shard that holds the tensor. */
int ol_hf_read(ol_hf *h, const char *name, int ndim, const size_t *shape, const size_t *start,
               const size_t *count, float *dst);
/* The shard file that holds tensor `name`, its dtype and the file offset of its first byte. */
int ol_hf_locate(ol_hf *h, const char *name, const char **path, ol_dtype *dtype,
                 uint64_t *offset);
void ol_hf_close(ol_hf *h);

#endif
