/* Aligned zeroed allocation; running out of memory is fatal and names the size. */
#include <stdlib.h>
#include <string.h>

#include "onelora/core/core.h"

void *ol_calloc(size_t count, size_t size) {
  if (size != 0 && count > SIZE_MAX / size) ol_fatal(__FILE__, __LINE__, "allocation overflow");
  size_t bytes = count * size;
  if (bytes == 0) bytes = 64;
  bytes = (bytes + 63) & ~(size_t)63;
  void *p = NULL;
  if (posix_memalign(&p, 64, bytes) != 0 || !p)
    ol_fatal(__FILE__, __LINE__, "out of memory allocating %zu bytes", bytes);
  memset(p, 0, bytes);
  return p;
}

void ol_free(void *p) { free(p); }

void *ol_grow(void *items, size_t count, size_t *cap, size_t size) {
  if (count < *cap) return items;
  const size_t grown = *cap ? 2 * *cap : 16;
  void *bigger = ol_calloc(grown, size);  // (grown, size)
  if (count) memcpy(bigger, items, count * size);
  ol_free(items);
  *cap = grown;
  return bigger;
}
