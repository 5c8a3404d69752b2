/* The CUDA attention kernels' host-side tiling, in plain C so that
 * tests/unit/test_cuda_attention_plan.c checks it on a machine without a GPU: tile sizes, the
 * padded head width a kernel is compiled for, which key tiles a query tile visits under the
 * causal mask (and which query tiles a key tile visits), the layout of each kernel's shared
 * memory, and the grid dimensions.
 * attention.cu takes every one of these decisions from here.
 *
 * Every tiled kernel runs OL_ATTN_THREADS = 256 threads as a 16 x 16 grid: thread t is
 * (ty, tx) = (t / 16, t % 16), so the 16 threads of one tile row group (same ty) are one half of
 * a warp and reduce a row with 16-lane shuffles. A thread owns the micro-tile of rows
 * ty * RM + r (r < RM) and
 *  - of a score tile, the columns tx + 16 c (c < CN): strided, so the 16 threads read 16
 *    consecutive rows of a key tile (stride hd_pad + 4 floats: no bank conflicts);
 *  - of an output tile (hd columns), the columns ol_attn_out_col(tx, c, hd_pad) (c < hd_pad/16):
 *    groups of 4 consecutive columns (float4) when hd_pad >= 64.
 * Tiles of q, k, v, dout rows sit in shared memory row-major with a row stride of
 * ol_attn_ld(hd_pad) = hd_pad + 4 floats (float4-aligned rows, padded with zeros beyond hd and
 * beyond T); a score tile of R rows by C columns has a row stride of C + 4. */
#ifndef ONELORA_BACKEND_CUDA_ATTENTION_PLAN_H
#define ONELORA_BACKEND_CUDA_ATTENTION_PLAN_H

#include <stddef.h>

#include "launch.h"

#define OL_ATTN_MAX_HD 128  /* the widest head the tiled kernels are compiled for */
#define OL_ATTN_THREADS 256 /* threads of a tiled kernel: 16 (ty) x 16 (tx) */
#define OL_ATTN_TX 16       /* threads along a tile's columns */
#define OL_ATTN_TY 16       /* threads along a tile's rows */
#define OL_ATTN_PAD 4       /* floats of padding after each shared tile row */

/* forward (and the backward's delta pass, which is the forward kernel): query rows per block,
 * keys per step */
#define OL_ATTN_FWD_BR 64
#define OL_ATTN_FWD_BC 64
/* dq pass: query rows per block, keys per step */
#define OL_ATTN_DQ_BR 64
#define OL_ATTN_DQ_BC 32
/* dk/dv pass: keys per block, query rows per step */
#define OL_ATTN_DKV_BC 64
#define OL_ATTN_DKV_BR 32

/* The opt-in dynamic shared memory per block we allow ourselves: sm_80's 163 KiB (sm_90 has
 * 227 KiB), so every kernel launches on both. Above 48 KiB attention.cu raises the kernel's
 * cudaFuncAttributeMaxDynamicSharedMemorySize. */
#define OL_ATTN_SMEM_DEFAULT (48u * 1024u)
#define OL_ATTN_SMEM_LIMIT (163u * 1024u)

/* attention_cached: threads per (query row, head) block, as 8 warps that split the keys */
#define OL_ATTN_CACHED_THREADS 256

/* CUDA's grid limits: x up to 2^31 - 1, y and z up to 65535 */
#define OL_ATTN_GRID_X_MAX 2147483647u
#define OL_ATTN_GRID_YZ_MAX 65535u

/* The head width a tiled kernel is compiled for: hd rounded up to 16, 32, 64 or 128 (the
 * columns beyond hd are zeros in shared memory and never written out); 0 when hd is 0 or wider
 * than OL_ATTN_MAX_HD. */
OL_HD int ol_attn_hd_pad(size_t hd) {
  if (hd == 0 || hd > OL_ATTN_MAX_HD) return 0;
  int p = 16;
  while ((size_t)p < hd) p *= 2;
  return p;
}

/* Row stride (floats) of a shared tile of q, k, v or dout rows */
OL_HD int ol_attn_ld(int hd_pad) { return hd_pad + OL_ATTN_PAD; }

/* Tiles of `tile` rows covering T rows: ceil(T / tile) */
OL_HD size_t ol_attn_tiles(size_t T, size_t tile) { return (T + tile - 1) / tile; }

/* Query row i (< T) attends to key j under the causal mask: j <= i. Rows beyond T (the padding
 * of the last tile) attend to nothing. */
OL_HD int ol_attn_visible(size_t i, size_t j, size_t T) { return i < T && j <= i; }

/* The key tiles (of bc keys) that the query tile of rows [i0, i0 + br) visits: tiles 0 .. n-1,
 * n = the tile of its last row (below T) plus one. Tiles beyond hold only keys j > i of every
 * row i in the tile. i0 < T. */
OL_HD size_t ol_attn_key_tiles(size_t i0, size_t br, size_t bc, size_t T) {
  const size_t last = (i0 + br < T ? i0 + br : T) - 1;
  return last / bc + 1;
}

/* The first query tile (of br rows) that the key tile starting at key j0 visits: the tile of
 * row j0 (earlier rows i < j0 see none of its keys); it visits every tile from there to the
 * last, ol_attn_tiles(T, br) - 1. */
OL_HD size_t ol_attn_first_query_tile(size_t j0, size_t br) { return j0 / br; }

/* Column of an output tile (hd_pad wide) held by thread column tx as its c-th value
 * (c < hd_pad / 16): 4 consecutive columns per group of 64 when hd_pad >= 64, else
 * hd_pad / 16 consecutive columns. Every column is held by exactly one (tx, c). */
