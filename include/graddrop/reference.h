#pragma once
// A composed-ATen float64 implementation of GradDrop (docs/design.md, "What GradDrop computes")
// with an explicit U: one ATen operation at a time, the way Python libraries write GradDrop. Written independently of the kernels;
// tests compare the kernels against it and benchmarks time it.
#include <vector>

#include <ATen/core/Tensor.h>

#include "graddrop/options.h"

namespace graddrop {
namespace reference {

struct ReferenceResult {
  at::Tensor output;            // float64, the activation's shape
  at::Tensor purity;            // float64, P
  at::Tensor keep_probability;  // float64, f(P)
  std::vector<at::Tensor> signals;  // float64, G_i (P's shape)
  std::vector<at::Tensor> masks;    // bool, M_i (P's shape)
};

/// GradDrop in float64 with the given U (P's shape). Undefined grads count as zero.
ReferenceResult combine(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                        const GradDropOptions& options, const at::Tensor& uniform);

/// The same formula in `dtype` (e.g. float32), for benchmarks of the composed-ATen approach.
at::Tensor combine_in(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                      const GradDropOptions& options, const at::Tensor& uniform,
                      at::ScalarType dtype);

}  // namespace reference
}  // namespace graddrop
