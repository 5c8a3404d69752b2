/* How backend buffers travel between ranks (comm.h): the choice of device and path
 * (ol_grid_use_device), the NCCL communicators, the kept staging buffers, and the collectives
 * that tp.c and dp.c run on backend buffers. */
#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>  // MPIX_CUDA_AWARE_SUPPORT, MPIX_Query_cuda_support
#endif
#ifdef ONELORA_HAVE_NCCL
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#endif

#include "comm.h"
#include "onelora/core/core.h"

/* Collectives stage through pinned memory in pieces of at most this many bytes, so that the
 * staging buffer stays small whatever the tensor (a full fine-tune's gradient is the model). */
#define STAGE_CHUNK_BYTES ((size_t)64 << 20)
/* MPI counts are ints */
#define MPI_CHUNK ((size_t)1 << 30)

/* How a kept buffer was allocated, and so how it is freed */
typedef enum { KEPT_HOST = 0, KEPT_PINNED, KEPT_BACKEND } kept_kind;

/* A buffer grown on demand and kept until the grid goes */
typedef struct {
  void *p;
  size_t bytes;
  kept_kind kind;
} kept;

typedef struct {
  const ol_backend *bk;               /* the backend whose buffers travel */
  ol_path collectives;                /* TP and DP collectives */
  ol_path messages;                   /* pipeline messages: HOST, STAGED or CUDA_AWARE */
  void *nccl[OL_GROUP_COUNT];         /* ncclComm_t per group; NULL: one rank, or no NCCL */
  kept stage;                         /* pinned: collectives and generation's messages */
  kept packed;                        /* backend: the packed partial gradients */
  kept message[OL_PP_MAX_SLOTS + 1];  /* per activation slot, then the inbox */
} comm_state;

/* g's state; without ol_grid_use_device, the active backend's natural path (plain MPI on host
 * buffers, else staged) */
static comm_state *state(ol_grid *g) {
  if (!g->comm) {
    comm_state *s = ol_calloc(1, sizeof *s);
    s->bk = ol_bk;
    s->collectives = s->messages = ol_bk->host_visible ? OL_PATH_HOST : OL_PATH_STAGED;
    g->comm = s;
  }
  return g->comm;
}

ol_path ol_comm_collectives(ol_grid *g) { return state(g)->collectives; }
ol_path ol_comm_messages(ol_grid *g) { return state(g)->messages; }
const ol_backend *ol_comm_backend(ol_grid *g) { return state(g)->bk; }
void *ol_comm_mpi_buffer(const void *p) { return ol_backend_staged_real(p); }

/* ---- kept buffers ---- */
static void kept_release(const ol_backend *bk, kept *k) {
  if (!k->p) return;
  if (k->kind == KEPT_HOST) ol_free(k->p);
  else if (k->kind == KEPT_PINNED) bk->host_free(k->p);
  else bk->free(k->p);
  k->p = NULL, k->bytes = 0;
}

/* k's buffer of at least `bytes` bytes of this kind: the one it has, or a new one (zeroed) */
static void *kept_grow(const ol_backend *bk, kept *k, size_t bytes, kept_kind kind) {
  if (k->p && k->kind == kind && k->bytes >= bytes) return k->p;
  kept_release(bk, k);
  if (bytes == 0) bytes = 1;
  k->p = kind == KEPT_HOST ? ol_calloc(1, bytes)
         : kind == KEPT_PINNED ? bk->host_alloc(bytes) : bk->alloc(bytes);
  k->bytes = bytes, k->kind = kind;
  return k->p;
}

void *ol_comm_stage(ol_grid *g, size_t bytes) {
  comm_state *s = state(g);
  return kept_grow(s->bk, &s->stage, bytes, KEPT_PINNED);
}

float *ol_comm_packed(ol_grid *g, size_t floats) {
  comm_state *s = state(g);
  return kept_grow(s->bk, &s->packed, floats * sizeof(float), KEPT_BACKEND);
}

void *ol_comm_message_buffer(ol_grid *g, int index, size_t bytes) {
  comm_state *s = state(g);
  OL_CHECK(index >= 0 && index <= OL_COMM_INBOX);
  const kept_kind kind = s->messages == OL_PATH_HOST     ? KEPT_HOST
                         : s->messages == OL_PATH_STAGED ? KEPT_PINNED : KEPT_BACKEND;
  return kept_grow(s->bk, &s->message[index], bytes, kind);
}

