// What the CPU and CUDA kernels of mine_pairs and mine_pairs_cooccur share: what a label is, and
// the random draws (indeed_ext/reference.py and the Triton kernel compute the same numbers). Row
// a's numbers are the four words of Philox4x32-10 under key `seed` and counter (0, 0, a, 0): a
// counter-based generator keyed by a seed tensor read on the device, so there is no host state and
// a CUDA graph replays it with each new seed. Words 0 and 1 give the partner's rank among `count`
// candidates, rank = floor(u * count) for u = (hi * 2^32 + lo) / 2^64 (uniform up to count / 2^64);
// words 2 and 3 give mine_pairs_cooccur's draw of a contrast, floor(u' * total / 2^64).
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

struct RowRandom {
  uint32_t word[4];
};

C10_HOST_DEVICE inline RowRandom row_random(uint64_t seed, int64_t row) {
  at::Philox4_32 philox(seed, static_cast<uint64_t>(row), 0);
  RowRandom random;
  for (int k = 0; k < 4; ++k) random.word[k] = philox();
  return random;
}

C10_HOST_DEVICE inline int64_t partner_rank(const RowRandom& random, int64_t count) {
  const uint64_t lo = random.word[0], hi = random.word[1];
  const uint64_t n = static_cast<uint64_t>(count);  // < 2^31: the products fit in 64 bits
  return static_cast<int64_t>((hi * n + ((lo * n) >> 32)) >> 32);
}

// floor(u * total / 2^64) for u = word 3 * 2^32 + word 2: below total, for total < 2^63.
C10_HOST_DEVICE inline uint64_t contrast_draw(const RowRandom& random, uint64_t total) {
  const uint64_t u = (static_cast<uint64_t>(random.word[3]) << 32) | random.word[2];
#ifdef __CUDA_ARCH__
  return __umul64hi(u, total);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(u) * total) >> 64);
#endif
}

}  // namespace indeed
