/* The adapters' ops on the GPU (the "peft.cu" group of common.cuh): 1LoRA's row sums, outer
 * products, broadcasts and fused backward, the column reductions of biases and DoRA, DoRA's
 * norms and scalings, VeRA's diagonal scalings and MoRA's cyclic index map. The semantics are
 * backend.h's and cpu.c's.
 *
 * Rounding: a product or sum that cpu.c rounds on its own is written __fmul_rn / __fadd_rn so
 * that nvcc does not contract it into an FMA (cpu.c is compiled with -std=c11, which does not
 * contract). The elementwise ops, the cyclic map and diag_scale_backward (whose sums keep cpu.c's
 * order) therefore equal the CPU's results bit for bit; the other reductions differ only by the
 * order of their sums.
 *
 * Column reductions (col_sums, col_dots_accum and rowdot_accum's db) are deterministic and use
 * no atomics: a first kernel writes the column sums of each group of GROUP_ROWS rows into
 * workspace slot 1, a second adds the groups' sums to the output in group order.
 *
 * Vectors: a kernel templated on V reads and writes V = 4 consecutive floats as one float4
 * when the row length is a multiple of 4 and every buffer it reads by column is 16-byte aligned
 * (then every row starts aligned), else V = 1. */
#include "common.cuh"

enum {
  WARP = 32,
  WARPS = OL_CUDA_THREADS / WARP,  // warps in a block of OL_CUDA_THREADS
  GROUP_ROWS = 64,                 // rows summed into one partial of a column reduction
  PART_SLICES = 8,                 // threads that share one column in sum_parts_kernel
  TILE_WIDE = 32,                  // diag_scale_backward: rows (or columns) a block owns ...
  TILE_LONG = 128,                 // ... and the length of each staged piece of their sums
};

/* ---- helpers ------------------------------------------------------------------------------ */

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* V consecutive floats at p (16-byte aligned when V is 4), loaded or stored at once */
template <int V>
__device__ inline void load_vec(float (&v)[V], const float *p) {
  if constexpr (V == 4) {
    const float4 t = *reinterpret_cast<const float4 *>(p);
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else {
    for (int e = 0; e < V; e++) v[e] = p[e];
  }
}
template <int V>
__device__ inline void store_vec(float *p, const float (&v)[V]) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    for (int e = 0; e < V; e++) p[e] = v[e];
  }
}

/* Sum of v over the 32 lanes of a warp; every lane gets it */
template <typename T>
__device__ inline T warp_sum(T v) {
  for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* The launch shape of a 2-D grid-stride kernel over (rows, vecs): blocks of (tx, ty) threads,
 * tx the warp multiple (at most OL_CUDA_THREADS) that covers a row's vecs and ty the rows of
 * the block; the grid covers both dimensions up to OL_CUDA_MAX_BLOCKS each, the loops the rest */
static void grid_2d(size_t rows, size_t vecs, dim3 *grid, dim3 *block) {
  unsigned tx = ol_cuda_row_threads(vecs);
  if (tx > OL_CUDA_THREADS) tx = OL_CUDA_THREADS;
  const unsigned ty = OL_CUDA_THREADS / tx;
  *block = dim3(tx, ty);
  *grid = dim3(ol_cuda_blocks(vecs, tx), ol_cuda_blocks(rows, ty));
}

/* The loops of a kernel launched by grid_2d: row r of rows, vector v of a row's vecs */
#define FOR_ROWS(r, rows)                                                                     \
  for (size_t r = (size_t)blockIdx.y * blockDim.y + threadIdx.y; r < (rows);                  \
       r += (size_t)gridDim.y * blockDim.y)
#define FOR_VECS(v, vecs)                                                                     \
  for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < (vecs);                  \
       v += (size_t)gridDim.x * blockDim.x)

