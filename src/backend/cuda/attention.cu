/* Causal grouped-query attention on the GPU, flash-attention style (Dao et al., FlashAttention
 * and FlashAttention-2): f32 throughout, tiles of q, k, v in shared memory, and no T x T matrix
 * ever stored. Semantics are cpu.c's: q, out, dout, dq (B, T, H, hd); k, v, dk, dv (B, T, Hkv, hd);
 * query head h reads kv head h / (H / Hkv); scores are scaled by 1/sqrt(hd); lse (B, H, T) is
 * the log-sum-exp of each scaled score row.
 *
 * forward: one block per (query tile, head, batch) runs over the key tiles up to the diagonal
 *   with the online softmax and writes out and lse.
 * backward, three passes, deterministic (no atomics), dq, dk, dv overwritten:
 *   1. delta(B, H, T) = rowsum(dout * out), out recomputed by the forward kernel itself (the
 *      interface does not pass out), into ol_cuda_workspace(2).
 *   2. dq: one block per (query tile, head, batch) over the key tiles up to the diagonal:
 *      P = exp(S scale - lse), dP = dO V^T, dS = P (dP - delta) scale, dQ += dS K.
 *   3. dk, dv: one block per (key tile, kv head, batch) over the query heads of its group and
 *      the query tiles from the diagonal on: dV += P^T dO, dK += dS^T Q. A kv head's sum over
 *      its query heads happens in one block, in head order.
 * attention_cached: one block per (new query row, head) with 8 warps splitting the keys.
 *
 * Tiling, shared memory layouts and grids come from attention_plan.h (tested on the CPU). Heads
 * of any width hd <= 128 run: the kernels are compiled for hd rounded up to 16, 32, 64 or 128,
 * with zeros in the padding columns; float4 global accesses when hd % 4 == 0 and every buffer
 * is 16-byte aligned, scalar ones with bounds checks otherwise. */
#include <limits.h>
#include <math.h>

#include "common.cuh"
#include "attention_plan.h"

