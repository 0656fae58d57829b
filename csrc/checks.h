// Input checks shared by the CPU and CUDA kernels. They mirror indeed_ext/_checks.py:
// ValueError for shapes and values, TypeError for dtypes, IndexError for pair indices.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cmath>
#include <string_view>

namespace indeed {

enum class Norm { MinMax, L2 };

inline Norm parse_norm(std::string_view norm) {
  if (norm == "minmax") return Norm::MinMax;
  if (norm == "l2") return Norm::L2;
  TORCH_CHECK_VALUE(false, "unknown norm '", std::string(norm), "'; expected one of ('minmax', 'l2')");
}

inline void check_eps(double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "eps must be a positive finite number, got ", eps);
}

// The base loss of six_head_loss with ASL's parameters (docs/SPEC.md); gammas and clip are 0 for BCE.
enum class BaseLoss { Bce, Asl };

struct LossParams {
  BaseLoss loss;
  double gamma_neg, gamma_pos, clip, eps_log;
  bool focal_grad;
  bool mean_present_negatives;  // present_negatives="mean": see reference.present_negative_weights
};

inline LossParams parse_loss(std::string_view loss, double gamma_neg, double gamma_pos, double clip, double eps_log,
                             bool focal_grad, std::string_view present_negatives) {
  TORCH_CHECK_VALUE(present_negatives == "sum" || present_negatives == "mean", "unknown present_negatives '",
                    std::string(present_negatives), "'; expected one of ('sum', 'mean')");
  TORCH_CHECK_VALUE(loss == "bce" || loss == "asl", "unknown loss '", std::string(loss),
                    "'; expected one of ('bce', 'asl')");
  TORCH_CHECK_VALUE(std::isfinite(gamma_neg) && gamma_neg >= 0, "gamma_neg must be a finite number >= 0, got ",
                    gamma_neg);
  TORCH_CHECK_VALUE(std::isfinite(gamma_pos) && gamma_pos >= 0, "gamma_pos must be a finite number >= 0, got ",
                    gamma_pos);
  TORCH_CHECK_VALUE(clip >= 0 && clip < 1, "clip must be a number in [0, 1), got ", clip);
  TORCH_CHECK_VALUE(eps_log > 0 && eps_log < 1, "eps_log must be a number in (0, 1), got ", eps_log);
  const BaseLoss parsed = loss == "bce" ? BaseLoss::Bce : BaseLoss::Asl;
  TORCH_CHECK_VALUE(parsed == BaseLoss::Asl || (gamma_neg == 0 && gamma_pos == 0 && clip == 0),
                    "gamma_neg, gamma_pos and clip shape loss='asl' only; loss='bce' needs them 0, got ", gamma_neg,
                    ", ", gamma_pos, ", ", clip);
  return {parsed, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives == "mean"};
}

inline void check_float(const char* name, const at::Tensor& t) {
  auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, name,
                   " must be float16, bfloat16, float32 or float64, got ", s);
}

inline void check_rank(const char* name, const at::Tensor& t, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, " must be ", rank, "-D ", layout, ", got shape ", t.sizes());
}

// fa, fb: (rows, n), one float dtype, one device, one shape.
inline void check_pair(const at::Tensor& fa, const at::Tensor& fb) {
  check_rank("fa", fa, 2, "(rows, n)");
  check_rank("fb", fb, 2, "(rows, n)");
  TORCH_CHECK_VALUE(fa.sizes() == fb.sizes(), "fa and fb must have the same shape, got ", fa.sizes(), " and ",
                    fb.sizes());
  TORCH_CHECK_VALUE(fa.device() == fb.device(), "fa, fb are on different devices: ", fa.device(), ", ",
                    fb.device());
  check_float("fa", fa);
  TORCH_CHECK_TYPE(fa.scalar_type() == fb.scalar_type(), "fa, fb have mixed dtypes: ", fa.scalar_type(), ", ",
                   fb.scalar_type());
}

