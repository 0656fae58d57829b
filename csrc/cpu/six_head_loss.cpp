// CPU kernels of six_head_loss with the structure of docs/SPEC.md: three GEMMs forward
// (L = F W^T + b, and one GEMM over the stacked identical features [ia; ib] of all pairs),
// the disparate logits by subtraction, and a fused per-pair epilogue for the six loss sums.
// The backward runs the six GEMMs of the gradients; everything else is per-row passes. The
// base loss (BCE or ASL, csrc/cpu/base_losses.h) is a template parameter of the two
// elementwise passes, the epilogue and the logit gradients.
// Everything is computed in acc_t (float, or double for double inputs): half inputs are
// upcast once, and the GEMMs are at::mm/at::addmm on acc_t tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "checks.h"
#include "cpu/base_losses.h"
#include "cpu/kernel_utils.h"
#include "cpu/row_math.h"
#include "cpu/simd_clones.h"
#include "cpu/simd_math.h"

namespace indeed::cpu {
namespace {

constexpr int kHeads = 6;  // orig_a, orig_b, ident_a, ident_b, disp_a, disp_b

// The op's inputs, checked, in the accumulation dtype and contiguous.
struct SixHeadInputs {
  at::Tensor features, weight, targets, index_a, index_b;
  at::Tensor bias;  // zeros without a bias: the disparate logits add it back either way
  bool has_bias;
  Norm norm;
  LossParams loss;
  int64_t B, n, c, P;
};

SixHeadInputs prepare(const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b,
                      c10::string_view norm, double eps, const LossParams& loss) {
  check_six_head(features, weight, bias, targets, index_a, index_b);
  const Norm parsed = parse_norm(norm);
  check_eps(eps);
  const int64_t B = features.size(0);
  at::Tensor idx_a = index_a.contiguous(), idx_b = index_b.contiguous();
  check_index_values("index_a", idx_a, B);
  check_index_values("index_b", idx_b, B);
  const auto acc = features.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t c = weight.size(0);
  at::Tensor acc_bias =
      bias.has_value() ? in_dtype(*bias, acc).contiguous() : at::zeros({c}, features.options().dtype(acc));
  return {in_dtype(features, acc).contiguous(),
          in_dtype(weight, acc).contiguous(),
          in_dtype(targets, acc).contiguous(),
          idx_a,
          idx_b,
          acc_bias,
          bias.has_value(),
          parsed,
          loss,
          B,
          features.size(1),
          c,
          idx_a.size(0)};
}

// x W^T + b. The bias is added in a serial loop: the (rows, c) logits are small, and ATen's
// addmm would spend a parallel region on copying the bias first.
template <typename acc_t>
at::Tensor linear(const SixHeadInputs& in, const at::Tensor& x) {
  at::Tensor out = at::mm(x, in.weight.t());
  if (in.has_bias) {
    const acc_t* b = in.bias.const_data_ptr<acc_t>();
    acc_t* o = out.mutable_data_ptr<acc_t>();
    for (int64_t r = 0, rows = out.size(0); r < rows; ++r) {
#pragma omp simd
      for (int64_t k = 0; k < in.c; ++k) o[r * in.c + k] += b[k];
    }
  }
  return out;
}

// The pairs' rows of the features: fa = features[index_a[i]], fb = features[index_b[i]].
template <typename acc_t>
struct PairRows {
  const acc_t* features;
  const int64_t *index_a, *index_b;
  int64_t n;
  Norm norm;