namespace {

constexpr int kThreads = OL_ATTN_THREADS;
constexpr int kTx = OL_ATTN_TX;  // threads along a tile's columns (a half warp)

/* Everything a tiled kernel reads and writes: the inputs and outputs of one call */
struct AttnArgs {
  float *out;          // (B, T, H, hd) forward output
  float *lse_out;      // (B, H, T) forward's log-sum-exp
  float *delta;        // (B, H, T) rowsum(dout * out): written by the delta pass, then read
  float *dq;           // (B, T, H, hd)
  float *dk, *dv;      // (B, T, Hkv, hd)
  const float *dout;   // (B, T, H, hd)
  const float *q;      // (B, T, H, hd)
  const float *k, *v;  // (B, T, Hkv, hd)
  const float *lse;    // (B, H, T) the forward's, read by backward
  int T, H, Hkv, hd;
  float scale;  // 1 / sqrt(hd)
  int vec;      // hd % 4 == 0 and every buffer 16-byte aligned: float4 global accesses
};

__device__ __forceinline__ float half_warp_max(float v) {
  for (int o = kTx / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
  for (int o = kTx / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* component kk (0..3, a constant after unrolling) of a float4 */
__device__ __forceinline__ float lane4(const float4 &v, int kk) {
  return kk == 0 ? v.x : kk == 1 ? v.y : kk == 2 ? v.z : v.w;
}

/* tile(ROWS, ld(HDP)) = rows row0 .. row0 + ROWS - 1 of one head's (T, hd) view `src` (row t at
 * src + t * ld), zero beyond T and beyond hd. All threads take part; consecutive threads read
 * consecutive float4s of a row (coalesced) and write them to consecutive shared addresses. The
 * caller synchronises before the tile is read. */
template <int HDP, int ROWS>
__device__ __forceinline__ void load_tile(float *tile, const float *src, size_t ld, int row0,
                                          const AttnArgs &a) {
  constexpr int LD = HDP + OL_ATTN_PAD, Q4 = HDP / 4;  // float4s per tile row
  for (int s = threadIdx.x; s < ROWS * Q4; s += kThreads) {
    const int r = s / Q4, d = (s % Q4) * 4, t = row0 + r;
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (t < a.T && d < a.hd) {
      const float *p = src + (size_t)t * ld + d;
      if (a.vec) {  // hd % 4 == 0: the whole float4 lies below hd
        x = __ldg(reinterpret_cast<const float4 *>(p));
      } else {
        x.x = __ldg(p);
        if (d + 1 < a.hd) x.y = __ldg(p + 1);
        if (d + 2 < a.hd) x.z = __ldg(p + 2);
        if (d + 3 < a.hd) x.w = __ldg(p + 3);
      }
    }
    *reinterpret_cast<float4 *>(tile + r * LD + d) = x;
  }
}

/* acc[r][c] += A row (ty RM + r) . B row (tx + 16 c), summed over the HDP columns: a score
 * micro-tile from two shared tiles of stride ld(HDP). The 8 threads of a quarter warp share ty
 * (A reads broadcast) and read 8 consecutive B rows (stride HDP + 4: distinct banks). */
template <int HDP, int RM, int CN>
__device__ __forceinline__ void tile_dot(float (&acc)[RM][CN], const float *A, const float *B,
                                         int ty, int tx) {
  constexpr int LD = HDP + OL_ATTN_PAD;
#pragma unroll 2
  for (int d = 0; d < HDP; d += 4) {
    float4 av[RM], bv[CN];
#pragma unroll
    for (int r = 0; r < RM; r++)
      av[r] = *reinterpret_cast<const float4 *>(A + (ty * RM + r) * LD + d);
#pragma unroll
    for (int c = 0; c < CN; c++)
      bv[c] = *reinterpret_cast<const float4 *>(B + (tx + kTx * c) * LD + d);
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CN; c++) {
        float s = acc[r][c];
        s = fmaf(av[r].x, bv[c].x, s);
        s = fmaf(av[r].y, bv[c].y, s);
        s = fmaf(av[r].z, bv[c].z, s);
        s = fmaf(av[r].w, bv[c].w, s);
        acc[r][c] = s;
      }
  }
}

/* x[c] = row[ol_attn_out_col(tx, c, HDP)]: a thread's output columns of a shared tile row */
template <int HDP>
__device__ __forceinline__ void load_cols(float (&x)[HDP / kTx], const float *row, int tx) {
  constexpr int OC = HDP / kTx;
  if constexpr (OC >= 4) {
#pragma unroll
    for (int g = 0; g < OC / 4; g++) {
      const float4 v = *reinterpret_cast<const float4 *>(row + g * 64 + tx * 4);
      x[4 * g] = v.x, x[4 * g + 1] = v.y, x[4 * g + 2] = v.z, x[4 * g + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int c = 0; c < OC; c++) x[c] = row[tx * OC + c];
  }
}

/* acc[r][c] += sum over k < K of P[ty RM + r][k] X[k][ol_attn_out_col(tx, c, HDP)]: an output
 * micro-tile from a shared (RM * 16, K) tile P of stride K + 4 (reads broadcast within a
 * quarter warp) and a shared (K, HDP) tile X of stride ld(HDP) (consecutive columns). */
template <int HDP, int RM, int K>
__device__ __forceinline__ void tile_mm(float (&acc)[RM][HDP / kTx], const float *P,
                                        const float *X, int ty, int tx) {
  constexpr int OC = HDP / kTx, PLD = K + OL_ATTN_PAD, LD = HDP + OL_ATTN_PAD;
#pragma unroll 2
  for (int k = 0; k < K; k += 4) {
    float4 pv[RM];
#pragma unroll
    for (int r = 0; r < RM; r++)
      pv[r] = *reinterpret_cast<const float4 *>(P + (ty * RM + r) * PLD + k);
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      float x[OC];
      load_cols<HDP>(x, X + (k + kk) * LD, tx);
#pragma unroll
      for (int r = 0; r < RM; r++) {
        const float p = lane4(pv[r], kk);
#pragma unroll
        for (int c = 0; c < OC; c++) acc[r][c] = fmaf(p, x[c], acc[r][c]);
      }
    }
  }
}

/* dst[ol_attn_out_col(tx, c, HDP)] = x[c] * f for the columns below hd: one thread's part of an
 * output row in global memory (a half warp writes the whole row) */
template <int HDP>
__device__ __forceinline__ void store_cols(float *dst, const float (&x)[HDP / kTx], float f,
                                           int tx, const AttnArgs &a) {
  constexpr int OC = HDP / kTx;
  if constexpr (OC >= 4) {
    if (a.vec) {
#pragma unroll
      for (int g = 0; g < OC / 4; g++) {
        const int d = g * 64 + tx * 4;
        if (d < a.hd)
          *reinterpret_cast<float4 *>(dst + d) =
              make_float4(x[4 * g] * f, x[4 * g + 1] * f, x[4 * g + 2] * f, x[4 * g + 3] * f);
      }
      return;
    }
  }
#pragma unroll
  for (int c = 0; c < OC; c++) {
    const int d = ol_attn_out_col(tx, c, HDP);
    if (d < a.hd) dst[d] = x[c] * f;
  }
}

/* Forward of one query tile: grid ol_attn_fwd_grid(B, T, H) with blockIdx.x reversed (the
 * tiles near the end of the sequence, which visit the most keys, start first), blockIdx.y the
 * head, blockIdx.z the batch; OL_ATTN_THREADS threads; ol_attn_fwd_floats(HDP) floats of
 * dynamic shared memory. Each thread owns RM = 4 query rows, 4 score columns and HDP / 16
 * output columns. Per key tile, the online softmax: a row's running maximum m of the scaled
 * scores, its running sum l of exp(s - m) (kept per thread, summed over the row's 16 threads at
 * the end) and its output accumulator, both rescaled by exp(m_old - m_new).
 * DELTA = false writes out = acc / l and lse = m + log(l). DELTA = true is the backward's first
 * pass: it writes delta = rowsum(dout * out) instead, with out exactly as the forward made it. */
template <int HDP, bool DELTA>
__global__ void __launch_bounds__(OL_ATTN_THREADS, 2) attn_forward_kernel(const AttnArgs a) {
  constexpr int BR = OL_ATTN_FWD_BR, BC = OL_ATTN_FWD_BC;
  constexpr int RM = BR / OL_ATTN_TY, CN = BC / kTx, OC = HDP / kTx, PLD = BC + OL_ATTN_PAD;
  extern __shared__ float4 attn_smem[];
  float *smem = reinterpret_cast<float *>(attn_smem);
  float *Qs = smem + ol_attn_fwd_q_off(HDP);  // (BR, ld) the block's query rows
  float *Vs = smem + ol_attn_fwd_v_off(HDP);  // (BC, ld) the step's value rows
  float *Ks = smem + ol_attn_fwd_k_off(HDP);  // (BC, ld) the step's key rows, then:
  float *Ps = Ks;                             // (BR, PLD) the step's exp(s - m)

  const int qt = (int)gridDim.x - 1 - (int)blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (a.H / a.Hkv);
  const int ty = threadIdx.x / kTx, tx = threadIdx.x % kTx;
  const size_t ldq = (size_t)a.H * a.hd, ldk = (size_t)a.Hkv * a.hd;
  const float *qh = a.q + (size_t)b * a.T * ldq + (size_t)h * a.hd;    // (T, hd), stride ldq
  const float *kh = a.k + (size_t)b * a.T * ldk + (size_t)kvh * a.hd;  // (T, hd), stride ldk
  const float *vh = a.v + (size_t)b * a.T * ldk + (size_t)kvh * a.hd;  // (T, hd), stride ldk
  const int i0 = qt * BR;

  load_tile<HDP, BR>(Qs, qh, ldq, i0, a);
  float m[RM], l[RM], acc[RM][OC];
#pragma unroll
  for (int r = 0; r < RM; r++) {
    m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < OC; c++) acc[r][c] = 0.0f;
  }

  const int n_key_tiles = (int)ol_attn_key_tiles((size_t)i0, BR, BC, (size_t)a.T);
  for (int kt = 0; kt < n_key_tiles; kt++) {
    const int j0 = kt * BC;
    __syncthreads();  // the previous step is done with P (K's space) and V
    load_tile<HDP, BC>(Ks, kh, ldk, j0, a);
    load_tile<HDP, BC>(Vs, vh, ldk, j0, a);
    __syncthreads();
    float s[RM][CN];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CN; c++) s[r][c] = 0.0f;
    tile_dot<HDP, RM, CN>(s, Qs, Ks, ty, tx);

#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int i = i0 + ty * RM + r;
      float tile_max = -INFINITY;
#pragma unroll
      for (int c = 0; c < CN; c++) {
        const int j = j0 + tx + kTx * c;
        s[r][c] = ol_attn_visible((size_t)i, (size_t)j, (size_t)a.T) ? s[r][c] * a.scale
                                                                      : -INFINITY;
        tile_max = fmaxf(tile_max, s[r][c]);
      }
      const float m_new = fmaxf(m[r], half_warp_max(tile_max));
      // a row that has seen no visible key yet (only rows beyond T) keeps zeros, not NaNs
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = expf(m[r] - m_use);  // 0 on the first visible tile (m = -inf)
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < CN; c++) {
        s[r][c] = expf(s[r][c] - m_use);  // masked: exp(-inf) = 0
        sum += s[r][c];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int c = 0; c < OC; c++) acc[r][c] *= alpha;
    }