/* ---- the collectives ---- */
static MPI_Comm group_comm(const ol_grid *g, ol_group group) {
  return *(MPI_Comm *)(group == OL_GROUP_TP ? g->tp_comm : g->dp_comm);
}

/* x (n elements of `size` bytes), reduced in place by MPI in pieces of int counts */
static void mpi_allreduce(void *x, size_t n, MPI_Datatype type, size_t size, MPI_Op op,
                          MPI_Comm c) {
  for (size_t off = 0; off < n; off += MPI_CHUNK) {
    size_t count = n - off < MPI_CHUNK ? n - off : MPI_CHUNK;
    MPI_Allreduce(MPI_IN_PLACE, (char *)x + off * size, (int)count, type, op, c);
  }
}

#ifdef ONELORA_HAVE_NCCL
/* NCCL is opened when a run takes its path (dlopen), not linked: loading its library, like the
 * CUDA backend's (src/backend/backend.c), would cost every CPU-only process its relocations. */
static struct {
  int tried;
  char why[512];  /* why it could not be opened */
  ncclResult_t (*GetUniqueId)(ncclUniqueId *);
  ncclResult_t (*CommInitRank)(ncclComm_t *, int, ncclUniqueId, int);
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*AllReduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t,
                            ncclComm_t, cudaStream_t);
  ncclResult_t (*AllGather)(const void *, void *, size_t, ncclDataType_t, ncclComm_t,
                            cudaStream_t);
  const char *(*GetErrorString)(ncclResult_t);
} nccl_api;

/* 1 once libnccl.so.2 is open and every function found; else 0 with nccl_api.why */
static int nccl_load(void) {
  if (nccl_api.tried) return nccl_api.GetErrorString != NULL;
  nccl_api.tried = 1;
  void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(nccl_api.why, sizeof nccl_api.why, "libnccl.so.2 cannot be opened: %s", dlerror());
    return 0;
  }
  const char *const names[] = {"ncclGetUniqueId", "ncclCommInitRank", "ncclCommDestroy",
                               "ncclAllReduce", "ncclAllGather", "ncclGetErrorString"};
  ol_fn *const slots[] = {(ol_fn *)&nccl_api.GetUniqueId, (ol_fn *)&nccl_api.CommInitRank,
                          (ol_fn *)&nccl_api.CommDestroy, (ol_fn *)&nccl_api.AllReduce,
                          (ol_fn *)&nccl_api.AllGather, (ol_fn *)&nccl_api.GetErrorString};
  const char *missing = ol_dl_resolve(lib, sizeof names / sizeof names[0], names, slots);
  if (missing) {
    snprintf(nccl_api.why, sizeof nccl_api.why, "libnccl.so.2 has no %s", missing);
    nccl_api.GetErrorString = NULL;
    return 0;
  }
  return 1;
}
#define ncclGetUniqueId nccl_api.GetUniqueId
#define ncclCommInitRank nccl_api.CommInitRank
#define ncclCommDestroy nccl_api.CommDestroy
#define ncclAllReduce nccl_api.AllReduce
#define ncclAllGather nccl_api.AllGather
#define ncclGetErrorString nccl_api.GetErrorString

static void nccl_check(ncclResult_t r, const char *what) {
  if (r != ncclSuccess) ol_fatal(__FILE__, __LINE__, "%s: %s", what, ncclGetErrorString(r));
}

static cudaStream_t nccl_stream(const comm_state *s) { return (cudaStream_t)s->bk->queue(); }
#endif

