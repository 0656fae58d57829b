// CUDA kernels of mine_pairs: the labels packed into 64-bit words (one thread per row and
// word), then one warp per row a. Its lanes test 32 candidates at a time (an AND and an
// equality per word), __ballot_sync and __popc count the valid ones; a second pass stops at
// the rank-th valid partner. O(B^2 W) word operations, no host sync, nothing read on the host.
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
constexpr int kRowsPerBlock = 8;  // one warp per row
constexpr int kPackThreads = 256;

// words[b * W + w]: labels w*64 .. w*64+63 of row b as bits.
template <typename scalar_t>
__global__ void pack_labels_kernel(const scalar_t* __restrict__ targets, int64_t stride_b, int64_t stride_c,
                                   int64_t B, int64_t c, int64_t W, Word* __restrict__ words) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * W) return;
  const int64_t b = i / W, first = (i % W) * 64, end = min(c, first + 64);
  Word word = 0;
  for (int64_t k = first; k < end; ++k) {
    if (is_label(targets[b * stride_b + k * stride_c])) word |= Word(1) << (k - first);
  }
  words[i] = word;
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

__global__ void __launch_bounds__(kWarp * kRowsPerBlock)
    mine_pairs_kernel(const Word* __restrict__ words, int64_t B, int W, const int64_t* __restrict__ seed,
                      int64_t* __restrict__ index_a, int64_t* __restrict__ index_b, bool* __restrict__ is_partial) {
  const int64_t a = blockIdx.x * static_cast<int64_t>(kRowsPerBlock) + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= B) return;  // the whole warp: a is the same for its lanes
  const Word* row = words + a * W;
  int64_t count = 0;
  for (int64_t start = 0; start < B; start += kWarp) {
    count += __popc(__ballot_sync(0xffffffffu, is_valid_partner(words, row, start + lane, B, W)));
  }
  int64_t partner = a;
  if (count > 0) {
    int64_t rank = partner_rank(static_cast<uint64_t>(*seed), a, count);
    for (int64_t start = 0;; start += kWarp) {
      unsigned valid = __ballot_sync(0xffffffffu, is_valid_partner(words, row, start + lane, B, W));
      const int n = __popc(valid);
      if (rank < n) {
        for (; rank > 0; --rank) valid &= valid - 1;
        partner = start + __ffs(valid) - 1;
        break;
      }
      rank -= n;
    }
  }
  if (lane == 0) {
    index_a[a] = a;
    index_b[a] = partner;
    is_partial[a] = count > 0;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs(const at::Tensor& targets, const at::Tensor& seed) {
  check_mine_pairs(targets, seed);
  const c10::cuda::CUDAGuard device_guard(targets.device());
  const int64_t B = targets.size(0), c = targets.size(1), W = std::max<int64_t>(1, (c + 63) / 64);
  at::Tensor index_a = at::empty({B}, targets.options().dtype(at::kLong));
  at::Tensor index_b = at::empty({B}, index_a.options());
  at::Tensor is_partial = at::empty({B}, targets.options().dtype(at::kBool));
  if (B == 0) return {index_a, index_b, is_partial};
  at::Tensor words = at::empty({B, W}, index_a.options());
  Word* words_ptr = reinterpret_cast<Word*>(words.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto pack_blocks = static_cast<unsigned>((B * W + kPackThreads - 1) / kPackThreads);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, targets.scalar_type(), "indeed_mine_pairs_cuda", [&] {
    pack_labels_kernel<scalar_t><<<pack_blocks, kPackThreads, 0, stream>>>(
        targets.data_ptr<scalar_t>(), targets.stride(0), targets.stride(1), B, c, W, words_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto blocks = static_cast<unsigned>((B + kRowsPerBlock - 1) / kRowsPerBlock);
  mine_pairs_kernel<<<blocks, kWarp * kRowsPerBlock, 0, stream>>>(
      words_ptr, B, static_cast<int>(W), seed.data_ptr<int64_t>(), index_a.data_ptr<int64_t>(),
      index_b.data_ptr<int64_t>(), is_partial.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {index_a, index_b, is_partial};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CUDA, m) { m.impl("mine_pairs", &mine_pairs); }

}  // namespace indeed::gpu
