// Row kernels of the identical map (docs/SPEC.md), shared by identical_map, decompose and
// six_head_bce. A team of threads (a multiple of 32, at most 512) owns one row pair (fa, fb):
// it forms p = fa * fb in the accumulation type, reduces the row's normaliser (the L2 norm, or
// min and max with their tie counts) and then writes the outputs (forward) or the input
// gradients (backward), all in one kernel.
//
// One pass: a row of up to kForwardElemsPerThread * 512 = 8192 elements (forward) or
// kBackwardElemsPerThread * 512 = 4096 (backward) is held in registers between the reduction
// and the writes, so every input element is read from memory once and every output written
// once. Longer rows are processed in tiles of that size and re-read (from L2) once per phase.
// Per row of n elements of s bytes:
//   forward  reads 2 n s, writes (1 | 4 | 2) n s           (map | decompose | ident features)
//   backward reads (3 | 6 | 4) n s, writes 2 n s           (map | decompose | six-head rows)
// Rows are read with 16-byte vector loads when n and every row pointer and row stride allow it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "checks.h"

namespace indeed::gpu {

// What a row kernel reads and writes besides fa and fb:
//   Map:       forward m;               backward reads g_m, writes dfa, dfb
//   Decompose: forward ia, ib, da, db;  backward reads their grads, writes dfa, dfb
//   Ident:     forward ia, ib;          backward reads their grads, writes ia, ib (for dW) and
//              adds dfa, dfb into the gradient rows of the gathered features (atomics)
enum class PairMode { Map, Decompose, Ident };

template <PairMode M>
constexpr int kFeatureOutputs = M == PairMode::Map ? 1 : (M == PairMode::Decompose ? 4 : 2);

constexpr int kWarp = 32;
constexpr int kMaxThreadsPerRow = 512;
constexpr int kMaxBlockThreads = 512;
constexpr int kMinBlockThreads = 128;  // short rows: several teams per block
constexpr int kForwardElemsPerThread = 16;
constexpr int kBackwardElemsPerThread = 8;  // the backward holds 3 to 6 arrays per element
constexpr int kScratchBytes = (kMaxBlockThreads / kWarp) * 32;  // one partial (<= 32 bytes) per warp

// Rows of a matrix with unit column stride: row r starts at data + index[r] * stride, or at
// data + r * stride without an index. Index values are device memory, so their range is
// asserted in the kernel (the Python API checks them on the host before dispatch).
template <typename T>
struct Rows {
  T* data = nullptr;
  int64_t stride = 0;
  const int64_t* index = nullptr;
  int64_t bound = 0;