void ol_comm_allreduce(ol_grid *g, ol_group group, void *x, size_t n, MPI_Datatype type,
                       size_t size, MPI_Op op) {
  comm_state *s = state(g);
  if (n == 0) return;
  switch (s->collectives) {
  case OL_PATH_HOST:
    mpi_allreduce(x, n, type, size, op, group_comm(g, group));
    return;
  case OL_PATH_CUDA_AWARE:
    s->bk->sync();  // the kernels that wrote x have ended before MPI reads it
    mpi_allreduce(ol_comm_mpi_buffer(x), n, type, size, op, group_comm(g, group));
    return;
  case OL_PATH_STAGED: {
    s->bk->sync();
    const size_t per = STAGE_CHUNK_BYTES / size;  // elements a piece
    char *buf = ol_comm_stage(g, (n < per ? n : per) * size);  // (piece) pinned
    for (size_t off = 0; off < n; off += per) {
      const size_t count = n - off < per ? n - off : per;
      char *at = (char *)x + off * size;
      s->bk->to_host(buf, at, count * size);
      MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, type, op, group_comm(g, group));
      s->bk->to_device(at, buf, count * size);
    }
    return;
  }
  case OL_PATH_NCCL: {
#ifdef ONELORA_HAVE_NCCL
    OL_CHECK(s->nccl[group] != NULL);
    OL_CHECK(type == MPI_FLOAT || type == MPI_DOUBLE);
    OL_CHECK(op == MPI_SUM || op == MPI_MAX);
    nccl_check(ncclAllReduce(x, x, n, type == MPI_FLOAT ? ncclFloat32 : ncclFloat64,
                             op == MPI_SUM ? ncclSum : ncclMax, (ncclComm_t)s->nccl[group],
                             nccl_stream(s)),
               "ncclAllReduce");
    return;
#else
    break;
#endif
  }
  }
  ol_fatal(__FILE__, __LINE__, "communication path %d is not in this build", (int)s->collectives);
}

void ol_comm_allgather_tp(ol_grid *g, const float *x, size_t n, float *out) {
  comm_state *s = state(g);
  OL_CHECK(n <= (size_t)INT32_MAX && x != out);
  const MPI_Comm c = group_comm(g, OL_GROUP_TP);
  switch (s->collectives) {
  case OL_PATH_HOST:
    MPI_Allgather(x, (int)n, MPI_FLOAT, out, (int)n, MPI_FLOAT, c);
    return;
  case OL_PATH_CUDA_AWARE:
    s->bk->sync();
    MPI_Allgather(ol_comm_mpi_buffer(x), (int)n, MPI_FLOAT, ol_comm_mpi_buffer(out), (int)n,
                  MPI_FLOAT, c);
    return;
  case OL_PATH_STAGED: {
    // one position's logits (V/TP floats each): small, staged whole
    const size_t tp = (size_t)g->tp, bytes = n * sizeof(float);
    float *mine = ol_comm_stage(g, (1 + tp) * bytes);  // (n) this rank's, then (tp, n) all
    float *all = mine + n;
    s->bk->sync();
    s->bk->to_host(mine, x, bytes);
    MPI_Allgather(mine, (int)n, MPI_FLOAT, all, (int)n, MPI_FLOAT, c);
    s->bk->to_device(out, all, tp * bytes);
    return;
  }
  case OL_PATH_NCCL: {
#ifdef ONELORA_HAVE_NCCL
    OL_CHECK(s->nccl[OL_GROUP_TP] != NULL);
    nccl_check(ncclAllGather(x, out, n, ncclFloat32, (ncclComm_t)s->nccl[OL_GROUP_TP],
                             nccl_stream(s)),
               "ncclAllGather");
    return;
#else
    break;
#endif
  }
  }
  ol_fatal(__FILE__, __LINE__, "communication path %d is not in this build", (int)s->collectives);
}

/* ---- the NCCL communicators ---- */
#ifdef ONELORA_HAVE_NCCL
/* One communicator over the MPI communicator c: its rank 0 draws the unique id and sends it
 * (with its own status, so that a failure there fails every member rather than hanging them). */
static int nccl_group(MPI_Comm c, const char *name, void **out) {
  int size, rank;
  MPI_Comm_size(c, &size);
  MPI_Comm_rank(c, &rank);
  *out = NULL;
  if (size == 1) return OL_OK;
  struct {
    int status;
    ncclUniqueId id;
  } hello;
  memset(&hello, 0, sizeof hello);
  if (rank == 0) hello.status = (int)ncclGetUniqueId(&hello.id);
  MPI_Bcast(&hello, (int)sizeof hello, MPI_BYTE, 0, c);
  if (hello.status != (int)ncclSuccess)
    return ol_error("NCCL: the %s group's ncclGetUniqueId failed: %s", name,
                    ncclGetErrorString((ncclResult_t)hello.status));
  ncclComm_t comm;
  ncclResult_t r = ncclCommInitRank(&comm, size, hello.id, rank);
  if (r != ncclSuccess)
    return ol_error("NCCL: ncclCommInitRank of the %s group (%d ranks) failed: %s", name, size,
                    ncclGetErrorString(r));
  *out = comm;
  return OL_OK;
}
#endif

