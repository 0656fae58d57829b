// CPU kernels of identical_map and decompose, forward and backward: per row one reduction
// pass and one output pass (row_math.h), rows in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/kernel_utils.h"
#include "cpu/row_math.h"

namespace indeed::cpu {
namespace {

// Inputs of every op here: a checked, contiguous (rows, n) pair.
struct Pair {
  at::Tensor fa, fb;
  Norm norm;
  int64_t rows, n;
};

Pair checked_pair(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  check_pair(fa, fb);
  const Norm parsed = parse_norm(norm);
  check_eps(eps);
  return {fa.contiguous(), fb.contiguous(), parsed, fa.size(0), fa.size(1)};
}

// Runs row_kernel(i, a_row, b_row) for every row i in parallel, scalar_t the pair's dtype.
template <typename scalar_t, typename RowKernel>
void for_each_row(const Pair& pr, RowKernel row_kernel) {
  const scalar_t* a = pr.fa.const_data_ptr<scalar_t>();
  const scalar_t* b = pr.fb.const_data_ptr<scalar_t>();
  const int64_t n = pr.n;
  at::parallel_for(0, pr.rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) row_kernel(i, a + i * n, b + i * n);
  });
}

at::Tensor identical_map(const at::Tensor& fa_in, const at::Tensor& fb_in, c10::string_view norm_name, double eps) {
  const Pair pr = checked_pair(fa_in, fb_in, norm_name, eps);
  at::Tensor m = at::empty_like(pr.fa);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.fa.scalar_type(), "indeed::identical_map", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* out = m.mutable_data_ptr<scalar_t>();
    for_each_row<scalar_t>(pr, [&](int64_t i, const scalar_t* a, const scalar_t* b) {
      const auto rn = row_norm<acc_t>(a, b, pr.n, pr.norm, static_cast<acc_t>(eps));
      scalar_t* m_row = out + i * pr.n;
      forward_row(rn, a, b, pr.n, [&](int64_t j, acc_t m_j) { m_row[j] = static_cast<scalar_t>(m_j); });
    });
  });
  return m;
}

std::tuple<at::Tensor, at::Tensor> identical_map_backward(const at::Tensor& grad_m_in, const at::Tensor& fa_in,
                                                          const at::Tensor& fb_in, c10::string_view norm_name,
                                                          double eps) {
  const Pair pr = checked_pair(fa_in, fb_in, norm_name, eps);
  check_like("grad_m", grad_m_in, pr.fa.sizes(), pr.fa.scalar_type(), pr.fa.device());
  const at::Tensor grad_m = grad_m_in.contiguous();
  at::Tensor grad_fa = at::empty_like(pr.fa), grad_fb = at::empty_like(pr.fb);
  const auto dtype = pr.fa.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "indeed::_identical_map_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gm = grad_m.const_data_ptr<scalar_t>();
    scalar_t* ga = grad_fa.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_fb.mutable_data_ptr<scalar_t>();
    for_each_row<scalar_t>(pr, [&](int64_t i, const scalar_t* a, const scalar_t* b) {
      const int64_t row = i * pr.n;
      const auto rn = row_norm<acc_t>(a, b, pr.n, pr.norm, static_cast<acc_t>(eps));
      backward_row(
          rn, a, b, pr.n, pr.norm, [&](int64_t j) { return static_cast<acc_t>(gm[row + j]); },
          [&](int64_t j, acc_t, acc_t dp) {
            ga[row + j] = static_cast<scalar_t>(dp * static_cast<acc_t>(b[j]));
            gb[row + j] = static_cast<scalar_t>(dp * static_cast<acc_t>(a[j]));
          });
    });
  });
  return {grad_fa, grad_fb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decompose(const at::Tensor& fa_in, const at::Tensor& fb_in,
                                                                     c10::string_view norm_name, double eps) {
  const Pair pr = checked_pair(fa_in, fb_in, norm_name, eps);
  at::Tensor ia = at::empty_like(pr.fa), ib = at::empty_like(pr.fa);
  at::Tensor da = at::empty_like(pr.fa), db = at::empty_like(pr.fa);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.fa.scalar_type(), "indeed::decompose", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* ia_p = ia.mutable_data_ptr<scalar_t>();
    scalar_t* ib_p = ib.mutable_data_ptr<scalar_t>();
    scalar_t* da_p = da.mutable_data_ptr<scalar_t>();
    scalar_t* db_p = db.mutable_data_ptr<scalar_t>();
    for_each_row<scalar_t>(pr, [&](int64_t i, const scalar_t* a, const scalar_t* b) {
      const int64_t row = i * pr.n;
      const auto rn = row_norm<acc_t>(a, b, pr.n, pr.norm, static_cast<acc_t>(eps));
      forward_row(rn, a, b, pr.n, [&](int64_t j, acc_t m) {
        const acc_t a_j = static_cast<acc_t>(a[j]), b_j = static_cast<acc_t>(b[j]);
        ia_p[row + j] = static_cast<scalar_t>(m * a_j);
        ib_p[row + j] = static_cast<scalar_t>(m * b_j);
        da_p[row + j] = static_cast<scalar_t>((1 - m) * a_j);
        db_p[row + j] = static_cast<scalar_t>((1 - m) * b_j);
      });
    });
  });
  return {ia, ib, da, db};
}

