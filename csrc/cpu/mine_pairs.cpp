// CPU kernels of mine_pairs and mine_pairs_cooccur. Both pack the labels (targets > 0.5) twice,
// per row and per label (the bitset of the rows carrying it), and group the rows by label set:
// rows with equal sets have the same valid partners, contrasts and load, so that work is done once
// per set.
//
// mine_pairs: the rows sharing a label with the set are the OR of its labels' carrier bitsets,
// and clearing the set's own rows leaves exactly its valid partners. Each member then counts and
// selects bits of that bitset: at most B * (labels per row + 2) * B / 64 word operations, against
// B^2 * W for testing every candidate's packed labels.
//
// mine_pairs_cooccur: the set's contrasts (i, j) have masses S[i, j] * count(i, j), with count
// from the batch's co-count matrix (popcounts of carrier ANDs, c^2 B / 128 word operations per
// batch): |ya|^2 table reads per set, or |ya| * c vectorised additions for large sets (see
// MassTables). With a load cap, each set's rows add floor(2^Q / W) to a (c, c) matrix R at the
// pairs of its labels (its upper triangle, in per-thread tables, summed), and a set's load is the
// same sum as its mass with R in place of the co-counts (docs/SPEC.md). Each member then draws a
// contrast, then its partner among the contrast's rows, carriers[i] & carriers[j] (or
// & ~carriers[j]): one pass of AND, popcount and select over B / 64 words; with a cap it keeps it
// or takes a uniform valid partner instead. A set whose masses are all 0 draws as mine_pairs.
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
  const Word* carriers_of(int64_t k) const { return carriers.data() + k * row_bits; }
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

// The position of the rank-th set bit of the bitset whose w-th word is word_at(w) (rank < the
// number of set bits).
template <typename WordAt>
[[gnu::always_inline]] inline int64_t select_bit(const WordAt& word_at, int64_t rank) {
  for (int64_t w = 0;; ++w) {
    Word word = word_at(w);
    const int64_t count = std::popcount(word);
    if (rank < count) {
      for (; rank > 0; --rank) word &= word - 1;
      return w * 64 + std::countr_zero(word);
    }
    rank -= count;
  }
}

// The packed, grouped batch and the outputs both ops fill.
struct Batch {
  PackedLabels labels;
  LabelSets sets;
  uint64_t seed;
  at::Tensor index_a, index_b, is_partial;
  int64_t *index_a_ptr, *index_b_ptr;
  bool* is_partial_ptr;

  int64_t num_sets() const { return static_cast<int64_t>(sets.starts.size()) - 1; }

  void set_pair(int64_t a, int64_t b) const {
    index_a_ptr[a] = a;
    index_b_ptr[a] = b;
    is_partial_ptr[a] = b != a;
  }
};

Batch prepare(const at::Tensor& targets_in, const at::Tensor& seed) {
  const at::Tensor targets = targets_in.contiguous();
  Batch batch;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, targets.scalar_type(), "indeed::mine_pairs",
                                  [&] { batch.labels = pack_labels<scalar_t>(targets); });
  batch.sets = group_by_label_set(batch.labels);
  batch.seed = static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());
  const int64_t B = batch.labels.B;
  batch.index_a = at::empty({B}, targets.options().dtype(at::kLong));
  batch.index_b = at::empty({B}, batch.index_a.options());
  batch.is_partial = at::empty({B}, targets.options().dtype(at::kBool));
  batch.index_a_ptr = batch.index_a.mutable_data_ptr<int64_t>();
  batch.index_b_ptr = batch.index_b.mutable_data_ptr<int64_t>();
  batch.is_partial_ptr = batch.is_partial.mutable_data_ptr<bool>();
  return batch;
}

// Runs pair_sets(begin, end) over the label sets in tasks of about GRAIN_SIZE operations, given
// the operations per set.
template <typename PairSets>
void for_label_sets(const Batch& batch, int64_t ops_per_set, const PairSets& pair_sets) {
  const int64_t sets_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, ops_per_set));
  at::parallel_for(0, batch.num_sets(), sets_per_task, pair_sets);
}

