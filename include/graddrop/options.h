#pragma once
// GradDropOptions: every setting of docs/options.md, in the C++ frontend's options style.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include "graddrop/compat.h"
#include "graddrop/enums.h"

#if GRADDROP_HAS_DISTRIBUTED
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

namespace graddrop {

// A user keep function f, applied to the whole purity tensor P (values in [0, 1]); it must
// return a tensor of P's shape with values in [0, 1].
using KeepCallable = std::function<at::Tensor(const at::Tensor& purity)>;

/// Options for `GradDropLayer`, `GradDropFunction` and `combine`.
///
/// Example:
/// ```
/// auto options = graddrop::GradDropOptions(3)
///                    .leak({0.0, 0.0, 1.0})
///                    .keep_function(graddrop::KeepFunction::kSigmoid)
///                    .scale(2.0);
/// ```
struct GradDropOptions {
  /* implicit */ GradDropOptions(int64_t num_tasks = 2);

  /// Number of task heads n (>= 1); `combine` expects exactly n gradients.
  TORCH_ARG(int64_t, num_tasks);
  /// Per-task leak l_i in [0, 1]: c_i = l_i + (1 - l_i) * M_i. Empty means all zero.
  TORCH_ARG(std::vector<double>, leak) = {};
  /// The signal whose sign decides each task gradient's sign.
  TORCH_ARG(SignSource, sign_source) = SignSource::kActivationSign;
  /// Sum the signals over dim 0 so purity, draw and masks are per feature.
  TORCH_ARG(bool, marginalize_batch) = true;
  /// The keep function f applied to the purity (see also `custom_keep_function`).
  TORCH_ARG(KeepFunction, keep_function) = KeepFunction::kLinear;
  /// Slope of f at P = 0.5 (> 0); 1 makes `kLinear` the identity.
  TORCH_ARG(double, scale) = 1.0;
  /// The mask of a task whose signal is exactly zero.
  TORCH_ARG(ZeroSign, zero_sign) = ZeroSign::kDrop;
  /// Added to sum_i |G_i| in the purity's denominator (> 0).
  TORCH_ARG(double, epsilon) = 1e-7;
  /// Rescale the output to the L2 norm of the plain sum of the task gradients.
  TORCH_ARG(bool, keep_grad_norm) = false;
  /// Fix the Philox seed instead of drawing one from the generator: every call then draws the
  /// same U (with `offset`), identical on CPU and CUDA. For tests and cross-device checks; for
  /// reproducible training use `torch::manual_seed`.
  TORCH_ARG(optional<uint64_t>, seed) = nullopt;
  /// Philox offset used with an explicit `seed`.
  TORCH_ARG(uint64_t, offset) = 0;
  /// Record `GradDropStatistics` of each backward (kept fractions, mean purity, conflicts).
  TORCH_ARG(bool, record_statistics) = false;
#if GRADDROP_HAS_DISTRIBUTED
  /// Data-parallel training: the c10d process group whose ranks share one purity. In
  /// marginalised mode every rank then computes P, the draw and the masks of the global batch
  /// (one all-reduce of the [num_tasks, features] column sums per call); every rank of the group
  /// must run the backward together. Null (the default): each process on its own. Not in
  /// builds against LibTorch without c10d's group registry (GRADDROP_HAS_DISTRIBUTED is 0).
  TORCH_ARG(c10::intrusive_ptr<c10d::ProcessGroup>, process_group) = {};
#endif

 public:  // TORCH_ARG leaves the access at private
  /// The user keep function; setting it also sets `keep_function(KeepFunction::kCustom)`.
  GradDropOptions& custom_keep_function(KeepCallable function);
  const KeepCallable& custom_keep_function() const { return custom_keep_function_; }

  /// The leak of task `task` (0 when `leak` is empty).
  double leak_of(int64_t task) const;

  /// Throws c10::Error naming the first invalid setting.
  void validate() const;

 private:
  KeepCallable custom_keep_function_;
};

/// Names used by the dispatcher schema and by `pretty_print`.
std::string to_string(SignSource source);
std::string to_string(KeepFunction function);
std::string to_string(ZeroSign zero_sign);
SignSource sign_source_from_string(const std::string& name);
KeepFunction keep_function_from_string(const std::string& name);
ZeroSign zero_sign_from_string(const std::string& name);

}  // namespace graddrop