  const acc_t* a(int64_t i) const { return features + index_a[i] * n; }
  const acc_t* b(int64_t i) const { return features + index_b[i] * n; }
};

template <typename acc_t>
PairRows<acc_t> pair_rows(const SixHeadInputs& in) {
  return {in.features.const_data_ptr<acc_t>(), in.index_a.const_data_ptr<int64_t>(),
          in.index_b.const_data_ptr<int64_t>(), in.n, in.norm};
}

// Rows 2i, 2i+1 of ident (P, 2, n) = [m * fa; m * fb] and row_norms[i] for the pairs in
// [begin, end).
template <typename acc_t>
[[gnu::always_inline]] inline void identical_features_rows(const PairRows<acc_t>& pairs, acc_t eps, acc_t* ident,
                                                           RowNorm<acc_t>* row_norms, int64_t begin, int64_t end) {
  const int64_t n = pairs.n;
  for (int64_t i = begin; i < end; ++i) {
    const acc_t *a = pairs.a(i), *b = pairs.b(i);
    const auto rn = row_norm<acc_t>(a, b, n, pairs.norm, eps);
    row_norms[i] = rn;
    acc_t* ident_a = ident + 2 * i * n;
    acc_t* ident_b = ident_a + n;
    forward_row(rn, a, b, n, [&](int64_t j, acc_t m) {
      ident_a[j] = m * a[j];
      ident_b[j] = m * b[j];
    });
  }
}
INDEED_SIMD_CLONES void identical_features_rows(const PairRows<float>& pairs, float eps, float* ident,
                                                RowNorm<float>* row_norms, int64_t begin, int64_t end) {
  identical_features_rows<float>(pairs, eps, ident, row_norms, begin, end);
}

template <typename acc_t>
std::vector<RowNorm<acc_t>> identical_features(const SixHeadInputs& in, acc_t eps, at::Tensor& ident) {
  const auto pairs = pair_rows<acc_t>(in);
  acc_t* out = ident.mutable_data_ptr<acc_t>();
  std::vector<RowNorm<acc_t>> row_norms(in.P);
  at::parallel_for(0, in.P, rows_per_task(2 * in.n), [&](int64_t begin, int64_t end) {
    identical_features_rows(pairs, eps, out, row_norms.data(), begin, end);
  });
  return row_norms;
}

// One value per head, in the order of the loss columns.
template <typename acc_t>
struct Heads {
  acc_t orig_a, orig_b, ident_a, ident_b, disp_a, disp_b;
};

// Pair i's six heads, class by class. Logits: L[a], L[b], Lia, Lib and the disparate
// L[a] - Lia + bias, L[b] - Lib + bias. Targets: ya, yb, ya*yb (twice), ya*(1-yb), yb*(1-ya).
template <typename acc_t>
struct PairHeads {
  const acc_t *la, *lb, *lia, *lib, *bias, *ya, *yb;

  Heads<acc_t> logits(int64_t k) const {
    return {la[k], lb[k], lia[k], lib[k], la[k] - lia[k] + bias[k], lb[k] - lib[k] + bias[k]};
  }
  Heads<acc_t> targets(int64_t k) const {
    const acc_t both = ya[k] * yb[k];
    return {ya[k], yb[k], both, both, ya[k] * (1 - yb[k]), yb[k] * (1 - ya[k])};
  }
  // present_negatives="mean" (reference.present_negative_weights): a decomposed head's present
  // negatives s (ya(1-yb) for ident_a, yb(1-ya) for ident_b, ya yb for the disparate heads) share
  // one class's weight. keep = 1 - 1 / max(1, sum_k s) per head (0 under "sum"), and class k's
  // weight is 1 - s_k keep: exactly 1 under "sum", so that path's sums are today's.
  Heads<acc_t> present_keep(int64_t c, bool mean) const {
    if (!mean) return {0, 0, 0, 0, 0, 0};
    acc_t only_a = 0, only_b = 0, both = 0;
    for (int64_t k = 0; k < c; ++k) {
      only_a += ya[k] * (1 - yb[k]);
      only_b += yb[k] * (1 - ya[k]);
      both += ya[k] * yb[k];
    }
    const auto keep = [](acc_t count) { return 1 - 1 / std::max(count, acc_t(1)); };
    return {0, 0, keep(only_a), keep(only_b), keep(both), keep(both)};
  }
  Heads<acc_t> class_weights(int64_t k, const Heads<acc_t>& keep) const {
    const acc_t both = ya[k] * yb[k];
    return {1, 1, 1 - ya[k] * (1 - yb[k]) * keep.ident_a, 1 - yb[k] * (1 - ya[k]) * keep.ident_b,
            1 - both * keep.disp_a, 1 - both * keep.disp_b};
  }
};

template <typename acc_t>
struct HeadsOfPairs {
  const acc_t *logits, *ident_logits, *bias, *targets;
  const int64_t *index_a, *index_b;
  int64_t c;
  bool mean_present_negatives;