// The valid partners of label set s as a bitset (partners: scratch of row_bits words), and their count.
[[gnu::always_inline]] inline int64_t valid_partners_of_set(const Batch& batch, int64_t s, Word* __restrict partners) {
  const PackedLabels& labels = batch.labels;
  const std::vector<int64_t>& rows = batch.sets.rows;
  const int64_t first = batch.sets.starts[s], last = batch.sets.starts[s + 1], row_bits = labels.row_bits;
  std::fill(partners, partners + row_bits, Word(0));
  const Word* set_labels = labels.row(rows[first]);
  for (int64_t w = 0; w < labels.W; ++w) {
    for (Word rest = set_labels[w]; rest != 0; rest &= rest - 1) {
      const Word* __restrict carriers = labels.carriers_of(w * 64 + std::countr_zero(rest));
      for (int64_t i = 0; i < row_bits; ++i) partners[i] |= carriers[i];
    }
  }
  for (int64_t i = first; i < last; ++i) partners[rows[i] / 64] &= ~(Word(1) << (rows[i] % 64));
  int64_t count = 0;
  for (int64_t i = 0; i < row_bits; ++i) count += std::popcount(partners[i]);
  return count;
}

// mine_pairs' draw for the rows of label set s; partners: scratch of row_bits words.
[[gnu::always_inline]] inline void any_pairs_of_set(const Batch& batch, int64_t s, Word* __restrict partners) {
  const std::vector<int64_t>& rows = batch.sets.rows;
  const int64_t first = batch.sets.starts[s], last = batch.sets.starts[s + 1];
  const int64_t count = valid_partners_of_set(batch, s, partners);
  const auto word_at = [&](int64_t w) { return partners[w]; };
  for (int64_t i = first; i < last; ++i) {
    const int64_t a = rows[i];
    batch.set_pair(a, count > 0 ? select_bit(word_at, partner_rank(row_random(batch.seed, a), count)) : a);
  }
}

// Cloned for the popcount instruction and wider ORs, which the baseline x86-64 build lacks.
INDEED_SIMD_CLONES void any_pairs(const Batch& batch, int64_t begin, int64_t end, Word* partners) {
  for (int64_t s = begin; s < end; ++s) any_pairs_of_set(batch, s, partners);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> any_pairs_of_batch(const Batch& batch) {
  const int64_t row_bits = batch.labels.row_bits;
  for_label_sets(batch, row_bits * 4, [&](int64_t begin, int64_t end) {
    std::vector<Word> partners(row_bits);
    any_pairs(batch, begin, end, partners.data());
  });
  return {batch.index_a, batch.index_b, batch.is_partial};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs(const at::Tensor& targets, const at::Tensor& seed) {
  check_mine_pairs(targets, seed);
  return any_pairs_of_batch(prepare(targets, seed));
}

// A set's mass (or load) is a sum over its labels i of per-label sums over j, which two tables
// give for every set at once: alone[i] = sum_j S[i, j] X[i, j], the sum for the set {i}, and
// joined[i * c + k] = S[i, k] (X[i, i] - 2 X[i, k]), what k's joining the set adds (k's rows with
// i leave contrast (i, k), i's rows without k enter it). X is the co-count matrix for the masses
// and R for the loads. A set's sum of label i is alone[i] plus joined[i, k] over its labels k: |ya|
// table reads, or for large sets c additions of joined[i, k] & (the set as a mask), which
// vectorise. Unsigned: the loads' tables wrap around 2^64 on the way, and their sums, below 2^63,
// come out exact, in any order of addition.
struct MassTables {
  std::vector<uint64_t> alone, joined;
};

// mine_pairs_cooccur's tables: weights[i * c + j] = S[i, j] (0 on the diagonal, so that the
// contrasts' loops need not skip j = i), co[i * c + j] = the rows carrying labels i and j, the
// masses' tables, and whether S[i, :] has a weight (a label without one adds no mass or load).
// Without any weight (labels that co-occur no more than chance) co and masses stay empty.
struct Contrasts {
  std::vector<uint32_t> weights, co;
  MassTables masses;
  std::vector<uint8_t> weighted;

  bool any_weighted() const { return std::find(weighted.begin(), weighted.end(), 1) != weighted.end(); }
};

// co[i * c + j] = co[j * c + i] for the labels i in [begin, end) and j >= i.
INDEED_SIMD_CLONES void co_counts(const PackedLabels& labels, int64_t begin, int64_t end, uint32_t* co) {
  const int64_t c = labels.c;
  for (int64_t i = begin; i < end; ++i) {
    const Word* __restrict carriers_i = labels.carriers_of(i);
    for (int64_t j = i; j < c; ++j) {
      const Word* __restrict carriers_j = labels.carriers_of(j);
      int64_t both = 0;
      for (int64_t w = 0; w < labels.row_bits; ++w) both += std::popcount(carriers_i[w] & carriers_j[w]);
      co[i * c + j] = co[j * c + i] = static_cast<uint32_t>(both);
    }
  }
}

template <typename Count>
MassTables mass_tables(const std::vector<uint32_t>& weights, const Count* x, int64_t c) {
  MassTables tables{std::vector<uint64_t>(c, 0), std::vector<uint64_t>(c * c)};
  for (int64_t i = 0; i < c; ++i) {
    const uint64_t x_ii = x[i * c + i];
    for (int64_t k = 0; k < c; ++k) {
      const uint64_t weight = weights[i * c + k], x_ik = x[i * c + k];
      tables.alone[i] += weight * x_ik;
      tables.joined[i * c + k] = weight * (x_ii - 2 * x_ik);
    }
  }
  return tables;
}

Contrasts contrasts_of(const PackedLabels& labels, const at::Tensor& contrast_weights) {
  const int64_t c = labels.c;
  Contrasts contrasts{std::vector<uint32_t>(c * c), {}};
  const at::Tensor weights = contrast_weights.contiguous();
  const int64_t* w = weights.const_data_ptr<int64_t>();
  contrasts.weighted.assign(c, 0);
  for (int64_t k = 0; k < c * c; ++k) {
    TORCH_CHECK_VALUE(w[k] >= 0 && w[k] <= kContrastScale, "contrast_weights has values outside [0, 2^16] = [0, ",
                      kContrastScale, "]: ", w[k]);
    contrasts.weights[k] = k % (c + 1) == 0 ? 0 : static_cast<uint32_t>(w[k]);
    contrasts.weighted[k / c] |= contrasts.weights[k] != 0;
  }
  if (!contrasts.any_weighted()) return contrasts;
  contrasts.co.resize(c * c);
  const int64_t labels_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, c * labels.row_bits));
  at::parallel_for(0, c, labels_per_task,
                   [&](int64_t begin, int64_t end) { co_counts(labels, begin, end, contrasts.co.data()); });
  contrasts.masses = mass_tables(contrasts.weights, contrasts.co.data(), c);
  return contrasts;
}

