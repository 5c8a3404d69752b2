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

#ifndef ONELORA_HAVE_CUDA
/* A build without the CUDA backend (ONELORA_CUDA=OFF, or no nvcc at build time) */
const ol_backend *ol_backend_cuda(int device) {
  (void)device;
  ol_error("--device cuda: this build has no CUDA backend (configured with ONELORA_CUDA=OFF or "
           "without nvcc; rebuild with ONELORA_CUDA=ON)");
  return NULL;
}
int ol_cuda_device_count(void) { return 0; }
int ol_cuda_built(void) { return 0; }
const char *ol_cuda_device_name(void) { return ""; }
#endif