  __device__ __forceinline__ T* row(int64_t r) const {
    if (index == nullptr) return data + r * stride;
    const int64_t i = index[r];
    CUDA_KERNEL_ASSERT(i >= 0 && i < bound && "pair index outside [0, B)");
    return data + i * stride;
  }
};

template <typename scalar_t>
struct PairRowsArgs {
  using acc_t = at::opmath_type<scalar_t>;
  Rows<const scalar_t> fa, fb;
  Rows<const scalar_t> grad[4];  // backward: the grads of the forward outputs, in their order
  Rows<scalar_t> out[4];         // forward outputs; backward: dfa, dfb (Map, Decompose) or ia, ib (Ident)
  Rows<acc_t> scatter[2];        // Ident backward: dfa, dfb are added into these rows
  int64_t rows = 0;
  int64_t n = 0;
  Norm norm = Norm::MinMax;
  acc_t eps = 0;
};

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// p = x * y rounded before any use, so that no later expression fuses it into an FMA: the
// extremes and the tie tests must see the same p in every phase.
__device__ __forceinline__ float mul_rn(float x, float y) { return __fmul_rn(x, y); }
__device__ __forceinline__ double mul_rn(double x, double y) { return __dmul_rn(x, y); }

// --------------------------------------------------------------------------- row reductions
template <typename acc_t, int K>
struct Sums {
  acc_t v[K];
};

template <typename acc_t, int K>
__device__ __forceinline__ Sums<acc_t, K> combine(const Sums<acc_t, K>& x, const Sums<acc_t, K>& y) {
  Sums<acc_t, K> r;
#pragma unroll
  for (int k = 0; k < K; ++k) r.v[k] = x.v[k] + y.v[k];
  return r;
}

template <typename acc_t, int K>
__device__ __forceinline__ Sums<acc_t, K> shfl_xor(const Sums<acc_t, K>& x, int mask) {
  Sums<acc_t, K> r;
#pragma unroll
  for (int k = 0; k < K; ++k) r.v[k] = __shfl_xor_sync(0xffffffffu, x.v[k], mask);
  return r;
}

// Row minimum and maximum with the number of entries equal to each (torch.amin/amax split
// their gradient evenly among ties). NaN wins, as in torch.amin/amax (x != x tests NaN).
template <typename acc_t>
struct Extremes {
  acc_t lo, hi;
  int n_lo, n_hi;
};

template <typename acc_t>
__device__ __forceinline__ Extremes<acc_t> combine(const Extremes<acc_t>& x, const Extremes<acc_t>& y) {
  Extremes<acc_t> r;
  if (x.lo == y.lo) {
    r.lo = x.lo, r.n_lo = x.n_lo + y.n_lo;
  } else if (x.lo != x.lo || x.lo < y.lo) {
    r.lo = x.lo, r.n_lo = x.n_lo;
  } else {
    r.lo = y.lo, r.n_lo = y.n_lo;
  }
  if (x.hi == y.hi) {
    r.hi = x.hi, r.n_hi = x.n_hi + y.n_hi;
  } else if (x.hi != x.hi || x.hi > y.hi) {
    r.hi = x.hi, r.n_hi = x.n_hi;
  } else {
    r.hi = y.hi, r.n_hi = y.n_hi;
  }
  return r;
}

template <typename acc_t>
__device__ __forceinline__ Extremes<acc_t> shfl_xor(const Extremes<acc_t>& x, int mask) {
  return {__shfl_xor_sync(0xffffffffu, x.lo, mask), __shfl_xor_sync(0xffffffffu, x.hi, mask),
          __shfl_xor_sync(0xffffffffu, x.n_lo, mask), __shfl_xor_sync(0xffffffffu, x.n_hi, mask)};
}

// Reduces v over the team of `team_size` threads that owns this thread's row; every thread of
// the team gets the result. The butterfly of commutative combines leaves the same bits in every
// lane, and the cross-warp step runs in a fixed order: the result is deterministic. Every thread
// of the block must call it (it synchronises the block when a team spans several warps).
template <typename T>
__device__ __forceinline__ T row_reduce(T v, unsigned char* scratch, int team_size) {
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask /= 2) v = combine(v, shfl_xor(v, mask));
  if (team_size == kWarp) return v;
  T* partial = reinterpret_cast<T*>(scratch);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  const int warps = team_size / kWarp;
  const int first = static_cast<int>(threadIdx.x) / team_size * warps;
  T r = partial[first];
  for (int w = 1; w < warps; ++w) r = combine(r, partial[first + w]);
  __syncthreads();  // the scratch is reused by the next reduction
  return r;
}

// The row's map p -> m: "l2" p / max(|p|, eps), "minmax" (p - lo) / max(hi - lo, eps), where
// max(d, eps) is d when d > eps and the constant eps otherwise (clamped).
template <typename acc_t>
struct RowNormaliser {
  bool l2, clamped;
  acc_t lo, hi, denom;
  int n_lo, n_hi;

  __device__ __forceinline__ acc_t operator()(acc_t p) const { return l2 ? p / denom : (p - lo) / denom; }
};

template <typename acc_t>
struct RowStats {
  acc_t sum_sq = 0;
  Extremes<acc_t> ext = {std::numeric_limits<acc_t>::infinity(), -std::numeric_limits<acc_t>::infinity(), 0, 0};

  __device__ __forceinline__ void add(acc_t p, bool l2) {
    if (l2) {
      sum_sq += p * p;
    } else {
      ext = combine(ext, Extremes<acc_t>{p, p, 1, 1});
    }
  }

  __device__ __forceinline__ RowNormaliser<acc_t> finish(bool l2, acc_t eps, unsigned char* scratch,
                                                         int team_size) const {
    RowNormaliser<acc_t> r;
    r.l2 = l2;
    if (l2) {
      const acc_t norm = std::sqrt(row_reduce(Sums<acc_t, 1>{{sum_sq}}, scratch, team_size).v[0]);
      r.clamped = !(norm > eps);  // NaN is clamped too, as torch.where(d > eps, d, eps)
      r.denom = r.clamped ? eps : norm;
      r.lo = r.hi = 0;
      r.n_lo = r.n_hi = 0;
    } else {
      const Extremes<acc_t> e = row_reduce(ext, scratch, team_size);
      const acc_t range = e.hi - e.lo;
      r.clamped = !(range > eps);
      r.denom = r.clamped ? eps : range;
      r.lo = e.lo, r.hi = e.hi;
      r.n_lo = e.n_lo, r.n_hi = e.n_hi;
    }
    return r;
  }
};

