// CPU kernel of mine_pairs: for each row a, the rank-th of its valid partners b (ya & yb != 0,
// ya != yb, labels = targets > 0.5) in batch order, rank drawn by partner_rank; b = a without one.
// Rows with equal label sets have the same valid partners, so the work is done once per label
// set: the rows sharing a label with the set are the OR of its labels' carrier bitsets (one bit
// per batch row), and clearing the set's own rows leaves exactly its valid partners. Each member
// then counts and selects bits of that bitset: at most B * (labels per row + 2) * B / 64 word
// operations, against B^2 * W for testing every candidate's packed labels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <numeric>
#include <vector>

#include "checks.h"
#include "cpu/simd_clones.h"
#include "mine_pairs.h"

namespace indeed::cpu {
namespace {

using Word = uint64_t;

// The batch's labels twice: row-major words (label k of row b is bit k % 64 of
// row_words[b * W + k / 64]) and, per label, the bitset of the rows carrying it
// (row b is bit b % 64 of carriers[k * row_bits + b / 64]).
struct PackedLabels {
  int64_t B, c, W, row_bits;
  std::vector<Word> row_words, carriers;

  const Word* row(int64_t b) const { return row_words.data() + b * W; }
};

template <typename scalar_t>
PackedLabels pack_labels(const at::Tensor& targets) {
  const int64_t B = targets.size(0), c = targets.size(1);
  const int64_t W = std::max<int64_t>(1, (c + 63) / 64), row_bits = (B + 63) / 64;
  PackedLabels packed{B, c, W, row_bits, std::vector<Word>(B * W, 0), std::vector<Word>(c * row_bits, 0)};
  const scalar_t* t = targets.const_data_ptr<scalar_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < c; ++k) {  // branch-free: labels are unpredictable
      const Word label = is_label(t[b * c + k]);
      packed.row_words[b * W + k / 64] |= label << (k % 64);
      packed.carriers[k * row_bits + b / 64] |= label << (b % 64);
    }
  }
  return packed;
}

// Row indices ordered by label set, and where each set's rows start in that order.
struct LabelSets {
  std::vector<int64_t> rows, starts;  // starts has one more entry, the end
};

LabelSets group_by_label_set(const PackedLabels& labels) {
  LabelSets sets{std::vector<int64_t>(labels.B), {}};
  std::iota(sets.rows.begin(), sets.rows.end(), 0);
  const auto less = [&](int64_t x, int64_t y) {
    return std::lexicographical_compare(labels.row(x), labels.row(x) + labels.W, labels.row(y),
                                        labels.row(y) + labels.W);
  };
  std::sort(sets.rows.begin(), sets.rows.end(), less);
  for (int64_t i = 0; i < labels.B; ++i) {
    if (i == 0 || less(sets.rows[i - 1], sets.rows[i])) sets.starts.push_back(i);
  }
  sets.starts.push_back(labels.B);
  return sets;
}

// The position of the rank-th set bit (rank < the number of set bits).
[[gnu::always_inline]] inline int64_t select_bit(const Word* bits, int64_t rank) {
  for (int64_t w = 0;; ++w) {
    Word word = bits[w];
    const int64_t count = std::popcount(word);
    if (rank < count) {
      for (; rank > 0; --rank) word &= word - 1;
      return w * 64 + std::countr_zero(word);
    }
    rank -= count;
  }
}

struct Pairs {
  int64_t *index_a, *index_b;
  bool* is_partial;
};

// The pairs of the rows of label sets [begin, end); partners: scratch of row_bits words. Cloned
// for the popcount instruction and wider ORs, which the baseline x86-64 build lacks.
INDEED_SIMD_CLONES void pair_label_sets(const PackedLabels& labels, const LabelSets& sets, uint64_t seed,
                                        int64_t begin, int64_t end, Word* __restrict partners, const Pairs& out) {
  const int64_t row_bits = labels.row_bits;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t first = sets.starts[s], last = sets.starts[s + 1];
    std::fill(partners, partners + row_bits, Word(0));
    const Word* set_labels = labels.row(sets.rows[first]);
    for (int64_t w = 0; w < labels.W; ++w) {
      for (Word rest = set_labels[w]; rest != 0; rest &= rest - 1) {
        const Word* __restrict carriers = labels.carriers.data() + (w * 64 + std::countr_zero(rest)) * row_bits;
        for (int64_t i = 0; i < row_bits; ++i) partners[i] |= carriers[i];
      }
    }
    for (int64_t i = first; i < last; ++i) partners[sets.rows[i] / 64] &= ~(Word(1) << (sets.rows[i] % 64));
    int64_t count = 0;
    for (int64_t i = 0; i < row_bits; ++i) count += std::popcount(partners[i]);
    for (int64_t i = first; i < last; ++i) {
      const int64_t a = sets.rows[i];
      out.index_a[a] = a;
      out.index_b[a] = count > 0 ? select_bit(partners, partner_rank(seed, a, count)) : a;
      out.is_partial[a] = count > 0;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs(const at::Tensor& targets_in, const at::Tensor& seed) {
  check_mine_pairs(targets_in, seed);
  const at::Tensor targets = targets_in.contiguous();
  PackedLabels labels;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, targets.scalar_type(), "indeed::mine_pairs",
                                  [&] { labels = pack_labels<scalar_t>(targets); });
  const LabelSets sets = group_by_label_set(labels);
  const uint64_t seed_value = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());

  const int64_t B = labels.B;
  at::Tensor index_a = at::empty({B}, targets.options().dtype(at::kLong));
  at::Tensor index_b = at::empty({B}, index_a.options());
  at::Tensor is_partial = at::empty({B}, targets.options().dtype(at::kBool));
  const Pairs out{index_a.mutable_data_ptr<int64_t>(), index_b.mutable_data_ptr<int64_t>(),
                  is_partial.mutable_data_ptr<bool>()};
  const int64_t num_sets = static_cast<int64_t>(sets.starts.size()) - 1;
  // Tasks of about GRAIN_SIZE word operations.
  const int64_t sets_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (labels.row_bits * 4));
  at::parallel_for(0, num_sets, sets_per_task, [&](int64_t begin, int64_t end) {
    std::vector<Word> partners(labels.row_bits);
    pair_label_sets(labels, sets, seed_value, begin, end, partners.data(), out);
  });
  return {index_a, index_b, is_partial};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CPU, m) { m.impl("mine_pairs", &mine_pairs); }

}  // namespace indeed::cpu
