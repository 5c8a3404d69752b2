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

#ifdef ONELORA_HAVE_CUDA
/* The CUDA backend lives in the module libonelora_cuda.so (CMakeLists.txt says why), opened on
 * first use: beside the executable, else where the build wrote it; ONELORA_CUDA_MODULE names
 * another. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
  int tried;
  char why[1024];  /* why it could not be opened */
  const ol_backend *(*backend)(int device);
  int (*device_count)(void);
  const char *(*device_name)(void);
} cuda;

static void *open_module(void) {
  const char *env = getenv("ONELORA_CUDA_MODULE");
  if (env && *env) return dlopen(env, RTLD_NOW | RTLD_LOCAL);
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  void *lib = NULL;
  if (n > 0) {
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash && (size_t)(slash - exe) + sizeof ONELORA_CUDA_MODULE + 1 < sizeof exe) {
      strcpy(slash + 1, ONELORA_CUDA_MODULE);
      if (access(exe, R_OK) == 0) lib = dlopen(exe, RTLD_NOW | RTLD_LOCAL);
    }
  }
  return lib ? lib : dlopen(ONELORA_CUDA_MODULE_BUILT, RTLD_NOW | RTLD_LOCAL);
}

static int load_cuda(void) {
  if (cuda.tried) return cuda.backend != NULL;
  cuda.tried = 1;
  void *lib = open_module();
  if (!lib) {
    snprintf(cuda.why, sizeof cuda.why, "the CUDA backend module %s cannot be opened: %s",
             ONELORA_CUDA_MODULE, dlerror());
    return 0;
  }
  const char *const names[] = {"ol_cuda_module_backend", "ol_cuda_module_device_count",
                               "ol_cuda_module_device_name"};
  ol_fn *const slots[] = {(ol_fn *)&cuda.backend, (ol_fn *)&cuda.device_count,
                          (ol_fn *)&cuda.device_name};
  const char *missing = ol_dl_resolve(lib, 3, names, slots);
  if (missing) {
    snprintf(cuda.why, sizeof cuda.why, "%s has no %s", ONELORA_CUDA_MODULE, missing);
    cuda.backend = NULL;
    return 0;
  }
  return 1;
}

const ol_backend *ol_backend_cuda(int device) {
  if (!load_cuda()) {
    ol_error("--device cuda: %s", cuda.why);
    return NULL;
  }
  return cuda.backend(device);
}
int ol_cuda_device_count(void) { return load_cuda() ? cuda.device_count() : 0; }
int ol_cuda_built(void) { return 1; }
const char *ol_cuda_device_name(void) { return cuda.tried && cuda.backend ? cuda.device_name() : ""; }
#else
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