    __syncthreads();  // every thread is done reading K: P takes its space
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CN; c++) Ps[(ty * RM + r) * PLD + tx + kTx * c] = s[r][c];
    __syncthreads();
    tile_mm<HDP, RM, BC>(acc, Ps, Vs, ty, tx);
  }

#pragma unroll
  for (int r = 0; r < RM; r++) {
    const int i = i0 + ty * RM + r;
    const float row_sum = half_warp_sum(l[r]);
    const size_t row = ((size_t)b * a.T + i) * ldq + (size_t)h * a.hd;  // out(b, i, h, :)
    const size_t stat = ((size_t)b * a.H + h) * a.T + i;                  // lse(b, h, i)
    if constexpr (!DELTA) {
      if (i < a.T) {
        store_cols<HDP>(a.out + row, acc[r], 1.0f / row_sum, tx, a);
        if (tx == 0) a.lse_out[stat] = m[r] + logf(row_sum);
      }
    } else {
      float part = 0.0f;  // this thread's columns of dout . out
      if (i < a.T) {
        const float inv = 1.0f / row_sum;
#pragma unroll
        for (int c = 0; c < OC; c++) {
          const int d = ol_attn_out_col(tx, c, HDP);
          if (d < a.hd) part = fmaf(__ldg(a.dout + row + d), acc[r][c] * inv, part);
        }
      }
      part = half_warp_sum(part);
      if (i < a.T && tx == 0) a.delta[stat] = part;
    }
  }
}

