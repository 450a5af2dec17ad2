// The C++ entry points: options in, dispatcher call out. Device routing is the dispatcher's.
#include "graddrop/combine.h"

#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "distributed/registry.h"
#include "ops/combine_op.h"
#include "ops/validation.h"

namespace graddrop {
namespace {

c10::List<optional<at::Tensor>> as_list(const std::vector<at::Tensor>& grads) {
  c10::List<optional<at::Tensor>> list;
  list.reserve(grads.size());
  for (const auto& grad : grads) {
    list.push_back(grad.defined() ? optional<at::Tensor>(grad) : optional<at::Tensor>());
  }
  return list;
}

void check_task_count(const std::vector<at::Tensor>& grads, const GradDropOptions& options) {
  options.validate();
  TORCH_CHECK_VALUE(static_cast<int64_t>(grads.size()) == options.num_tasks(),
                    "graddrop::combine: expected num_tasks (", options.num_tasks(),
                    ") gradients, got ", grads.size());
}

// The dispatcher picks the kernel from the devices of all tensor arguments, so a tensor on a
// device without a graddrop kernel (e.g. meta) would fail inside the dispatcher with a message
// naming no argument; the kernels' own device checks never run then. Check here first.
void check_devices(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                   const optional<at::Tensor>& uniform) {
  if (!activation.defined()) return;
  for (size_t task = 0; task < grads.size(); ++task) {
    TORCH_CHECK(!grads[task].defined() || grads[task].device() == activation.device(),
                "graddrop: grads[", task, "] is on device ", grads[task].device(),
                " but the activation is on ", activation.device());
  }
  TORCH_CHECK(!uniform.has_value() || !uniform->defined() ||
                  uniform->device() == activation.device(),
              "graddrop: uniform (U) is on device ", uniform->device(),
              " but the activation is on ", activation.device());
}

GradDropStatistics statistics_from(const at::Tensor& values, const std::vector<int64_t>& shape,
                                   int64_t num_tasks) {
  GradDropStatistics statistics;
  statistics.purity_elements = 1;
  for (auto size : shape) statistics.purity_elements *= size;
  const auto host = values.to(at::kCPU, at::kDouble).contiguous();
  const double* data = host.data_ptr<double>();
  statistics.kept_fraction.assign(data, data + num_tasks);
  statistics.mean_purity = data[num_tasks];
  statistics.conflict_fraction = data[num_tasks + 1];
  return statistics;
}

}  // namespace

std::vector<int64_t> purity_shape(const at::Tensor& activation, const GradDropOptions& options) {
  return ops::purity_shape_of(activation, options.marginalize_batch());
}

at::Tensor purity(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                  const GradDropOptions& options) {
  check_task_count(grads, options);
  check_devices(grads, activation, nullopt);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::purity", "")
                       .typed<ops::PuritySignature>();
  const auto source = to_string(options.sign_source());
  return op.call(activation, as_list(grads), source, options.marginalize_batch(),
                 options.epsilon());
}

namespace {

// The operator's arguments from the options (shared by combine and combine_out).
struct OperatorArguments {
  optional<at::Tensor> keep_probability;
  optional<int64_t> seed;
  std::string source, keep, zero;
  std::vector<double> leak;
  optional<std::string> group_name;

  OperatorArguments(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                    const GradDropOptions& options) {
    // The custom keep function sees the whole P tensor, so it runs between two operator calls.
    if (options.keep_function() == KeepFunction::kCustom) {
      const auto purity_values = purity(grads, activation, options);
      auto values = options.custom_keep_function()(purity_values);
      TORCH_CHECK(values.defined(),
                  "graddrop::combine: the custom keep function returned an undefined tensor; it "
                  "must return f(P), a tensor of P's shape ",
                  c10::IntArrayRef(purity_values.sizes()), " with values in [0, 1]");
      // A NaN purity (a NaN or Inf gradient) must reach the kernel as a NaN f(P), whatever the
      // user's f makes of it, so that the affected outputs come out non-finite.
      // A result of another shape, dtype or device is left for the operator's checks to refuse.
      if (values.sizes() == purity_values.sizes() && values.device() == purity_values.device() &&
          at::isFloatingType(values.scalar_type())) {
        values = values.masked_fill(at::isnan(purity_values),
                                    std::numeric_limits<double>::quiet_NaN());
      }
      keep_probability = values;
    }
    if (options.seed().has_value()) seed = static_cast<int64_t>(*options.seed());
    TORCH_CHECK(options.offset() <= static_cast<uint64_t>(INT64_MAX),
                "graddrop::combine: offset must fit in int64, got ", options.offset());
    source = to_string(options.sign_source());
    keep = to_string(options.keep_function());
    zero = to_string(options.zero_sign());
    leak = options.leak();
#if GRADDROP_HAS_DISTRIBUTED
    if (options.process_group()) {
      group_name = distributed::registered_group_name(options.process_group());
    }
#endif
  }

  optional<c10::string_view> group_view() const {
    if (!group_name.has_value()) return nullopt;
    return c10::string_view(*group_name);
  }
};

void read_statistics(const at::Tensor& values, const at::Tensor& activation,
                     const GradDropOptions& options, GradDropStatistics* statistics) {
  if (statistics == nullptr) return;
  TORCH_CHECK(!values.is_meta(),
              "graddrop::combine: meta tensors have no statistics to read; pass no statistics "
              "pointer");
  *statistics =
      statistics_from(values, purity_shape(activation, options), options.num_tasks());
}

}  // namespace

at::Tensor combine(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                   const GradDropOptions& options, optional<at::Generator> generator,
                   const optional<at::Tensor>& uniform, GradDropStatistics* statistics) {
  check_task_count(grads, options);
  check_devices(grads, activation, uniform);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<ops::CombineSignature>();
  const OperatorArguments a(grads, activation, options);
  auto result = op.call(activation, as_list(grads), a.leak, a.source, options.marginalize_batch(),
                        a.keep, options.scale(), a.zero, options.epsilon(),
                        options.keep_grad_norm(), std::move(generator), uniform,
                        a.keep_probability, a.seed, static_cast<int64_t>(options.offset()),
                        statistics != nullptr, a.group_view());
  read_statistics(std::get<1>(result), activation, options, statistics);
  return std::get<0>(result);
}

at::Tensor& combine_out(at::Tensor& out, const std::vector<at::Tensor>& grads,
                        const at::Tensor& activation, const GradDropOptions& options,
                        optional<at::Generator> generator, const optional<at::Tensor>& uniform,
                        GradDropStatistics* statistics) {
  check_task_count(grads, options);
  check_devices(grads, activation, uniform);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "out")
                       .typed<ops::CombineOutSignature>();
  const OperatorArguments a(grads, activation, options);
  const auto result = op.call(activation, as_list(grads), a.leak, a.source,
                              options.marginalize_batch(), a.keep, options.scale(), a.zero,
                              options.epsilon(), options.keep_grad_norm(), std::move(generator),
                              uniform, a.keep_probability, a.seed,
                              static_cast<int64_t>(options.offset()), statistics != nullptr,
                              a.group_view(), out);
  read_statistics(std::get<1>(result), activation, options, statistics);
  return out;
}

}  // namespace graddrop