  PairHeads<acc_t> operator[](int64_t i) const {
    const int64_t a = index_a[i] * c, b = index_b[i] * c;
    return {logits + a, logits + b, ident_logits + 2 * i * c, ident_logits + (2 * i + 1) * c, bias, targets + a,
            targets + b};
  }
};

template <typename acc_t>
HeadsOfPairs<acc_t> heads_of_pairs(const SixHeadInputs& in, const at::Tensor& logits, const at::Tensor& ident_logits) {
  return {logits.const_data_ptr<acc_t>(),
          ident_logits.const_data_ptr<acc_t>(),
          in.bias.const_data_ptr<acc_t>(),
          in.targets.const_data_ptr<acc_t>(),
          in.index_a.const_data_ptr<int64_t>(),
          in.index_b.const_data_ptr<int64_t>(),
          in.c,
          in.loss.mean_present_negatives};
}

// loss[i, h] = sum_k base_loss.value(z_h, y_h) for the pairs i in [begin, end).
template <typename acc_t, typename Loss>
[[gnu::always_inline]] inline void loss_sums_rows(const HeadsOfPairs<acc_t>& heads, const Loss& base_loss,
                                                  int64_t begin, int64_t end, acc_t* loss) {
  // base_loss's members are called directly: GCC inlines no lambda around ASL's, and a call
  // stops the loop's vectorisation.
  for (int64_t i = begin; i < end; ++i) {
    const auto pair = heads[i];
    const Heads<acc_t> keep = pair.present_keep(heads.c, heads.mean_present_negatives);
    acc_t oa = 0, ob = 0, ia = 0, ib = 0, da = 0, db = 0;  // the six sums, vectorised over k
#pragma omp simd reduction(+ : oa, ob, ia, ib, da, db)
    for (int64_t k = 0; k < heads.c; ++k) {
      const Heads<acc_t> z = pair.logits(k), y = pair.targets(k), w = pair.class_weights(k, keep);
      oa += base_loss.value(z.orig_a, y.orig_a);
      ob += base_loss.value(z.orig_b, y.orig_b);
      ia += w.ident_a * base_loss.value(z.ident_a, y.ident_a);
      ib += w.ident_b * base_loss.value(z.ident_b, y.ident_b);
      da += w.disp_a * base_loss.value(z.disp_a, y.disp_a);
      db += w.disp_b * base_loss.value(z.disp_b, y.disp_b);
    }
    acc_t* loss_i = loss + i * kHeads;
    loss_i[0] = oa;
    loss_i[1] = ob;
    loss_i[2] = ia;
    loss_i[3] = ib;
    loss_i[4] = da;
    loss_i[5] = db;
  }
}
INDEED_SIMD_CLONES void loss_sums_rows(const HeadsOfPairs<float>& heads, const BceLoss<float>& base_loss,
                                       int64_t begin, int64_t end, float* loss) {
  loss_sums_rows<float>(heads, base_loss, begin, end, loss);
}
INDEED_SIMD_CLONES void loss_sums_rows(const HeadsOfPairs<float>& heads, const AslLoss<float>& base_loss,
                                       int64_t begin, int64_t end, float* loss) {
  loss_sums_rows<float>(heads, base_loss, begin, end, loss);
}

// Calls body(base_loss) with the functor of the inputs' base loss.
template <typename acc_t, typename Body>
void with_base_loss(const LossParams& params, const Body& body) {
  if (params.loss == BaseLoss::Bce) {
    body(BceLoss<acc_t>{});
  } else {
    body(AslLoss<acc_t>{static_cast<acc_t>(params.gamma_neg), static_cast<acc_t>(params.gamma_pos),
                        static_cast<acc_t>(params.clip), static_cast<acc_t>(params.eps_log),
                        static_cast<acc_t>(params.focal_grad)});
  }
}

template <typename acc_t>
void loss_sums(const SixHeadInputs& in, const at::Tensor& logits, const at::Tensor& ident_logits, at::Tensor& loss) {
  const auto heads = heads_of_pairs<acc_t>(in, logits, ident_logits);
  acc_t* out = loss.mutable_data_ptr<acc_t>();
  with_base_loss<acc_t>(in.loss, [&](const auto& base_loss) {
    at::parallel_for(0, in.P, rows_per_task(kHeads * in.c),
                     [&](int64_t begin, int64_t end) { loss_sums_rows(heads, base_loss, begin, end, out); });
  });
}

// Pair sides grouped by feature row: entry 2i (side a of pair i) or 2i+1 (side b) belongs to
// row index_a[i] or index_b[i]; row r's entries are entries[offsets[r]:offsets[r+1]], in
// increasing order. Summing per row in parallel makes the scatter-adds deterministic.
struct RowEntries {
  std::vector<int64_t> offsets, entries;
};

RowEntries group_by_row(const SixHeadInputs& in) {
  const int64_t* ia = in.index_a.const_data_ptr<int64_t>();
  const int64_t* ib = in.index_b.const_data_ptr<int64_t>();
  RowEntries g{std::vector<int64_t>(in.B + 1, 0), std::vector<int64_t>(2 * in.P)};
  for (int64_t i = 0; i < in.P; ++i) {
    ++g.offsets[ia[i] + 1];
    ++g.offsets[ib[i] + 1];
  }
  for (int64_t r = 0; r < in.B; ++r) g.offsets[r + 1] += g.offsets[r];
  std::vector<int64_t> next(g.offsets.begin(), g.offsets.end() - 1);
  for (int64_t i = 0; i < in.P; ++i) {
    g.entries[next[ia[i]]++] = 2 * i;
    g.entries[next[ib[i]]++] = 2 * i + 1;
  }
  return g;
}

// dst[r] (+)= the sum of src's rows grouped under r; dst (B, width), src (2P, width). Without
// add_to_dst, dst's rows are overwritten (dst may be uninitialised).
template <typename acc_t>
void sum_grouped_rows(const RowEntries& groups, const at::Tensor& src, at::Tensor& dst, bool add_to_dst) {
  const int64_t width = dst.size(1);
  const acc_t* s = src.const_data_ptr<acc_t>();
  acc_t* d = dst.mutable_data_ptr<acc_t>();
  at::parallel_for(0, dst.size(0), rows_per_task(width), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      acc_t* row = d + r * width;
      if (!add_to_dst) std::fill(row, row + width, acc_t(0));
      for (int64_t e = groups.offsets[r]; e < groups.offsets[r + 1]; ++e) {
        const acc_t* add = s + groups.entries[e] * width;
#pragma omp simd
        for (int64_t k = 0; k < width; ++k) row[k] += add[k];
      }
    }
  });
}