/* Launches kernel<4> over (rows, cols / 4) when vec4 holds, else kernel<1> over (rows, cols) */
#define LAUNCH_ROWS_COLS(vec4, kernel, rows, cols, ...)                                       \
  do {                                                                                        \
    dim3 grid_, block_;                                                                       \
    if (vec4) {                                                                               \
      grid_2d((rows), (cols) / 4, &grid_, &block_);                                           \
      kernel<4><<<grid_, block_, 0, ol_cuda_stream()>>>(__VA_ARGS__);                         \
    } else {                                                                                  \
      grid_2d((rows), (cols), &grid_, &block_);                                               \
      kernel<1><<<grid_, block_, 0, ol_cuda_stream()>>>(__VA_ARGS__);                         \
    }                                                                                         \
    OL_CUDA_LAUNCHED();                                                                       \
  } while (0)

/* ---- elementwise over rows and columns (grid_2d shapes) ----------------------------------- */

/* y(N,d) = beta y + s(N) outer b(d); beta 0 writes y without reading it */
template <int V>
static __global__ void outer_kernel(float *y, const float *s, const float *b, size_t N,
                                    size_t d, float beta) {
  FOR_ROWS(n, N) {
    float *yn = y + n * d;  // (d)
    const float sn = s[n];
    FOR_VECS(v, d / V) {
      const size_t i = v * V;
      float bv[V], yv[V];
      load_vec(bv, b + i);
      if (beta == 0.0f) {
        for (int e = 0; e < V; e++) yv[e] = __fmul_rn(sn, bv[e]);
      } else {
        load_vec(yv, yn + i);
        for (int e = 0; e < V; e++) yv[e] = __fadd_rn(__fmul_rn(beta, yv[e]), __fmul_rn(sn, bv[e]));
      }
      store_vec(yn + i, yv);
    }
  }
}

/* x(N,k) = beta x + c(N) along each row; beta 0 writes x without reading it */
template <int V>
static __global__ void broadcast_rows_kernel(float *x, const float *c, size_t N, size_t k,
                                             float beta) {
  FOR_ROWS(n, N) {
    float *xn = x + n * k;  // (k)
    const float cn = c[n];
    FOR_VECS(v, k / V) {
      const size_t i = v * V;
      float xv[V];
      if (beta == 0.0f) {
        for (int e = 0; e < V; e++) xv[e] = cn;
      } else {
        load_vec(xv, xn + i);
        for (int e = 0; e < V; e++) xv[e] = __fadd_rn(__fmul_rn(beta, xv[e]), cn);
      }
      store_vec(xn + i, xv);
    }
  }
}

/* y(N,d) = beta y + bias(d) in every row; beta 0 writes y without reading it */
template <int V>
static __global__ void add_bias_kernel(float *y, const float *bias, size_t N, size_t d,
                                       float beta) {
  FOR_ROWS(n, N) {
    float *yn = y + n * d;  // (d)
    FOR_VECS(v, d / V) {
      const size_t i = v * V;
      float bv[V], yv[V];
      load_vec(bv, bias + i);
      if (beta == 0.0f) {
        for (int e = 0; e < V; e++) yv[e] = bv[e];
      } else {
        load_vec(yv, yn + i);
        for (int e = 0; e < V; e++) yv[e] = __fadd_rn(__fmul_rn(beta, yv[e]), bv[e]);
      }
      store_vec(yn + i, yv);
    }
  }
}

/* y(N,d) = x(N,d) * g(d) in every row; y may be x (each element is read, then written, by the
 * same thread) */
template <int V>
static __global__ void scale_cols_kernel(float *y, const float *x, const float *g, size_t N,
                                         size_t d) {
  FOR_ROWS(n, N) {
    FOR_VECS(v, d / V) {
      const size_t i = n * d + v * V;
      float xv[V], gv[V];
      load_vec(xv, x + i);
      load_vec(gv, g + v * V);
      for (int e = 0; e < V; e++) xv[e] = __fmul_rn(xv[e], gv[e]);
      store_vec(y + i, xv);
    }
  }
}

/* x(N,k): row n *= g(N)[n] in place */
template <int V>
static __global__ void scale_rows_kernel(float *x, const float *g, size_t N, size_t k) {
  FOR_ROWS(n, N) {
    float *xn = x + n * k;  // (k)
    const float gn = g[n];
    FOR_VECS(v, k / V) {
      float xv[V];
      load_vec(xv, xn + v * V);
      for (int e = 0; e < V; e++) xv[e] = __fmul_rn(xv[e], gn);
      store_vec(xn + v * V, xv);
    }
  }
}

