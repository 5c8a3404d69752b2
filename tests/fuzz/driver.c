/* A small deterministic fuzzing driver for the targets in this folder, for builds without
 * libFuzzer (gcc, -fsanitize=address,undefined). It mutates seed files and calls the target's
 * LLVMFuzzerTestOneInput in-process:
 *
 *   fuzz_<target> [--iterations N] [--seed S] [--max-seconds T] [--input-timeout T]
 *                 [--only I] SEED_FILE...
 *   fuzz_<target> --replay FILE...           runs the target once on each file as it is
 *
 * Input i is a pure function of (S, i): a seed file and one to four mutations of it (XOR of one
 * or a few bytes, truncation, a 1/2/4/8-byte field set to an extreme value, a block copied
 * elsewhere), at offsets drawn half the time near an HDF5 metadata signature, where single
 * bytes matter most. --only I reruns input i alone. A sanitizer report, an abort of the target
 * (a broken contract) or an input running past --input-timeout (a hang, 20 s) ends the run
 * with nonzero status after saving the input as fuzz-finding-<target>-<S>-<i>.bin in the
 * current directory. The last line is the summary: inputs run, rejected cleanly, accepted. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fuzz.h"

#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_SANITIZED 1
#endif
#endif
#ifdef FUZZ_SANITIZED
#include <sanitizer/common_interface_defs.h>
#endif

typedef struct {
  uint8_t *bytes;    /* (size,) */
  size_t size;
  size_t *marks;     /* (n_marks,) offsets of HDF5 metadata signatures */
  size_t n_marks;
} seed_file;

/* ---- the input being run, for the crash reporters ---------------------------------------- */

static const char *target_name = "target";
static uint64_t run_seed;
static long long current_index = -1;
static uint8_t *current;     /* (current_size,) */
static size_t current_size, current_cap;
static int report_fd = 2;    /* the real stderr; the target's fd 1 goes to /dev/null */
static char captured_path[256];  /* the target's fd 2: what the current input printed */

static void say(const char *s) {
  ssize_t ignored = write(report_fd, s, strlen(s));
  (void)ignored;
}

/* Repeats the end of what the current input printed on stderr (e.g. a fatal message). */
static void say_captured(void) {
  char tail[2048];
  off_t end = lseek(2, 0, SEEK_END);
  if (end <= 0 || report_fd == 2) return;
  off_t from = end > (off_t)sizeof tail ? end - (off_t)sizeof tail : 0;
  int fd = open(captured_path, O_RDONLY);
  ssize_t n = fd >= 0 ? pread(fd, tail, sizeof tail, from) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) return;
  say("fuzz: the input's stderr ends with:\n");
  ssize_t ignored = write(report_fd, tail, (size_t)n);
  (void)ignored;
}

/* Saves the current input and says how to rerun it; async-signal-safe. */
static void save_current(const char *why) {
  static volatile sig_atomic_t saved_once;
  if ((current_index < 0 && !current_size) || saved_once) return;
  saved_once = 1;
  say_captured();
  char name[256], line[768];
  snprintf(name, sizeof name, "fuzz-finding-%s-%llu-%lld.bin", target_name,
           (unsigned long long)run_seed, current_index);
  int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int saved = fd >= 0 && write(fd, current, current_size) == (ssize_t)current_size;
  if (fd >= 0) close(fd);
  snprintf(line, sizeof line,
           "\nfuzz: %s: %s on input %lld of --seed %llu (%zu bytes)%s%s; rerun with: "
           "fuzz_%s --seed %llu --only %lld SEEDS... or --replay %s\n",
           target_name, why, current_index, (unsigned long long)run_seed, current_size,
           saved ? ", saved as " : "", saved ? name : "", target_name,
           (unsigned long long)run_seed, current_index, name);
  say(line);
}

static void on_death(void) { save_current("sanitizer report"); }

static void on_signal(int sig) {
#ifdef FUZZ_SANITIZED
  if (sig == SIGALRM) __sanitizer_print_stack_trace();  /* where it hangs */
#endif
  save_current(sig == SIGALRM ? "hang (input timeout)" : sig == SIGABRT ? "abort" : "crash");
  signal(sig, SIG_DFL);
  if (sig == SIGALRM) sig = SIGABRT;
  raise(sig);
}

static void install_reporters(void) {
  signal(SIGALRM, on_signal);
  signal(SIGABRT, on_signal);
#ifdef FUZZ_SANITIZED
  __sanitizer_set_death_callback(on_death);
#else
  (void)on_death;
  signal(SIGSEGV, on_signal);  /* under ASan its own handler reports, then on_death runs */
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
#endif
}

/* fd 1 to /dev/null (the target's tables), fd 2 to a file emptied before each input (its error
 * lines, shown with a finding); the driver's and the sanitizers' reports to the real stderr. */
