// CUDA kernels of identical_map, decompose and their backward ops: one launch of the row
// kernels in pair_rows.cuh per call (bytes per row listed there).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/pair_rows.cuh"

namespace indeed::gpu {
namespace {

struct NamedGrad {
  const char* name;
  const at::Tensor& tensor;
};

// Runs the row kernel of MODE over the rows of fa, fb with `grads` (backward) into fresh
// row-major outputs of fa's dtype: (1 | 4) outputs forward, (dfa, dfb) backward.
template <PairMode MODE, bool BACKWARD>
std::vector<at::Tensor> run_pair_rows(const at::Tensor& fa_in, const at::Tensor& fb_in,
                                      std::initializer_list<NamedGrad> grads, c10::string_view norm,
                                      double eps) {
  check_pair(fa_in, fb_in);
  for (const NamedGrad& g : grads) {
    TORCH_CHECK_VALUE(g.tensor.sizes() == fa_in.sizes(), g.name, " must have the shape of fa ", fa_in.sizes(),
                      ", got ", g.tensor.sizes());
    TORCH_CHECK_VALUE(g.tensor.device() == fa_in.device(), g.name, " is on ", g.tensor.device(), ", fa on ",
                      fa_in.device());
  }
  const Norm parsed = parse_norm(norm);
  check_eps(eps);
  const c10::cuda::CUDAGuard device_guard(fa_in.device());
  const at::Tensor fa = with_unit_column_stride(fa_in), fb = with_unit_column_stride(fb_in);
  std::vector<at::Tensor> grad_rows;
  for (const NamedGrad& g : grads) grad_rows.push_back(with_unit_column_stride(g.tensor.to(fa.scalar_type())));
  const int num_outputs = BACKWARD ? 2 : kFeatureOutputs<MODE>;
  std::vector<at::Tensor> outputs;
  for (int k = 0; k < num_outputs; ++k) outputs.push_back(at::empty(fa.sizes(), fa.options()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fa.scalar_type(), "indeed_pair_rows_cuda", [&] {
    PairRowsArgs<scalar_t> args;
    args.fa = rows_of<const scalar_t>(fa.data_ptr<scalar_t>(), fa.stride(0));
    args.fb = rows_of<const scalar_t>(fb.data_ptr<scalar_t>(), fb.stride(0));
    for (size_t k = 0; k < grad_rows.size(); ++k) {
      args.grad[k] = rows_of<const scalar_t>(grad_rows[k].data_ptr<scalar_t>(), grad_rows[k].stride(0));
    }
    for (int k = 0; k < num_outputs; ++k) args.out[k] = rows_of(outputs[k].data_ptr<scalar_t>(), fa.size(1));
    args.rows = fa.size(0);
    args.n = fa.size(1);
    args.norm = parsed;
    args.eps = static_cast<typename PairRowsArgs<scalar_t>::acc_t>(eps);
    launch_pair_rows<MODE, BACKWARD>(args);
  });

  for (int k = 0; k < num_outputs; ++k) outputs[k] = in_layout_of(outputs[k], BACKWARD && k == 1 ? fb_in : fa_in);
  return outputs;
}

at::Tensor identical_map_cuda(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  return run_pair_rows<PairMode::Map, false>(fa, fb, {}, norm, eps)[0];
}

std::tuple<at::Tensor, at::Tensor> identical_map_backward_cuda(const at::Tensor& grad_m, const at::Tensor& fa,
                                                               const at::Tensor& fb, c10::string_view norm,
                                                               double eps) {
  auto g = run_pair_rows<PairMode::Map, true>(fa, fb, {{"grad_m", grad_m}}, norm, eps);
  return {g[0], g[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decompose_cuda(const at::Tensor& fa, const at::Tensor& fb,
                                                                          c10::string_view norm, double eps) {
  auto out = run_pair_rows<PairMode::Decompose, false>(fa, fb, {}, norm, eps);
  return {out[0], out[1], out[2], out[3]};
}

std::tuple<at::Tensor, at::Tensor> decompose_backward_cuda(const at::Tensor& grad_ia, const at::Tensor& grad_ib,
                                                           const at::Tensor& grad_da, const at::Tensor& grad_db,
                                                           const at::Tensor& fa, const at::Tensor& fb,
                                                           c10::string_view norm, double eps) {
  auto g = run_pair_rows<PairMode::Decompose, true>(
      fa, fb, {{"grad_ia", grad_ia}, {"grad_ib", grad_ib}, {"grad_da", grad_da}, {"grad_db", grad_db}}, norm, eps);
  return {g[0], g[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CUDA, m) {
  m.impl("identical_map", &identical_map_cuda);
  m.impl("_identical_map_backward", &identical_map_backward_cuda);
  m.impl("decompose", &decompose_cuda);
  m.impl("_decompose_backward", &decompose_backward_cuda);
}

}  // namespace indeed::gpu
