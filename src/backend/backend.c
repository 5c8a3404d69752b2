/* The active backend table. It is the one piece of global mutable state in the numeric code:
 * set once at start-up (ol_backend_set(ol_backend_cpu()) or the CUDA table), read everywhere
 * as ol_bk->op(...). */
#include "onelora/backend/backend.h"
#include "onelora/core/core.h"

const ol_backend *ol_bk = NULL;

void ol_backend_set(const ol_backend *b) {
  OL_CHECK(b != NULL);
  ol_bk = b;
}
