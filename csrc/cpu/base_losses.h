// The base losses of six_head_loss on the CPU, one functor each, shared by the forward and
// the backward kernels (csrc/cpu/six_head_loss.cpp): value(z, y) is the loss of one logit z
// with target y, grad(z, y) its derivative in z. They are written with selects, not branches,
// so that the kernels' `omp simd` loops vectorise them (float: the polynomials of simd_math.h),
// and marked always_inline so that the SIMD clones of those loops inline them (simd_clones.h).
#pragma once
#include <limits>

#include "cpu/simd_math.h"

namespace indeed::cpu {

// BCE in the stable form softplus(z) - y z, softplus as torch computes it (beta 1, threshold
// 20: above it softplus(z) = z and its derivative is 1), so that it matches reference.py's
// F.softplus up to rounding. exp's argument is capped at the threshold: the other branch is
// taken there.
template <typename acc_t>
struct BceLoss {
  [[gnu::always_inline]] static acc_t exp_below_threshold(acc_t z) {
    return simd_exp(z > acc_t(20) ? acc_t(20) : z);
  }
  [[gnu::always_inline]] acc_t value(acc_t z, acc_t y) const {
    const acc_t softplus = simd_log1p(exp_below_threshold(z));
    return (z > acc_t(20) ? z : softplus) - y * z;
  }
  [[gnu::always_inline]] acc_t grad(acc_t z, acc_t y) const {
    const acc_t e = exp_below_threshold(z);
    return (z > acc_t(20) ? acc_t(1) : e / (e + 1)) - y;
  }
};

// sigma(z) = 1 / (1 + exp(-z)) as torch.sigmoid computes it. float: exp's argument is capped
// at 88 (simd_exp's range); there sigma < 1e-38, below any eps_log, so the cap changes nothing.
[[gnu::always_inline]] inline float sigmoid(float z) {
  const float minus_z = -z;
  return 1.0f / (1.0f + simd_exp(minus_z > 88.0f ? 88.0f : minus_z));
}
[[gnu::always_inline]] inline double sigmoid(double z) { return 1.0 / (1.0 + simd_exp(-z)); }

// ASL, exactly reference.asl_sum (ASL's AsymmetricLoss): with p = sigma(z),
//   xs_neg = min(1 - p + clip, 1),  A = y log(max(p, eps)) + (1 - y) log(max(xs_neg, eps)),
//   w = (1 - pt)^gamma,  pt = p y + xs_neg (1 - y),  gamma = gamma_pos y + gamma_neg (1 - y),
//   loss = -A w.
// clip = 0 needs no branch in the forward: min(1 - p + 0, 1) is 1 - p itself. grad follows the
// reference's autograd: torch's clamp passes no gradient at equality (it flows where p > eps,
// xs_neg > eps and, with clip > 0, 1 - p + clip < 1), torch.pow's backward is 0 where the
// exponent is 0, and w is a constant unless focal_grad.
template <typename acc_t>
struct AslLoss {
  acc_t gamma_neg, gamma_pos, clip, eps_log;
  acc_t focal_grad;  // 1 or 0: GCC vectorises a select on a float, not on a bool member

  struct Terms {
    acc_t p, xs_neg_unclipped, xs_neg, pos, neg, log_likelihood, gamma, base, weight;
  };

  [[gnu::always_inline]] Terms terms(acc_t z, acc_t y) const {
    Terms t;
    t.p = sigmoid(z);
    t.xs_neg_unclipped = (1 - t.p) + clip;
    t.xs_neg = t.xs_neg_unclipped > 1 ? acc_t(1) : t.xs_neg_unclipped;  // NaN stays NaN, as in clamp
    t.pos = t.p < eps_log ? eps_log : t.p;
    t.neg = t.xs_neg < eps_log ? eps_log : t.xs_neg;
    t.log_likelihood = y * simd_log(t.pos) + (1 - y) * simd_log(t.neg);
    t.gamma = gamma_pos * y + gamma_neg * (1 - y);
    t.base = 1 - (t.p * y + t.xs_neg * (1 - y));
    t.weight = simd_pow(t.base, t.gamma);
    return t;
  }

  [[gnu::always_inline]] acc_t value(acc_t z, acc_t y) const {
    const Terms t = terms(z, y);
    return -(t.log_likelihood * t.weight);
  }

  [[gnu::always_inline]] acc_t grad(acc_t z, acc_t y) const {
    const Terms t = terms(z, y);
    const acc_t grad_log_likelihood = -t.weight;
    // d w / d base = gamma base^(gamma - 1), with base^(gamma - 1) = w / base where base > 0
    // and pow's values at 0: 0^(gamma - 1) is 0, 1 or inf for gamma >, ==, < 1.
    const acc_t inf = std::numeric_limits<acc_t>::infinity();
    const acc_t at_zero = t.gamma > 1 ? acc_t(0) : (t.gamma == 1 ? acc_t(1) : inf);
    const acc_t power = t.base > 0 ? t.weight / t.base : at_zero;
    const acc_t weight_grad = t.gamma == 0 ? acc_t(0) : t.gamma * power;
    const acc_t grad_pt = focal_grad != 0 ? t.log_likelihood * weight_grad : acc_t(0);  // -(-A) d w / d base
    const acc_t grad_pos = t.p > eps_log ? grad_log_likelihood * y / t.pos : acc_t(0);
    const acc_t grad_neg = t.xs_neg > eps_log ? grad_log_likelihood * (1 - y) / t.neg : acc_t(0);
    const acc_t grad_xs_neg = grad_neg + grad_pt * (1 - y);
    const bool clipped = (clip > 0) & !(t.xs_neg_unclipped < 1);
    const acc_t grad_p = grad_pos + grad_pt * y - (clipped ? acc_t(0) : grad_xs_neg);
    return grad_p * (1 - t.p) * t.p;
  }
};

}  // namespace indeed::cpu
