#pragma once
// The math of GradDrop (DESIGN.md §1), written once and shared by the CPU and CUDA kernels.
// All functions take op-math values (float for float/half/bfloat16, double for double).
//
// Keep this file free of anything a compiler may contract or reorder differently on the two
// devices: the kernels sum over tasks in task order and call these functions per element.
#include <math.h>
#include <cstdint>

#include "graddrop/detail/host_device.h"

namespace graddrop {

// Which signal decides a task gradient's sign (DESIGN.md §1 step 1).
enum class SignSource : int32_t {
  kActivationSign = 0,   // s(A) = sign(A), sign(0) = 0 (the paper's Algorithm 1)
  kActivationValue = 1,  // s(A) = A
  kNone = 2,             // s(A) = 1 (parameter-space use)
};

// The function f applied to the purity P before the draw (DESIGN.md §1 step 4).
enum class KeepFunction : int32_t {
  kLinear = 0,   // f(P) = 0.5 + scale * (P - 0.5)
  kSigmoid = 1,  // f(P) = sigmoid(4 * scale * (P - 0.5))
  kCustom = 2,   // a user callable applied to the whole P tensor
};

// The mask of a task whose signal G_i is exactly zero (DESIGN.md §1 step 6).
enum class ZeroSign : int32_t {
  kDrop = 0,  // mask 0 (the formula as written)
  kKeep = 1,  // mask 1 (the authors' Lingvo implementation)
};

namespace detail {

// exp in the op-math type: expf for float (never promoted to double on the host), exp for double.
GRADDROP_HOST_DEVICE float exponential(float x) { return ::expf(x); }
GRADDROP_HOST_DEVICE double exponential(double x) { return ::exp(x); }

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

// f(P) for the built-in keep functions (kCustom never reaches the kernels).
template <typename T>
GRADDROP_HOST_DEVICE T keep_probability(T purity_value, KeepFunction function, T scale) {
  const T centred = purity_value - T(0.5);
  if (function == KeepFunction::kSigmoid) {
    return T(1) / (T(1) + exponential(T(-4) * scale * centred));
  }
  return T(0.5) + scale * centred;
}

// M_i = [f(P) > U][G_i > 0] + [f(P) < U][G_i < 0], and the zero policy where G_i == 0.
template <typename T>
GRADDROP_HOST_DEVICE bool sign_mask(T signal, T keep, T uniform, ZeroSign zero_sign) {
  if (signal > T(0)) return keep > uniform;
  if (signal < T(0)) return keep < uniform;
  return zero_sign == ZeroSign::kKeep;
}

// c_i = l_i + (1 - l_i) * M_i. A NaN keep probability (a NaN or Inf gradient made P NaN) gives
// a NaN coefficient, so every output element that depended on that purity comes out non-finite
// instead of silently finite.
template <typename T>
GRADDROP_HOST_DEVICE T task_coefficient(T signal, T keep, T uniform, T leak, ZeroSign zero_sign) {
  if (keep != keep) return keep;
  const T mask = sign_mask(signal, keep, uniform, zero_sign) ? T(1) : T(0);
  return leak + (T(1) - leak) * mask;
}

// sign_mask and task_coefficient without branches, for the vectorised CPU kernels: the same
// value for every input (NaN included; tests/cpu/cpu_kernel_test.cpp checks it). Compilers turn
// the branches above into selects between boolean masks, which GCC cannot vectorise for
// AVX-512; this form needs only and/or of comparisons and one select of numbers.
template <typename T>
GRADDROP_HOST_DEVICE bool sign_mask_branch_free(T signal, T keep, T uniform, ZeroSign zero_sign) {
  const bool positive = signal > T(0);
  const bool negative = signal < T(0);
  return (positive & (keep > uniform)) | (negative & (keep < uniform)) |
         (!(positive | negative) & (zero_sign == ZeroSign::kKeep));
}

template <typename T>
GRADDROP_HOST_DEVICE T task_coefficient_branch_free(T signal, T keep, T uniform, T leak,
                                                    ZeroSign zero_sign) {
  const T mask = sign_mask_branch_free(signal, keep, uniform, zero_sign) ? T(1) : T(0);
  const T coefficient = leak + (T(1) - leak) * mask;
  return keep != keep ? keep : coefficient;
}

}  // namespace detail
}  // namespace graddrop