int ol_comm_setup_groups(ol_grid *g) {
  if (!g->comm || !g->tp_comm || state(g)->collectives != OL_PATH_NCCL) return OL_OK;
  ol_comm_free_groups(g);
#ifdef ONELORA_HAVE_NCCL
  comm_state *s = state(g);
  // every rank builds its TP group, then its DP group: the members of each are at the same step
  OL_TRY(nccl_group(group_comm(g, OL_GROUP_TP), "tensor-parallel", &s->nccl[OL_GROUP_TP]));
  OL_TRY(nccl_group(group_comm(g, OL_GROUP_DP), "data-parallel", &s->nccl[OL_GROUP_DP]));
  return OL_OK;
#else
  return ol_error("NCCL: this build has no NCCL");
#endif
}

void ol_comm_free_groups(ol_grid *g) {
  comm_state *s = g->comm;
  if (!s) return;
  for (int i = 0; i < OL_GROUP_COUNT; i++)
    if (s->nccl[i]) {
#ifdef ONELORA_HAVE_NCCL
      s->bk->sync();  // nothing of it is still queued
      ncclCommDestroy((ncclComm_t)s->nccl[i]);
#endif
      s->nccl[i] = NULL;
    }
}

void ol_comm_free(ol_grid *g) {
  comm_state *s = g->comm;
  if (!s) return;
  ol_comm_free_groups(g);
  kept_release(s->bk, &s->stage);
  kept_release(s->bk, &s->packed);
  for (int i = 0; i <= OL_COMM_INBOX; i++) kept_release(s->bk, &s->message[i]);
  ol_free(s);
  g->comm = NULL;
}

/* ---- the choice of device and path ---- */
/* This process's rank among its node's: the launcher's word, else the shared-memory group's */
static int local_rank(ol_grid *g) {
  int node_rank = 0;
  if (g->world_size > 1) {  // collective: every rank takes part, whatever its environment
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g->world_rank, MPI_INFO_NULL,
                        &node);
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_free(&node);
  }
  const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (!v || !*v) continue;
    char *end;
    errno = 0;
    long r = strtol(v, &end, 10);
    if (errno == 0 && *end == '\0' && r >= 0 && r <= INT_MAX) return (int)r;
  }
  return node_rank;
}

/* 1 when MPI may be handed device pointers; else 0 and why not */
static int cuda_aware_mpi(const char **why) {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  if (MPIX_Query_cuda_support()) return 1;
  *why = "this Open MPI was built with CUDA support, but MPIX_Query_cuda_support() says it is "
         "off at run time";
#elif defined(MPIX_CUDA_AWARE_SUPPORT)
  *why = "this Open MPI was built without CUDA support (MPIX_CUDA_AWARE_SUPPORT is 0)";
#else
  *why = "this MPI does not say whether it is CUDA-aware (Open MPI's mpi-ext.h "
         "MPIX_CUDA_AWARE_SUPPORT)";
#endif
  return 0;
}

static int is_cpu_staged(const ol_backend *b) {
  return b == ol_backend_cpu_staged() && b != NULL;
}