/* dq of one query tile: grid ol_attn_dq_grid(B, T, H) (blockIdx.x reversed as in the forward),
 * OL_ATTN_THREADS threads, ol_attn_dq_floats(HDP) floats of dynamic shared memory. Each thread
 * owns 4 query rows, 2 columns of the step's score tile and HDP / 16 columns of dq. Per key tile:
 * S = Q K^T, P = exp(S scale - lse), dP = dO V^T, dS = P (dP - delta) scale, dQ += dS K. */
template <int HDP>
__global__ void __launch_bounds__(OL_ATTN_THREADS, 2) attn_dq_kernel(const AttnArgs a) {
  constexpr int BR = OL_ATTN_DQ_BR, BC = OL_ATTN_DQ_BC;
  constexpr int RM = BR / OL_ATTN_TY, CN = BC / kTx, OC = HDP / kTx, SLD = BC + OL_ATTN_PAD;
  extern __shared__ float4 attn_smem[];
  float *smem = reinterpret_cast<float *>(attn_smem);
  float *Qs = smem + ol_attn_dq_q_off(HDP);    // (BR, ld) the block's query rows
  float *dOs = smem + ol_attn_dq_do_off(HDP);  // (BR, ld) and their output gradients
  float *Ks = smem + ol_attn_dq_k_off(HDP);    // (BC, ld) the step's key rows
  float *Vs = smem + ol_attn_dq_v_off(HDP);    // (BC, ld) the step's value rows, then:
  float *dSs = Vs;                             // (BR, SLD) the step's dS

  const int qt = (int)gridDim.x - 1 - (int)blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (a.H / a.Hkv);
  const int ty = threadIdx.x / kTx, tx = threadIdx.x % kTx;
  const size_t ldq = (size_t)a.H * a.hd, ldk = (size_t)a.Hkv * a.hd;
  const size_t qoff = (size_t)b * a.T * ldq + (size_t)h * a.hd;
  const float *kh = a.k + (size_t)b * a.T * ldk + (size_t)kvh * a.hd;  // (T, hd), stride ldk
  const float *vh = a.v + (size_t)b * a.T * ldk + (size_t)kvh * a.hd;  // (T, hd), stride ldk
  const float *lse_h = a.lse + ((size_t)b * a.H + h) * a.T;            // (T)
  const float *delta_h = a.delta + ((size_t)b * a.H + h) * a.T;        // (T)
  const int i0 = qt * BR;

  load_tile<HDP, BR>(Qs, a.q + qoff, ldq, i0, a);
  load_tile<HDP, BR>(dOs, a.dout + qoff, ldq, i0, a);
  float row_lse[RM], row_delta[RM], acc[RM][OC];
#pragma unroll
  for (int r = 0; r < RM; r++) {
    const int i = i0 + ty * RM + r;
    row_lse[r] = i < a.T ? lse_h[i] : 0.0f;
    row_delta[r] = i < a.T ? delta_h[i] : 0.0f;
#pragma unroll
    for (int c = 0; c < OC; c++) acc[r][c] = 0.0f;
  }

  const int n_key_tiles = (int)ol_attn_key_tiles((size_t)i0, BR, BC, (size_t)a.T);
  for (int kt = 0; kt < n_key_tiles; kt++) {
    const int j0 = kt * BC;
    __syncthreads();  // the previous step is done with K and dS (V's space)
    load_tile<HDP, BC>(Ks, kh, ldk, j0, a);
    load_tile<HDP, BC>(Vs, vh, ldk, j0, a);
    __syncthreads();
    float s[RM][CN], dp[RM][CN];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CN; c++) s[r][c] = 0.0f, dp[r][c] = 0.0f;
    tile_dot<HDP, RM, CN>(s, Qs, Ks, ty, tx);
    tile_dot<HDP, RM, CN>(dp, dOs, Vs, ty, tx);
#pragma unroll
    for (int r = 0; r < RM; r++) {
      const int i = i0 + ty * RM + r;
#pragma unroll
      for (int c = 0; c < CN; c++) {
        const int j = j0 + tx + kTx * c;
        float ds = 0.0f;
        if (ol_attn_visible((size_t)i, (size_t)j, (size_t)a.T)) {
          const float p = expf(s[r][c] * a.scale - row_lse[r]);
          ds = p * (dp[r][c] - row_delta[r]) * a.scale;
        }
        s[r][c] = ds;
      }
    }
    __syncthreads();  // every thread is done reading V: dS takes its space
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int c = 0; c < CN; c++) dSs[(ty * RM + r) * SLD + tx + kTx * c] = s[r][c];
    __syncthreads();
    tile_mm<HDP, RM, BC>(acc, dSs, Ks, ty, tx);
  }

