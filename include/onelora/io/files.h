/* onelora io: plain files (sizes, removal, whole-file reads), so that every disk access of the
 * other modules goes through io/ and each failure is one line naming the file. */
#ifndef ONELORA_IO_FILES_H
#define ONELORA_IO_FILES_H

#include <stddef.h>

#include "onelora/core/core.h"

/* The size of `path` in bytes. */
int ol_file_size(const char *path, size_t *bytes);
/* Deletes file `path`; one that is already gone is fine. */
int ol_file_remove(const char *path);
/* Reads all of `path` into a new buffer: *data (*len bytes, ol_free() it). A file (or stream)
 * longer than max_bytes is refused, with nothing returned. */
int ol_file_read(const char *path, size_t max_bytes, unsigned char **data, size_t *len);

#endif