// --------------------------------------------------------------------------- tiles of a row
struct RowTeam {
  int size;  // threads per row
  int lane;  // rank in the team
  int64_t row;
  bool active;  // false for the spare teams of the last block

  __device__ RowTeam(int threads_per_row, int64_t rows)
      : size(threads_per_row),
        lane(static_cast<int>(threadIdx.x) % threads_per_row),
        row(static_cast<int64_t>(blockIdx.x) * (blockDim.x / threads_per_row) + threadIdx.x / threads_per_row),
        active(row < rows) {}
};

// Thread `lane` holds packs i = 0..ITEMS-1 of each tile at element offsets
// tile * tile_elems + (i * team + lane) * VEC: consecutive lanes read consecutive packs.
template <int VEC, int ITEMS>
struct TileLayout {
  int64_t tile_elems, num_tiles;
  int team, lane;

  __device__ TileLayout(const RowTeam& t, int64_t n)
      : tile_elems(static_cast<int64_t>(t.size) * VEC * ITEMS),
        num_tiles((n + tile_elems - 1) / tile_elems),
        team(t.size),
        lane(t.lane) {}

  __device__ __forceinline__ int64_t offset(int64_t tile, int i) const {
    return tile * tile_elems + (static_cast<int64_t>(i) * team + lane) * VEC;
  }
};

template <int VEC, int ITEMS, typename scalar_t>
__device__ __forceinline__ void load_tile(Pack<scalar_t, VEC> (&dst)[ITEMS], const scalar_t* row,
                                          const TileLayout<VEC, ITEMS>& tl, int64_t tile, int64_t n_row) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int64_t e = tl.offset(tile, i);
    if (e < n_row) dst[i] = *reinterpret_cast<const Pack<scalar_t, VEC>*>(row + e);
  }
}

// --------------------------------------------------------------------------- forward
template <typename scalar_t, int VEC, PairMode MODE>
__global__ void __launch_bounds__(kMaxBlockThreads)
    pair_rows_forward_kernel(const PairRowsArgs<scalar_t> args, const int threads_per_row) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Pack<scalar_t, VEC>;
  constexpr int ITEMS = kForwardElemsPerThread / VEC;
  constexpr int OUTS = kFeatureOutputs<MODE>;
  __shared__ alignas(16) unsigned char scratch[kScratchBytes];

  const RowTeam team(threads_per_row, args.rows);
  const TileLayout<VEC, ITEMS> tl(team, args.n);
  const int64_t n_row = team.active ? args.n : 0;  // spare teams load nothing but join the reductions
  const bool l2 = args.norm == Norm::L2;
  const scalar_t* fa = team.active ? args.fa.row(team.row) : nullptr;
  const scalar_t* fb = team.active ? args.fb.row(team.row) : nullptr;

  Vec a[ITEMS] = {}, b[ITEMS] = {};
  RowStats<acc_t> stats;
  for (int64_t t = 0; t < tl.num_tiles; ++t) {
    load_tile(a, fa, tl, t, n_row);
    load_tile(b, fb, tl, t, n_row);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (tl.offset(t, i) >= n_row) continue;
#pragma unroll
      for (int v = 0; v < VEC; ++v) stats.add(mul_rn(acc_t(a[i].v[v]), acc_t(b[i].v[v])), l2);
    }
  }
  const RowNormaliser<acc_t> to_m = stats.finish(l2, args.eps, scratch, team.size);

  scalar_t* out[OUTS];
#pragma unroll
  for (int k = 0; k < OUTS; ++k) out[k] = team.active ? args.out[k].row(team.row) : nullptr;
  for (int64_t t = 0; t < tl.num_tiles; ++t) {
    if (tl.num_tiles > 1) {  // a single tile is still in registers
      load_tile(a, fa, tl, t, n_row);
      load_tile(b, fb, tl, t, n_row);
    }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t e = tl.offset(t, i);
      if (e >= n_row) continue;
      Vec o[OUTS];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const acc_t x = a[i].v[v], y = b[i].v[v];
        const acc_t m = to_m(mul_rn(x, y));
        if constexpr (MODE == PairMode::Map) {
          o[0].v[v] = scalar_t(m);
        } else {
          o[0].v[v] = scalar_t(m * x);
          o[1].v[v] = scalar_t(m * y);
          if constexpr (MODE == PairMode::Decompose) {
            o[2].v[v] = scalar_t((1 - m) * x);
            o[3].v[v] = scalar_t((1 - m) * y);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < OUTS; ++k) *reinterpret_cast<Vec*>(out[k] + e) = o[k];
    }
  }
}

