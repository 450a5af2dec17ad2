#pragma once
// The option enums of GradDropOptions (docs/options.md), apart so that the kernels' math
// (src/detail/math.h) and the public API share one definition.
#include <cstdint>

namespace graddrop {

// Which signal decides a task gradient's sign: G_i = s(A) * g_i (docs/design.md, "The math").
enum class SignSource : int32_t {
  kActivationSign = 0,   // s(A) = sign(A), sign(0) = 0 (the paper's Algorithm 1)
  kActivationValue = 1,  // s(A) = A
  kNone = 2,             // s(A) = 1 (parameter-space use)
};

// The function f applied to the purity P before the draw.
enum class KeepFunction : int32_t {
  kLinear = 0,   // f(P) = 0.5 + scale * (P - 0.5)
  kSigmoid = 1,  // f(P) = sigmoid(4 * scale * (P - 0.5))
  kCustom = 2,   // a user callable applied to the whole P tensor
};

// The mask of a task whose signal G_i is exactly zero.
enum class ZeroSign : int32_t {
  kDrop = 0,  // mask 0 (the formula as written)
  kKeep = 1,  // mask 1 (the authors' Lingvo implementation)
};

}  // namespace graddrop
