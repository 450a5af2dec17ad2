#pragma once
// combine: the pure function of docs/design.md. Given the per-task gradients g_i at an activation
// A, returns GradDrop's combined gradient sum_i c_i * g_i.
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "graddrop/compat.h"
#include "graddrop/options.h"
#include "graddrop/statistics.h"

namespace graddrop {

/// Combines `grads` (one per task, `options.num_tasks()` of them; undefined entries count as
/// zero) at `activation`. The draw comes from `generator` (default: the default generator of
/// the activation's device) unless `options.seed()` is set or `uniform` (U, of the purity's
/// shape, values in [0, 1)) is given. When `statistics` is non-null it receives what the call
/// did. The inputs are never modified.
at::Tensor combine(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                   const GradDropOptions& options = GradDropOptions(),
                   optional<at::Generator> generator = nullopt,
                   const optional<at::Tensor>& uniform = nullopt,
                   GradDropStatistics* statistics = nullptr);

/// As `combine`, but writes the result into `out` (ATen's `*_out` convention: the operator's
/// `combine.out` overload) and returns it. `out` must have the activation's shape, dtype and
/// device and be contiguous; it may be one of `grads` (every kernel reads an element of each
/// input before it writes that element of the output). GradDropFunction's backward uses it to
/// hand over a task gradient that nothing else holds: no fresh output, no page faults.
at::Tensor& combine_out(at::Tensor& out, const std::vector<at::Tensor>& grads,
                        const at::Tensor& activation,
                        const GradDropOptions& options = GradDropOptions(),
                        optional<at::Generator> generator = nullopt,
                        const optional<at::Tensor>& uniform = nullopt,
                        GradDropStatistics* statistics = nullptr);

/// The purity tensor P (op-math dtype: float32, or float64 for double
/// activations), of shape `activation.sizes()[1:]` when marginalised, else `activation.sizes()`.
at::Tensor purity(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                  const GradDropOptions& options = GradDropOptions());

/// The shape of P (and of an explicit U) for `activation` under `options`.
std::vector<int64_t> purity_shape(const at::Tensor& activation, const GradDropOptions& options);

}  // namespace graddrop
