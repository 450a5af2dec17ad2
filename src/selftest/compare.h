#pragma once
// The comparisons of the self-test and of verify mode: outputs bit for bit (NaN payloads
// included), statistics and keep_grad_norm outputs within their documented tolerance. Each
// returns a description of the first difference, or nothing when the tensors agree.
#include <string>

#include <ATen/core/Tensor.h>

#include "graddrop/compat.h"

namespace graddrop {
namespace selftest {

// Same dtype, shape and bytes; else "element 12 of [4, 5] (index [2, 2]): expected 0x3f800000
// (1), got 0x3f800001 (1.0000001)".
optional<std::string> first_bitwise_difference(const at::Tensor& expected,
                                               const at::Tensor& actual);

// |actual - expected| <= tolerance * (1 + |expected|) elementwise, NaN matching NaN.
optional<std::string> first_difference_beyond(const at::Tensor& expected,
                                              const at::Tensor& actual, double tolerance);

// The tolerance of values that depend on a device's summation order (statistics' mean purity,
// keep_grad_norm's norms and so its output) for values stored in `dtype`: a few roundings.
double order_tolerance(at::ScalarType dtype);

}  // namespace selftest
}  // namespace graddrop
