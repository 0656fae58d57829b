// CUDA kernels of _six_head_loss_forward and _six_head_loss_backward (docs/SPEC.md, "Structure
// the kernels use"). The base loss (BCE or ASL, csrc/cuda/base_losses.cuh) and present_negatives
// ("mean" weights the classes of the decomposed heads) are template parameters of the loss and
// dlogits kernels (passes 4 and 5). GEMMs go through ATen (cuBLAS; torch's TF32 settings apply);
// half inputs multiply in their dtype with fp32 accumulation and fp32 output (mm.dtype) where the
// product feeds a sum. Everything else is fused into the passes below.
//
// Bytes moved, for B feature rows, P pairs, n features, c classes, s bytes per input element,
// a per accumulation element (terms of order c * (B + P) are left out of the totals):
// forward
//   1. GEMM L = F W^T + b                  reads B n s, writes B c a
//   2. pair rows (gather fa = F[index_a], fb = F[index_b]; m; ia = m fa, ib = m fb)
//                                          reads 2 P n s, writes 2 P n s as one (P, 2, n) matrix
//   3. GEMM [Lia; Lib] = [ia; ib] W^T + b  reads 2 P n s, writes 2 P c a (one GEMM of 2P rows)
//   4. loss (disparate logits L[a] - Lia + b, targets, base loss, per-head sums; a warp per pair)
//                                          reads 6 P c a, writes 6 P a ("mean": 2 P c a more, the
//                                          targets of the per-pair sums of the class weights)
//   total about (B + 4 P) n s.
// backward (nothing but the logits is saved, so m, ia, ib are recomputed in pass 8)
//   5. dlogits: e_h = g_h w_h dloss/dz(z_h, y_h) (w_h = 1 under "sum"); G[a] += e_oa + e_da,
//      G[b] += e_ob + e_db (atomicAdd), Gia = e_ia - e_da, Gib = e_ib - e_db, per-block partial sums of db
//                                          reads 6 P c a, writes 2 P c (s + a) ("mean": as pass 4)
//   6. GEMM [dIA; dIB] = [Gia; Gib] W       writes 2 P n s
//   7. GEMM dF = G W                       writes B n a (the accumulator of step 8)
//   8. pair rows backward (gather fa, fb; m and its row sums; dfa = dIA m + dp fb,
//      dfb = dIB m + dp fa added into dF[a], dF[b] with atomics; ia, ib written for step 9)
//                                          reads 4 P n s, writes 2 P n s, adds 2 P n into dF
//   9. GEMMs dW = G^T F + [Gia; Gib]^T [ia; ib]   reads (B + 2 P) n s
//  10. db = sum of the partials; dF cast to the input dtype (half inputs: B n (a + s))
//   total about (B + 10 P) n s + 3 B n a (the atomics' read-modify-write of dF counted once).
// The atomics (G in step 5, dF in step 8) make the backward's float sums depend on the order in
// which pairs land: not bitwise deterministic (torch.use_deterministic_algorithms raises).
// The bias gradient is deterministic (fixed blocks, then at::sum).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "checks.h"
#include "cuda/base_losses.cuh"
#include "cuda/pair_rows.cuh"

namespace indeed::gpu {
namespace {

constexpr int kHeads = 6;
constexpr int kLossBlockThreads = 256;  // a warp per pair
constexpr int kPairsPerChunk = 32;      // dlogits: pairs per block (one partial bias sum each)
constexpr int kMaxClassThreads = 256;

template <typename acc_t>
struct SixHeadInputs {
  const acc_t* logits;        // (B, c): F W^T + b
  const acc_t* ident_logits;  // (P, 2, c): [m fa; m fb] W^T + b
  const acc_t* targets;       // (B, c)
  const acc_t* bias;          // (c,) or nullptr
  const int64_t* index_a;
  const int64_t* index_b;
  int64_t P, B, c;

  __device__ __forceinline__ int64_t pair_row(const int64_t* index, int64_t pair) const {
    const int64_t r = index[pair];
    CUDA_KERNEL_ASSERT(r >= 0 && r < B && "pair index outside [0, B)");
    return r;
  }

