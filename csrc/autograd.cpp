// Autograd of the indeed ops, in C++ at the Autograd dispatch key, so that a forward +
// backward runs no Python of ours. Each forward redispatches below autograd to the device
// kernel (or, under torch.compile, the fake kernel); each backward calls the backward op
// through the dispatcher. mine_pairs has integer and bool outputs only: nothing to register.
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace indeed {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using PairSignature = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double);
using PairGrads = std::tuple<at::Tensor, at::Tensor>;

// identical_map and decompose save fa, fb, norm and eps for their backward ops.
void save_pair(AutogradContext* ctx, const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  ctx->save_for_backward({fa, fb});
  ctx->saved_data["norm"] = std::string(norm);
  ctx->saved_data["eps"] = eps;
}

variable_list pair_input_grads(const PairGrads& grads) {
  return {std::get<0>(grads), std::get<1>(grads), at::Tensor(), at::Tensor()};
}

class IdenticalMap : public torch::autograd::Function<IdenticalMap> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm,
                            double eps) {
    static const auto op = find_op<PairSignature>("indeed::identical_map");
    save_pair(ctx, fa, fb, norm, eps);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(fa, fb, norm, eps);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<PairGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             c10::string_view, double)>("indeed::_identical_map_backward");
    const variable_list saved = ctx->get_saved_variables();
    const std::string norm = ctx->saved_data["norm"].toStringRef();
    return pair_input_grads(op.call(grads[0], saved[0], saved[1], norm, ctx->saved_data["eps"].toDouble()));
  }
};

using Features4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

class Decompose : public torch::autograd::Function<Decompose> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& fa, const at::Tensor& fb,
                               c10::string_view norm, double eps) {
    static const auto op =
        find_op<Features4(const at::Tensor&, const at::Tensor&, c10::string_view, double)>("indeed::decompose");
    save_pair(ctx, fa, fb, norm, eps);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto [ia, ib, da, db] = op.call(fa, fb, norm, eps);
    return {ia, ib, da, db};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<PairGrads(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const at::Tensor&, const at::Tensor&, c10::string_view, double)>("indeed::_decompose_backward");
    const variable_list saved = ctx->get_saved_variables();
    const std::string norm = ctx->saved_data["norm"].toStringRef();
    return pair_input_grads(op.call(grads[0], grads[1], grads[2], grads[3], saved[0], saved[1], norm,
                                    ctx->saved_data["eps"].toDouble()));
  }
};

using SixHeadOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The logits outputs are saved for the backward op, not differentiated: their gradients are
// never materialised (zeros would cost an allocation and a fill per step).
class SixHeadLoss : public torch::autograd::Function<SixHeadLoss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& features, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                               const at::Tensor& index_a, const at::Tensor& index_b, c10::string_view norm,
                               double eps, c10::string_view loss, double gamma_neg, double gamma_pos, double clip,
                               double eps_log, bool focal_grad, c10::string_view present_negatives) {
    static const auto op =
        find_op<SixHeadOutputs(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                               const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, double,
                               c10::string_view, double, double, double, double, bool, c10::string_view)>(
            "indeed::_six_head_loss_forward");
    at::Tensor out, logits, ident_logits;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, logits, ident_logits) = op.call(features, weight, bias, targets, index_a, index_b, norm, eps, loss,
                                                    gamma_neg, gamma_pos, clip, eps_log, focal_grad,
                                                    present_negatives);
    }
    ctx->set_materialize_grads(false);
    ctx->mark_non_differentiable({logits, ident_logits});
    ctx->save_for_backward({features, weight, bias.value_or(at::Tensor()), targets, index_a, index_b, logits,
                            ident_logits});
    ctx->saved_data["norm"] = std::string(norm);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["loss"] = std::string(loss);
    ctx->saved_data["gamma_neg"] = gamma_neg;
    ctx->saved_data["gamma_pos"] = gamma_pos;
    ctx->saved_data["clip"] = clip;
    ctx->saved_data["eps_log"] = eps_log;
    ctx->saved_data["focal_grad"] = focal_grad;
    ctx->saved_data["present_negatives"] = std::string(present_negatives);
    return {out, logits, ident_logits};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<SixHeadOutputs(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        c10::string_view, double, c10::string_view, double, double, double, double, bool, c10::string_view)>(
        "indeed::_six_head_loss_backward");
    variable_list input_grads(15);
    if (!grads[0].defined()) return input_grads;  // the loss was not used
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> bias = saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const auto& data = ctx->saved_data;
    const std::string norm = data.at("norm").toStringRef(), loss = data.at("loss").toStringRef(),
                      present_negatives = data.at("present_negatives").toStringRef();
    auto [grad_features, grad_weight, grad_bias] =
        op.call(grads[0], saved[0], saved[1], bias, saved[3], saved[4], saved[5], saved[6], saved[7], norm,
                data.at("eps").toDouble(), loss, data.at("gamma_neg").toDouble(), data.at("gamma_pos").toDouble(),
                data.at("clip").toDouble(), data.at("eps_log").toDouble(), data.at("focal_grad").toBool(),
                present_negatives);
    input_grads[0] = grad_features;
    input_grads[1] = grad_weight;
    if (bias) input_grads[2] = grad_bias;
    return input_grads;
  }
};

at::Tensor identical_map(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  return IdenticalMap::apply(fa, fb, norm, eps);
}

Features4 decompose(const at::Tensor& fa, const at::Tensor& fb, c10::string_view norm, double eps) {
  const variable_list out = Decompose::apply(fa, fb, norm, eps);
  return {out[0], out[1], out[2], out[3]};
}

SixHeadOutputs six_head_loss_forward(const at::Tensor& features, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                                     const at::Tensor& index_a, const at::Tensor& index_b, c10::string_view norm,
                                     double eps, c10::string_view loss, double gamma_neg, double gamma_pos,
                                     double clip, double eps_log, bool focal_grad, c10::string_view present_negatives) {
  const variable_list out = SixHeadLoss::apply(features, weight, bias, targets, index_a, index_b, norm, eps, loss,
                                               gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, Autograd, m) {
  m.impl("identical_map", &identical_map);
  m.impl("decompose", &decompose);
  m.impl("_six_head_loss_forward", &six_head_loss_forward);
}

}  // namespace indeed
