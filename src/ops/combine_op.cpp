// The graddrop operators, written once: the schemas, and the one entry every device shares. The
// entry validates the arguments (validation.h), allocates the output, and runs the kernels the
// activation's device registered (combine_op.h); with a process group it runs the group
// protocol above the devices (src/distributed/group_combine.h). Registered under
// CompositeExplicitAutograd, so the CPU, CUDA, Meta (shape inference for meta and fake tensors,
// torch.compile's), and sparse dispatch keys all reach it; the Autograd key has its own kernel
// (combine_autograd.cpp).
#include "ops/combine_op.h"

#include <array>
#include <mutex>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "distributed/group_combine.h"
#include "ops/validation.h"
#include "ops/verify.h"

namespace graddrop {
namespace ops {
namespace {

constexpr size_t kDeviceTypes = static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES);

std::array<const CombineKernels*, kDeviceTypes>& kernel_table() {
  static std::array<const CombineKernels*, kDeviceTypes> table{};
  return table;
}

// Meta tensors (and the fake tensors of torch.compile, which reach this entry as meta tensors):
// the outputs' shapes and dtypes, as the kernels return them, from sizes that may be symbolic.
std::tuple<at::Tensor, at::Tensor> shapes_of(const CombineArguments& arguments,
                                             const at::Tensor& out) {
  auto output = out.defined() ? out
                              : at::empty_symint(arguments.activation.sym_sizes(),
                                                 arguments.activation.options());
  const int64_t statistics_size = arguments.statistics ? arguments.num_tasks() + 2 : 0;
  auto values = at::empty({statistics_size}, arguments.activation.options().dtype(at::kDouble));
  return {output, values};
}

// One validated call, into `out` when it is defined (combine.out) or a fresh output.
std::tuple<at::Tensor, at::Tensor> run_combine(CombineArguments arguments,
                                               const optional<at::Generator>& generator,
                                               const optional<c10::string_view>& group_name,
                                               const at::Tensor& out) {
  if (arguments.activation.is_meta()) return shapes_of(arguments, out);
  const auto& kernels = combine_kernels_for(arguments.activation.device().type());
  // A fresh output is left to the allocator's pages, faulted in by the kernel's own writes
  // (docs/performance.md discusses the cost and the allocator's part in it).
  const at::Tensor output = out.defined() ? out : at::empty_like(arguments.activation);
  if (group_name.has_value()) {
    const auto accumulators = distributed::combine_in_group(
        arguments, generator, std::string(*group_name), kernels, output);
    return {output, finish_combine(output, accumulators, arguments)};
  }
  if (verify_enabled() && arguments.activation.device().type() != c10::DeviceType::CPU &&
      first_call_of(arguments)) {
    return {output, verified_combine(arguments, generator, kernels, output)};
  }
  const auto accumulators = zero_accumulators(arguments);
  kernels.combine(arguments, generator, output, accumulators);
  return {output, finish_combine(output, accumulators, arguments)};
}

std::tuple<at::Tensor, at::Tensor> combine(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name) {
  return run_combine(
      validate_combine({activation, grads, leak, sign_source, marginalize_batch, keep_function,
                        scale, zero_sign, epsilon, keep_grad_norm, uniform, keep_probability,
                        seed, offset, statistics}),
      generator, group_name, at::Tensor());
}

std::tuple<at::Tensor, at::Tensor> combine_out(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name, at::Tensor& out) {
  auto arguments = validate_combine({activation, grads, leak, sign_source, marginalize_batch,
                                     keep_function, scale, zero_sign, epsilon, keep_grad_norm,
                                     uniform, keep_probability, seed, offset, statistics});
  check_out(out, arguments.activation);
  return run_combine(std::move(arguments), generator, group_name, out);
}

// The options' checks alone, for the Python layer's constructor (the same functions the
// operator and GradDropOptions::validate run).
void check_options(int64_t num_tasks, c10::ArrayRef<double> leak, c10::string_view sign_source,
                   c10::string_view keep_function, double scale, c10::string_view zero_sign,
                   double epsilon, optional<int64_t> seed, int64_t offset) {
  check_num_tasks(num_tasks);
  check_leak(leak, num_tasks);
  parse_sign_source(sign_source);
  parse_keep_function(keep_function);
  check_scale(scale);
  parse_zero_sign(zero_sign);
  check_epsilon(epsilon);
  check_offset(offset, seed.has_value());
}

void set_verify_mode(bool enabled) { set_verify(enabled); }
bool verify_mode() { return verify_enabled(); }

}  // namespace

bool register_combine_kernels(c10::DeviceType device, const CombineKernels& kernels) {
  kernel_table()[static_cast<size_t>(device)] = &kernels;
  return true;
}

const CombineKernels& combine_kernels_for(c10::DeviceType device) {
  const CombineKernels* kernels = kernel_table()[static_cast<size_t>(device)];
  TORCH_CHECK(kernels != nullptr, "graddrop: this build has no combine kernel for device type ",
              device);
  return *kernels;
}

at::Tensor zero_accumulators(const CombineArguments& arguments) {
  if (!arguments.needs_accumulators()) return at::Tensor();
  return at::zeros({accumulator_size(arguments.num_tasks())},
                   arguments.activation.options().dtype(at::kDouble));
}

at::Tensor finish_combine(const at::Tensor& output, const at::Tensor& accumulators,
                          const CombineArguments& arguments) {
  TORCH_INTERNAL_ASSERT(accumulators.defined() == arguments.needs_accumulators(),
                        "graddrop: a kernel returned accumulators that do not match the options");
  const int64_t n = arguments.num_tasks();
  if (arguments.keep_grad_norm && output.numel() > 0) {
    const auto plain_norm = accumulators[plain_square_slot(n)].sqrt();
    const auto output_norm = accumulators[output_square_slot(n)].sqrt();
    // The ratio is a float64 tensor of one element, not 0-d: a 0-d operand would be cast to the
    // output's dtype first (a ratio of 1e40 becomes inf in float32, and 0 * inf = NaN where
    // float64 gives 0). As a dimensioned operand it makes the product float64, rounded once to
    // the output's dtype, as the float64 reference computes it. (The output is contiguous; its
    // flat view also takes a 0-d output.)
    const auto ratio = (plain_norm / (output_norm + arguments.epsilon)).reshape({1});
    output.view({-1}).mul_(ratio);
  }
  // No statistics: an empty tensor (an undefined one would reach Python as None).
  if (!arguments.statistics) return at::empty({0}, output.options().dtype(at::kDouble));
  int64_t purity_elements = 1;
  for (auto size : arguments.purity_shape) purity_elements *= size;
  // The kernels skip undefined gradients; the mask of a zero gradient is the zero-sign rule at
  // every element of P.
  if (arguments.zero_sign == ZeroSign::kKeep) {
    for (int64_t task = 0; task < n; ++task) {
      if (!arguments.grads[static_cast<size_t>(task)].defined()) {
        accumulators[task].fill_(static_cast<double>(purity_elements));
      }
    }
  }
  const auto counts = accumulators.narrow(0, 0, n + 2);
  return purity_elements > 0 ? counts / static_cast<double>(purity_elements)
                             : at::zeros_like(counts);
}

}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY(graddrop, m) {
  m.def(
      "combine(Tensor activation, Tensor?[] grads, float[] leak=[], "
      "str sign_source='activation_sign', bool marginalize_batch=True, "
      "str keep_function='linear', float scale=1.0, str zero_sign='drop', float epsilon=1e-07, "
      "bool keep_grad_norm=False, Generator? generator=None, Tensor? uniform=None, "
      "Tensor? keep_probability=None, int? seed=None, int offset=0, bool statistics=False, "
      "str? group_name=None) -> (Tensor, Tensor)");
  // PyTorch's out= convention (native_functions.yaml's add.out): the output written into `out`,
  // which may be one of the task gradients (GradDropFunction's backward hands over a head
  // gradient that nothing else holds: no fresh allocation, no page faults).
  m.def(
      "combine.out(Tensor activation, Tensor?[] grads, float[] leak=[], "
      "str sign_source='activation_sign', bool marginalize_batch=True, "
      "str keep_function='linear', float scale=1.0, str zero_sign='drop', float epsilon=1e-07, "
      "bool keep_grad_norm=False, Generator? generator=None, Tensor? uniform=None, "
      "Tensor? keep_probability=None, int? seed=None, int offset=0, bool statistics=False, "
      "str? group_name=None, *, Tensor(a!) out) -> (Tensor(a!), Tensor)");
  m.def(
      "check_options(int num_tasks, float[] leak=[], str sign_source='activation_sign', "
      "str keep_function='linear', float scale=1.0, str zero_sign='drop', float epsilon=1e-07, "
      "int? seed=None, int offset=0) -> ()",
      &graddrop::ops::check_options);
  // Verify mode (ops/verify.h), for the Python package's graddrop.set_verify.
  m.def("set_verify(bool enabled) -> ()", &graddrop::ops::set_verify_mode);
  m.def("verify_enabled() -> bool", &graddrop::ops::verify_mode);
}

TORCH_LIBRARY_IMPL(graddrop, CompositeExplicitAutograd, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine));
  m.impl("combine.out", TORCH_FN(graddrop::ops::combine_out));
}
