// CUDA kernels of mine_pairs and mine_pairs_cooccur. The labels are packed into 64-bit words (one
// thread per word), then one warp works on each row a.
//
// mine_pairs: the warp's lanes test 32 candidates at a time (an AND and an equality per word),
// __ballot_sync and __popc count the valid ones; a second pass stops at the rank-th valid partner.
// O(B^2 W) word operations, no host sync, nothing read on the host.
//
// mine_pairs_cooccur: the labels are also packed per label (carrier bitsets of the rows), which
// give the batch's co-count matrix (one thread per label pair, popcounts of ANDs). The warp's
// lanes then take 32 labels j at a time for each label i of the row: the contrasts' masses
// S[i, j] * count(i, j), summed over the warp for the row's total (one kernel), and in a second
// pass a warp scan finds the contrast where the cumulative mass passes the draw. The partner is
// the rank-th row of carriers[i] & carriers[j] (or & ~carriers[j]): lanes over words, popcounts and
// a warp scan. A row whose masses are all 0 draws as mine_pairs. With a load cap the totals' kernel
// also adds floor(2^Q / W) to R[i, j] for the row's label pairs (integer atomics: the same sums in
// any order), a second kernel gives each row its load, the same sum as its total with R in place
// of the co-counts, and the draw keeps its partner or takes a uniform one (docs/SPEC.md).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "mine_pairs.h"

namespace indeed::gpu {
namespace {

using Word = unsigned long long;
constexpr int kWarp = 32;
constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kRowsPerBlock = 8;  // one warp per row
constexpr int kThreads = 256;

// bits[o * num_words + w]: bit t says whether element (o, w * 64 + t) of the targets is a label,
// where element (o, k) is targets[o * stride_outer + k * stride_inner] for k < inner. Rows of
// labels (o = row, k = label) and carrier bitsets (o = label, k = row) alike.
template <typename scalar_t>
__global__ void pack_bits_kernel(const scalar_t* __restrict__ targets, int64_t stride_outer, int64_t stride_inner,
                                 int64_t outer, int64_t inner, int64_t num_words, Word* __restrict__ bits) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= outer * num_words) return;
  const int64_t o = i / num_words, first = (i % num_words) * 64, end = min(inner, first + 64);
  Word word = 0;
  for (int64_t k = first; k < end; ++k) {
    if (is_label(targets[o * stride_outer + k * stride_inner])) word |= Word(1) << (k - first);
  }
  bits[i] = word;
}

// Packs the targets' labels: per row (W words each) or, by_label, per label (row_bits words each).
at::Tensor pack_bits(const at::Tensor& targets, bool by_label, cudaStream_t stream) {
  const int64_t B = targets.size(0), c = targets.size(1);
  const int64_t outer = by_label ? c : B, inner = by_label ? B : c;
  const int64_t num_words = by_label ? (B + 63) / 64 : std::max<int64_t>(1, (c + 63) / 64);
  at::Tensor bits = at::empty({outer, num_words}, targets.options().dtype(at::kLong));
  if (bits.numel() == 0) return bits;
  const auto blocks = static_cast<unsigned>((bits.numel() + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, targets.scalar_type(), "indeed_mine_pairs_cuda", [&] {
    pack_bits_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        targets.data_ptr<scalar_t>(), targets.stride(by_label ? 1 : 0), targets.stride(by_label ? 0 : 1), outer, inner,
        num_words, reinterpret_cast<Word*>(bits.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return bits;
}

// Whether candidate b is a valid partner of the row with words `row`: ya & yb != 0, ya != yb.
__device__ __forceinline__ bool is_valid_partner(const Word* __restrict__ words, const Word* __restrict__ row,
                                                 int64_t b, int64_t B, int W) {
  if (b >= B) return false;
  bool shares = false, differs = false;
  for (int w = 0; w < W; ++w) {
    const Word x = row[w], y = words[b * W + w];
    shares |= (x & y) != 0;
    differs |= x != y;
  }
  return shares && differs;
}

// mine_pairs' draw for row a, by its whole warp: the rank-th valid partner, or a without one.
__device__ int64_t uniform_partner(const Word* __restrict__ words, int64_t a, int64_t B, int W,
                                   const RowRandom& random, int lane) {
  const Word* row = words + a * W;
  int64_t count = 0;
  for (int64_t start = 0; start < B; start += kWarp) {
    count += __popc(__ballot_sync(kAllLanes, is_valid_partner(words, row, start + lane, B, W)));
  }
  if (count == 0) return a;
  int64_t rank = partner_rank(random, count);
  for (int64_t start = 0;; start += kWarp) {
    unsigned valid = __ballot_sync(kAllLanes, is_valid_partner(words, row, start + lane, B, W));
    const int n = __popc(valid);
    if (rank < n) {
      for (; rank > 0; --rank) valid &= valid - 1;
      return start + __ffs(valid) - 1;
    }
    rank -= n;
  }
}

__device__ __forceinline__ void write_pair(int64_t a, int64_t b, int lane, int64_t* __restrict__ index_a,
                                           int64_t* __restrict__ index_b, bool* __restrict__ is_partial) {
  if (lane == 0) {
    index_a[a] = a;
    index_b[a] = b;
    is_partial[a] = b != a;
  }
}

__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    mine_pairs_kernel(const Word* __restrict__ words, int64_t B, int W, const int64_t* __restrict__ seed,
                      int64_t* __restrict__ index_a, int64_t* __restrict__ index_b, bool* __restrict__ is_partial) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= B) return;  // the whole warp: a is the same for its lanes
  const RowRandom random = row_random(static_cast<uint64_t>(*seed), a);
  write_pair(a, uniform_partner(words, a, B, W, random, lane), lane, index_a, index_b, is_partial);
}

// co[i * c + j]: the rows carrying labels i and j.
__global__ void co_counts_kernel(const Word* __restrict__ carriers, int64_t c, int64_t row_bits,
                                 int64_t* __restrict__ co) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= c * c) return;
  const Word *x = carriers + (k / c) * row_bits, *y = carriers + (k % c) * row_bits;
  int64_t both = 0;
  for (int64_t w = 0; w < row_bits; ++w) both += __popcll(x[w] & y[w]);
  co[k] = both;
}

