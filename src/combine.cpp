// The C++ entry points: options in, dispatcher call out. Device routing is the dispatcher's.
#include "graddrop/combine.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "ops/combine_op.h"

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
  TORCH_CHECK(static_cast<int64_t>(grads.size()) == options.num_tasks(),
              "graddrop::combine: expected num_tasks (", options.num_tasks(),
              ") gradients, got ", grads.size());
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
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::purity", "")
                       .typed<ops::PuritySignature>();
  const auto source = to_string(options.sign_source());
  return op.call(activation, as_list(grads), source, options.marginalize_batch(),
                 options.epsilon());
}

at::Tensor combine(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                   const GradDropOptions& options, optional<at::Generator> generator,
                   const optional<at::Tensor>& uniform, GradDropStatistics* statistics) {
  check_task_count(grads, options);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<ops::CombineSignature>();
  // The custom keep function sees the whole P tensor, so it runs between two operator calls.
  optional<at::Tensor> keep_probability;
  if (options.keep_function() == KeepFunction::kCustom) {
    keep_probability = options.custom_keep_function()(purity(grads, activation, options));
  }
  optional<int64_t> seed;
  if (options.seed().has_value()) seed = static_cast<int64_t>(*options.seed());
  TORCH_CHECK(options.offset() <= static_cast<uint64_t>(INT64_MAX),
              "graddrop::combine: offset must fit in int64, got ", options.offset());
  const auto source = to_string(options.sign_source());
  const auto keep = to_string(options.keep_function());
  const auto zero = to_string(options.zero_sign());
  std::vector<double> leak(options.leak());
  auto result = op.call(activation, as_list(grads), leak, source, options.marginalize_batch(),
                        keep, options.scale(), zero, options.epsilon(), options.keep_grad_norm(),
                        std::move(generator), uniform, keep_probability, seed,
                        static_cast<int64_t>(options.offset()), statistics != nullptr);
  if (statistics != nullptr) {
    *statistics = statistics_from(std::get<1>(result), purity_shape(activation, options),
                                  options.num_tasks());
  }
  return std::get<0>(result);
}

}  // namespace graddrop
