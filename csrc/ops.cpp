// The one schema file: every indeed op is declared here, once. Device kernels
// register under the same names in csrc/cpu and csrc/cuda (TORCH_LIBRARY_IMPL), autograd
// in csrc/autograd.cpp; fake kernels are registered from Python (indeed_ext/ops.py).
#include <torch/library.h>
#include <ATen/ATen.h>

namespace indeed {

// The public op saves nothing itself: it forwards to _six_head_bce_forward, whose
// extra outputs (the logits) are what the backward op needs, so the backward does
// not recompute the three GEMMs.
at::Tensor six_head_bce(const at::Tensor& features, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                        const at::Tensor& index_a, const at::Tensor& index_b,
                        c10::string_view norm, double eps) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("indeed::_six_head_bce_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           c10::string_view, double)>();
  return std::get<0>(op.call(features, weight, bias, targets, index_a, index_b, norm, eps));
}

TORCH_LIBRARY(indeed, m) {
  m.def("identical_map(Tensor fa, Tensor fb, str norm=\"minmax\", float eps=1e-12) -> Tensor");
  m.def("_identical_map_backward(Tensor grad_m, Tensor fa, Tensor fb, str norm, float eps)"
        " -> (Tensor, Tensor)");
  m.def("decompose(Tensor fa, Tensor fb, str norm=\"minmax\", float eps=1e-12)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_decompose_backward(Tensor grad_ia, Tensor grad_ib, Tensor grad_da, Tensor grad_db,"
        " Tensor fa, Tensor fb, str norm, float eps) -> (Tensor, Tensor)");
  m.def("six_head_bce(Tensor features, Tensor weight, Tensor? bias, Tensor targets,"
        " Tensor index_a, Tensor index_b, str norm=\"minmax\", float eps=1e-12) -> Tensor");
  m.def("_six_head_bce_forward(Tensor features, Tensor weight, Tensor? bias, Tensor targets,"
        " Tensor index_a, Tensor index_b, str norm, float eps)"
        " -> (Tensor loss, Tensor logits, Tensor ident_logits)");
  m.def("_six_head_bce_backward(Tensor grad, Tensor features, Tensor weight, Tensor? bias,"
        " Tensor targets, Tensor index_a, Tensor index_b, Tensor logits, Tensor ident_logits,"
        " str norm, float eps) -> (Tensor grad_features, Tensor grad_weight, Tensor grad_bias)");
  m.def("mine_pairs(Tensor targets, Tensor seed) -> (Tensor index_a, Tensor index_b, Tensor is_partial)");
  m.def("mine_pairs_cooccur(Tensor targets, Tensor seed, Tensor contrast_weights)"
        " -> (Tensor index_a, Tensor index_b, Tensor is_partial)");
}

TORCH_LIBRARY_IMPL(indeed, CompositeImplicitAutograd, m) {
  m.impl("six_head_bce", &six_head_bce);
}

}  // namespace indeed