static void quiet_target_output(void) {
  fflush(stdout);
  fflush(stderr);
  const char *dir = getenv("TMPDIR");
  if (!dir || !dir[0]) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(captured_path, sizeof captured_path, "%s/onelora-fuzz-%ld-stderr.txt", dir,
           (long)getpid());
  int null_fd = open("/dev/null", O_WRONLY);
  int capture_fd = open(captured_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  report_fd = dup(2);
  if (report_fd < 0 || null_fd < 0 || capture_fd < 0) {
    fprintf(stderr, "fuzz: cannot redirect the target's output (%s)\n", captured_path);
    exit(2);
  }
  dup2(null_fd, 1);
  dup2(capture_fd, 2);
  close(null_fd);
  close(capture_fd);
#ifdef FUZZ_SANITIZED
  __sanitizer_set_report_fd((void *)(intptr_t)report_fd);
#endif
}

static void remove_captured(void) {
  if (captured_path[0]) unlink(captured_path);
}

/* ---- deterministic randomness ------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) {  /* splitmix64 finaliser */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

typedef struct {
  uint64_t state;
} rng;

static uint64_t next_u64(rng *r) { return mix64(r->state++); }
static size_t below(rng *r, size_t n) { return n ? (size_t)(next_u64(r) % n) : 0; }

/* ---- seeds ---------------------------------------------------------------------------------- */

/* Signatures of HDF5 metadata blocks (superblock, object headers, B-trees, heaps, chunk and
 * link indexes); the bytes that follow one are where a flipped byte reaches the parser. */
static const char *const signatures[] = {"\x89HDF", "OHDR", "OCHK", "TREE", "HEAP", "SNOD",
                                         "GCOL", "BTHD", "BTLF", "BTIN", "FRHP", "FHDB",
                                         "FHIB", "FSHD", "FSSE", "FARY", "FADB", "EAHD",
                                         "EAIB", "EASB", "EADB"};
#define N_SIGNATURES (sizeof signatures / sizeof signatures[0])

static int load_seed(const char *path, seed_file *s) {
  memset(s, 0, sizeof *s);
  FILE *f = fopen(path, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "fuzz: cannot read the seed %s: %s\n", path, strerror(errno));
    if (f) fclose(f);
    return -1;
  }
  s->size = (size_t)st.st_size;
  s->bytes = malloc(s->size ? s->size : 1);
  if (!s->bytes || fread(s->bytes, 1, s->size, f) != s->size) {
    fprintf(stderr, "fuzz: cannot read the seed %s\n", path);
    fclose(f);
    return -1;
  }
  fclose(f);
  s->marks = malloc(sizeof *s->marks * (s->size + 1));
  for (size_t i = 0; i + 4 <= s->size; i++)
    for (size_t k = 0; k < N_SIGNATURES; k++)
      if (memcmp(s->bytes + i, signatures[k], 4) == 0) s->marks[s->n_marks++] = i;
  return 0;
}

/* ---- mutations ------------------------------------------------------------------------------ */

static void reserve(size_t n) {
  if (n <= current_cap) return;
  current_cap = n;
  current = realloc(current, current_cap);
  if (!current) {
    fprintf(stderr, "fuzz: out of memory for a %zu-byte input\n", n);
    exit(2);
  }
}

/* An offset in [0, current_size): uniform, in the first 4 KiB, or just after a signature. */
static size_t pick_offset(rng *r, const seed_file *s) {
  if (!current_size) return 0;
  size_t kind = below(r, 4), off;
  if (kind == 0 || !s->n_marks) off = below(r, current_size);
  else if (kind == 1) off = below(r, 4096);
  else off = s->marks[below(r, s->n_marks)] + below(r, 512);
  return off % current_size;
}

static const uint64_t extremes[] = {0, 1, 2, 0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff,
                                    0x7fffffffull, 0x80000000ull, 0xffffffffull,
                                    0x100000000ull, (uint64_t)1 << 62, (uint64_t)1 << 63,
                                    UINT64_MAX, UINT64_MAX - 1};
#define N_EXTREMES (sizeof extremes / sizeof extremes[0])

static void mutate_once(rng *r, const seed_file *s) {
  if (!current_size) return;
  switch (below(r, 6)) {
    case 0:
    case 1: {  /* one byte XOR a nonzero mask: the user's case, twice as likely */
      current[pick_offset(r, s)] ^= (uint8_t)(1 + below(r, 255));
      break;
    }
    case 2: {  /* a few bytes XOR */
      size_t n = 2 + below(r, 7);
      for (size_t i = 0; i < n; i++) current[pick_offset(r, s)] ^= (uint8_t)(1 + below(r, 255));
      break;
    }
    case 3: {  /* truncation, often to just past a metadata block */
      size_t keep = below(r, 2) ? below(r, current_size) : pick_offset(r, s);
      current_size = keep;
      break;
    }
    case 4: {  /* a little-endian field of 1, 2, 4 or 8 bytes set to an extreme value */
      size_t width = (size_t)1 << below(r, 4), off = pick_offset(r, s);
      if (below(r, 2)) off &= ~(width - 1);  /* aligned, like most HDF5 fields */
      uint64_t v = extremes[below(r, N_EXTREMES)];
      for (size_t i = 0; i < width && off + i < current_size; i++)
        current[off + i] = (uint8_t)(v >> (8 * i));
      break;
    }
    default: {  /* a block copied over another place of the file */
      size_t len = 1 + below(r, 256), from = pick_offset(r, s), to = pick_offset(r, s);
      if (from + len > current_size) len = current_size - from;
      if (to + len > current_size) len = current_size - to;
      memmove(current + to, current + from, len);
      break;
    }
  }
}

