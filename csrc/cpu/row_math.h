// Per-row math of the identical map m = normalise(fa * fb) (docs/SPEC.md), shared by the
// decompose and six_head_bce kernels. One row is n entries of fa and fb read as T (the
// storage dtype) and computed in acc_t (float, or double for double inputs).
//
// Forward: row_norm (one reduction pass) then forward_row (one pass over the outputs).
// Backward: backward_row reduces dm against m (the sums and tie counts dp needs), then
// makes one pass over the outputs with dp_j. The loops are `omp simd`: the callers'
// lambdas inline into them, so each pass vectorises with its op-specific loads and stores.
// Always inlined, so that they take the instruction set of the caller (simd_clones.h).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "checks.h"

namespace indeed::cpu {

// How one row is normalised: m_j = (p_j - shift) / denom.
template <typename acc_t>
struct RowNorm {
  acc_t shift;   // min p for minmax, 0 for l2
  acc_t denom;   // the range (minmax) or the norm (l2), or eps when clamped
  acc_t lo, hi;  // min and max of p (minmax; NaN for l2, so that no entry is an extreme)
  acc_t raw;     // the range or norm before the clamp
  bool clamped;  // raw <= eps (or NaN): denom is the constant eps

  acc_t map(acc_t p) const { return (p - shift) / denom; }
};

// The reductions of one row: min/max (NaN-propagating like torch.amin/amax) or the 2-norm.
template <typename acc_t, typename T>
[[gnu::always_inline]] inline RowNorm<acc_t> row_norm(const T* fa, const T* fb, int64_t n, Norm norm, acc_t eps) {
  constexpr acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  RowNorm<acc_t> r;
  acc_t& raw = r.raw;
  if (norm == Norm::L2) {
    acc_t sum_sq = 0;
#pragma omp simd reduction(+ : sum_sq)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t p = static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j]);
      sum_sq += p * p;
    }
    raw = std::sqrt(sum_sq);
    r.shift = 0;
    r.lo = r.hi = nan;
  } else {
    acc_t lo = std::numeric_limits<acc_t>::infinity(), hi = -lo;
    int any_nan = 0;  // min/max reductions drop NaN; it is tracked on the side
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : any_nan)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t p = static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j]);
      lo = p < lo ? p : lo;
      hi = p > hi ? p : hi;
      any_nan |= p != p;
    }
    if (any_nan) lo = hi = nan;
    raw = hi - lo;
    r.shift = lo;
    r.lo = lo;
    r.hi = hi;
  }
  r.clamped = !(raw > eps);  // "raw > eps ? raw : eps", so NaN clamps too, as in reference.py
  r.denom = r.clamped ? eps : raw;
  return r;
}

// out(j, m_j) for every entry of the row.
template <typename acc_t, typename T, typename Out>
[[gnu::always_inline]] inline void forward_row(const RowNorm<acc_t> rn, const T* fa, const T* fb, int64_t n, Out out) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    out(j, rn.map(static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j])));
  }
}

// dp_j = (dm_j - m_j * m_coef) / denom  +  lo_share where p_j is the min  +  hi_share where
// p_j is the max. l2: m_coef = dm.m, the norm's term (none when the norm is clamped).
// minmax: no m_coef; the extremes' gradients g_min, g_max are split evenly among ties, as
// torch.amin/amax do. Where the reference multiplies a non-finite value by zero (a NaN norm
// in the clamped branch; a NaN or Inf extreme gradient times the 0/1 tie mask), its whole
// row's gradient is NaN: m_coef is then 0 * that value, so the same happens here.
template <typename acc_t>
struct MapGrad {
  acc_t m_coef, denom, lo, hi, lo_share, hi_share;

  acc_t dp(acc_t p, acc_t m, acc_t dm) const {
    return (dm - m * m_coef) / denom + (p == lo ? lo_share : acc_t(0)) + (p == hi ? hi_share : acc_t(0));
  }
};

template <typename acc_t, typename T, typename Dm>
[[gnu::always_inline]] inline MapGrad<acc_t> map_grad(const RowNorm<acc_t> rn, const T* fa, const T* fb, int64_t n,
                                                      Norm norm, Dm dm) {
  MapGrad<acc_t> g{0, rn.denom, rn.lo, rn.hi, 0, 0};
  acc_t sum_dm = 0, sum_dm_m = 0;
  if (norm == Norm::L2) {
    if (rn.clamped) {  // the clamped norm is a constant: dp = dm / eps
      g.m_coef = rn.raw * 0;
      return g;
    }
#pragma omp simd reduction(+ : sum_dm_m)
    for (int64_t j = 0; j < n; ++j) {
      sum_dm_m += dm(j) * rn.map(static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j]));
    }
    g.m_coef = sum_dm_m;
    return g;
  }
  int64_t n_lo = 0, n_hi = 0;
#pragma omp simd reduction(+ : sum_dm, sum_dm_m, n_lo, n_hi)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j]);
    const acc_t dm_j = dm(j);
    sum_dm += dm_j;
    sum_dm_m += dm_j * rn.map(p);
    n_lo += p == rn.lo;
    n_hi += p == rn.hi;
  }
  // With r = max - min > eps: g_min = sum dm (m - 1) / r, g_max = -sum dm m / r. Clamped,
  // m = (p - min) / eps: g_min = -sum dm / eps, g_max = 0. (n_lo = 0 only for NaN rows and
  // n = 0, where no entry compares equal to the extremes and the shares are unused.)
  const acc_t g_min = rn.clamped ? -sum_dm / rn.denom : (sum_dm_m - sum_dm) / rn.denom;
  const acc_t g_max = rn.clamped ? acc_t(0) : -sum_dm_m / rn.denom;
  g.lo_share = n_lo ? g_min / static_cast<acc_t>(n_lo) : acc_t(0);
  g.hi_share = n_hi ? g_max / static_cast<acc_t>(n_hi) : acc_t(0);
  g.m_coef = (g.lo_share + g.hi_share) * 0;
  return g;
}

// Backward of one row through m: dm(j) gives dL/dm_j; out(j, m_j, dp_j) for every entry,
// where dp is dL/dp (so dL/dfa_j gets dp_j * fb_j and dL/dfb_j gets dp_j * fa_j).
template <typename acc_t, typename T, typename Dm, typename Out>
[[gnu::always_inline]] inline void backward_row(const RowNorm<acc_t> rn, const T* fa, const T* fb, int64_t n,
                                                Norm norm, Dm dm, Out out) {
  const MapGrad<acc_t> grad = map_grad(rn, fa, fb, n, norm, dm);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = static_cast<acc_t>(fa[j]) * static_cast<acc_t>(fb[j]);
    const acc_t m = rn.map(p);
    out(j, m, grad.dp(p, m, dm(j)));
  }
}

}  // namespace indeed::cpu