template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T x, int lane) {
  for (int d = 1; d < kWarp; d *= 2) {
    const T y = __shfl_up_sync(kAllLanes, x, d);
    if (lane >= d) x += y;
  }
  return x;
}

// A row's contrasts: label i of the row (ascending) with label j != i; count(i, j) = the rows with
// i and without j when the row has j, with both when it has not. With R in place of the co-counts
// co, "count" and "mass" give the terms of the row's load.
struct Contrasts {
  const Word* row;
  const int64_t *weights, *co;
  int64_t c;
  int W;

  __device__ bool has(int64_t k) const { return (row[k / 64] >> (k % 64)) & 1; }
  __device__ uint64_t count(int64_t i, int64_t j) const {
    return has(j) ? co[i * c + i] - co[i * c + j] : co[i * c + j];
  }
  // S[i, j] * count(i, j), 0 for j = i and past the last label.
  __device__ uint64_t mass(int64_t i, int64_t j) const {
    return j < c && j != i ? static_cast<uint64_t>(weights[i * c + j]) * count(i, j) : 0;
  }
  // visit(i, start) for each label i of the row and each start of 32 labels j, in order; stops
  // when visit returns true.
  template <typename Visit>
  __device__ void for_each_tile(const Visit& visit) const {
    for (int w = 0; w < W; ++w) {
      for (Word rest = row[w]; rest != 0; rest &= rest - 1) {
        const int64_t i = w * 64 + __ffsll(static_cast<long long>(rest)) - 1;
        for (int64_t start = 0; start < c; start += kWarp) {
          if (visit(i, start)) return;
        }
      }
    }
  }
};

// The rank-th row of carriers_i & (carriers_j ^ flip), by the warp (lanes over words); -1 past the last.
__device__ int64_t select_row(const Word* __restrict__ carriers_i, const Word* __restrict__ carriers_j, Word flip,
                              int64_t row_bits, int64_t rank, int lane) {
  for (int64_t start = 0; start < row_bits; start += kWarp) {
    const int64_t w = start + lane;
    const Word word = w < row_bits ? carriers_i[w] & (carriers_j[w] ^ flip) : 0;
    const int64_t through = warp_inclusive_sum<int64_t>(__popcll(word), lane);
    const unsigned past = __ballot_sync(kAllLanes, through > rank);
    if (past != 0) {
      const int holder = __ffs(past) - 1;
      Word bits = __shfl_sync(kAllLanes, word, holder);
      int64_t left = rank - (__shfl_sync(kAllLanes, through, holder) - __popcll(bits));
      for (; left > 0; --left) bits &= bits - 1;
      return (start + holder) * 64 + __ffsll(static_cast<long long>(bits)) - 1;
    }
    rank -= __shfl_sync(kAllLanes, through, kWarp - 1);
  }
  return -1;
}

