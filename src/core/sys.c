/* Timers, resident-memory readings from /proc, and symbols of libraries opened at run time. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "onelora/core/core.h"

double ol_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The value of `key` (kB) in a /proc file of "Key:   value kB" lines; 0 when absent. */
static size_t read_proc_kb(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[256];
  size_t kb = 0, klen = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, klen) == 0) {
      sscanf(line + klen, "%zu", &kb);
      break;
    }
  }
  fclose(f);
  return kb;
}

size_t ol_pss_bytes(void) { return read_proc_kb("/proc/self/smaps_rollup", "Pss:") * 1024; }

size_t ol_peak_rss_bytes(void) { return read_proc_kb("/proc/self/status", "VmHWM:") * 1024; }
size_t ol_rss_bytes(void) { return read_proc_kb("/proc/self/status", "VmRSS:") * 1024; }

const char *ol_dl_resolve(void *lib, size_t n, const char *const names[], ol_fn *const slots[]) {
  for (size_t i = 0; i < n; i++) {
    void *f = dlsym(lib, names[i]);
    if (!f) return names[i];
    memcpy(slots[i], &f, sizeof f);  // POSIX: dlsym's data pointer becomes a function pointer
  }
  return NULL;
}
