// What the CPU and CUDA kernels of mine_pairs share: what a label is, and the random draw
// (indeed_ext/reference.py and the Triton kernel compute the same numbers). Row a's partner
// is the rank-th of its `count` valid partners in batch order, rank = floor(u * count) for
// u = (hi * 2^32 + lo) / 2^64, with (lo, hi) the first two words of Philox4x32-10 under key
// `seed` and counter (0, 0, a, 0). A counter-based generator keyed by a seed tensor read on
// the device: no host state, so a CUDA graph replays it with each new seed; the ranks are
// uniform up to count / 2^64.
#pragma once
#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <type_traits>

namespace indeed {

// Labels are targets > 0.5, compared in the targets' dtype as torch compares them.
template <typename scalar_t>
C10_HOST_DEVICE inline bool is_label(scalar_t target) {
  if constexpr (std::is_same_v<scalar_t, bool>) {
    return target;
  } else {
    return target > scalar_t(0.5);
  }
}

C10_HOST_DEVICE inline int64_t partner_rank(uint64_t seed, int64_t row, int64_t count) {
  at::Philox4_32 philox(seed, static_cast<uint64_t>(row), 0);
  const uint64_t lo = philox(), hi = philox();
  const uint64_t n = static_cast<uint64_t>(count);  // < 2^31: the products fit in 64 bits
  return static_cast<int64_t>((hi * n + ((lo * n) >> 32)) >> 32);
}

}  // namespace indeed