// The row's total mass (or, with R as co, its load): the warp's sum of its contrasts' masses.
__device__ uint64_t contrast_total(const Contrasts& contrasts, int lane) {
  uint64_t lane_mass = 0;
  contrasts.for_each_tile([&](int64_t i, int64_t start) {
    lane_mass += contrasts.mass(i, start + lane);
    return false;
  });
  for (int d = kWarp / 2; d > 0; d /= 2) lane_mass += __shfl_xor_sync(kAllLanes, lane_mass, d);
  return lane_mass;
}

// totals[a] = row a's total mass W_a; with scale >= 0 (a load cap) also R[i, j] += floor(2^scale / W_a)
// for the labels i, j of the row.
__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    cooccur_totals_kernel(const Word* __restrict__ words, const int64_t* __restrict__ weights,
                          const int64_t* __restrict__ co, int64_t B, int64_t c, int W, int scale,
                          uint64_t* __restrict__ totals, uint64_t* __restrict__ shares) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= B) return;  // the whole warp
  const Contrasts contrasts{words + a * W, weights, co, c, W};
  const uint64_t total = contrast_total(contrasts, lane);
  if (lane == 0) totals[a] = total;
  if (scale < 0 || total == 0) return;
  const uint64_t share = load_share(total, scale);
  contrasts.for_each_tile([&](int64_t i, int64_t start) {
    const int64_t j = start + lane;
    if (j < c && contrasts.has(j)) atomicAdd(reinterpret_cast<unsigned long long*>(shares + i * c + j), share);
    return false;
  });
}

// loads[b] = the sum over the contrasts (i, j) of row b of S[i, j] * R(i, j), R's rows on the other side of j.
__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    cooccur_loads_kernel(const Word* __restrict__ words, const int64_t* __restrict__ weights,
                         const int64_t* __restrict__ shares, int64_t B, int64_t c, int W, uint64_t* __restrict__ loads) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (b >= B) return;  // the whole warp
  const uint64_t load = contrast_total(Contrasts{words + b * W, weights, shares, c, W}, lane);
  if (lane == 0) loads[b] = load;
}

__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    mine_pairs_cooccur_kernel(const Word* __restrict__ words, const Word* __restrict__ carriers,
                              const int64_t* __restrict__ weights, const int64_t* __restrict__ co,
                              const uint64_t* __restrict__ totals, const uint64_t* __restrict__ loads,
                              uint64_t threshold, int64_t B, int64_t c, int W, int64_t row_bits,
                              const int64_t* __restrict__ seed, int64_t* __restrict__ index_a,
                              int64_t* __restrict__ index_b, bool* __restrict__ is_partial) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= B) return;  // the whole warp
  const uint64_t key = static_cast<uint64_t>(*seed);
  const RowRandom random = row_random(key, a);
  const Contrasts contrasts{words + a * W, weights, co, c, W};
  const uint64_t total = totals[a];
  int64_t partner = a;
  if (total == 0) {
    partner = uniform_partner(words, a, B, W, random, lane);
  } else {
    // The first contrast whose cumulative mass exceeds the draw.
    const uint64_t drawn = contrast_draw(random, total);
    uint64_t before = 0;
    int64_t first = -1, second = -1;
    contrasts.for_each_tile([&](int64_t i, int64_t start) {
      const uint64_t through = before + warp_inclusive_sum(contrasts.mass(i, start + lane), lane);
      const unsigned past = __ballot_sync(kAllLanes, through > drawn);
      if (past != 0) {
        first = i;
        second = start + __ffs(past) - 1;
        return true;
      }
      before = __shfl_sync(kAllLanes, through, kWarp - 1);
      return false;
    });
    if (first >= 0) {  // always, for weights in [0, 2^16]: garbage weights leave the self-pair
      const int64_t rank = partner_rank(random, static_cast<int64_t>(contrasts.count(first, second)));
      const Word flip = contrasts.has(second) ? ~Word(0) : Word(0);
      const int64_t row = select_row(carriers + first * row_bits, carriers + second * row_bits, flip, row_bits, rank, lane);
      partner = row >= 0 ? row : a;
    }
    if (threshold != 0 && partner != a) {
      const RowRandom block1 = row_random(key, a, 1);
      if (!keep_partner(block1, loads[partner], threshold)) {
        // The uniform draw ranks with words 2 and 3 of block 1: uniform_partner reads words 0 and 1.
        const RowRandom redraw{{block1.word[2], block1.word[3], 0, 0}};
        partner = uniform_partner(words, a, B, W, redraw, lane);
      }
    }
  }
  write_pair(a, partner, lane, index_a, index_b, is_partial);
}

