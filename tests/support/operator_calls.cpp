#include "operator_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace testing {

at::Tensor call_combine_operator(const at::Tensor& activation, const std::vector<at::Tensor>& grads,
                                 bool marginalize, const optional<at::Tensor>& uniform,
                                 const optional<at::Tensor>& keep_probability) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<ops::CombineSignature>();
  c10::List<optional<at::Tensor>> list;
  for (const auto& grad : grads) list.push_back(optional<at::Tensor>(grad));
  const bool custom = keep_probability.has_value() && keep_probability->defined();
  return std::get<0>(op.call(activation, list, {}, "activation_sign", marginalize,
                             custom ? "custom" : "linear", 1.0, "drop", 1e-7, false, nullopt,
                             uniform, keep_probability, nullopt, 0, false, nullopt));
}

GradDropOptions GpuPathCase::options() const {
  return GradDropOptions(num_tasks).marginalize_batch(marginalize).keep_grad_norm(keep_grad_norm);
}

// Shapes chosen with the plans of cuda/launch_plan.cpp (the H100 and A100 tables agree on them,
// with the kernels' sm_90 register counts, cuda_plan::kernel_registers):
//   {64, 1000} per element; {8, 65536} x 2 fused cached in <= 48 KB; {64, 4096} x 2 fused cached
//   over 48 KB; {128, 131072} x 2 fused uncached (its gradients need over 113 KB of cache at
//   every strip width that could keep the device's registers busy, and 512 strips of 512 threads
//   fill what registers allow at 64 registers per thread as at 65 to 128); {65536, 64} x 10 and
//   {256, 4096} x 2 split.
std::vector<GpuPathCase> gpu_stream_cases() {
  return {
      {"per element", {64, 1000}, 3, false, false, false},
      {"per element odd", {33, 7}, 2, false, false, true},
      {"marginalised cached <= 48 KB", {8, 65536}, 2, true, true, true},
      {"marginalised cached > 48 KB", {64, 4096}, 2, true, false, true},
      {"marginalised uncached", {128, 131072}, 2, true, false, false},
      {"marginalised split", {65536, 64}, 10, true, false, false},
      {"marginalised split, keep_grad_norm", {256, 4096}, 2, true, true, true},
  };
}

// P has at least 64 elements in every case, so two draws differ but with a negligible chance.
std::vector<GpuPathCase> gpu_graph_generator_cases() {
  return {
      {"per element", {64, 1000}, 3, false, false, false},
      {"marginalised cached <= 48 KB, keep_grad_norm", {8, 65536}, 2, true, true, false},
      {"marginalised cached > 48 KB", {64, 4096}, 2, true, false, false},
      {"marginalised split, 11 tasks", {100000, 64}, 11, true, false, false},
  };
}

std::vector<GpuPathCase> gpu_graph_uniform_cases() {
  return {
      {"per element", {64, 1000}, 3, false, false, false},
      {"marginalised split", {256, 4096}, 2, true, false, false},
      {"marginalised uncached", {128, 131072}, 2, true, false, false},
      {"marginalised cached > 48 KB", {64, 4096}, 2, true, false, false},
  };
}

}  // namespace testing
}  // namespace graddrop