/* S(n,r) = (lb(n)_i B(n,r)_ij) ld(r)_j, left to right */
template <int V>
static __global__ void diag_scale_kernel(float *S, const float *lb, const float *B,
                                         const float *ld, size_t n, size_t r) {
  FOR_ROWS(i, n) {
    const float li = lb[i];
    FOR_VECS(v, r / V) {
      const size_t j = v * V;
      float bv[V], dv[V];
      load_vec(bv, B + i * r + j);
      load_vec(dv, ld + j);
      for (int e = 0; e < V; e++) bv[e] = __fmul_rn(__fmul_rn(li, bv[e]), dv[e]);
      store_vec(S + i * r + j, bv);
    }
  }
}

/* ---- row reductions: one warp per row ------------------------------------------------------ */

/* s(N) = row sums of x(N,k) in f32. Blocks of OL_CUDA_THREADS, one warp per row (grid-stride
 * over rows); lane l sums the vectors l, l + 32, ... of its row, then the warp adds the lanes. */
template <int V>
static __global__ void row_sums_kernel(float *s, const float *x, size_t N, size_t k) {
  const unsigned lane = threadIdx.x % WARP;
  for (size_t n = (size_t)blockIdx.x * WARPS + threadIdx.x / WARP; n < N;
       n += (size_t)gridDim.x * WARPS) {
    const float *xn = x + n * k;  // (k)
    float acc = 0.0f;
#pragma unroll 4
    for (size_t i = (size_t)lane * V; i < k; i += WARP * V) {
      float xv[V];
      load_vec(xv, xn + i);
      for (int e = 0; e < V; e++) acc += xv[e];
    }
    acc = warp_sum(acc);
    if (lane == 0) s[n] = acc;
  }
}

/* n2(rows) = (float) (|W_i|^2 + B_i . P_i), summed in double, for W(rows,k) and B, P (rows,r)
 * (r may be 0, with B and P unused). Blocks of OL_CUDA_THREADS, one warp per row as
 * row_sums_kernel. */
template <int V>
static __global__ void sq_norms_kernel(float *n2, const float *W, const float *B, const float *P,
                                       size_t rows, size_t k, size_t r) {
  const unsigned lane = threadIdx.x % WARP;
  for (size_t n = (size_t)blockIdx.x * WARPS + threadIdx.x / WARP; n < rows;
       n += (size_t)gridDim.x * WARPS) {
    const float *wn = W + n * k;  // (k)
    double acc = 0.0;
#pragma unroll 4
    for (size_t i = (size_t)lane * V; i < k; i += WARP * V) {
      float wv[V];
      load_vec(wv, wn + i);
      for (int e = 0; e < V; e++) acc += (double)wv[e] * (double)wv[e];
    }
    for (size_t q = lane; q < r; q += WARP) acc += (double)B[n * r + q] * (double)P[n * r + q];
    acc = warp_sum(acc);
    if (lane == 0) n2[n] = (float)acc;
  }
}

/* ---- column reductions: group partials, then their sum ------------------------------------- */

/* part(groups, d): row g = the column sums over rows [g GROUP_ROWS, (g + 1) GROUP_ROWS) of N
 * of a(N,d), or with DOTS of (g(d) * a) * b(N,d) elementwise. Blocks of OL_CUDA_THREADS, each
 * thread one vector of columns (consecutive threads, consecutive columns); grid (column blocks,
 * groups), grid-stride over the groups. */