// Per-task scratch of mine_pairs_cooccur: the set's labels, the set as a mask of c words (all ones
// for its labels), and mine_pairs' partner bitset.
struct CooccurScratch {
  std::vector<int64_t> set_labels;
  std::vector<int64_t> in_set;
  std::vector<Word> partners;
};

// Fills scratch.set_labels and scratch.in_set (to be cleared by clear_set) with set s's labels.
void enter_set(const Batch& batch, int64_t s, CooccurScratch& scratch) {
  const PackedLabels& labels = batch.labels;
  const Word* set_words = labels.row(batch.sets.rows[batch.sets.starts[s]]);
  scratch.set_labels.clear();
  for (int64_t w = 0; w < labels.W; ++w) {
    for (Word rest = set_words[w]; rest != 0; rest &= rest - 1) scratch.set_labels.push_back(w * 64 + std::countr_zero(rest));
  }
  for (const int64_t k : scratch.set_labels) scratch.in_set[k] = -1;
}

void clear_set(CooccurScratch& scratch) {
  for (const int64_t k : scratch.set_labels) scratch.in_set[k] = 0;
}

// Whether a set's per-label loops read its labels one by one (|ya| scalar steps) rather than run
// over all c labels with its mask (c / 4 or fewer vector steps).
[[gnu::always_inline]] inline bool sparse_set(const CooccurScratch& scratch, int64_t c) {
  return static_cast<int64_t>(scratch.set_labels.size()) * 4 <= c;
}

// The set's per-label sums of the tables (into masses[0, |ya|) when masses is not null), and their total.
INDEED_SIMD_CLONES uint64_t set_sums(const MassTables& tables, const std::vector<uint8_t>& weighted, int64_t c,
                                     const CooccurScratch& scratch, uint64_t* masses) {
  const int64_t* __restrict in_set = scratch.in_set.data();
  const bool sparse = sparse_set(scratch, c);
  uint64_t total = 0;
  for (size_t label = 0; label < scratch.set_labels.size(); ++label) {
    const int64_t i = scratch.set_labels[label];
    uint64_t sum = 0;
    if (weighted[i]) {
      const uint64_t* __restrict joined_i = tables.joined.data() + i * c;
      sum = tables.alone[i];
      if (sparse) {
        for (const int64_t k : scratch.set_labels) sum += joined_i[k];
      } else {
        for (int64_t k = 0; k < c; ++k) sum += joined_i[k] & static_cast<uint64_t>(in_set[k]);
      }
    }
    if (masses != nullptr) masses[label] = sum;
    total += sum;
  }
  return total;
}