// The heads' logit gradients e_h = g_h base_loss.grad(z_h, y_h), folded into what flows where:
// to_logits (P, 2, c) = [e_oa + e_da, e_ob + e_db] (into L[a], L[b]), to_ident (P, 2, c) =
// [e_ia - e_da, e_ib - e_db] (into Lia, Lib), per_pair_bias (P, c) = sum_h e_h.
template <typename acc_t>
struct HeadGrads {
  const acc_t* grad;  // (P, 6), any strides: autograd passes sum()'s gradient expanded
  int64_t grad_pair_stride, grad_head_stride;
  acc_t *to_logits, *to_ident, *per_pair_bias;
};

template <typename acc_t, typename Loss>
[[gnu::always_inline]] inline void head_grads_rows(const HeadsOfPairs<acc_t>& heads, const Loss& base_loss,
                                                   const HeadGrads<acc_t>& out, int64_t begin, int64_t end) {
  const int64_t c = heads.c;
  for (int64_t i = begin; i < end; ++i) {
    const auto pair = heads[i];
    const acc_t* grad_i = out.grad + i * out.grad_pair_stride;
    acc_t g[kHeads];
    for (int h = 0; h < kHeads; ++h) g[h] = grad_i[h * out.grad_head_stride];
    acc_t* to_la = out.to_logits + 2 * i * c;
    acc_t* to_lb = to_la + c;
    acc_t* to_ia = out.to_ident + 2 * i * c;
    acc_t* to_ib = to_ia + c;
    acc_t* bias_i = out.per_pair_bias + i * c;
    const Heads<acc_t> keep = pair.present_keep(c, heads.mean_present_negatives);
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) {
      const Heads<acc_t> z = pair.logits(k), y = pair.targets(k), w = pair.class_weights(k, keep);
      const acc_t e_oa = g[0] * base_loss.grad(z.orig_a, y.orig_a), e_ob = g[1] * base_loss.grad(z.orig_b, y.orig_b);
      const acc_t e_ia = g[2] * w.ident_a * base_loss.grad(z.ident_a, y.ident_a);
      const acc_t e_ib = g[3] * w.ident_b * base_loss.grad(z.ident_b, y.ident_b);
      const acc_t e_da = g[4] * w.disp_a * base_loss.grad(z.disp_a, y.disp_a);
      const acc_t e_db = g[5] * w.disp_b * base_loss.grad(z.disp_b, y.disp_b);
      to_la[k] = e_oa + e_da;
      to_lb[k] = e_ob + e_db;
      to_ia[k] = e_ia - e_da;
      to_ib[k] = e_ib - e_db;
      bias_i[k] = e_oa + e_ob + e_ia + e_ib + e_da + e_db;
    }
  }
}
INDEED_SIMD_CLONES void head_grads_rows(const HeadsOfPairs<float>& heads, const BceLoss<float>& base_loss,
                                        const HeadGrads<float>& out, int64_t begin, int64_t end) {
  head_grads_rows<float>(heads, base_loss, out, begin, end);
}
INDEED_SIMD_CLONES void head_grads_rows(const HeadsOfPairs<float>& heads, const AslLoss<float>& base_loss,
                                        const HeadGrads<float>& out, int64_t begin, int64_t end) {
  head_grads_rows<float>(heads, base_loss, out, begin, end);
}

