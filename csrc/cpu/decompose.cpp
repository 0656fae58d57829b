// CPU kernels of identical_map and decompose, forward and backward: per row one reduction
// pass and one output pass (row_math.h), rows in parallel. Each op's loop over a range of
// rows is a template, with a float overload compiled for AVX2/AVX-512 too (simd_clones.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/kernel_utils.h"
#include "cpu/row_math.h"
#include "cpu/simd_clones.h"

namespace indeed::cpu {
namespace {

// A checked, contiguous (rows, n) pair: the inputs of every op here.
struct Pair {
  at::Tensor fa, fb;
  Norm norm;
  double eps;
  int64_t rows, n;
};

Pair checked_pair(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  check_pair(fa, fb);
  const Norm parsed = parse_norm(norm);
  check_eps(eps);
  return {fa.contiguous(), fb.contiguous(), parsed, eps, fa.size(0), fa.size(1)};
}

// The data pointers of one op: the pair, up to four upstream gradients, up to four outputs,
// all (rows, n) and contiguous, so that row i of each starts at i * n.
template <typename scalar_t>
struct Rows {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *fa, *fb;
  std::array<const scalar_t*, 4> grads;
  std::array<scalar_t*, 4> outs;
  int64_t n;
  Norm norm;
  acc_t eps;

  [[gnu::always_inline]] RowNorm<acc_t> row_norm_of(int64_t i) const {
    return row_norm<acc_t>(fa + i * n, fb + i * n, n, norm, eps);
  }
};

template <typename scalar_t>
Rows<scalar_t> rows_of(const Pair& pr, const std::vector<at::Tensor>& grads, std::vector<at::Tensor>& outs) {
  Rows<scalar_t> r{pr.fa.const_data_ptr<scalar_t>(), pr.fb.const_data_ptr<scalar_t>(), {}, {}, pr.n, pr.norm,
                   static_cast<at::opmath_type<scalar_t>>(pr.eps)};
  for (size_t k = 0; k < grads.size(); ++k) r.grads[k] = grads[k].const_data_ptr<scalar_t>();
  for (size_t k = 0; k < outs.size(); ++k) r.outs[k] = outs[k].mutable_data_ptr<scalar_t>();
  return r;
}

// outs[0] = m.
template <typename scalar_t>
[[gnu::always_inline]] inline void identical_map_rows(const Rows<scalar_t>& r, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const scalar_t *a = r.fa + i * r.n, *b = r.fb + i * r.n;
    scalar_t* m_row = r.outs[0] + i * r.n;
    forward_row(r.row_norm_of(i), a, b, r.n, [&](int64_t j, acc_t m) { m_row[j] = static_cast<scalar_t>(m); });
  }
}
INDEED_SIMD_CLONES void identical_map_rows(const Rows<float>& r, int64_t begin, int64_t end) {
  identical_map_rows<float>(r, begin, end);
}

// grads[0] = dL/dm; outs = (dfa, dfb) with dfa = dp fb, dfb = dp fa.
template <typename scalar_t>
[[gnu::always_inline]] inline void identical_map_backward_rows(const Rows<scalar_t>& r, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t row = i * r.n;
    const scalar_t *a = r.fa + row, *b = r.fb + row, *gm = r.grads[0] + row;
    scalar_t *ga = r.outs[0] + row, *gb = r.outs[1] + row;
    backward_row(
        r.row_norm_of(i), a, b, r.n, r.norm, [&](int64_t j) { return static_cast<acc_t>(gm[j]); },
        [&](int64_t j, acc_t, acc_t dp) {
          ga[j] = static_cast<scalar_t>(dp * static_cast<acc_t>(b[j]));
          gb[j] = static_cast<scalar_t>(dp * static_cast<acc_t>(a[j]));
        });
  }
}
INDEED_SIMD_CLONES void identical_map_backward_rows(const Rows<float>& r, int64_t begin, int64_t end) {
  identical_map_backward_rows<float>(r, begin, end);
}

// outs = (m fa, m fb, (1-m) fa, (1-m) fb).
template <typename scalar_t>
[[gnu::always_inline]] inline void decompose_rows(const Rows<scalar_t>& r, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t row = i * r.n;
    const scalar_t *a = r.fa + row, *b = r.fb + row;
    scalar_t *ia = r.outs[0] + row, *ib = r.outs[1] + row, *da = r.outs[2] + row, *db = r.outs[3] + row;
    forward_row(r.row_norm_of(i), a, b, r.n, [&](int64_t j, acc_t m) {
      const acc_t a_j = static_cast<acc_t>(a[j]), b_j = static_cast<acc_t>(b[j]);
      ia[j] = static_cast<scalar_t>(m * a_j);
      ib[j] = static_cast<scalar_t>(m * b_j);
      da[j] = static_cast<scalar_t>((1 - m) * a_j);
      db[j] = static_cast<scalar_t>((1 - m) * b_j);
    });
  }
}
INDEED_SIMD_CLONES void decompose_rows(const Rows<float>& r, int64_t begin, int64_t end) {
  decompose_rows<float>(r, begin, end);
}