std::tuple<at::Tensor, at::Tensor> decompose_backward(const at::Tensor& grad_ia_in, const at::Tensor& grad_ib_in,
                                                      const at::Tensor& grad_da_in, const at::Tensor& grad_db_in,
                                                      const at::Tensor& fa_in, const at::Tensor& fb_in,
                                                      c10::string_view norm_name, double eps) {
  const Pair pr = checked_pair(fa_in, fb_in, norm_name, eps);
  const auto grad = [&](const char* name, const at::Tensor& g) {
    check_like(name, g, pr.fa.sizes(), pr.fa.scalar_type(), pr.fa.device());
    return g.contiguous();
  };
  const at::Tensor g_ia = grad("grad_ia", grad_ia_in), g_ib = grad("grad_ib", grad_ib_in);
  const at::Tensor g_da = grad("grad_da", grad_da_in), g_db = grad("grad_db", grad_db_in);
  at::Tensor grad_fa = at::empty_like(pr.fa), grad_fb = at::empty_like(pr.fb);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pr.fa.scalar_type(), "indeed::_decompose_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gia = g_ia.const_data_ptr<scalar_t>();
    const scalar_t* gib = g_ib.const_data_ptr<scalar_t>();
    const scalar_t* gda = g_da.const_data_ptr<scalar_t>();
    const scalar_t* gdb = g_db.const_data_ptr<scalar_t>();
    scalar_t* ga = grad_fa.mutable_data_ptr<scalar_t>();
    scalar_t* gb = grad_fb.mutable_data_ptr<scalar_t>();
    for_each_row<scalar_t>(pr, [&](int64_t i, const scalar_t* a, const scalar_t* b) {
      const int64_t row = i * pr.n;
      const auto rn = row_norm<acc_t>(a, b, pr.n, pr.norm, static_cast<acc_t>(eps));
      const auto g = [&](const scalar_t* t, int64_t j) { return static_cast<acc_t>(t[row + j]); };
      backward_row(
          rn, a, b, pr.n, pr.norm,
          [&](int64_t j) {  // dm = (g_ia - g_da) fa + (g_ib - g_db) fb
            return (g(gia, j) - g(gda, j)) * static_cast<acc_t>(a[j]) +
                   (g(gib, j) - g(gdb, j)) * static_cast<acc_t>(b[j]);
          },
          [&](int64_t j, acc_t m, acc_t dp) {
            const acc_t a_j = static_cast<acc_t>(a[j]), b_j = static_cast<acc_t>(b[j]);
            ga[row + j] = static_cast<scalar_t>(g(gia, j) * m + g(gda, j) * (1 - m) + dp * b_j);
            gb[row + j] = static_cast<scalar_t>(g(gib, j) * m + g(gdb, j) * (1 - m) + dp * a_j);
          });
    });
  });
  return {grad_fa, grad_fb};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CPU, m) {
  m.impl("identical_map", &identical_map);
  m.impl("_identical_map_backward", &identical_map_backward);
  m.impl("decompose", &decompose);
  m.impl("_decompose_backward", &decompose_backward);
}

}  // namespace indeed::cpu