struct Outputs {
  at::Tensor index_a, index_b, is_partial;
};

Outputs empty_outputs(const at::Tensor& targets) {
  const int64_t B = targets.size(0);
  at::Tensor index_a = at::empty({B}, targets.options().dtype(at::kLong));
  return {index_a, at::empty({B}, index_a.options()), at::empty({B}, targets.options().dtype(at::kBool))};
}

unsigned row_blocks(int64_t B) { return static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock); }

const Word* word_ptr(const at::Tensor& bits) { return reinterpret_cast<const Word*>(bits.data_ptr<int64_t>()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs(const at::Tensor& targets, const at::Tensor& seed) {
  check_mine_pairs(targets, seed);
  const c10::cuda::CUDAGuard device_guard(targets.device());
  Outputs out = empty_outputs(targets);
  const int64_t B = targets.size(0);
  if (B == 0) return {out.index_a, out.index_b, out.is_partial};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor words = pack_bits(targets, /*by_label=*/false, stream);
  mine_pairs_kernel<<<row_blocks(B), kWarp * kRowsPerBlock, 0, stream>>>(
      word_ptr(words), B, static_cast<int>(words.size(1)), seed.data_ptr<int64_t>(), out.index_a.data_ptr<int64_t>(),
      out.index_b.data_ptr<int64_t>(), out.is_partial.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.index_a, out.index_b, out.is_partial};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs_cooccur(const at::Tensor& targets, const at::Tensor& seed,
                                                                  const at::Tensor& contrast_weights, int64_t load_cap) {
  check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap);
  const c10::cuda::CUDAGuard device_guard(targets.device());
  Outputs out = empty_outputs(targets);
  const int64_t B = targets.size(0), c = targets.size(1), row_bits = (B + 63) / 64;
  if (B == 0) return {out.index_a, out.index_b, out.is_partial};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor words = pack_bits(targets, /*by_label=*/false, stream);
  const at::Tensor carriers = pack_bits(targets, /*by_label=*/true, stream);
  const at::Tensor weights = contrast_weights.contiguous();
  const int W = static_cast<int>(words.size(1));
  at::Tensor co = at::empty({c, c}, weights.options());
  if (c > 0) {
    co_counts_kernel<<<static_cast<unsigned>((c * c + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        word_ptr(carriers), c, row_bits, co.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // totals (B,), then with a cap R (c, c) and loads (B,): uint64 values in int64 tensors.
  const at::Tensor totals = at::empty({B}, weights.options());
  const at::Tensor shares = load_cap > 0 ? at::zeros({c, c}, weights.options()) : at::Tensor();
  const at::Tensor loads = load_cap > 0 ? at::empty({B}, weights.options()) : at::Tensor();
  const auto as_unsigned = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()) : nullptr;
  };
  cooccur_totals_kernel<<<row_blocks(B), kWarp * kRowsPerBlock, 0, stream>>>(
      word_ptr(words), weights.data_ptr<int64_t>(), co.data_ptr<int64_t>(), B, c, W, load_cap > 0 ? load_scale(B) : -1,
      as_unsigned(totals), as_unsigned(shares));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (load_cap > 0) {
    cooccur_loads_kernel<<<row_blocks(B), kWarp * kRowsPerBlock, 0, stream>>>(
        word_ptr(words), weights.data_ptr<int64_t>(), shares.data_ptr<int64_t>(), B, c, W, as_unsigned(loads));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  mine_pairs_cooccur_kernel<<<row_blocks(B), kWarp * kRowsPerBlock, 0, stream>>>(
      word_ptr(words), c > 0 ? word_ptr(carriers) : nullptr, weights.data_ptr<int64_t>(), co.data_ptr<int64_t>(),
      as_unsigned(totals), as_unsigned(loads), load_cap > 0 ? load_threshold(load_cap, B) : 0, B, c, W, row_bits,
      seed.data_ptr<int64_t>(), out.index_a.data_ptr<int64_t>(), out.index_b.data_ptr<int64_t>(),
      out.is_partial.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out.index_a, out.index_b, out.is_partial};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CUDA, m) {
  m.impl("mine_pairs", &mine_pairs);
  m.impl("mine_pairs_cooccur", &mine_pairs_cooccur);
}

}  // namespace indeed::gpu