  // Logits and targets of the six heads (orig_a, orig_b, ident_a, ident_b, disp_a, disp_b)
  // for class j of a pair with rows a, b.
  __device__ __forceinline__ void heads(int64_t pair, int64_t a, int64_t b, int64_t j, acc_t (&z)[kHeads],
                                        acc_t (&y)[kHeads]) const {
    const acc_t beta = bias != nullptr ? bias[j] : acc_t(0);
    const acc_t za = logits[a * c + j], zb = logits[b * c + j];
    const acc_t zia = ident_logits[(2 * pair) * c + j], zib = ident_logits[(2 * pair + 1) * c + j];
    z[0] = za, z[1] = zb, z[2] = zia, z[3] = zib;
    z[4] = za - zia + beta;  // (fa - m fa) W^T + b
    z[5] = zb - zib + beta;
    const acc_t ya = targets[a * c + j], yb = targets[b * c + j];
    y[0] = ya, y[1] = yb, y[2] = ya * yb, y[3] = ya * yb;
    y[4] = ya * (1 - yb), y[5] = yb * (1 - ya);
  }

  // present_negatives="mean" (reference.present_negative_weights): the pair's max(1, S) of the
  // heads ident_a, ident_b and disp (both disp heads), S the sum over classes of s = ya (1 - yb),
  // yb (1 - ya), ya yb. The warp's lanes stride over the classes; every lane gets the result.
  __device__ __forceinline__ Sums<acc_t, 3> present_divisors(int64_t a, int64_t b, int lane) const {
    Sums<acc_t, 3> s = {};
    for (int64_t j = lane; j < c; j += kWarp) {
      const acc_t ya = targets[a * c + j], yb = targets[b * c + j];
      s.v[0] += ya * (1 - yb);
      s.v[1] += yb * (1 - ya);
      s.v[2] += ya * yb;
    }
#pragma unroll
    for (int mask = kWarp / 2; mask > 0; mask /= 2) s = combine(s, shfl_xor(s, mask));
#pragma unroll
    for (int k = 0; k < 3; ++k) s.v[k] = s.v[k] < 1 ? acc_t(1) : s.v[k];  // NaN stays NaN, as in clamp_min
    return s;
  }
};

// The class weights w_h of one class (y from heads()): 1 - s + s / max(1, S) for the decomposed
// heads, whose s are y[4] (ident_a), y[5] (ident_b) and y[2] (disp_a, disp_b); 1 for the original
// heads, and for every head under "sum" (kMeanPresent false: the products by 1 fold away).
template <bool kMeanPresent, typename acc_t>
__device__ __forceinline__ void class_weights(const acc_t (&y)[kHeads], const Sums<acc_t, 3>& divisors,
                                              acc_t (&w)[kHeads]) {
#pragma unroll
  for (int h = 0; h < kHeads; ++h) w[h] = 1;
  if constexpr (kMeanPresent) {
    const acc_t s[3] = {y[4], y[5], y[2]};
#pragma unroll
    for (int k = 0; k < 3; ++k) w[2 + k] = 1 - s[k] + s[k] / divisors.v[k];
    w[5] = w[4];
  }
}

// loss[pair, h] = sum_j w_hj base_loss.value(z_hj, y_hj); a warp per pair, lanes over classes.
template <bool kMeanPresent, typename acc_t, typename Loss>
__global__ void six_head_loss_kernel(const SixHeadInputs<acc_t> in, const Loss base_loss, acc_t* __restrict__ loss) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  if (pair >= in.P) return;  // the whole warp leaves: no shuffle below misses a lane
  const int64_t a = in.pair_row(in.index_a, pair), b = in.pair_row(in.index_b, pair);
  Sums<acc_t, 3> divisors = {};
  if constexpr (kMeanPresent) divisors = in.present_divisors(a, b, lane);
  Sums<acc_t, kHeads> sum = {};
  for (int64_t j = lane; j < in.c; j += kWarp) {
    acc_t z[kHeads], y[kHeads], w[kHeads];
    in.heads(pair, a, b, j, z, y);
    class_weights<kMeanPresent>(y, divisors, w);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) sum.v[h] += w[h] * base_loss.value(z[h], y[h]);
  }
#pragma unroll
  for (int mask = kWarp / 2; mask > 0; mask /= 2) sum = combine(sum, shfl_xor(sum, mask));
  if (lane < kHeads) loss[pair * kHeads + lane] = sum.v[lane];
}