// Sums over the rows of a small (rows, c) matrix, serially (a parallel region costs more).
template <typename acc_t>
at::Tensor column_sums(const at::Tensor& m) {
  at::Tensor sums = at::empty({m.size(1)}, m.options());
  const acc_t* p = m.const_data_ptr<acc_t>();
  acc_t* out = sums.mutable_data_ptr<acc_t>();
  std::fill(out, out + m.size(1), acc_t(0));
  for (int64_t r = 0, rows = m.size(0), c = m.size(1); r < rows; ++r) {
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) out[k] += p[r * c + k];
  }
  return sums;
}

template <typename acc_t>
void head_grads(const SixHeadInputs& in, const at::Tensor& grad, const at::Tensor& logits,
                const at::Tensor& ident_logits, at::Tensor& to_logits, at::Tensor& to_ident,
                at::Tensor& per_pair_bias) {
  const auto heads = heads_of_pairs<acc_t>(in, logits, ident_logits);
  const HeadGrads<acc_t> out{grad.const_data_ptr<acc_t>(), grad.stride(0), grad.stride(1),
                             to_logits.mutable_data_ptr<acc_t>(), to_ident.mutable_data_ptr<acc_t>(),
                             per_pair_bias.mutable_data_ptr<acc_t>()};
  with_base_loss<acc_t>(in.loss, [&](const auto& base_loss) {
    at::parallel_for(0, in.P, rows_per_task(kHeads * in.c),
                     [&](int64_t begin, int64_t end) { head_grads_rows(heads, base_loss, out, begin, end); });
  });
}

// In place: rows 2i, 2i+1 of ident (P, 2, n) hold [dIA; dIB] on entry and [dfa; dfb] on
// return, with dfa = dIA m + dp fb, dfb = dIB m + dp fa, dm = dIA fa + dIB fb.
template <typename acc_t>
[[gnu::always_inline]] inline void identical_features_backward_rows(const PairRows<acc_t>& pairs,
                                                                    const RowNorm<acc_t>* row_norms, acc_t* ident,
                                                                    int64_t begin, int64_t end) {
  const int64_t n = pairs.n;
  for (int64_t i = begin; i < end; ++i) {
    const acc_t *a = pairs.a(i), *b = pairs.b(i);
    acc_t* d_a = ident + 2 * i * n;
    acc_t* d_b = d_a + n;
    backward_row(
        row_norms[i], a, b, n, pairs.norm, [&](int64_t j) { return d_a[j] * a[j] + d_b[j] * b[j]; },
        [&](int64_t j, acc_t m, acc_t dp) {
          const acc_t dia = d_a[j];
          d_a[j] = dia * m + dp * b[j];
          d_b[j] = d_b[j] * m + dp * a[j];
        });
  }
}
INDEED_SIMD_CLONES void identical_features_backward_rows(const PairRows<float>& pairs, const RowNorm<float>* row_norms,
                                                         float* ident, int64_t begin, int64_t end) {
  identical_features_backward_rows<float>(pairs, row_norms, ident, begin, end);
}