#pragma unroll
  for (int r = 0; r < RM; r++) {
    const int i = i0 + ty * RM + r;
    if (i < a.T) store_cols<HDP>(a.dq + qoff + (size_t)i * ldq, acc[r], 1.0f, tx, a);
  }
}

/* dk, dv of one key tile: grid ol_attn_dkv_grid(B, T, Hkv) (blockIdx.x the key tile: the first
 * tiles, which see the most queries, start first; blockIdx.y the kv head), OL_ATTN_THREADS
 * threads, ol_attn_dkv_floats(HDP) floats of dynamic shared memory. Each thread owns 4 key rows,
 * 2 columns (queries) of the step's transposed score tile and HDP / 16 columns of dk and dv.
 * For each query head of the kv head's group in order, for each query tile from the diagonal
 * on: S^T = K Q^T, P^T = exp(S^T scale - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta) scale,
 * dV += P^T dO, dK += dS^T Q. */
template <int HDP>
__global__ void __launch_bounds__(OL_ATTN_THREADS, 2) attn_dkv_kernel(const AttnArgs a) {
  constexpr int BC = OL_ATTN_DKV_BC, BR = OL_ATTN_DKV_BR;
  constexpr int RM = BC / OL_ATTN_TY, CN = BR / kTx, OC = HDP / kTx, PLD = BR + OL_ATTN_PAD;
  extern __shared__ float4 attn_smem[];
  float *smem = reinterpret_cast<float *>(attn_smem);
  float *Ks = smem + ol_attn_dkv_k_off(HDP);           // (BC, ld) the block's key rows
  float *Vs = smem + ol_attn_dkv_v_off(HDP);           // (BC, ld) and value rows
  float *Qs = smem + ol_attn_dkv_q_off(HDP);           // (BR, ld) the step's query rows
  float *dOs = smem + ol_attn_dkv_do_off(HDP);         // (BR, ld) and their output gradients
  float *Ps = smem + ol_attn_dkv_p_off(HDP);           // (BC, PLD) P^T, then dS^T
  float *lse_s = smem + ol_attn_dkv_lse_off(HDP);      // (BR) the step's lse
  float *delta_s = smem + ol_attn_dkv_delta_off(HDP);  // (BR) and delta

  const int kt = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
  const int group = a.H / a.Hkv;
  const int ty = threadIdx.x / kTx, tx = threadIdx.x % kTx;
  const size_t ldq = (size_t)a.H * a.hd, ldk = (size_t)a.Hkv * a.hd;
  const size_t koff = (size_t)b * a.T * ldk + (size_t)g * a.hd;
  const int j0 = kt * BC;

  load_tile<HDP, BC>(Ks, a.k + koff, ldk, j0, a);
  load_tile<HDP, BC>(Vs, a.v + koff, ldk, j0, a);
  float dk_acc[RM][OC], dv_acc[RM][OC];
#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int c = 0; c < OC; c++) dk_acc[r][c] = 0.0f, dv_acc[r][c] = 0.0f;

  const int n_query_tiles = (int)ol_attn_tiles((size_t)a.T, BR);
  const int first_tile = (int)ol_attn_first_query_tile((size_t)j0, BR);
  for (int h = g * group; h < (g + 1) * group; h++) {
    const size_t qoff = (size_t)b * a.T * ldq + (size_t)h * a.hd;
    const float *lse_h = a.lse + ((size_t)b * a.H + h) * a.T;      // (T)
    const float *delta_h = a.delta + ((size_t)b * a.H + h) * a.T;  // (T)
    for (int qt = first_tile; qt < n_query_tiles; qt++) {
      const int i0 = qt * BR;
      __syncthreads();  // the previous step is done with Q, dO and dS^T
      load_tile<HDP, BR>(Qs, a.q + qoff, ldq, i0, a);
      load_tile<HDP, BR>(dOs, a.dout + qoff, ldq, i0, a);
      if (threadIdx.x < BR) {
        const int i = i0 + threadIdx.x;
        lse_s[threadIdx.x] = i < a.T ? lse_h[i] : 0.0f;
        delta_s[threadIdx.x] = i < a.T ? delta_h[i] : 0.0f;
      }
      __syncthreads();
      float s[RM][CN], dp[RM][CN];
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < CN; c++) s[r][c] = 0.0f, dp[r][c] = 0.0f;
      tile_dot<HDP, RM, CN>(s, Ks, Qs, ty, tx);   // S^T (keys, queries)
      tile_dot<HDP, RM, CN>(dp, Vs, dOs, ty, tx);  // dP^T
#pragma unroll
      for (int r = 0; r < RM; r++) {
        const int j = j0 + ty * RM + r;
#pragma unroll
        for (int c = 0; c < CN; c++) {
          const int ic = tx + kTx * c, i = i0 + ic;
          float p = 0.0f, ds = 0.0f;
          if (ol_attn_visible((size_t)i, (size_t)j, (size_t)a.T)) {
            p = expf(s[r][c] * a.scale - lse_s[ic]);
            ds = p * (dp[r][c] - delta_s[ic]) * a.scale;
          }
          s[r][c] = p, dp[r][c] = ds;
        }
      }
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < CN; c++) Ps[(ty * RM + r) * PLD + tx + kTx * c] = s[r][c];
      __syncthreads();
      tile_mm<HDP, RM, BR>(dv_acc, Ps, dOs, ty, tx);
      __syncthreads();  // every thread is done reading P^T: dS^T takes its place
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int c = 0; c < CN; c++) Ps[(ty * RM + r) * PLD + tx + kTx * c] = dp[r][c];
      __syncthreads();
      tile_mm<HDP, RM, BR>(dk_acc, Ps, Qs, ty, tx);
    }
  }