// The pairs [first, last) of the dlogits kernel's block.
struct PairChunk {
  int64_t first, last;
};

__device__ __forceinline__ PairChunk pair_chunk(int64_t P) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kPairsPerChunk;
  return {first, first + kPairsPerChunk < P ? first + kPairsPerChunk : P};
}

// divisors[i] = present_divisors of the block's chunk's pair first + i, a warp per pair. Every
// thread of the block must call it (it synchronises the block).
template <typename acc_t>
__device__ void store_chunk_divisors(const SixHeadInputs<acc_t>& in, Sums<acc_t, 3>* divisors) {
  const PairChunk chunk = pair_chunk(in.P);
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  for (int64_t pair = chunk.first + threadIdx.x / kWarp; pair < chunk.last; pair += blockDim.x / kWarp) {
    const int64_t a = in.pair_row(in.index_a, pair), b = in.pair_row(in.index_b, pair);
    const Sums<acc_t, 3> d = in.present_divisors(a, b, lane);
    if (lane == 0) divisors[pair - chunk.first] = d;
  }
  __syncthreads();
}

// Per pair and class: e_h = g_h w_h base_loss.grad(z_h, y_h). Threads own classes; a block walks
// kPairsPerChunk pairs and writes its partial bias gradient.
template <bool kMeanPresent, typename scalar_t, typename acc_t, typename Loss>
__global__ void six_head_dlogits_kernel(const SixHeadInputs<acc_t> in, const Loss base_loss, const acc_t* __restrict__ grad,
                                        acc_t* __restrict__ grad_logits, scalar_t* __restrict__ grad_ident,
                                        acc_t* __restrict__ bias_partial) {
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  // "mean": the divisors of the weights of the chunk's pairs, computed before any thread leaves.
  __shared__ Sums<acc_t, 3> chunk_divisors[kMeanPresent ? kPairsPerChunk : 1];
  if constexpr (kMeanPresent) store_chunk_divisors(in, chunk_divisors);
  if (j >= in.c) return;
  const PairChunk chunk = pair_chunk(in.P);
  acc_t bias_sum = 0;
  for (int64_t pair = chunk.first; pair < chunk.last; ++pair) {
    const int64_t a = in.pair_row(in.index_a, pair), b = in.pair_row(in.index_b, pair);
    acc_t z[kHeads], y[kHeads], w[kHeads], e[kHeads];
    in.heads(pair, a, b, j, z, y);
    Sums<acc_t, 3> divisors = {};
    if constexpr (kMeanPresent) divisors = chunk_divisors[pair - chunk.first];
    class_weights<kMeanPresent>(y, divisors, w);
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      e[h] = grad[pair * kHeads + h] * w[h] * base_loss.grad(z[h], y[h]);
      bias_sum += e[h];
    }
    // L[a] carries orig_a and, through z_da = L[a] - Lia + b, disp_a; Lia carries ident_a - disp_a.
    atomicAdd(grad_logits + a * in.c + j, e[0] + e[4]);
    atomicAdd(grad_logits + b * in.c + j, e[1] + e[5]);
    grad_ident[(2 * pair) * in.c + j] = scalar_t(e[2] - e[4]);
    grad_ident[(2 * pair + 1) * in.c + j] = scalar_t(e[3] - e[5]);
  }
  bias_partial[blockIdx.x * in.c + j] = bias_sum;
}

// x @ y summed in acc: half inputs give an fp32 product (cuBLAS accumulates in fp32 either way).
at::Tensor mm_acc(const at::Tensor& x, const at::Tensor& y, at::ScalarType acc) {
  return x.scalar_type() == acc ? at::mm(x, y) : at::mm(x, y, acc);
}