template <int V, bool DOTS>
static __global__ void col_parts_kernel(float *part, const float *a, const float *b,
                                        const float *g, size_t N, size_t d, size_t groups) {
  const size_t col = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V;
  if (col >= d) return;  // d is a multiple of V, so the whole vector is in the row
  float gv[V];
  if constexpr (DOTS) load_vec(gv, g + col);
  for (size_t grp = blockIdx.y; grp < groups; grp += gridDim.y) {
    const size_t r0 = grp * GROUP_ROWS, r1 = N - r0 < GROUP_ROWS ? N : r0 + GROUP_ROWS;
    float acc[V];
    for (int e = 0; e < V; e++) acc[e] = 0.0f;
#pragma unroll 4
    for (size_t n = r0; n < r1; n++) {
      float av[V];
      load_vec(av, a + n * d + col);
      if constexpr (DOTS) {
        float bv[V];
        load_vec(bv, b + n * d + col);
        for (int e = 0; e < V; e++) acc[e] += __fmul_rn(__fmul_rn(gv[e], av[e]), bv[e]);
      } else {
        for (int e = 0; e < V; e++) acc[e] += av[e];
      }
    }
    store_vec(part + grp * d + col, acc);
  }
}

/* out(d) += the sum over g of part(groups, d)[g]: blocks of (32, PART_SLICES) threads, 32
 * columns a block (grid-stride); slice y sums the groups y, y + PART_SLICES, ... in order, then
 * the slices are added in order. */
static __global__ void sum_parts_kernel(float *out, const float *part, size_t groups, size_t d) {
  __shared__ float slice_sums[PART_SLICES][WARP];
  for (size_t c0 = (size_t)blockIdx.x * WARP; c0 < d; c0 += (size_t)gridDim.x * WARP) {
    const size_t col = c0 + threadIdx.x;
    float acc = 0.0f;
    if (col < d)
      for (size_t grp = threadIdx.y; grp < groups; grp += PART_SLICES) acc += part[grp * d + col];
    slice_sums[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < d) {
      float total = slice_sums[0][threadIdx.x];
      for (int t = 1; t < PART_SLICES; t++) total += slice_sums[t][threadIdx.x];
      out[col] += total;
    }
    __syncthreads();  // the slices are read before the next columns overwrite them
  }
}

/* out(d) += the column sums of part(groups, d) (sum_parts_kernel) */
static void add_parts(float *out, const float *part, size_t groups, size_t d) {
  sum_parts_kernel<<<ol_cuda_blocks(d, WARP), dim3(WARP, PART_SLICES), 0, ol_cuda_stream()>>>(
      out, part, groups, d);
  OL_CUDA_LAUNCHED();
}

/* db(d) += column sums of a(N,d), or with DOTS += g(d) * column sums of a * b (N,d) */
static void column_sums(float *db, const float *a, const float *b, const float *g, size_t N,
                        size_t d, bool dots) {
  if (N == 0 || d == 0) return;
  const size_t groups = (N + GROUP_ROWS - 1) / GROUP_ROWS;
  float *part = (float *)ol_cuda_workspace(1, groups * d * sizeof(float));  // (groups, d)
  const bool vec4 = d % 4 == 0 && aligned16(a) && (!dots || (aligned16(b) && aligned16(g)));
  const unsigned V = vec4 ? 4 : 1;
  const dim3 grid(ol_cuda_blocks(d / V, OL_CUDA_THREADS), ol_cuda_blocks(N, GROUP_ROWS));
  cudaStream_t st = ol_cuda_stream();
  if (vec4 && dots)
    col_parts_kernel<4, true><<<grid, OL_CUDA_THREADS, 0, st>>>(part, a, b, g, N, d, groups);
  else if (vec4)
    col_parts_kernel<4, false><<<grid, OL_CUDA_THREADS, 0, st>>>(part, a, b, g, N, d, groups);
  else if (dots)
    col_parts_kernel<1, true><<<grid, OL_CUDA_THREADS, 0, st>>>(part, a, b, g, N, d, groups);
  else
    col_parts_kernel<1, false><<<grid, OL_CUDA_THREADS, 0, st>>>(part, a, b, g, N, d, groups);
  OL_CUDA_LAUNCHED();
  add_parts(db, part, groups, d);
}

/* 1LoRA's fused backward pass over dy(N,d), the first of three kernels: db_part(groups, d) =
 * the column sums of s(N) * dy over each group of GROUP_ROWS rows, and c_part(column blocks, N)
 * = each row's dot of dy with b(d) over the block's columns. Blocks of OL_CUDA_THREADS, each
 * thread one vector of columns; grid (column blocks of OL_CUDA_THREADS * V columns, groups),
 * grid-stride over the groups. Each warp reduces its columns' dot per row into dots, and the
 * block adds its warps' dots in order. */