/* The paths for backend b under ONELORA_COMM (auto when unset) */
static int choose_paths(const ol_backend *b, ol_path *collectives, ol_path *messages) {
  const char *env = getenv("ONELORA_COMM");
  const char *want = env && *env ? env : "auto";
  const int staged_test = is_cpu_staged(b);
  const char *no_cuda_aware = "";
  // the test device's buffers are host memory, which any MPI moves: it can run this path too
  const int cuda_aware = staged_test || cuda_aware_mpi(&no_cuda_aware);
#ifdef ONELORA_HAVE_NCCL
  const int nccl = !b->host_visible && !staged_test && nccl_load();
  const char *no_nccl = staged_test ? "the test device cpu-staged has no GPU" : nccl_api.why;
#else
  const int nccl = 0;
  const char *no_nccl = "this build has no NCCL (its CUDA toolkit had no nccl.h and libnccl)";
#endif
  if (b->host_visible) {
    if (strcmp(want, "auto") != 0)
      return ol_error("ONELORA_COMM=%s: the %s backend's buffers are host memory, which plain "
                      "MPI moves (unset it or set auto)", want, b->name);
    *collectives = *messages = OL_PATH_HOST;
  } else if (strcmp(want, "auto") == 0) {
    *messages = cuda_aware && !staged_test ? OL_PATH_CUDA_AWARE : OL_PATH_STAGED;
    *collectives = nccl ? OL_PATH_NCCL : *messages;
  } else if (strcmp(want, "staged") == 0) {
    *collectives = *messages = OL_PATH_STAGED;
  } else if (strcmp(want, "cuda-aware") == 0) {
    if (!cuda_aware) return ol_error("ONELORA_COMM=cuda-aware: %s", no_cuda_aware);
    *collectives = *messages = OL_PATH_CUDA_AWARE;
  } else if (strcmp(want, "nccl") == 0) {
    if (!nccl) return ol_error("ONELORA_COMM=nccl: %s", no_nccl);
    *collectives = OL_PATH_NCCL;
    *messages = cuda_aware ? OL_PATH_CUDA_AWARE : OL_PATH_STAGED;
  } else {
    return ol_error("ONELORA_COMM=%s: expected auto, staged, cuda-aware or nccl", want);
  }
  return OL_OK;
}

/* The backend for `device`, or NULL after an error naming it */
static const ol_backend *backend_for(ol_grid *g, const char *device) {
  if (strcmp(device, "cpu") == 0) return ol_backend_cpu();
  if (strcmp(device, "cuda") == 0) {
    const int local = local_rank(g), count = ol_cuda_device_count();
    return ol_backend_cuda(count > 0 ? local % count : 0);  // NULL after its error
  }
  const ol_backend *staged = ol_backend_cpu_staged();
  if (strcmp(device, "cpu-staged") == 0) {
    if (!staged)
      ol_error("--device cpu-staged: a test device, only in builds configured with "
               "-DONELORA_TEST_HOOKS=ON");
    return staged;
  }
  ol_error("--device %s: expected cpu or cuda%s", device,
           staged ? " (or cpu-staged, in this test build)" : "");
  return NULL;
}

int ol_grid_use_device(ol_grid *g, const char *device) {
  if (!device) device = "cpu";
  const ol_backend *b = backend_for(g, device);
  OL_TRY(ol_grid_agree(g, b ? OL_OK : OL_ERR));  // a rank without a GPU fails them all
  ol_path collectives = OL_PATH_HOST, messages = OL_PATH_HOST;
  OL_TRY(ol_grid_agree(g, choose_paths(b, &collectives, &messages)));
  if (g->world_size > 1) {  // the same environment everywhere, normally: make sure of it
    const int path = (int)collectives * 4 + (int)messages;
    int both[2] = {path, -path}, least[2];  // least: the lowest path and minus the highest
    MPI_Allreduce(both, least, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (least[0] != -least[1])
      return ol_error("--device %s: the ranks chose different communication paths (does "
                      "ONELORA_COMM, or the MPI library, differ between them?)", device);
  }
  ol_backend_set(b);
  ol_comm_free(g);  // a path chosen before (or taken by default) goes
  comm_state *s = state(g);
  s->collectives = collectives, s->messages = messages;
  if (g->tp_comm) OL_TRY(ol_grid_agree(g, ol_comm_setup_groups(g)));  // after ol_grid_layout
  return OL_OK;
}

const char *ol_grid_comm_path(const ol_grid *g) {
  const comm_state *s = g->comm;
  const ol_path collectives = s ? s->collectives
                              : ol_bk && !ol_bk->host_visible ? OL_PATH_STAGED : OL_PATH_HOST;
  switch (collectives) {
  case OL_PATH_HOST: return "host";
  case OL_PATH_STAGED: return "staged through pinned host memory";
  case OL_PATH_CUDA_AWARE: return "cuda-aware MPI";
  case OL_PATH_NCCL:
    return s->messages == OL_PATH_CUDA_AWARE
               ? "nccl (pipeline messages: cuda-aware MPI)"
               : "nccl (pipeline messages staged through pinned host memory)";
  }
  return "";
}