// x W^T + b in acc.
at::Tensor linear_acc(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::ScalarType acc) {
  if (x.scalar_type() == acc && bias.defined()) return at::addmm(bias, x, weight.t());
  at::Tensor out = mm_acc(x, weight.t(), acc);
  if (bias.defined()) out.add_(bias);
  return out;
}

at::Tensor defined_bias(const std::optional<at::Tensor>& bias) {
  return bias.has_value() && bias->defined() ? *bias : at::Tensor();
}

template <typename acc_t>
SixHeadInputs<acc_t> six_head_inputs(const at::Tensor& logits, const at::Tensor& ident_logits,
                                     const at::Tensor& targets, const at::Tensor& bias, const at::Tensor& index_a,
                                     const at::Tensor& index_b) {
  return {logits.data_ptr<acc_t>(), ident_logits.data_ptr<acc_t>(), targets.data_ptr<acc_t>(),
          bias.defined() ? bias.data_ptr<acc_t>() : nullptr, index_a.data_ptr<int64_t>(),
          index_b.data_ptr<int64_t>(), index_a.size(0), logits.size(0), logits.size(1)};
}

// Calls launch(base_loss, mean_present) with the functor of the base loss in params and
// mean_present = std::bool_constant<params.mean_present_negatives>{} (the kernels' template flag).
template <typename acc_t, typename Launch>
void with_loss_params(const LossParams& params, const Launch& launch) {
  const auto with_flag = [&](const auto base_loss) {
    if (params.mean_present_negatives) {
      launch(base_loss, std::true_type{});
    } else {
      launch(base_loss, std::false_type{});
    }
  };
  if (params.loss == BaseLoss::Bce) {
    with_flag(BceLoss<acc_t>{});
  } else {
    with_flag(AslLoss<acc_t>{static_cast<acc_t>(params.gamma_neg), static_cast<acc_t>(params.gamma_pos),
                             static_cast<acc_t>(params.clip), static_cast<acc_t>(params.eps_log), params.focal_grad});
  }
}

struct Prepared {
  at::Tensor features, index_a, index_b, targets, bias_acc;
  at::ScalarType acc;
  Norm norm;
  LossParams loss;
};

Prepared prepare(const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b,
                 c10::string_view norm, double eps, const LossParams& loss) {
  check_six_head(features, weight, bias, targets, index_a, index_b);
  Prepared p;
  p.loss = loss;
  p.norm = parse_norm(norm);
  check_eps(eps);
  p.acc = accumulation_type(features.scalar_type());
  p.features = with_unit_column_stride(features);
  p.index_a = index_a.contiguous();
  p.index_b = index_b.contiguous();
  p.targets = targets.to(p.acc).contiguous();
  const at::Tensor b = defined_bias(bias);
  p.bias_acc = b.defined() ? b.to(p.acc).contiguous() : b;
  return p;
}