// R's upper triangle += share at the pairs i <= j of the set's labels (R is symmetric).
INDEED_SIMD_CLONES void add_shares(int64_t c, const CooccurScratch& scratch, uint64_t share, uint64_t* __restrict shares) {
  const int64_t* __restrict in_set = scratch.in_set.data();
  const std::vector<int64_t>& set_labels = scratch.set_labels;
  const bool sparse = sparse_set(scratch, c);
  for (size_t label = 0; label < set_labels.size(); ++label) {
    const int64_t i = set_labels[label];
    uint64_t* __restrict shares_i = shares + i * c;
    if (sparse) {
      for (size_t other = label; other < set_labels.size(); ++other) shares_i[set_labels[other]] += share;
    } else {
      for (int64_t j = i; j < c; ++j) shares_i[j] += share & static_cast<uint64_t>(in_set[j]);
    }
  }
}

// Per label set: its total mass W, its labels' masses (label_masses[label_offsets[s] + l] for its
// l-th label, ascending) and, with a load cap, its load (what each of its rows carries).
struct SetSums {
  std::vector<uint64_t> totals, loads, label_masses;
  std::vector<int64_t> label_offsets;
};

// The sets' masses, then with a load cap R = sum over rows a of floor(2^Q / W_a) y_a y_a^T and the
// sets' loads from R's tables.
SetSums set_totals_and_loads(const Batch& batch, const Contrasts& contrasts, int64_t load_cap) {
  const PackedLabels& labels = batch.labels;
  const int64_t c = labels.c, num_sets = batch.num_sets();
  SetSums sums{std::vector<uint64_t>(num_sets, 0), {}, {}, std::vector<int64_t>(num_sets + 1, 0)};
  for (int64_t s = 0; s < num_sets; ++s) {
    const Word* set_words = labels.row(batch.sets.rows[batch.sets.starts[s]]);
    int64_t count = 0;
    for (int64_t w = 0; w < labels.W; ++w) count += std::popcount(set_words[w]);
    sums.label_offsets[s + 1] = sums.label_offsets[s] + count;
  }
  sums.label_masses.resize(sums.label_offsets[num_sets]);
  const auto for_sets = [&](const auto& body) {
    for_label_sets(batch, c * 4, [&](int64_t begin, int64_t end) {
      CooccurScratch scratch{{}, std::vector<int64_t>(c, 0), {}};
      for (int64_t s = begin; s < end; ++s) {
        enter_set(batch, s, scratch);
        body(s, scratch);
        clear_set(scratch);
      }
    });
  };
  for_sets([&](int64_t s, CooccurScratch& scratch) {
    sums.totals[s] = set_sums(contrasts.masses, contrasts.weighted, c, scratch, sums.label_masses.data() + sums.label_offsets[s]);
  });
  if (load_cap == 0 || std::all_of(sums.totals.begin(), sums.totals.end(), [](uint64_t total) { return total == 0; })) {
    return sums;  // no load needed: no cap, or no weighted draw
  }
  const int scale = load_scale(labels.B);
  // R, one table per thread (at::parallel_for runs one task per thread), then their sum.
  const int64_t threads = at::get_num_threads();
  std::vector<uint64_t> shares(threads * c * c, 0);
  for_sets([&](int64_t s, CooccurScratch& scratch) {
    const uint64_t share = load_share(sums.totals[s], scale);
    const uint64_t rows = static_cast<uint64_t>(batch.sets.starts[s + 1] - batch.sets.starts[s]);
    TORCH_INTERNAL_ASSERT_DEBUG_ONLY(at::get_thread_num() < threads);
    if (share != 0) add_shares(c, scratch, share * rows, shares.data() + at::get_thread_num() * c * c);
  });
  for (int64_t t = 1; t < threads; ++t) {
    for (int64_t k = 0; k < c * c; ++k) shares[k] += shares[t * c * c + k];
  }
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t j = 0; j < i; ++j) shares[i * c + j] = shares[j * c + i];
  }
  const MassTables load_tables = mass_tables(contrasts.weights, shares.data(), c);
  sums.loads.assign(num_sets, 0);
  for_sets([&](int64_t s, CooccurScratch& scratch) {
    sums.loads[s] = set_sums(load_tables, contrasts.weighted, c, scratch, nullptr);
  });
  return sums;
}

// Rows with label i and without label j when j is in the set, with both when it is not.
[[gnu::always_inline]] inline uint32_t contrast_count(const uint32_t* co_i, uint32_t co_ii, bool in_set_j, int64_t j) {
  return in_set_j ? co_ii - co_i[j] : co_i[j];
}