// --------------------------------------------------------------------------- backward
// dm, the gradient reaching m, from the grads of the forward outputs.
template <PairMode MODE, typename acc_t>
__device__ __forceinline__ acc_t grad_of_map(const acc_t (&g)[4], acc_t x, acc_t y) {
  if constexpr (MODE == PairMode::Map) {
    return g[0];
  } else if constexpr (MODE == PairMode::Decompose) {
    return (g[0] - g[2]) * x + (g[1] - g[3]) * y;
  } else {
    return g[0] * x + g[1] * y;
  }
}

template <typename scalar_t, int VEC, PairMode MODE>
__global__ void __launch_bounds__(kMaxBlockThreads)
    pair_rows_backward_kernel(const PairRowsArgs<scalar_t> args, const int threads_per_row) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Pack<scalar_t, VEC>;
  constexpr int ITEMS = kBackwardElemsPerThread / VEC;
  constexpr int NG = kFeatureOutputs<MODE>;
  __shared__ alignas(16) unsigned char scratch[kScratchBytes];

  const RowTeam team(threads_per_row, args.rows);
  const TileLayout<VEC, ITEMS> tl(team, args.n);
  const int64_t n_row = team.active ? args.n : 0;
  const bool l2 = args.norm == Norm::L2;
  const scalar_t* fa = team.active ? args.fa.row(team.row) : nullptr;
  const scalar_t* fb = team.active ? args.fb.row(team.row) : nullptr;
  const scalar_t* grad_rows[NG];
#pragma unroll
  for (int k = 0; k < NG; ++k) grad_rows[k] = team.active ? args.grad[k].row(team.row) : nullptr;

  Vec a[ITEMS] = {}, b[ITEMS] = {}, g[NG][ITEMS] = {};
  auto load_all = [&](int64_t t) {
    load_tile(a, fa, tl, t, n_row);
    load_tile(b, fb, tl, t, n_row);
#pragma unroll
    for (int k = 0; k < NG; ++k) load_tile(g[k], grad_rows[k], tl, t, n_row);
  };
  auto grads_at = [&](int i, int v, acc_t (&gv)[4]) {  // the unused slots stay 0
#pragma unroll
    for (int k = 0; k < NG; ++k) gv[k] = g[k][i].v[v];
  };

  // Phase 1: the normaliser of p.
  RowStats<acc_t> stats;
  for (int64_t t = 0; t < tl.num_tiles; ++t) {
    load_all(t);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (tl.offset(t, i) >= n_row) continue;
#pragma unroll
      for (int v = 0; v < VEC; ++v) stats.add(mul_rn(acc_t(a[i].v[v]), acc_t(b[i].v[v])), l2);
    }
  }
  const RowNormaliser<acc_t> to_m = stats.finish(l2, args.eps, scratch, team.size);

  // Phase 2: the row sums of the chain rule through the normaliser. sums.v[0] = dm . m;
  // sums.v[1] = sum dm (m - 1), or sum dm when clamped (the gradient reaching the minimum).
  Sums<acc_t, 2> sums = {{0, 0}};
  for (int64_t t = 0; t < tl.num_tiles; ++t) {
    if (tl.num_tiles > 1) load_all(t);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (tl.offset(t, i) >= n_row) continue;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const acc_t x = a[i].v[v], y = b[i].v[v];
        acc_t gv[4] = {0, 0, 0, 0};
        grads_at(i, v, gv);
        const acc_t m = to_m(mul_rn(x, y));
        const acc_t dm = grad_of_map<MODE>(gv, x, y);
        sums.v[0] += dm * m;
        sums.v[1] += to_m.clamped ? dm : dm * (m - 1);
      }
    }
  }
  sums = row_reduce(sums, scratch, team.size);
  // minmax: the gradients of the minimum and maximum, shared evenly among their ties.
  const acc_t lo_share = (to_m.clamped ? -sums.v[1] : sums.v[1]) / to_m.denom / acc_t(to_m.n_lo);
  const acc_t hi_share = to_m.clamped ? acc_t(0) : -sums.v[0] / to_m.denom / acc_t(to_m.n_hi);
  auto grad_of_p = [&](acc_t p, acc_t m, acc_t dm) -> acc_t {
    if (to_m.l2) return to_m.clamped ? dm / to_m.denom : (dm - m * sums.v[0]) / to_m.denom;
    acc_t dp = dm / to_m.denom;
    if (p == to_m.lo) dp += lo_share;
    if (p == to_m.hi) dp += hi_share;
    return dp;
  };

  // Phase 3: the input gradients.
  scalar_t* out[2];
  acc_t* scatter[2] = {nullptr, nullptr};
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    out[k] = team.active ? args.out[k].row(team.row) : nullptr;
    if constexpr (MODE == PairMode::Ident) scatter[k] = team.active ? args.scatter[k].row(team.row) : nullptr;
  }
  for (int64_t t = 0; t < tl.num_tiles; ++t) {
    if (tl.num_tiles > 1) load_all(t);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t e = tl.offset(t, i);
      if (e >= n_row) continue;
      Vec o[2];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const acc_t x = a[i].v[v], y = b[i].v[v];
        acc_t gv[4] = {0, 0, 0, 0};
        grads_at(i, v, gv);
        const acc_t p = mul_rn(x, y);
        const acc_t m = to_m(p);
        const acc_t dp = grad_of_p(p, m, grad_of_map<MODE>(gv, x, y));
        if constexpr (MODE == PairMode::Map) {
          o[0].v[v] = scalar_t(dp * y);
          o[1].v[v] = scalar_t(dp * x);
        } else if constexpr (MODE == PairMode::Decompose) {
          o[0].v[v] = scalar_t(gv[0] * m + gv[2] * (1 - m) + dp * y);
          o[1].v[v] = scalar_t(gv[1] * m + gv[3] * (1 - m) + dp * x);
        } else {
          atomicAdd(scatter[0] + e + v, gv[0] * m + dp * y);
          atomicAdd(scatter[1] + e + v, gv[1] * m + dp * x);
          o[0].v[v] = scalar_t(m * x);
          o[1].v[v] = scalar_t(m * y);
        }
      }
      *reinterpret_cast<Vec*>(out[0] + e) = o[0];
      *reinterpret_cast<Vec*>(out[1] + e) = o[1];
    }
  }
}

