/* Names of the weight storage types, as the CLI spells them (--weights-dtype). */
#include <string.h>

#include "onelora/core/core.h"

static const char *const dtype_names[] = {"f32", "f16", "bf16"};
#define N_DTYPES (sizeof dtype_names / sizeof dtype_names[0])

const char *ol_dtype_name(ol_dtype t) {
  return (size_t)t < N_DTYPES ? dtype_names[t] : "unknown";
}

int ol_dtype_parse(const char *s, ol_dtype *out) {
  for (size_t i = 0; i < N_DTYPES; i++)
    if (strcmp(s, dtype_names[i]) == 0) {
      *out = (ol_dtype)i;
      return OL_OK;
    }
  return ol_error("unknown dtype '%s' (expected f32, f16 or bf16)", s);
}