// What the draw of mine_pairs_cooccur reads besides the batch: the contrasts, the sets' totals
// and loads, each row's set, and the load threshold (0: no cap).
struct CooccurDraw {
  const Contrasts& contrasts;
  const SetSums& sums;
  std::vector<int64_t> row_sets;
  uint64_t threshold;
};

INDEED_SIMD_CLONES void cooccur_pairs(const Batch& batch, const CooccurDraw& draw, int64_t begin, int64_t end,
                                      CooccurScratch& scratch) {
  const PackedLabels& labels = batch.labels;
  const Contrasts& contrasts = draw.contrasts;
  const int64_t c = labels.c;
  for (int64_t s = begin; s < end; ++s) {
    const int64_t first = batch.sets.starts[s], last = batch.sets.starts[s + 1];
    const uint64_t total = draw.sums.totals[s];
    if (total == 0) {
      any_pairs_of_set(batch, s, scratch.partners.data());
      continue;
    }
    enter_set(batch, s, scratch);
    const uint64_t* label_masses = draw.sums.label_masses.data() + draw.sums.label_offsets[s];
    int64_t uniform_count = -1;  // the set's valid partners (in scratch.partners), once a row needs them
    for (int64_t r = first; r < last; ++r) {
      const int64_t a = batch.sets.rows[r];
      const RowRandom random = row_random(batch.seed, a);
      // The first contrast whose cumulative mass exceeds the draw: its label i, then its j.
      uint64_t drawn = contrast_draw(random, total);
      size_t k = 0;
      for (; drawn >= label_masses[k]; ++k) drawn -= label_masses[k];
      const int64_t i = scratch.set_labels[k];
      const uint32_t* weights_i = contrasts.weights.data() + i * c;
      const uint32_t* co_i = contrasts.co.data() + i * c;
      int64_t j = 0;
      uint32_t count = 0;
      for (;; ++j) {
        count = contrast_count(co_i, co_i[i], scratch.in_set[j], j);
        const uint64_t mass = uint64_t(weights_i[j]) * count;
        if (drawn < mass) break;
        drawn -= mass;
      }
      const Word* __restrict carriers_i = labels.carriers_of(i);
      const Word* __restrict carriers_j = labels.carriers_of(j);
      const Word flip = static_cast<Word>(scratch.in_set[j]);
      const auto word_at = [&](int64_t w) { return carriers_i[w] & (carriers_j[w] ^ flip); };
      int64_t b = select_bit(word_at, partner_rank(random, count));
      if (draw.threshold != 0) {
        const RowRandom block1 = row_random(batch.seed, a, 1);
        if (!keep_partner(block1, draw.sums.loads[draw.row_sets[b]], draw.threshold)) {
          if (uniform_count < 0) uniform_count = valid_partners_of_set(batch, s, scratch.partners.data());
          const Word* partners = scratch.partners.data();
          b = select_bit([&](int64_t w) { return partners[w]; }, redraw_rank(block1, uniform_count));
        }
      }
      batch.set_pair(a, b);
    }
    clear_set(scratch);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_pairs_cooccur(const at::Tensor& targets, const at::Tensor& seed,
                                                                  const at::Tensor& contrast_weights, int64_t load_cap) {
  check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap);
  const Batch batch = prepare(targets, seed);
  const Contrasts contrasts = contrasts_of(batch.labels, contrast_weights);
  if (!contrasts.any_weighted()) return any_pairs_of_batch(batch);  // every W_a = 0: mine_pairs' draw
  const int64_t B = batch.labels.B, c = batch.labels.c, row_bits = batch.labels.row_bits;
  const SetSums sums = set_totals_and_loads(batch, contrasts, load_cap);
  CooccurDraw draw{contrasts, sums, {}, load_cap > 0 ? load_threshold(load_cap, B) : 0};
  if (load_cap > 0) {
    draw.row_sets.resize(B);
    for (int64_t s = 0; s < batch.num_sets(); ++s) {
      for (int64_t r = batch.sets.starts[s]; r < batch.sets.starts[s + 1]; ++r) draw.row_sets[batch.sets.rows[r]] = s;
    }
  }
  for_label_sets(batch, row_bits * 4 + c * 4, [&](int64_t begin, int64_t end) {
    CooccurScratch scratch{{}, std::vector<int64_t>(c, 0), std::vector<Word>(row_bits)};
    cooccur_pairs(batch, draw, begin, end, scratch);
  });
  return {batch.index_a, batch.index_b, batch.is_partial};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CPU, m) {
  m.impl("mine_pairs", &mine_pairs);
  m.impl("mine_pairs_cooccur", &mine_pairs_cooccur);
}

}  // namespace indeed::cpu