/* Builds input `index` of the run from the seeds. */
static void make_input(const seed_file *seeds, size_t n_seeds, uint64_t seed, long long index) {
  rng r = {mix64(seed) ^ mix64((uint64_t)index * 0x2545F4914F6CDD1Dull)};
  const seed_file *s = &seeds[below(&r, n_seeds)];
  reserve(s->size + 1);
  memcpy(current, s->bytes, s->size);
  current_size = s->size;
  size_t n_mutations = below(&r, 2) ? 1 : 2 + below(&r, 3);
  for (size_t m = 0; m < n_mutations; m++) mutate_once(&r, s);
}

/* ---- the run ------------------------------------------------------------------------------- */

static void run_current(unsigned input_timeout) {
  if (ftruncate(2, 0) == 0) lseek(2, 0, SEEK_SET);
  alarm(input_timeout);
  LLVMFuzzerTestOneInput(current, current_size);
  alarm(0);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void usage(void) {
  fprintf(stderr,
          "usage: fuzz_%s [--iterations N] [--seed S] [--max-seconds T] [--input-timeout T] "
          "[--only I] SEED_FILE...\n       fuzz_%s --replay FILE...\n",
          target_name, target_name);
}

int main(int argc, char **argv) {
  const char *base = strrchr(argv[0], '/');
  base = base ? base + 1 : argv[0];
  target_name = strncmp(base, "fuzz_", 5) == 0 ? base + 5 : base;
  long long iterations = 1000, only = -1;
  double max_seconds = 0;
  unsigned input_timeout = 20;
  int replay = 0, first_file = argc;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has_value = i + 1 < argc;
    if (!strcmp(a, "--iterations") && has_value) iterations = atoll(argv[++i]);
    else if (!strcmp(a, "--seed") && has_value) run_seed = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(a, "--max-seconds") && has_value) max_seconds = atof(argv[++i]);
    else if (!strcmp(a, "--input-timeout") && has_value) input_timeout = (unsigned)atoi(argv[++i]);
    else if (!strcmp(a, "--only") && has_value) only = atoll(argv[++i]);
    else if (!strcmp(a, "--replay")) replay = 1;
    else if (a[0] == '-') {
      usage();
      return 2;
    } else {
      first_file = i;
      break;
    }
  }
  if (first_file >= argc) {
    usage();
    return 2;
  }
  size_t n_seeds = (size_t)(argc - first_file);
  seed_file *seeds = calloc(n_seeds, sizeof *seeds);  /* (n_seeds,) */
  for (size_t k = 0; k < n_seeds; k++)
    if (load_seed(argv[first_file + (int)k], &seeds[k]) != 0) return 2;

  install_reporters();
  quiet_target_output();
  atexit(remove_captured);
  double t0 = now_s();
  long long ran = 0;
  if (replay) {
    for (size_t k = 0; k < n_seeds; k++, ran++) {
      reserve(seeds[k].size + 1);
      memcpy(current, seeds[k].bytes, seeds[k].size);
      current_size = seeds[k].size;
      current_index = (long long)k;
      run_current(input_timeout);
    }
  } else {
    /* the seeds themselves first: they must be accepted */
    for (size_t k = 0; only < 0 && k < n_seeds; k++) {
      size_t rejected = fuzz_inputs_rejected;
      reserve(seeds[k].size + 1);
      memcpy(current, seeds[k].bytes, seeds[k].size);
      current_size = seeds[k].size;
      run_current(input_timeout);
      if (fuzz_inputs_rejected != rejected) {
        char line[600];
        snprintf(line, sizeof line, "fuzz: %s: the unmodified seed %s is rejected\n",
                 target_name, argv[first_file + (int)k]);
        say(line);
        return 1;
      }
    }
    long long from = only >= 0 ? only : 0, to = only >= 0 ? only + 1 : iterations;
    for (long long i = from; i < to; i++, ran++) {
      if (max_seconds > 0 && now_s() - t0 > max_seconds) break;
      current_index = i;
      make_input(seeds, n_seeds, run_seed, i);
      run_current(input_timeout);
    }
  }
  current_index = -1;
  current_size = 0;
  char line[512];
  snprintf(line, sizeof line,
           "fuzz: %s: %lld inputs run (seed %llu), %zu rejected cleanly, %zu accepted, "
           "0 findings, %.1f s\n",
           target_name, ran, (unsigned long long)run_seed, fuzz_inputs_rejected,
           (size_t)ran - fuzz_inputs_rejected, now_s() - t0);
  say(line);
  for (size_t k = 0; k < n_seeds; k++) {
    free(seeds[k].bytes);
    free(seeds[k].marks);
  }
  free(seeds);
  free(current);
  return 0;
}
