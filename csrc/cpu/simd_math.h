// exp, log, log1p and pow for float as branch-free polynomials (Cephes expf/logf, a few ulp)
// that `omp simd` loops vectorise; libm calls stop vectorisation, and the loss epilogues make
// a few per logit. double keeps libm (it is used for checks, not speed).
#pragma once
#include <c10/util/bit_cast.h>  // c10::bit_cast is C++20; torch < 2.10 builds extensions as C++17
#include <cmath>
#include <cstdint>
#include <limits>

namespace indeed::cpu {

// exp(x) for x <= 88 (larger x is the caller's to avoid); 0 below -87, where exp(x) would be
// a denormal; NaN gives NaN.
[[gnu::always_inline]] inline float simd_exp(float x_in) {
  const float x = x_in < -87.0f ? -87.0f : x_in;  // keeps 2^k below in the normal range
  // x = k ln2 + r, |r| <= ln2 / 2; adding 1.5 * 2^23 rounds k into the low mantissa bits.
  constexpr float round_shift = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + round_shift;
  const float k = shifted - round_shift;
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float exp_r = p * r * r + r + 1.0f;
  const int32_t k_int = c10::bit_cast<int32_t>(shifted) - c10::bit_cast<int32_t>(round_shift);
  const float e = exp_r * c10::bit_cast<float>((k_int + 127) << 23);  // exp_r * 2^k
  return x_in < -87.0f ? 0.0f : e;
}

// log(w) for finite normal w > 0.
[[gnu::always_inline]] inline float simd_log_normal(float w) {
  // w = 2^e * mant, mant in [sqrt(1/2), sqrt(2)); log w = e ln2 + log1p(mant - 1).
  const int32_t bits = c10::bit_cast<int32_t>(w);
  int32_t e = (bits >> 23) - 126;
  float mant = c10::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [1/2, 1)
  const bool low = mant < 0.707106781186547524f;
  e -= low;
  mant = low ? mant + mant : mant;
  const float x = mant - 1.0f, z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  const float ef = static_cast<float>(e);
  return x + (p * x * z - 2.12194440e-4f * ef - 0.5f * z) + 0.693359375f * ef;
}

// log1p(u) for 0 <= u < 2^127, NaN gives NaN. log(1+u) * u / ((1+u) - 1) cancels the rounding
// of 1+u, so small u keep their relative accuracy.
[[gnu::always_inline]] inline float simd_log1p(float u) {
  const float w = 1.0f + u;
  const float d = w - 1.0f;
  const float result = d == 0.0f ? u : simd_log_normal(w) * (u / d);
  return u == u ? result : u;
}

// log(x) for finite x >= 0: 0 gives -inf, NaN gives NaN; denormals are scaled by 2^23 first.
[[gnu::always_inline]] inline float simd_log(float x) {
  const bool denormal = x < std::numeric_limits<float>::min();
  const float log_scaled = simd_log_normal(denormal ? x * 8388608.0f : x);
  const float result = denormal ? log_scaled - 15.9423851528787f : log_scaled;  // 23 ln 2
  return x == 0.0f ? -std::numeric_limits<float>::infinity() : (x == x ? result : x);
}

// b^e for b in [0, 1] and e >= 0, with pow's values at the edges: b^0 = 1 (NaN too), 0^e = 0.
[[gnu::always_inline]] inline float simd_pow(float b, float e) {
  const float result = b == 0.0f ? 0.0f : simd_exp(e * simd_log(b));  // e log b <= 0
  return e == 0.0f ? 1.0f : result;
}

inline double simd_exp(double x) { return std::exp(x); }
inline double simd_log1p(double u) { return std::log1p(u); }
inline double simd_log(double x) { return std::log(x); }
inline double simd_pow(double b, double e) { return std::pow(b, e); }

}  // namespace indeed::cpu
