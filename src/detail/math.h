#pragma once
// The math of GradDrop (docs/design.md, "What GradDrop computes"), written once and shared by the CPU and CUDA kernels.
// All functions take op-math values (float for float/half/bfloat16, double for double).
//
// Keep this file free of anything a compiler may contract or reorder differently on the two
// devices: the kernels sum over tasks in task order and call these functions per element.
#include <math.h>
#include <string.h>

#include <cstdint>

#include "detail/host_device.h"
#include "graddrop/enums.h"

namespace graddrop {

namespace detail {

// ---- Canonical batch sums ------------------------------------------------------------------
// The per-feature batch sums of marginalised mode decide P and so the masks: every device adds
// the rows in this one order, so the CPU and every GPU get the same bits whatever their thread
// count, launch shape or SM count.
//   - The rows are cut into chunks of kRowChunk rows (the last one may be shorter).
//   - Inside a chunk, row lane l (0..kRowLanes-1) adds its rows chunk_first + l, + l + 8, ...
//     one after another, starting from 0.
//   - The chunk's sum is the row lanes combined by the fixed tree sum_of_row_lanes.
//   - The batch sum adds the chunk sums in chunk order, starting from 0.
// Chunks let a GPU split a long batch across blocks at fixed boundaries.
constexpr int kRowLanes = 8;
constexpr int64_t kRowChunk = 512;

template <typename T>
GRADDROP_HOST_DEVICE T sum_of_row_lanes(const T* lanes, int64_t stride) {
  return ((lanes[0] + lanes[stride]) + (lanes[2 * stride] + lanes[3 * stride])) +
         ((lanes[4 * stride] + lanes[5 * stride]) + (lanes[6 * stride] + lanes[7 * stride]));
}

// ---- Per element of P ----------------------------------------------------------------------

template <typename T>
GRADDROP_HOST_DEVICE T not_a_number() {
  return static_cast<T>(NAN);
}

// exp in the op-math type, computed the same way on every device: libm's expf and CUDA's expf
// may differ in the last bit, which would let the sigmoid keep function decide a mask
// differently on the CPU and a GPU. Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, a
// Taylor polynomial in r (Horner), and 2^k applied in two exact steps; only +, -, * and exact
// operations, so with contraction off both devices round identically. Within a few ulp of the
// true value; results below the smallest normal number are flushed to 0.
template <typename T>
struct ExponentialConstants;
template <>
struct ExponentialConstants<float> {
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2High = 0.693145751953125f;  // 16 significant bits: k * it is exact
  static constexpr float kLn2Low = 1.42860682030941723212e-6f;
  static constexpr float kOverflow = 88.72f;   // exp above this is inf in float
  static constexpr float kUnderflow = -87.0f;  // exp below this is flushed to 0
  static constexpr int kDegree = 8;
};
template <>
struct ExponentialConstants<double> {
  static constexpr double kLog2e = 1.44269504088896338700e+00;
  static constexpr double kLn2High = 6.93147180369123816490e-01;  // fdlibm's split of ln 2
  static constexpr double kLn2Low = 1.90821492927058770002e-10;
  static constexpr double kOverflow = 709.78;
  static constexpr double kUnderflow = -708.0;
  static constexpr int kDegree = 14;
};

// 2^k for |k| <= 127 (float) or 1023 (double), built from the exponent bits.
GRADDROP_HOST_DEVICE float power_of_two(float, int k) {
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}
GRADDROP_HOST_DEVICE double power_of_two(double, int k) {
  const uint64_t bits = static_cast<uint64_t>(k + 1023) << 52;
  double value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

template <typename T>
GRADDROP_HOST_DEVICE T exponential(T x) {
  using C = ExponentialConstants<T>;
  if (x != x) return x;
  if (x > C::kOverflow) return static_cast<T>(INFINITY);
  if (x < C::kUnderflow) return T(0);
  const int k = static_cast<int>(floor(x * C::kLog2e + T(0.5)));
  const T r = (x - static_cast<T>(k) * C::kLn2High) - static_cast<T>(k) * C::kLn2Low;
  // Horner from the highest term: 1 + r (1 + r/2 (1 + r/3 (...))).
  T polynomial = T(1);
  for (int degree = C::kDegree; degree >= 1; --degree) {
    polynomial = T(1) + (r / static_cast<T>(degree)) * polynomial;
  }
  const int half = k / 2;
  return (polynomial * power_of_two(T(0), half)) * power_of_two(T(0), k - half);
}

template <typename T>
GRADDROP_HOST_DEVICE T sign_signal(T activation, SignSource source) {
  switch (source) {
    case SignSource::kActivationSign:
      return static_cast<T>((activation > T(0)) - (activation < T(0)));
    case SignSource::kActivationValue:
      return activation;
    default:
      return T(1);
  }
}

// P = 0.5 * (1 + sum_i G_i / (sum_i |G_i| + epsilon)); 0.5 where every G_i is zero.
template <typename T>
GRADDROP_HOST_DEVICE T purity(T signed_sum, T absolute_sum, T epsilon) {
  return T(0.5) * (T(1) + signed_sum / (absolute_sum + epsilon));
}

// f(P) for the built-in keep functions (kCustom never reaches the kernels). The sigmoid scales
// the centred purity first, so that a huge scale gives +-inf (a sure keep or drop), never
// inf * 0.
template <typename T>
GRADDROP_HOST_DEVICE T keep_probability(T purity_value, KeepFunction function, T scale) {
  const T centred = purity_value - T(0.5);
  if (function == KeepFunction::kSigmoid) {
    return T(1) / (T(1) + exponential(T(-4) * (scale * centred)));
  }
  return T(0.5) + scale * centred;
}

// Explicit f(P) or U (the custom keep-function path, tests). A GPU cannot check their values
// before the kernel without a device synchronisation, so the kernels make f(P) NaN where they
// are unusable, and a NaN coefficient shows the mistake in the output:
//   checked_keep: NaN where P is NaN (a NaN or Inf gradient: the affected outputs must come out
//                 non-finite whatever f made of P) or the given f(P) lies outside [0, 1];
//   keep_for_uniform: NaN where the given U lies outside [0, 1).
template <typename T>
GRADDROP_HOST_DEVICE T checked_keep(T purity_value, T keep) {
  const bool valid = (purity_value == purity_value) & (keep >= T(0)) & (keep <= T(1));
  return valid ? keep : not_a_number<T>();
}

template <typename T>
GRADDROP_HOST_DEVICE T keep_for_uniform(T keep, T uniform) {
  return (uniform >= T(0)) & (uniform < T(1)) ? keep : not_a_number<T>();
}

// M_i = [f(P) > U][G_i > 0] + [f(P) < U][G_i < 0], and the zero policy where G_i == 0. A NaN
// f(P) (a NaN purity, or an unusable explicit value) keeps nothing: its coefficient is NaN, and
// the statistics must not count it as kept. Written with and/or of comparisons (no branches),
// which every compiler vectorises.
template <typename T>
GRADDROP_HOST_DEVICE bool sign_mask(T signal, T keep, T uniform, ZeroSign zero_sign) {
  const bool positive = signal > T(0);
  const bool negative = signal < T(0);
  return (positive & (keep > uniform)) | (negative & (keep < uniform)) |
         (!(positive | negative) & (zero_sign == ZeroSign::kKeep) & (keep == keep));
}

// c_i = l_i + (1 - l_i) * M_i. A NaN keep probability (a NaN or Inf gradient made P NaN, or an
// explicit value was out of range) gives a NaN coefficient, so every output element that
// depended on that purity comes out non-finite instead of silently finite.
template <typename T>
GRADDROP_HOST_DEVICE T task_coefficient(T signal, T keep, T uniform, T leak, ZeroSign zero_sign) {
  const T mask = sign_mask(signal, keep, uniform, zero_sign) ? T(1) : T(0);
  const T coefficient = leak + (T(1) - leak) * mask;
  return keep != keep ? keep : coefficient;
}

}  // namespace detail
}  // namespace graddrop