// --------------------------------------------------------------------------- host side
template <typename T>
bool rows_vectorizable(const Rows<T>& r, int vec) {
  return r.data == nullptr ||
         (reinterpret_cast<uintptr_t>(r.data) % (sizeof(T) * vec) == 0 && r.stride % vec == 0);
}

// 16-byte packs need n, every row start and every row stride to be multiples of the pack.
template <typename scalar_t>
bool vectorizable(const PairRowsArgs<scalar_t>& args, int vec) {
  bool ok = args.n % vec == 0 && rows_vectorizable(args.fa, vec) && rows_vectorizable(args.fb, vec);
  for (const auto& r : args.grad) ok = ok && rows_vectorizable(r, vec);
  for (const auto& r : args.out) ok = ok && rows_vectorizable(r, vec);
  return ok;  // the scatter rows take scalar atomics
}

template <PairMode MODE, bool BACKWARD, typename scalar_t>
void launch_pair_rows(const PairRowsArgs<scalar_t>& args) {
  if (args.rows == 0 || args.n == 0) return;
  constexpr int kElems = BACKWARD ? kBackwardElemsPerThread : kForwardElemsPerThread;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t wanted = (args.n + kElems - 1) / kElems;
  const int threads_per_row =
      static_cast<int>(std::clamp<int64_t>((wanted + kWarp - 1) / kWarp * kWarp, kWarp, kMaxThreadsPerRow));
  const int rows_per_block = std::max(1, kMinBlockThreads / threads_per_row);
  const int block = rows_per_block * threads_per_row;
  const int64_t grid = (args.rows + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "indeed: too many rows for one launch: ", args.rows);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(grid), block, 0, stream>>>(args, threads_per_row);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  const bool vec = vectorizable(args, kVec);
  if constexpr (BACKWARD) {
    vec ? launch(pair_rows_backward_kernel<scalar_t, kVec, MODE>) : launch(pair_rows_backward_kernel<scalar_t, 1, MODE>);
  } else {
    vec ? launch(pair_rows_forward_kernel<scalar_t, kVec, MODE>) : launch(pair_rows_forward_kernel<scalar_t, 1, MODE>);
  }
}

template <typename T>
Rows<T> rows_of(T* data, int64_t stride, const int64_t* index = nullptr, int64_t bound = 0) {
  return Rows<T>{data, stride, index, bound};
}

// The kernels read rows with unit column stride and any row stride; other layouts are copied.
inline at::Tensor with_unit_column_stride(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

// Results are computed row-major; they are returned in the layout empty_like(like) has (what the
// fake kernels promise): the same tensor unless `like` is a dense permutation, e.g. a transpose.
inline at::Tensor in_layout_of(const at::Tensor& result, const at::Tensor& like) {
  if (like.is_contiguous() || !like.is_non_overlapping_and_dense()) return result;
  return at::empty_like(like, result.options()).copy_(result);
}

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace indeed::gpu
