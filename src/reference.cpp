#include "graddrop/reference.h"

#include <ATen/ATen.h>

namespace graddrop {
namespace reference {
namespace {

at::Tensor sign_signal(const at::Tensor& activation, SignSource source) {
  switch (source) {
    case SignSource::kActivationSign:
      return at::sign(activation);
    case SignSource::kActivationValue:
      return activation;
    default:
      return at::ones_like(activation);
  }
}

ReferenceResult combine_impl(const std::vector<at::Tensor>& grads, const at::Tensor& activation_in,
                             const GradDropOptions& options, const at::Tensor& uniform,
                             at::ScalarType dtype) {
  const auto activation = activation_in.to(dtype);
  std::vector<at::Tensor> task_grads;
  for (const auto& grad : grads) {
    task_grads.push_back(grad.defined() ? grad.to(dtype) : at::zeros_like(activation));
  }
  const auto signal_of_activation = sign_signal(activation, options.sign_source());

  ReferenceResult result;
  for (const auto& grad : task_grads) {
    auto signal = signal_of_activation * grad;
    if (options.marginalize_batch()) signal = signal.sum(0);
    result.signals.push_back(signal);
  }
  const auto signals = at::stack(result.signals);
  result.purity = 0.5 * (1.0 + signals.sum(0) / (signals.abs().sum(0) + options.epsilon()));

  switch (options.keep_function()) {
    case KeepFunction::kLinear:
      result.keep_probability = 0.5 + options.scale() * (result.purity - 0.5);
      break;
    case KeepFunction::kSigmoid:
      result.keep_probability = at::sigmoid(4.0 * options.scale() * (result.purity - 0.5));
      break;
    case KeepFunction::kCustom:
      result.keep_probability = options.custom_keep_function()(result.purity).to(dtype);
      break;
  }
  const auto keep = result.keep_probability;
  const auto draw = uniform.to(dtype);
  // A NaN purity makes every coefficient NaN (the documented choice: never silently finite),
  // also when a custom f maps NaN to a number.
  const auto nan_purity = at::logical_or(at::isnan(result.purity), at::isnan(keep));

  result.output = at::zeros_like(activation);
  for (size_t task = 0; task < task_grads.size(); ++task) {
    const auto& signal = result.signals[task];
    auto mask = at::logical_or(at::logical_and(keep > draw, signal > 0),
                               at::logical_and(keep < draw, signal < 0));
    if (options.zero_sign() == ZeroSign::kKeep) mask = at::logical_or(mask, signal == 0);
    result.masks.push_back(mask);
    const double leak = options.leak_of(static_cast<int64_t>(task));
    auto coefficient = leak + (1.0 - leak) * mask.to(dtype);
    coefficient = at::where(nan_purity, at::full_like(coefficient, NAN), coefficient);
    result.output = result.output + coefficient * task_grads[task];
  }
  if (options.keep_grad_norm()) {
    auto plain_sum = at::zeros_like(activation);
    for (const auto& grad : task_grads) plain_sum = plain_sum + grad;
    result.output =
        result.output * (plain_sum.norm() / (result.output.norm() + options.epsilon()));
  }
  return result;
}

}  // namespace

ReferenceResult combine(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                        const GradDropOptions& options, const at::Tensor& uniform) {
  return combine_impl(grads, activation, options, uniform, at::kDouble);
}

at::Tensor combine_in(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                      const GradDropOptions& options, const at::Tensor& uniform,
                      at::ScalarType dtype) {
  return combine_impl(grads, activation, options, uniform, dtype).output;
}

}  // namespace reference
}  // namespace graddrop