// The (P, 2, n) matrix [ia; ib] of each pair, rows gathered from F.
template <typename scalar_t>
PairRowsArgs<scalar_t> ident_rows_args(const Prepared& p, at::Tensor& ident, double eps) {
  const at::Tensor& F = p.features;
  const int64_t B = F.size(0), n = F.size(1);
  PairRowsArgs<scalar_t> args;
  args.fa = rows_of<const scalar_t>(F.data_ptr<scalar_t>(), F.stride(0), p.index_a.data_ptr<int64_t>(), B);
  args.fb = rows_of<const scalar_t>(F.data_ptr<scalar_t>(), F.stride(0), p.index_b.data_ptr<int64_t>(), B);
  args.out[0] = rows_of(ident.data_ptr<scalar_t>(), 2 * n);
  args.out[1] = rows_of(ident.data_ptr<scalar_t>() + n, 2 * n);
  args.rows = p.index_a.size(0);
  args.n = n;
  args.norm = p.norm;
  args.eps = static_cast<typename PairRowsArgs<scalar_t>::acc_t>(eps);
  return args;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> six_head_loss_forward_cuda(
    const at::Tensor& features, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& targets, const at::Tensor& index_a, const at::Tensor& index_b, c10::string_view norm,
    double eps, c10::string_view loss_name, double gamma_neg, double gamma_pos, double clip, double eps_log,
    bool focal_grad, c10::string_view present_negatives) {
  const c10::cuda::CUDAGuard device_guard(features.device());
  const LossParams params = parse_loss(loss_name, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives);
  const Prepared p = prepare(features, weight, bias, targets, index_a, index_b, norm, eps, params);
  const at::Tensor& F = p.features;
  const int64_t P = index_a.size(0), n = F.size(1), c = weight.size(0);
  const at::Tensor b = defined_bias(bias);

  const at::Tensor logits = linear_acc(F, weight, b, p.acc);  // pass 1
  at::Tensor ident = at::empty({P, 2, n}, F.options());
  at::Tensor loss = at::empty({P, kHeads}, F.options().dtype(p.acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, F.scalar_type(), "indeed_six_head_loss_forward", [&] {
    launch_pair_rows<PairMode::Ident, false>(ident_rows_args<scalar_t>(p, ident, eps));  // pass 2
  });
  const at::Tensor ident_logits = linear_acc(ident.view({2 * P, n}), weight, b, p.acc).view({P, 2, c});  // pass 3
  if (P > 0) {  // pass 4
    AT_DISPATCH_FLOATING_TYPES(p.acc, "indeed_six_head_loss", [&] {
      const auto in = six_head_inputs<scalar_t>(logits, ident_logits, p.targets, p.bias_acc, p.index_a, p.index_b);
      const int64_t blocks = (P + kLossBlockThreads / kWarp - 1) / (kLossBlockThreads / kWarp);
      TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "indeed: too many pairs: ", P);
      with_loss_params<scalar_t>(p.loss, [&](const auto base_loss, const auto mean_present) {
        constexpr bool kMeanPresent = decltype(mean_present)::value;
        const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
        six_head_loss_kernel<kMeanPresent><<<static_cast<unsigned>(blocks), kLossBlockThreads, 0, stream>>>(
            in, base_loss, loss.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {loss, logits, ident_logits};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> six_head_loss_backward_cuda(
    const at::Tensor& grad, const at::Tensor& features, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& targets, const at::Tensor& index_a,
    const at::Tensor& index_b, const at::Tensor& logits_in, const at::Tensor& ident_logits_in,
    c10::string_view norm, double eps, c10::string_view loss_name, double gamma_neg, double gamma_pos, double clip,
    double eps_log, bool focal_grad, c10::string_view present_negatives) {
  const c10::cuda::CUDAGuard device_guard(features.device());
  const LossParams params = parse_loss(loss_name, gamma_neg, gamma_pos, clip, eps_log, focal_grad, present_negatives);
  const Prepared p = prepare(features, weight, bias, targets, index_a, index_b, norm, eps, params);
  const at::Tensor& F = p.features;
  const int64_t B = F.size(0), n = F.size(1), c = weight.size(0), P = index_a.size(0);
  TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == P && grad.size(1) == kHeads, "grad must have shape (P, 6) = (",
                    P, ", 6), got ", grad.sizes());
  TORCH_CHECK_VALUE(logits_in.dim() == 2 && logits_in.size(0) == B && logits_in.size(1) == c,
                    "logits must have shape (B, c) = (", B, ", ", c, "), got ", logits_in.sizes());
  TORCH_CHECK_VALUE(ident_logits_in.dim() == 3 && ident_logits_in.size(0) == P && ident_logits_in.size(1) == 2 &&
                        ident_logits_in.size(2) == c,
                    "ident_logits must have shape (P, 2, c) = (", P, ", 2, ", c, "), got ", ident_logits_in.sizes());
  const bool same_device = grad.device() == F.device() && logits_in.device() == F.device() &&
                           ident_logits_in.device() == F.device();
  TORCH_CHECK_VALUE(same_device, "grad, logits, ident_logits must be on the device of features, ", F.device());
  if (P > 0) at::globalContext().alertNotDeterministic("indeed::_six_head_loss_backward (CUDA atomics)");

  const at::Tensor g = grad.to(p.acc).contiguous();
  const at::Tensor logits = logits_in.to(p.acc).contiguous();
  const at::Tensor ident_logits = ident_logits_in.to(p.acc).contiguous();
  const at::ScalarType gemm = F.scalar_type();
  at::Tensor grad_logits = at::zeros({B, c}, F.options().dtype(p.acc));
  at::Tensor grad_ident = at::empty({P, 2, c}, F.options());
  const int64_t chunks = (P + kPairsPerChunk - 1) / kPairsPerChunk;
  at::Tensor bias_partial = at::empty({chunks, c}, F.options().dtype(p.acc));
  if (P > 0 && c > 0) {  // pass 5
    const int threads = static_cast<int>(std::min<int64_t>(kMaxClassThreads, (c + kWarp - 1) / kWarp * kWarp));
    const int64_t class_blocks = (c + threads - 1) / threads;
    TORCH_CHECK(chunks <= std::numeric_limits<int32_t>::max() && class_blocks <= 65535,
                "indeed: too many pairs or classes for one launch: P=", P, ", c=", c);
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(class_blocks));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gemm, "indeed_six_head_dlogits", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto in = six_head_inputs<acc_t>(logits, ident_logits, p.targets, p.bias_acc, p.index_a, p.index_b);
      with_loss_params<acc_t>(p.loss, [&](const auto base_loss, const auto mean_present) {
        constexpr bool kMeanPresent = decltype(mean_present)::value;
        six_head_dlogits_kernel<kMeanPresent, scalar_t><<<grid, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
            in, base_loss, g.data_ptr<acc_t>(), grad_logits.data_ptr<acc_t>(), grad_ident.data_ptr<scalar_t>(),
            bias_partial.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }

  const at::Tensor grad_ident_rows = grad_ident.view({2 * P, c});
  const at::Tensor grad_logits_gemm = grad_logits.to(gemm);
  const at::Tensor d_ident = at::mm(grad_ident_rows, weight);  // pass 6: (2P, n) = [dIA; dIB]
  at::Tensor grad_features = mm_acc(grad_logits_gemm, weight, p.acc);  // pass 7
  at::Tensor ident = at::empty({P, 2, n}, F.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gemm, "indeed_six_head_loss_backward", [&] {
    PairRowsArgs<scalar_t> args = ident_rows_args<scalar_t>(p, ident, eps);  // pass 8
    args.grad[0] = rows_of<const scalar_t>(d_ident.data_ptr<scalar_t>(), 2 * n);
    args.grad[1] = rows_of<const scalar_t>(d_ident.data_ptr<scalar_t>() + n, 2 * n);
    using acc_t = at::opmath_type<scalar_t>;
    args.scatter[0] = rows_of(grad_features.data_ptr<acc_t>(), n, p.index_a.data_ptr<int64_t>(), B);
    args.scatter[1] = rows_of(grad_features.data_ptr<acc_t>(), n, p.index_b.data_ptr<int64_t>(), B);
    launch_pair_rows<PairMode::Ident, true>(args);
  });
  // pass 9: dW with accumulation-dtype operands. dW sums over all pairs terms that cancel
  // (e_da enters G and Gia with opposite signs), so half-rounded G would show in the result
  // (seen on an H200: bf16 operands put one dW entry in 6144 outside the bf16 tolerance).
  at::Tensor grad_weight = at::mm(grad_logits.t(), F.to(p.acc));
  grad_weight.add_(at::mm(grad_ident_rows.t().to(p.acc), ident.view({2 * P, n}).to(p.acc)));
  const at::Tensor grad_bias = bias_partial.sum(0);  // pass 10

  return {in_layout_of(grad_features.to(features.scalar_type()), features),
          in_layout_of(grad_weight.to(weight.scalar_type()), weight), grad_bias.to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(indeed, CUDA, m) {
  m.impl("_six_head_loss_forward", &six_head_loss_forward_cuda);
  m.impl("_six_head_loss_backward", &six_head_loss_backward_cuda);
}

}  // namespace indeed::gpu
