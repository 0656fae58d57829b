// The base losses of six_head_loss on the GPU, one functor each, shared by the forward and
// the backward kernels (csrc/cuda/six_head_loss.cu): value(z, y) is the loss of one logit z
// with target y, grad(z, y) its derivative in z. The same formulas as the CPU functors
// (csrc/cpu/base_losses.h), which say why each step is written as it is.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace indeed::gpu {

// BCE: softplus(z) - y z with torch's softplus (threshold 20), so that it matches F.softplus.
template <typename acc_t>
struct BceLoss {
  __device__ __forceinline__ acc_t value(acc_t z, acc_t y) const {
    return (z > acc_t(20) ? z : std::log1p(std::exp(z))) - y * z;
  }
  __device__ __forceinline__ acc_t grad(acc_t z, acc_t y) const {
    if (z > acc_t(20)) return acc_t(1) - y;
    const acc_t e = std::exp(z);
    return e / (e + 1) - y;
  }
};

// ASL, exactly reference.asl_sum (ASL's AsymmetricLoss); see csrc/cpu/base_losses.h.
template <typename acc_t>
struct AslLoss {
  acc_t gamma_neg, gamma_pos, clip, eps_log;
  bool focal_grad;

  struct Terms {
    acc_t p, xs_neg_unclipped, xs_neg, pos, neg, log_likelihood, gamma, base, weight;
  };

  __device__ __forceinline__ Terms terms(acc_t z, acc_t y) const {
    Terms t;
    t.p = acc_t(1) / (acc_t(1) + std::exp(-z));  // torch.sigmoid's formula
    t.xs_neg_unclipped = (1 - t.p) + clip;
    t.xs_neg = t.xs_neg_unclipped > 1 ? acc_t(1) : t.xs_neg_unclipped;  // NaN stays NaN, as in clamp
    t.pos = t.p < eps_log ? eps_log : t.p;
    t.neg = t.xs_neg < eps_log ? eps_log : t.xs_neg;
    t.log_likelihood = y * std::log(t.pos) + (1 - y) * std::log(t.neg);
    t.gamma = gamma_pos * y + gamma_neg * (1 - y);
    t.base = 1 - (t.p * y + t.xs_neg * (1 - y));
    t.weight = std::pow(t.base, t.gamma);
    return t;
  }

  __device__ __forceinline__ acc_t value(acc_t z, acc_t y) const {
    const Terms t = terms(z, y);
    return -(t.log_likelihood * t.weight);
  }

  __device__ __forceinline__ acc_t grad(acc_t z, acc_t y) const {
    const Terms t = terms(z, y);
    const acc_t grad_log_likelihood = -t.weight;
    acc_t grad_pt = 0;  // -(-A) d w / d base: w is a constant unless focal_grad
    if (focal_grad && t.gamma != 0) {
      const acc_t at_zero = t.gamma > 1 ? acc_t(0) : (t.gamma == 1 ? acc_t(1) : std::numeric_limits<acc_t>::infinity());
      grad_pt = t.log_likelihood * (t.gamma * (t.base > 0 ? t.weight / t.base : at_zero));
    }
    const acc_t grad_pos = t.p > eps_log ? grad_log_likelihood * y / t.pos : acc_t(0);
    const acc_t grad_neg = t.xs_neg > eps_log ? grad_log_likelihood * (1 - y) / t.neg : acc_t(0);
    const acc_t grad_xs_neg = grad_neg + grad_pt * (1 - y);
    const bool clipped = (clip > 0) & !(t.xs_neg_unclipped < 1);
    const acc_t grad_p = grad_pos + grad_pt * y - (clipped ? acc_t(0) : grad_xs_neg);
    return grad_p * (1 - t.p) * t.p;
  }
};

}  // namespace indeed::gpu