// grads = (g_ia, g_ib, g_da, g_db); outs = (dfa, dfb) with dfa = g_ia m + g_da (1-m) + dp fb,
// dfb = g_ib m + g_db (1-m) + dp fa, dm = (g_ia - g_da) fa + (g_ib - g_db) fb.
template <typename scalar_t>
[[gnu::always_inline]] inline void decompose_backward_rows(const Rows<scalar_t>& r, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t row = i * r.n;
    const scalar_t *a = r.fa + row, *b = r.fb + row;
    const scalar_t *g_ia = r.grads[0] + row, *g_ib = r.grads[1] + row;
    const scalar_t *g_da = r.grads[2] + row, *g_db = r.grads[3] + row;
    scalar_t *ga = r.outs[0] + row, *gb = r.outs[1] + row;
    const auto acc = [](scalar_t v) { return static_cast<acc_t>(v); };
    backward_row(
        r.row_norm_of(i), a, b, r.n, r.norm,
        [&](int64_t j) {
          return (acc(g_ia[j]) - acc(g_da[j])) * acc(a[j]) + (acc(g_ib[j]) - acc(g_db[j])) * acc(b[j]);
        },
        [&](int64_t j, acc_t m, acc_t dp) {
          ga[j] = static_cast<scalar_t>(acc(g_ia[j]) * m + acc(g_da[j]) * (1 - m) + dp * acc(b[j]));
          gb[j] = static_cast<scalar_t>(acc(g_ib[j]) * m + acc(g_db[j]) * (1 - m) + dp * acc(a[j]));
        });
  }
}
INDEED_SIMD_CLONES void decompose_backward_rows(const Rows<float>& r, int64_t begin, int64_t end) {
  decompose_backward_rows<float>(r, begin, end);
}

// Runs rows_fn(rows, begin, end) over all rows in parallel, in the pair's dtype, and returns
// `outputs` new tensors shaped like fa. rows_fn is a generic lambda, so that overload
// resolution picks the float clones above.
template <typename RowsFn>
std::vector<at::Tensor> run_rows(const Pair& pr, const std::vector<at::Tensor>& grads, int outputs, RowsFn rows_fn) {
  std::vector<at::Tensor> outs;
  for (int k = 0; k < outputs; ++k) outs.push_back(at::empty_like(pr.fa));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.fa.scalar_type(), "indeed pair op", [&] {
    const Rows<scalar_t> rows = rows_of<scalar_t>(pr, grads, outs);
    at::parallel_for(0, pr.rows, rows_per_task(pr.n),
                     [&](int64_t begin, int64_t end) { rows_fn(rows, begin, end); });
  });
  return outs;
}

// The upstream gradients of a backward op: shaped and typed like the pair, made contiguous.
std::vector<at::Tensor> checked_grads(const Pair& pr, std::initializer_list<std::pair<const char*, at::Tensor>> grads) {
  std::vector<at::Tensor> out;
  for (const auto& [name, g] : grads) {
    check_like(name, g, pr.fa.sizes(), pr.fa.scalar_type(), pr.fa.device());
    out.push_back(g.contiguous());
  }
  return out;
}

at::Tensor identical_map(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  const Pair pr = checked_pair(fa, fb, norm, eps);
  return run_rows(pr, {}, 1,
                  [](const auto& r, int64_t begin, int64_t end) { identical_map_rows(r, begin, end); })[0];
}

std::tuple<at::Tensor, at::Tensor> identical_map_backward(const at::Tensor& grad_m, const at::Tensor& fa,
                                                          const at::Tensor& fb, c10::string_view norm, double eps) {
  const Pair pr = checked_pair(fa, fb, norm, eps);
  const auto grads = checked_grads(pr, {{"grad_m", grad_m}});
  const auto outs = run_rows(pr, grads, 2, [](const auto& r, int64_t begin, int64_t end) {
    identical_map_backward_rows(r, begin, end);
  });
  return {outs[0], outs[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decompose(const at::Tensor& fa, const at::Tensor& fb,
                                                                     c10::string_view norm, double eps) {
  const Pair pr = checked_pair(fa, fb, norm, eps);
  const auto outs = run_rows(pr, {}, 4,
                             [](const auto& r, int64_t begin, int64_t end) { decompose_rows(r, begin, end); });
  return {outs[0], outs[1], outs[2], outs[3]};
}

std::tuple<at::Tensor, at::Tensor> decompose_backward(const at::Tensor& grad_ia, const at::Tensor& grad_ib,
                                                      const at::Tensor& grad_da, const at::Tensor& grad_db,
                                                      const at::Tensor& fa, const at::Tensor& fb,
                                                      c10::string_view norm, double eps) {
  const Pair pr = checked_pair(fa, fb, norm, eps);
  const auto grads =
      checked_grads(pr, {{"grad_ia", grad_ia}, {"grad_ib", grad_ib}, {"grad_da", grad_da}, {"grad_db", grad_db}});
  const auto outs = run_rows(pr, grads, 2,
                             [](const auto& r, int64_t begin, int64_t end) { decompose_backward_rows(r, begin, end); });
  return {outs[0], outs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CPU, m) {
  m.impl("identical_map", &identical_map);
  m.impl("_identical_map_backward", &identical_map_backward);
  m.impl("decompose", &decompose);
  m.impl("_decompose_backward", &decompose_backward);
}

}  // namespace indeed::cpu