#pragma unroll
  for (int r = 0; r < RM; r++) {
    const int j = j0 + ty * RM + r;
    if (j < a.T) {
      store_cols<HDP>(a.dk + koff + (size_t)j * ldk, dk_acc[r], 1.0f, tx, a);
      store_cols<HDP>(a.dv + koff + (size_t)j * ldk, dv_acc[r], 1.0f, tx, a);
    }
  }
}

/* attention_cached of one new query row i (position t0 + i) and head h: grid
 * ol_attn_cached_grid(n, H), OL_ATTN_CACHED_THREADS threads as 8 warps. Warp w takes the keys
 * j = w, w + 8, ... <= t0 + i, one at a time, with its own online softmax (lane holds columns
 * lane + 32 c of the accumulator, c < 4); the warps' (m, l, acc) are then merged through shared
 * memory. k, v (t0 + n, Hkv, hd), q, out (n, H, hd). */
__global__ void __launch_bounds__(OL_ATTN_CACHED_THREADS)
    attn_cached_kernel(float *__restrict__ out, const float *__restrict__ q,
                       const float *__restrict__ k, const float *__restrict__ v, int t0, int H,
                       int Hkv, int hd, float scale) {
  constexpr int WARPS = OL_ATTN_CACHED_THREADS / 32, CPL = OL_ATTN_MAX_HD / 32;
  __shared__ float warp_acc[WARPS][OL_ATTN_MAX_HD];  // each warp's accumulator
  __shared__ float warp_m[WARPS], warp_l[WARPS];     // and its running max and sum

  const int i = blockIdx.x, h = blockIdx.y, kvh = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t ldq = (size_t)H * hd, ldk = (size_t)Hkv * hd;
  const float *qi = q + (size_t)i * ldq + (size_t)h * hd;  // (hd)
  const float *kh = k + (size_t)kvh * hd;                  // (t0 + n, hd), stride ldk
  const float *vh = v + (size_t)kvh * hd;                  // (t0 + n, hd), stride ldk

  float qv[CPL], acc[CPL];
#pragma unroll
  for (int c = 0; c < CPL; c++) {
    const int d = lane + 32 * c;
    qv[c] = d < hd ? qi[d] : 0.0f;
    acc[c] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int len = t0 + i + 1;  // keys 0 .. t0 + i
  for (int j = warp; j < len; j += WARPS) {
    const float *kj = kh + (size_t)j * ldk, *vj = vh + (size_t)j * ldk;
    float part = 0.0f;
#pragma unroll
    for (int c = 0; c < CPL; c++) {
      const int d = lane + 32 * c;
      if (d < hd) part = fmaf(qv[c], __ldg(kj + d), part);
    }
    const float s = warp_sum(part) * scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new), p = expf(s - m_new);  // alpha 0 on the first key
    l = l * alpha + p;
#pragma unroll
    for (int c = 0; c < CPL; c++) {
      const int d = lane + 32 * c;
      if (d < hd) acc[c] = fmaf(p, __ldg(vj + d), acc[c] * alpha);
    }
    m = m_new;
  }

  if (lane == 0) warp_m[warp] = m, warp_l[warp] = l;
#pragma unroll
  for (int c = 0; c < CPL; c++) warp_acc[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  float m_all = -INFINITY;  // finite: warp 0 holds key 0
  for (int w = 0; w < WARPS; w++) m_all = fmaxf(m_all, warp_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < WARPS; w++) l_all += warp_l[w] * expf(warp_m[w] - m_all);  // idle: 0
  const float inv = 1.0f / l_all;
  float *oi = out + (size_t)i * ldq + (size_t)h * hd;  // (hd)
  for (int d = threadIdx.x; d < hd; d += OL_ATTN_CACHED_THREADS) {
    float o = 0.0f;
    for (int w = 0; w < WARPS; w++) {
      const float f = expf(warp_m[w] - m_all);  // 0 for a warp without keys (m = -inf)
      o = fmaf(warp_acc[w][d], f, o);
    }
    oi[d] = o * inv;
  }
}

/* ---- host side ---------------------------------------------------------------------------- */

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

void check_shapes(size_t B, size_t T, size_t H, size_t Hkv, size_t hd) {
  OL_CHECK(Hkv > 0 && H % Hkv == 0);
  OL_CHECK(hd > 0 && hd <= OL_ATTN_MAX_HD);  // the kernels hold a head row in 4 values a lane
  OL_CHECK(T <= (size_t)INT_MAX && H <= (size_t)INT_MAX && B <= (size_t)INT_MAX);
}

dim3 to_dim3(ol_attn_grid g) {
  OL_CHECK(ol_attn_grid_ok(g));
  return dim3((unsigned)g.x, (unsigned)g.y, (unsigned)g.z);
}

/* Raises the kernel's dynamic shared memory limit when it needs more than the default 48 KiB */
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  OL_CHECK(bytes <= OL_ATTN_SMEM_LIMIT);
  if (bytes > OL_ATTN_SMEM_DEFAULT)
    OL_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

template <int HDP, bool DELTA>
void launch_forward(const AttnArgs &a, size_t B) {
  const size_t bytes = ol_attn_fwd_floats(HDP) * sizeof(float);
  allow_smem(attn_forward_kernel<HDP, DELTA>, bytes);
  const dim3 grid = to_dim3(ol_attn_fwd_grid(B, (size_t)a.T, (size_t)a.H));
  attn_forward_kernel<HDP, DELTA><<<grid, kThreads, bytes, ol_cuda_stream()>>>(a);
  OL_CUDA_LAUNCHED();
}

template <int HDP>
void launch_backward(const AttnArgs &a, size_t B) {
  launch_forward<HDP, true>(a, B);  // delta = rowsum(dout * out)
  const size_t dq_bytes = ol_attn_dq_floats(HDP) * sizeof(float);
  allow_smem(attn_dq_kernel<HDP>, dq_bytes);
  const dim3 dq_grid = to_dim3(ol_attn_dq_grid(B, (size_t)a.T, (size_t)a.H));
  attn_dq_kernel<HDP><<<dq_grid, kThreads, dq_bytes, ol_cuda_stream()>>>(a);
  OL_CUDA_LAUNCHED();
  const size_t dkv_bytes = ol_attn_dkv_floats(HDP) * sizeof(float);
  allow_smem(attn_dkv_kernel<HDP>, dkv_bytes);
  const dim3 dkv_grid = to_dim3(ol_attn_dkv_grid(B, (size_t)a.T, (size_t)a.Hkv));
  attn_dkv_kernel<HDP><<<dkv_grid, kThreads, dkv_bytes, ol_cuda_stream()>>>(a);
  OL_CUDA_LAUNCHED();
}

AttnArgs make_args(size_t T, size_t H, size_t Hkv, size_t hd) {
  AttnArgs a = {};
  a.T = (int)T, a.H = (int)H, a.Hkv = (int)Hkv, a.hd = (int)hd;
  a.scale = 1.0f / sqrtf((float)hd);
  return a;
}

}  // namespace