template <int V>
static __global__ void rowdot_parts_kernel(float *db_part, float *c_part, const float *dy,
                                           const float *s, const float *b, size_t N, size_t d,
                                           size_t groups) {
  __shared__ float dots[WARPS][GROUP_ROWS];  // each warp's dot of each row of the group
  const unsigned lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
  const size_t col = ((size_t)blockIdx.x * OL_CUDA_THREADS + threadIdx.x) * V;
  const bool active = col < d;  // d is a multiple of V, so the whole vector is in the row
  float bv[V];
  for (int e = 0; e < V; e++) bv[e] = 0.0f;
  if (active) load_vec(bv, b + col);
  for (size_t grp = blockIdx.y; grp < groups; grp += gridDim.y) {
    const size_t r0 = grp * GROUP_ROWS, rows = N - r0 < GROUP_ROWS ? N - r0 : GROUP_ROWS;
    float acc[V];
    for (int e = 0; e < V; e++) acc[e] = 0.0f;
#pragma unroll 4
    for (size_t i = 0; i < rows; i++) {
      float yv[V];
      for (int e = 0; e < V; e++) yv[e] = 0.0f;
      if (active) load_vec(yv, dy + (r0 + i) * d + col);
      const float sn = s[r0 + i];
      float dot = 0.0f;
      for (int e = 0; e < V; e++) {
        dot += yv[e] * bv[e];
        acc[e] += sn * yv[e];
      }
      dot = warp_sum(dot);
      if (lane == 0) dots[warp][i] = dot;
    }
    if (active) store_vec(db_part + grp * d + col, acc);
    __syncthreads();
    for (size_t i = threadIdx.x; i < rows; i += OL_CUDA_THREADS) {
      float total = dots[0][i];
      for (int w = 1; w < WARPS; w++) total += dots[w][i];
      c_part[blockIdx.x * N + r0 + i] = total;
    }
    __syncthreads();  // dots are read before the next group overwrites them
  }
}

/* c(N) = the sum over p of c_part(parts, N)[p], in order (overwrites c). 1-D grid-stride,
 * one thread per row. */
static __global__ void sum_row_parts_kernel(float *c, const float *c_part, size_t parts,
                                            size_t N) {
  for (size_t n = (size_t)blockIdx.x * blockDim.x + threadIdx.x; n < N;
       n += (size_t)gridDim.x * blockDim.x) {
    float acc = 0.0f;
    for (size_t p = 0; p < parts; p++) acc += c_part[p * N + n];
    c[n] = acc;
  }
}

/* ---- VeRA's diagonal gradients, in cpu.c's order ------------------------------------------ */

/* dlb(n) += sum over j in order of (dS_ij B_ij) ld_j, each row summed in f32 from 0. Blocks of
 * OL_CUDA_THREADS own TILE_WIDE rows each (grid-stride): all threads stage the products of
 * TILE_LONG columns in shared memory (coalesced along the rows), then thread t < TILE_WIDE adds
 * its row's in order. */
static __global__ void diag_row_grads_kernel(float *dlb, const float *dS, const float *B,
                                             const float *ld, size_t n, size_t r) {
  __shared__ float tile[TILE_WIDE][TILE_LONG + 1];  // [row][column], padded against conflicts
  const unsigned t = threadIdx.x;
  for (size_t i0 = (size_t)blockIdx.x * TILE_WIDE; i0 < n; i0 += (size_t)gridDim.x * TILE_WIDE) {
    float acc = 0.0f;  // thread t < TILE_WIDE: row i0 + t
    for (size_t j0 = 0; j0 < r; j0 += TILE_LONG) {
#pragma unroll
      for (unsigned m = 0; m < TILE_WIDE * TILE_LONG / OL_CUDA_THREADS; m++) {
        const unsigned e = t + m * OL_CUDA_THREADS, ii = e / TILE_LONG, jj = e % TILE_LONG;
        const size_t i = i0 + ii, j = j0 + jj;
        float q = 0.0f;
        if (i < n && j < r) q = __fmul_rn(__fmul_rn(dS[i * r + j], B[i * r + j]), ld[j]);
        tile[ii][jj] = q;
      }
      __syncthreads();
      if (t < TILE_WIDE) {
        const size_t len = r - j0 < TILE_LONG ? r - j0 : TILE_LONG;
        for (size_t jj = 0; jj < len; jj++) acc = __fadd_rn(acc, tile[t][jj]);
      }
      __syncthreads();  // the tile is read before the next columns overwrite it
    }
    if (t < TILE_WIDE && i0 + t < n) dlb[i0 + t] = __fadd_rn(dlb[i0 + t], acc);
  }
}