template <typename acc_t>
void identical_features_backward(const SixHeadInputs& in, const std::vector<RowNorm<acc_t>>& row_norms,
                                 at::Tensor& ident) {
  const auto pairs = pair_rows<acc_t>(in);
  acc_t* d = ident.mutable_data_ptr<acc_t>();
  at::parallel_for(0, in.P, rows_per_task(2 * in.n), [&](int64_t begin, int64_t end) {
    identical_features_backward_rows(pairs, row_norms.data(), d, begin, end);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> six_head_loss_forward(
    const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b, c10::string_view norm,
    double eps, c10::string_view loss_name, double gamma_neg, double gamma_pos, double clip, double eps_log,
    bool focal_grad, c10::string_view present_negatives) {
  const LossParams params =
      parse_loss(loss_name, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives);
  const SixHeadInputs in = prepare(features, weight, bias, targets, index_a, index_b, norm, eps, params);
  at::Tensor ident = at::empty({in.P, 2, in.n}, in.features.options());
  at::Tensor logits, ident_logits, loss = at::empty({in.P, kHeads}, in.features.options());
  AT_DISPATCH_FLOATING_TYPES(in.features.scalar_type(), "indeed::_six_head_loss_forward", [&] {
    logits = linear<scalar_t>(in, in.features);  // (B, c)
    identical_features<scalar_t>(in, static_cast<scalar_t>(eps), ident);
    ident_logits = linear<scalar_t>(in, ident.view({2 * in.P, in.n})).view({in.P, 2, in.c});
    loss_sums<scalar_t>(in, logits, ident_logits, loss);
  });
  return {loss, logits, ident_logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> six_head_loss_backward(
    const at::Tensor& grad_in, const at::Tensor& features_in, const at::Tensor& weight_in,
    const std::optional<at::Tensor>& bias_in, const at::Tensor& targets_in, const at::Tensor& index_a,
    const at::Tensor& index_b, const at::Tensor& logits_in, const at::Tensor& ident_logits_in, c10::string_view norm,
    double eps, c10::string_view loss_name, double gamma_neg, double gamma_pos, double clip, double eps_log,
    bool focal_grad, c10::string_view present_negatives) {
  const LossParams params =
      parse_loss(loss_name, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives);
  const SixHeadInputs in = prepare(features_in, weight_in, bias_in, targets_in, index_a, index_b, norm, eps, params);
  const auto acc = in.features.scalar_type();
  const auto dev = in.features.device();
  check_like("grad", grad_in, {in.P, kHeads}, acc, dev);
  check_like("logits", logits_in, {in.B, in.c}, acc, dev);
  check_like("ident_logits", ident_logits_in, {in.P, 2, in.c}, acc, dev);
  const at::Tensor grad = grad_in, logits = logits_in.contiguous();
  const at::Tensor ident_logits = ident_logits_in.contiguous();
  const auto opts = in.features.options();
  const int64_t P = in.P, n = in.n, c = in.c;

  at::Tensor to_logits = at::empty({P, 2, c}, opts), to_ident = at::empty({P, 2, c}, opts);
  at::Tensor per_pair_bias = at::empty({P, c}, opts);
  at::Tensor grad_logits = at::empty({in.B, c}, opts);  // G
  at::Tensor ident = at::empty({P, 2, n}, opts);
  at::Tensor grad_features, grad_weight, grad_bias;
  const RowEntries groups = group_by_row(in);
  AT_DISPATCH_FLOATING_TYPES(acc, "indeed::_six_head_loss_backward", [&] {
    head_grads<scalar_t>(in, grad, logits, ident_logits, to_logits, to_ident, per_pair_bias);
    sum_grouped_rows<scalar_t>(groups, to_logits.view({2 * P, c}), grad_logits, /*add_to_dst=*/false);
    const auto row_norms = identical_features<scalar_t>(in, static_cast<scalar_t>(eps), ident);
    at::Tensor ident_2d = ident.view({2 * P, n});
    const at::Tensor to_ident_2d = to_ident.view({2 * P, c});
    grad_weight = at::mm(grad_logits.t(), in.features).addmm_(to_ident_2d.t(), ident_2d);  // G^T F + Gi^T [IA; IB]
    grad_features = at::mm(grad_logits, in.weight);                                         // G W
    at::mm_out(ident_2d, to_ident_2d, in.weight);  // [dIA; dIB] = Gi W, over the no longer needed [IA; IB]
    identical_features_backward<scalar_t>(in, row_norms, ident);
    sum_grouped_rows<scalar_t>(groups, ident_2d, grad_features, /*add_to_dst=*/true);
    grad_bias = column_sums<scalar_t>(per_pair_bias);
  });
  return {in_dtype(grad_features, features_in.scalar_type()), in_dtype(grad_weight, weight_in.scalar_type()),
          in_dtype(grad_bias, weight_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CPU, m) {
  m.impl("_six_head_loss_forward", &six_head_loss_forward);
  m.impl("_six_head_loss_backward", &six_head_loss_backward);
}

}  // namespace indeed::cpu
