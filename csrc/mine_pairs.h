// What the CPU and CUDA kernels of mine_pairs and mine_pairs_cooccur share: what a label is, and
// the random draws (indeed_ext/reference.py and the Triton kernel compute the same numbers). Row
// a's numbers are the words of Philox4x32-10 under key `seed` and counter (block, 0, a, 0): a
// counter-based generator keyed by a seed tensor read on the device, so there is no host state and
// a CUDA graph replays it with each new seed. Block 0: words 0 and 1 give the partner's rank among
// `count` candidates, rank = floor(u * count) for u = (hi * 2^32 + lo) / 2^64 (uniform up to
// count / 2^64); words 2 and 3 give mine_pairs_cooccur's draw of a contrast, floor(u' * total / 2^64).
// Block 1 (mine_pairs_cooccur with a load cap): words 0 and 1 decide whether the weighted partner
// is kept, words 2 and 3 rank the uniform partner that replaces it.
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

C10_HOST_DEVICE inline RowRandom row_random(uint64_t seed, int64_t row, uint64_t block = 0) {
  at::Philox4_32 philox(seed, static_cast<uint64_t>(row), block);
  RowRandom random;
  for (int k = 0; k < 4; ++k) random.word[k] = philox();
  return random;
}

// floor(u * count) for u = (hi * 2^32 + lo) / 2^64 and count < 2^31 (the products fit in 64 bits).
C10_HOST_DEVICE inline int64_t rank_of(uint64_t lo, uint64_t hi, int64_t count) {
  const uint64_t n = static_cast<uint64_t>(count);
  return static_cast<int64_t>((hi * n + ((lo * n) >> 32)) >> 32);
}

C10_HOST_DEVICE inline int64_t partner_rank(const RowRandom& random, int64_t count) {
  return rank_of(random.word[0], random.word[1], count);
}

// floor(u * total / 2^64) for u = hi * 2^32 + lo: below total, for total < 2^63.
C10_HOST_DEVICE inline uint64_t draw_below(uint64_t lo, uint64_t hi, uint64_t total) {
  const uint64_t u = (hi << 32) | lo;
#ifdef __CUDA_ARCH__
  return __umul64hi(u, total);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(u) * total) >> 64);
#endif
}

C10_HOST_DEVICE inline uint64_t contrast_draw(const RowRandom& random, uint64_t total) {
  return draw_below(random.word[2], random.word[3], total);
}

// mine_pairs_cooccur's load cap (docs/SPEC.md). Loads are fixed-point numbers with Q = 63 -
// bit_length(B) fraction bits, so that a load, at most B * 2^Q, stays below 2^63. A row with
// total mass W > 0 adds floor(2^Q / W) times each pair weight w(a, b) to its partners' loads.
C10_HOST_DEVICE inline int load_scale(int64_t B) {
  int bits = 0;
  for (uint64_t b = static_cast<uint64_t>(B); b != 0; b >>= 1) ++bits;
  return 63 - bits;
}

C10_HOST_DEVICE inline uint64_t load_share(uint64_t total, int scale) {
  return total == 0 ? 0 : (uint64_t(1) << scale) / total;
}

// The load a kept weighted partner may carry: min(load_cap, B) in the loads' fixed point.
C10_HOST_DEVICE inline uint64_t load_threshold(int64_t load_cap, int64_t B) {
  return static_cast<uint64_t>(load_cap < B ? load_cap : B) << load_scale(B);
}

// Whether a's weighted partner, of load `load`, is kept: floor(u * load / 2^64) < threshold with u
// from words 0 and 1 of a's block 1, that is with probability about min(1, threshold / load).
C10_HOST_DEVICE inline bool keep_partner(const RowRandom& block1, uint64_t load, uint64_t threshold) {
  return draw_below(block1.word[0], block1.word[1], load) < threshold;
}

// The rank of the uniform partner that replaces a dropped weighted one: words 2 and 3 of block 1.
C10_HOST_DEVICE inline int64_t redraw_rank(const RowRandom& block1, int64_t count) {
  return rank_of(block1.word[2], block1.word[3], count);
}

}  // namespace indeed