/* dld(r) += (dS_ij B_ij) lb_i added row after row, in i order. Blocks of OL_CUDA_THREADS own
 * TILE_WIDE columns each (grid-stride): all threads stage the products of TILE_LONG rows in
 * shared memory, then thread t < TILE_WIDE adds its column's in order. */
static __global__ void diag_col_grads_kernel(float *dld, const float *dS, const float *B,
                                             const float *lb, size_t n, size_t r) {
  __shared__ float tile[TILE_WIDE][TILE_LONG + 1];  // [column][row], padded against conflicts
  const unsigned t = threadIdx.x;
  for (size_t j0 = (size_t)blockIdx.x * TILE_WIDE; j0 < r; j0 += (size_t)gridDim.x * TILE_WIDE) {
    const bool owner = t < TILE_WIDE && j0 + t < r;  // thread t < TILE_WIDE: column j0 + t
    float acc = owner ? dld[j0 + t] : 0.0f;
    for (size_t i0 = 0; i0 < n; i0 += TILE_LONG) {
#pragma unroll
      for (unsigned m = 0; m < TILE_WIDE * TILE_LONG / OL_CUDA_THREADS; m++) {
        const unsigned e = t + m * OL_CUDA_THREADS, jj = e % TILE_WIDE, ii = e / TILE_WIDE;
        const size_t i = i0 + ii, j = j0 + jj;
        float q = 0.0f;
        if (i < n && j < r) q = __fmul_rn(__fmul_rn(dS[i * r + j], B[i * r + j]), lb[i]);
        tile[jj][ii] = q;
      }
      __syncthreads();
      if (owner) {
        const size_t len = n - i0 < TILE_LONG ? n - i0 : TILE_LONG;
        for (size_t ii = 0; ii < len; ii++) acc = __fadd_rn(acc, tile[t][ii]);
      }
      __syncthreads();  // the tile is read before the next rows overwrite it
    }
    if (owner) dld[j0 + t] = acc;
  }
}

/* ---- MoRA's cyclic map ---------------------------------------------------------------------- */

/* dst(n, nd) = beta dst + the map of src(n, ns): dst[t, (p + a) mod nd] += src[t, (p + b) mod
 * ns] for p < len. A gather: each thread owns destination positions (2-D grid-stride over (n,
 * nd), grid_2d shape) and adds the sources that reach position i, p = p0, p0 + nd, ... with p0
 * the first p with (p + a) mod nd = i, in that order, as cpu.c does. a_mod = a mod nd, b_mod =
 * b mod ns, step = nd mod ns (the source's advance from one such p to the next). */
static __global__ void cyclic_rows_kernel(float *dst, size_t nd, size_t a_mod, const float *src,
                                          size_t ns, size_t b_mod, size_t step, size_t len,
                                          size_t n, float beta) {
  FOR_ROWS(t, n) {
    float *row = dst + t * nd;         // (nd)
    const float *from = src + t * ns;  // (ns)
    FOR_VECS(i, nd) {
      float v = beta == 0.0f ? 0.0f : beta == 1.0f ? row[i] : __fmul_rn(beta, row[i]);
      size_t p = i >= a_mod ? i - a_mod : i + nd - a_mod;  // the first p reaching i
      if (p < len) {
        size_t j = (p + b_mod) % ns;  // (p + b) mod ns
        for (; p < len; p += nd) {
          v = __fadd_rn(v, from[j]);
          j += step;
          if (j >= ns) j -= ns;
        }
      }
      row[i] = v;
    }
  }
}

