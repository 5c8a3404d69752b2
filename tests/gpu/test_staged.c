/* test_staged: the device emulator cpu-staged (src/backend/staged.c) catches what crashes on a
 * GPU. Each case runs in a child process that must die of SIGABRT with the emulator's line
 * (host_touch: of the fault itself):
 *   host_to_kernel   host memory handed to a kernel (fill)
 *   host_touch       host code writing a backend buffer itself (a fault: SIGSEGV, or under
 *                    a sanitizer its report and a nonzero exit)
 *   overrun          an op's extent past the end of its buffer
 *   freed            a kernel on a freed buffer
 *   to_device_handle to_device from a backend buffer (it must be host memory)
 * and a correct sequence (alloc, to_device, a kernel, copy, to_host) must give the cpu's values.
 * Exit 0 all passed, 1 a failure, 77 no test hooks in this build. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "onelora/backend/backend.h"

static const ol_backend *bk;

static void host_to_kernel(void) {
  float host[4];  // (4) host memory
  bk->fill(host, 1.0f, 4);
}
static void host_touch(void) {
  float *x = bk->alloc(4 * sizeof(float));  // (4) backend buffer
  x[0] = 1.0f;
}
static void overrun(void) {
  float *x = bk->alloc(4 * sizeof(float));  // (4)
  bk->fill(x, 1.0f, 5);
}
static void freed(void) {
  float *x = bk->alloc(4 * sizeof(float));  // (4)
  bk->free(x);
  bk->fill(x, 1.0f, 4);
}
static void to_device_handle(void) {
  float *x = bk->alloc(4 * sizeof(float)), *y = bk->alloc(4 * sizeof(float));  // (4) each
  bk->to_device(x, y, 4 * sizeof(float));
}

/* 1 when f dies of SIGABRT in a child (its stderr, the emulator's line, is shown); with
 * `fault`, of a segmentation fault instead (or a sanitizer's nonzero exit after its report) */
static int dies(const char *name, void (*f)(void), int fault) {
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGABRT, SIG_DFL);
    f();
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  const int ok = fault ? (WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) ||
                             (WIFEXITED(status) && WEXITSTATUS(status) != 0)
                       : WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  printf("%-4s %s\n", ok ? "ok" : "FAIL", name);
  return ok;
}

int main(void) {
  bk = ol_backend_cpu_staged();
  if (!bk) {
    printf("skip: cpu-staged needs a build with -DONELORA_TEST_HOOKS=ON\n");
    return 77;
  }
  ol_backend_set(bk);
  int ok = 1;
  ok &= dies("host_to_kernel", host_to_kernel, 0);
  ok &= dies("host_touch", host_touch, 1);
  ok &= dies("overrun", overrun, 0);
  ok &= dies("freed", freed, 0);
  ok &= dies("to_device_handle", to_device_handle, 0);
  // the correct sequence
  const float in[4] = {1, 2, 3, 4};  // (4) host
  float out[4] = {0};                // (4) host
  float *x = bk->alloc(sizeof in), *y = bk->alloc(sizeof in);  // (4) each, backend
  bk->to_device(x, in, sizeof in);
  bk->scale(x, 2.0f, 4);
  bk->copy(y, x, sizeof in);
  bk->to_host(out, y, sizeof out);
  const int same = out[0] == 2 && out[1] == 4 && out[2] == 6 && out[3] == 8 &&
                   ol_backend_staged_real(x) != (void *)x && bk->peak_bytes() >= 2 * sizeof in;
  printf("%-4s round trip\n", same ? "ok" : "FAIL");
  bk->free(x), bk->free(y);
  return ok && same ? 0 : 1;
}