/* The tiled kernels keep no T x T matrix: the caller's scratch is not used (backward's delta
 * lives in ol_cuda_workspace(2)). */
size_t ol_cuda_attention_scratch_floats(size_t T) {
  (void)T;
  return 0;
}

void ol_cuda_attention_forward(float *out, float *lse, const float *q, const float *k,
                               const float *v, size_t B, size_t T, size_t H, size_t Hkv,
                               size_t hd, float *scratch) {
  // out (B, T, H, hd), lse (B, H, T), q (B, T, H, hd), k, v (B, T, Hkv, hd); scratch unused
  (void)scratch;
  check_shapes(B, T, H, Hkv, hd);
  if (B == 0 || T == 0 || H == 0) return;
  AttnArgs a = make_args(T, H, Hkv, hd);
  a.out = out, a.lse_out = lse, a.q = q, a.k = k, a.v = v;
  a.vec = hd % 4 == 0 && aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v);
  switch (ol_attn_hd_pad(hd)) {
    case 16: launch_forward<16, false>(a, B); break;
    case 32: launch_forward<32, false>(a, B); break;
    case 64: launch_forward<64, false>(a, B); break;
    default: launch_forward<128, false>(a, B); break;
  }
}

void ol_cuda_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v, const float *lse,
                                size_t B, size_t T, size_t H, size_t Hkv, size_t hd,
                                float *scratch) {
  // dq (B, T, H, hd), dk, dv (B, T, Hkv, hd) overwritten; dout, q (B, T, H, hd),
  // k, v (B, T, Hkv, hd), lse (B, H, T); scratch unused
  (void)scratch;
  check_shapes(B, T, H, Hkv, hd);
  if (B == 0 || T == 0 || H == 0) return;
  AttnArgs a = make_args(T, H, Hkv, hd);
  a.dq = dq, a.dk = dk, a.dv = dv, a.dout = dout, a.q = q, a.k = k, a.v = v, a.lse = lse;
  a.delta = (float *)ol_cuda_workspace(2, B * H * T * sizeof(float));  // (B, H, T)
  a.vec = hd % 4 == 0 && aligned16(dq) && aligned16(dk) && aligned16(dv) && aligned16(dout) &&
          aligned16(q) && aligned16(k) && aligned16(v);
  switch (ol_attn_hd_pad(hd)) {
    case 16: launch_backward<16>(a, B); break;
    case 32: launch_backward<32>(a, B); break;
    case 64: launch_backward<64>(a, B); break;
    default: launch_backward<128>(a, B); break;
  }
}

void ol_cuda_attention_cached(float *out, const float *q, const float *k, const float *v,
                              size_t n, size_t t0, size_t H, size_t Hkv, size_t hd,
                              float *scratch) {
  // out, q (n, H, hd); k, v (t0 + n, Hkv, hd); scratch unused
  (void)scratch;
  check_shapes(1, t0 + n, H, Hkv, hd);
  if (n == 0 || H == 0) return;
  const dim3 grid = to_dim3(ol_attn_cached_grid(n, H));
  attn_cached_kernel<<<grid, OL_ATTN_CACHED_THREADS, 0, ol_cuda_stream()>>>(
      out, q, k, v, (int)t0, (int)H, (int)Hkv, (int)hd, 1.0f / sqrtf((float)hd));
  OL_CUDA_LAUNCHED();
}