/* ---- elementwise over one vector ----------------------------------------------------------- */

/* x(n) = 1 / sqrt(x) in double, with cpu.c's floor 1e-30; 1-D grid-stride */
static __global__ void inv_sqrt_kernel(float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = (float)(1.0 / sqrt(fmax((double)x[i], 1e-30)));
}

/* x(n) = sqrtf(x), correctly rounded; 1-D grid-stride */
static __global__ void sqrt_kernel(float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    x[i] = __fsqrt_rn(x[i]);
}

/* ---- the table's entries ------------------------------------------------------------------- */

void ol_cuda_row_sums(float *s, const float *x, size_t N, size_t k) {
  // s (N), x (N, k)
  if (N == 0) return;
  const unsigned blocks = ol_cuda_blocks(N, WARPS);
  if (k % 4 == 0 && aligned16(x))
    row_sums_kernel<4><<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(s, x, N, k);
  else
    row_sums_kernel<1><<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(s, x, N, k);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_outer(float *y, const float *s, const float *b, size_t N, size_t d, float beta) {
  // y (N, d), s (N), b (d)
  if (N == 0 || d == 0) return;
  LAUNCH_ROWS_COLS(d % 4 == 0 && aligned16(y) && aligned16(b), outer_kernel, N, d, y, s, b, N,
                   d, beta);
}

void ol_cuda_broadcast_rows(float *x, const float *c, size_t N, size_t k, float beta) {
  // x (N, k), c (N)
  if (N == 0 || k == 0) return;
  LAUNCH_ROWS_COLS(k % 4 == 0 && aligned16(x), broadcast_rows_kernel, N, k, x, c, N, k, beta);
}

void ol_cuda_add_bias(float *y, const float *bias, size_t N, size_t d, float beta) {
  // y (N, d), bias (d)
  if (N == 0 || d == 0) return;
  LAUNCH_ROWS_COLS(d % 4 == 0 && aligned16(y) && aligned16(bias), add_bias_kernel, N, d, y, bias,
                   N, d, beta);
}

void ol_cuda_col_sums(float *db, const float *dy, size_t N, size_t d) {
  // db (d) += column sums of dy (N, d)
  column_sums(db, dy, NULL, NULL, N, d, false);
}

void ol_cuda_rowdot_accum(float *c, float *db, const float *dy, const float *s, const float *b,
                          size_t N, size_t d) {
  // c (N) = dy (N, d) b (d); db (d) += dy^T s (N). c may be s: s is read only by the first
  // kernel and c written only by the last, queued after it
  if (N == 0) return;
  cudaStream_t st = ol_cuda_stream();
  if (d == 0) {  // empty dots, and nothing to add to db
    OL_CUDA_CHECK(cudaMemsetAsync(c, 0, N * sizeof(float), st));
    return;
  }
  const bool vec4 = d % 4 == 0 && aligned16(dy) && aligned16(b);
  const size_t V = vec4 ? 4 : 1;
  const size_t groups = (N + GROUP_ROWS - 1) / GROUP_ROWS;
  const size_t col_blocks = (d / V + OL_CUDA_THREADS - 1) / OL_CUDA_THREADS;
  float *db_part = (float *)ol_cuda_workspace(1, (groups * d + col_blocks * N) * sizeof(float));
  float *c_part = db_part + groups * d;  // (col_blocks, N); db_part (groups, d)
  const dim3 grid((unsigned)col_blocks, ol_cuda_blocks(N, GROUP_ROWS));
  if (vec4)
    rowdot_parts_kernel<4><<<grid, OL_CUDA_THREADS, 0, st>>>(db_part, c_part, dy, s, b, N, d,
                                                              groups);
  else
    rowdot_parts_kernel<1><<<grid, OL_CUDA_THREADS, 0, st>>>(db_part, c_part, dy, s, b, N, d,
                                                              groups);
  OL_CUDA_LAUNCHED();
  add_parts(db, db_part, groups, d);
  sum_row_parts_kernel<<<ol_cuda_blocks(N, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, st>>>(
      c, c_part, col_blocks, N);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_scale_cols(float *y, const float *x, const float *g, size_t N, size_t d) {
  // y, x (N, d), g (d); y may be x
  if (N == 0 || d == 0) return;
  LAUNCH_ROWS_COLS(d % 4 == 0 && aligned16(y) && aligned16(x) && aligned16(g), scale_cols_kernel,
                   N, d, y, x, g, N, d);
}

void ol_cuda_col_dots_accum(float *acc, const float *a, const float *b, const float *g, size_t N,
                            size_t d) {
  // acc (d) += g (d) * column sums of a (N, d) * b (N, d)
  column_sums(acc, a, b, g, N, d, true);
}

void ol_cuda_dora_sq_norms(float *n2, const float *W, const float *B, const float *P, size_t d,
                           size_t k, size_t r) {
  // n2 (d), W (d, k), B and P (d, r)
  if (d == 0) return;
  const unsigned blocks = ol_cuda_blocks(d, WARPS);
  if (k % 4 == 0 && aligned16(W))
    sq_norms_kernel<4><<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(n2, W, B, P, d, k, r);
  else
    sq_norms_kernel<1><<<blocks, OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(n2, W, B, P, d, k, r);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_inv_sqrt(float *x, size_t n) {
  // x (n)
  if (n == 0) return;
  inv_sqrt_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(
      x, n);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_scale_rows(float *x, const float *g, size_t N, size_t k) {
  // x (N, k), g (N)
  if (N == 0 || k == 0) return;
  LAUNCH_ROWS_COLS(k % 4 == 0 && aligned16(x), scale_rows_kernel, N, k, x, g, N, k);
}

void ol_cuda_row_sumsq(float *n2, const float *x, size_t N, size_t k) {
  // n2 (N) = (float) sumsq of each row of x (N, k), in double: dora_sq_norms with r = 0
  ol_cuda_dora_sq_norms(n2, x, NULL, NULL, N, k, 0);
}

void ol_cuda_sqrt_inplace(float *x, size_t n) {
  // x (n)
  if (n == 0) return;
  sqrt_kernel<<<ol_cuda_blocks(n, OL_CUDA_THREADS), OL_CUDA_THREADS, 0, ol_cuda_stream()>>>(x, n);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_diag_scale(float *S, const float *lb, const float *B, const float *ld, size_t n,
                        size_t r) {
  // S, B (n, r), lb (n), ld (r)
  if (n == 0 || r == 0) return;
  LAUNCH_ROWS_COLS(r % 4 == 0 && aligned16(S) && aligned16(B) && aligned16(ld), diag_scale_kernel,
                   n, r, S, lb, B, ld, n, r);
}

void ol_cuda_diag_scale_backward(float *dlb, float *dld, const float *dS, const float *B,
                                 const float *lb, const float *ld, size_t n, size_t r) {
  // dlb (n), dld (r), dS and B (n, r), lb (n), ld (r)
  if (n == 0 || r == 0) return;
  cudaStream_t st = ol_cuda_stream();
  diag_row_grads_kernel<<<ol_cuda_blocks(n, TILE_WIDE), OL_CUDA_THREADS, 0, st>>>(dlb, dS, B, ld,
                                                                                  n, r);
  OL_CUDA_LAUNCHED();
  diag_col_grads_kernel<<<ol_cuda_blocks(r, TILE_WIDE), OL_CUDA_THREADS, 0, st>>>(dld, dS, B, lb,
                                                                                  n, r);
  OL_CUDA_LAUNCHED();
}

void ol_cuda_cyclic_rows(float *dst, size_t nd, size_t a, const float *src, size_t ns, size_t b,
                         size_t len, size_t n, float beta) {
  // dst (n, nd), src (n, ns), not overlapping
  if (n == 0 || nd == 0) return;
  OL_CHECK(ns > 0 || len == 0);
  const size_t ns1 = ns > 0 ? ns : 1;  // any, when nothing is read
  dim3 grid, block;
  grid_2d(n, nd, &grid, &block);
  cyclic_rows_kernel<<<grid, block, 0, ol_cuda_stream()>>>(dst, nd, a % nd, src, ns1, b % ns1,
                                                           nd % ns1, len, n, beta);
  OL_CUDA_LAUNCHED();
}
