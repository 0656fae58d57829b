// The one schema file: every indeed op is declared here, once. Device kernels
// register under the same names in csrc/cpu and csrc/cuda (TORCH_LIBRARY_IMPL), autograd
// in csrc/autograd.cpp; fake kernels are registered from Python (indeed_ext/ops.py).
#include <torch/library.h>
#include <ATen/ATen.h>

namespace indeed {
namespace {

using SixHeadOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The public ops save nothing themselves: they forward to _six_head_loss_forward, whose
// extra outputs (the logits) are what the backward op needs, so the backward does not
// recompute the three GEMMs.
SixHeadOutputs six_head_loss_forward(const at::Tensor& features, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                                     const at::Tensor& index_a, const at::Tensor& index_b, c10::string_view norm,
                                     double eps, c10::string_view loss, double gamma_neg, double gamma_pos,
                                     double clip, double eps_log, bool focal_grad,
                                     c10::string_view present_negatives) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("indeed::_six_head_loss_forward", "")
                       .typed<SixHeadOutputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             c10::string_view, double, c10::string_view, double, double, double,
                                             double, bool, c10::string_view)>();
  return op.call(features, weight, bias, targets, index_a, index_b, norm, eps, loss, gamma_neg, gamma_pos, clip,
                 eps_log, focal_grad, present_negatives);
}

at::Tensor six_head_loss(const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b,
                         c10::string_view norm, double eps, c10::string_view loss, double gamma_neg,
                         double gamma_pos, double clip, double eps_log, bool focal_grad,
                         c10::string_view present_negatives) {
  return std::get<0>(six_head_loss_forward(features, weight, bias, targets, index_a, index_b, norm, eps, loss,
                                           gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives));
}

// The BCE case of six_head_loss (its ASL parameters are unused: zero, and the default eps_log).
at::Tensor six_head_bce(const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b,
                        c10::string_view norm, double eps) {
  return std::get<0>(
      six_head_loss_forward(features, weight, bias, targets, index_a, index_b, norm, eps, "bce", 0, 0, 0, 1e-8, false, "sum"));
}

}  // namespace

#define INDEED_SIX_HEAD_INPUTS "Tensor features, Tensor weight, Tensor? bias, Tensor targets, Tensor index_a, Tensor index_b"
// mine_pairs_cooccur's default load cap: indeed_ext._checks.DEFAULT_LOAD_CAP (tests/test_mine_pairs_cooccur.py checks they agree).
#define INDEED_LOAD_CAP "4"
// One line each: setup.py reads these macros into the schemas it records for the Triton namespace.
#define INDEED_LOSS_PARAMS "str loss, float gamma_neg, float gamma_pos, float clip, float eps_log, bool focal_grad, str present_negatives"

TORCH_LIBRARY(indeed, m) {
  m.def("identical_map(Tensor fa, Tensor fb, str norm=\"minmax\", float eps=1e-12) -> Tensor");
  m.def("_identical_map_backward(Tensor grad_m, Tensor fa, Tensor fb, str norm, float eps)"
        " -> (Tensor, Tensor)");
  m.def("decompose(Tensor fa, Tensor fb, str norm=\"minmax\", float eps=1e-12)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_decompose_backward(Tensor grad_ia, Tensor grad_ib, Tensor grad_da, Tensor grad_db,"
        " Tensor fa, Tensor fb, str norm, float eps) -> (Tensor, Tensor)");
  m.def("six_head_bce(" INDEED_SIX_HEAD_INPUTS ", str norm=\"minmax\", float eps=1e-12) -> Tensor");
  m.def("six_head_loss(" INDEED_SIX_HEAD_INPUTS ", str norm=\"minmax\", float eps=1e-12, str loss=\"bce\","
        " float gamma_neg=0.0, float gamma_pos=0.0, float clip=0.0, float eps_log=1e-8, bool focal_grad=False,"
        " str present_negatives=\"sum\") -> Tensor");
  m.def("_six_head_loss_forward(" INDEED_SIX_HEAD_INPUTS ", str norm, float eps, " INDEED_LOSS_PARAMS ")"
        " -> (Tensor loss, Tensor logits, Tensor ident_logits)");
  m.def("_six_head_loss_backward(Tensor grad, " INDEED_SIX_HEAD_INPUTS ", Tensor logits, Tensor ident_logits,"
        " str norm, float eps, " INDEED_LOSS_PARAMS ")"
        " -> (Tensor grad_features, Tensor grad_weight, Tensor grad_bias)");
  m.def("mine_pairs(Tensor targets, Tensor seed) -> (Tensor index_a, Tensor index_b, Tensor is_partial)");
  m.def("mine_pairs_cooccur(Tensor targets, Tensor seed, Tensor contrast_weights, int load_cap=" INDEED_LOAD_CAP ")"
        " -> (Tensor index_a, Tensor index_b, Tensor is_partial)");
}

TORCH_LIBRARY_IMPL(indeed, CompositeImplicitAutograd, m) {
  m.impl("six_head_bce", &six_head_bce);
  m.impl("six_head_loss", &six_head_loss);
}

}  // namespace indeed