// Shapes, dtypes and devices of six_head_loss's inputs. Index values are checked by the
// caller where reading them is cheap (CPU); see check_index_values.
inline void check_six_head(const at::Tensor& features, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, const at::Tensor& targets,
                           const at::Tensor& index_a, const at::Tensor& index_b) {
  check_rank("features", features, 2, "(B, n)");
  check_rank("weight", weight, 2, "(c, n)");
  check_rank("targets", targets, 2, "(B, c)");
  check_rank("index_a", index_a, 1, "(P,)");
  check_rank("index_b", index_b, 1, "(P,)");
  const int64_t B = features.size(0), n = features.size(1), c = weight.size(0);
  TORCH_CHECK_VALUE(weight.size(1) == n, "weight must be (c, n) with n = features.shape[1] = ", n, ", got ",
                    weight.sizes());
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c, "bias must have shape (c,) = (", c, ",), got ",
                      bias->sizes());
  }
  TORCH_CHECK_VALUE(targets.size(0) == B && targets.size(1) == c, "targets must have shape (B, c) = (", B, ", ", c,
                    "), got ", targets.sizes());
  TORCH_CHECK_VALUE(index_a.size(0) == index_b.size(0), "index_a and index_b must have the same length, got ",
                    index_a.size(0), " and ", index_b.size(0));
  auto dev = features.device();
  bool same_device = weight.device() == dev && targets.device() == dev && index_a.device() == dev &&
                     index_b.device() == dev && (!bias.has_value() || bias->device() == dev);
  TORCH_CHECK_VALUE(same_device, "features, weight, targets, index_a, index_b", (bias.has_value() ? ", bias" : ""),
                    " are on different devices");
  check_float("features", features);
  check_float("targets", targets);
  bool same_dtype = weight.scalar_type() == features.scalar_type() &&
                    (!bias.has_value() || bias->scalar_type() == features.scalar_type());
  TORCH_CHECK_TYPE(same_dtype, "features, weight", (bias.has_value() ? ", bias" : ""), " have mixed dtypes: ",
                   features.scalar_type(), ", ", weight.scalar_type(),
                   (bias.has_value() ? ", " : ""), (bias.has_value() ? c10::toString(bias->scalar_type()) : ""));
  TORCH_CHECK_TYPE(index_a.scalar_type() == at::kLong, "index_a must be int64, got ", index_a.scalar_type());
  TORCH_CHECK_TYPE(index_b.scalar_type() == at::kLong, "index_b must be int64, got ", index_b.scalar_type());
}

// mine_pairs: targets (B, c) float or bool, seed a one-element int64 tensor on their device.
// B < 2^31 keeps the partner draw's 32 x 32-bit products exact (csrc/mine_pairs.h).
inline void check_mine_pairs(const at::Tensor& targets, const at::Tensor& seed) {
  check_rank("targets", targets, 2, "(B, c)");
  TORCH_CHECK_VALUE(targets.size(0) < (int64_t(1) << 31), "mine_pairs needs B < 2^31 rows, got ", targets.size(0));
  const auto s = targets.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16 || s == at::kBool,
                   "targets must be bool or float16, bfloat16, float32, float64, got ", s);
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "seed must be int64, got ", seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "seed must have one element, got shape ", seed.sizes());
  TORCH_CHECK_VALUE(seed.device() == targets.device(), "targets, seed are on different devices: ", targets.device(),
                    ", ", seed.device());
}

// mine_pairs_cooccur: check_mine_pairs, contrast_weights (c, c) int64 on the targets' device (its
// values are checked by the CPU kernel, which reads them anyway) and load_cap >= 0. The masses of a
// row's contrasts sum to at most c * (c - 1) * B * 2^16, which must stay below 2^63.
constexpr int64_t kContrastScale = int64_t(1) << 16;

inline void check_mine_pairs_cooccur(const at::Tensor& targets, const at::Tensor& seed,
                                     const at::Tensor& contrast_weights, int64_t load_cap) {
  check_mine_pairs(targets, seed);
  TORCH_CHECK_VALUE(load_cap >= 0, "load_cap must be >= 0 (0: no cap), got ", load_cap);
  const int64_t B = targets.size(0), c = targets.size(1);
  TORCH_CHECK_VALUE(contrast_weights.dim() == 2 && contrast_weights.size(0) == c && contrast_weights.size(1) == c,
                    "contrast_weights must have shape (c, c) = (", c, ", ", c, "), got ", contrast_weights.sizes());
  TORCH_CHECK_TYPE(contrast_weights.scalar_type() == at::kLong, "contrast_weights must be int64, got ",
                   contrast_weights.scalar_type());
  TORCH_CHECK_VALUE(contrast_weights.device() == targets.device(), "targets, contrast_weights are on different devices: ",
                    targets.device(), ", ", contrast_weights.device());
  // c * (c - 1) * B * 2^16 < 2^63, without overflowing on the way (B < 2^31, c - 1 < c).
  const bool fits = c < 2 || static_cast<double>(c) * static_cast<double>(c - 1) * static_cast<double>(B) <
                                  static_cast<double>(int64_t(1) << 47);
  TORCH_CHECK_VALUE(fits, "mine_pairs_cooccur needs c * (c - 1) * B * 2^16 < 2^63, got c = ", c, ", B = ", B);
}

// Host-side range check of pair indices (CPU tensors; reading them there is free).
inline void check_index_values(const char* name, const at::Tensor& index, int64_t B) {
  const int64_t* p = index.data_ptr<int64_t>();  // caller passes a contiguous CPU tensor
  for (int64_t i = 0, P = index.numel(); i < P; ++i) {
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < B, name, " has values outside [0, B) = [0, ", B, "): ", p[i]);
  }
}

}  // namespace indeed