OL_HD int ol_attn_out_col(int tx, int c, int hd_pad) {
  const int per = hd_pad / OL_ATTN_TX;  // columns per thread
  if (per >= 4) return (c / 4) * 64 + tx * 4 + c % 4;
  return tx * per + c;
}

/* ---- shared memory layouts (offsets and sizes in floats; every offset is a multiple of 4, so
 * each tile row is float4-aligned) ---- */

/* forward: Q (BR rows), V (BC rows), then K (BC rows), whose space the probabilities P
 * (BR x BC, stride BC + 4) take once the scores of a step are computed */
OL_HD size_t ol_attn_fwd_q_off(int hd_pad) { (void)hd_pad; return 0; }
OL_HD size_t ol_attn_fwd_v_off(int hd_pad) {
  return (size_t)OL_ATTN_FWD_BR * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_fwd_k_off(int hd_pad) {
  return ol_attn_fwd_v_off(hd_pad) + (size_t)OL_ATTN_FWD_BC * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_fwd_floats(int hd_pad) {
  const size_t k = (size_t)OL_ATTN_FWD_BC * (size_t)ol_attn_ld(hd_pad);
  const size_t p = (size_t)OL_ATTN_FWD_BR * (OL_ATTN_FWD_BC + OL_ATTN_PAD);
  return ol_attn_fwd_k_off(hd_pad) + (k > p ? k : p);
}

/* dq: Q, dO (BR rows each), K (BC rows), then V (BC rows), whose space dS (BR x BC, stride
 * BC + 4) takes once dP of a step is computed */
OL_HD size_t ol_attn_dq_q_off(int hd_pad) { (void)hd_pad; return 0; }
OL_HD size_t ol_attn_dq_do_off(int hd_pad) {
  return (size_t)OL_ATTN_DQ_BR * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dq_k_off(int hd_pad) {
  return 2 * (size_t)OL_ATTN_DQ_BR * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dq_v_off(int hd_pad) {
  return ol_attn_dq_k_off(hd_pad) + (size_t)OL_ATTN_DQ_BC * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dq_floats(int hd_pad) {
  const size_t v = (size_t)OL_ATTN_DQ_BC * (size_t)ol_attn_ld(hd_pad);
  const size_t ds = (size_t)OL_ATTN_DQ_BR * (OL_ATTN_DQ_BC + OL_ATTN_PAD);
  return ol_attn_dq_v_off(hd_pad) + (v > ds ? v : ds);
}

/* dk/dv: K, V (BC rows each, the block's keys), Q, dO (BR rows each, one query step), the
 * transposed probabilities P^T and then dS^T in one buffer (BC x BR, stride BR + 4), and the
 * step's lse and delta (BR each) */
OL_HD size_t ol_attn_dkv_k_off(int hd_pad) { (void)hd_pad; return 0; }
OL_HD size_t ol_attn_dkv_v_off(int hd_pad) {
  return (size_t)OL_ATTN_DKV_BC * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dkv_q_off(int hd_pad) {
  return 2 * (size_t)OL_ATTN_DKV_BC * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dkv_do_off(int hd_pad) {
  return ol_attn_dkv_q_off(hd_pad) + (size_t)OL_ATTN_DKV_BR * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dkv_p_off(int hd_pad) {
  return ol_attn_dkv_do_off(hd_pad) + (size_t)OL_ATTN_DKV_BR * (size_t)ol_attn_ld(hd_pad);
}
OL_HD size_t ol_attn_dkv_lse_off(int hd_pad) {
  return ol_attn_dkv_p_off(hd_pad) + (size_t)OL_ATTN_DKV_BC * (OL_ATTN_DKV_BR + OL_ATTN_PAD);
}
OL_HD size_t ol_attn_dkv_delta_off(int hd_pad) {
  return ol_attn_dkv_lse_off(hd_pad) + OL_ATTN_DKV_BR;
}
OL_HD size_t ol_attn_dkv_floats(int hd_pad) {
  return ol_attn_dkv_delta_off(hd_pad) + OL_ATTN_DKV_BR;
}

/* ---- grids ---- */
typedef struct {
  size_t x, y, z;
} ol_attn_grid;

/* forward and delta: (query tiles, H, B); dq: the same with its tile; dk/dv: (key tiles, Hkv, B) */
OL_HD ol_attn_grid ol_attn_fwd_grid(size_t B, size_t T, size_t H) {
  ol_attn_grid g = {ol_attn_tiles(T, OL_ATTN_FWD_BR), H, B};
  return g;
}
OL_HD ol_attn_grid ol_attn_dq_grid(size_t B, size_t T, size_t H) {
  ol_attn_grid g = {ol_attn_tiles(T, OL_ATTN_DQ_BR), H, B};
  return g;
}
OL_HD ol_attn_grid ol_attn_dkv_grid(size_t B, size_t T, size_t Hkv) {
  ol_attn_grid g = {ol_attn_tiles(T, OL_ATTN_DKV_BC), Hkv, B};
  return g;
}
/* attention_cached: (n query rows, H) */
OL_HD ol_attn_grid ol_attn_cached_grid(size_t n, size_t H) {
  ol_attn_grid g = {n, H, 1};
  return g;
}

/* 1 when g can be launched (every dimension at least 1 and within CUDA's limits) */
OL_HD int ol_attn_grid_ok(ol_attn_grid g) {
  return g.x >= 1 && g.x <= OL_ATTN_GRID_X_MAX && g.y >= 1 && g.y <= OL_ATTN_GRID_YZ_MAX &&
         g.z >= 1 && g.z <= OL_ATTN_GRID_YZ_MAX;
}

#endif
