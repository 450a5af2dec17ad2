#include "graddrop/layer.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "layer_call.h"

namespace graddrop {

GradDropLayerImpl::GradDropLayerImpl(GradDropOptions options_in) : options(std::move(options_in)) {
  reset();
}

void GradDropLayerImpl::reset() {
  options.validate();
  record_ = std::make_shared<StatisticsRecord>();
}

void GradDropLayerImpl::pretty_print(std::ostream& stream) const {
  stream << "graddrop::GradDropLayer(num_tasks=" << options.num_tasks() << ", leak=[";
  for (int64_t task = 0; task < options.num_tasks(); ++task) {
    stream << (task ? ", " : "") << options.leak_of(task);
  }
  stream << "], sign_source=" << to_string(options.sign_source())
         << ", marginalize_batch=" << (options.marginalize_batch() ? "true" : "false")
         << ", keep_function=" << to_string(options.keep_function())
         << ", scale=" << options.scale() << ", zero_sign=" << to_string(options.zero_sign())
         << ", epsilon=" << options.epsilon()
         << ", keep_grad_norm=" << (options.keep_grad_norm() ? "true" : "false") << ")";
}

std::vector<at::Tensor> GradDropLayerImpl::forward(const at::Tensor& activation) {
  const bool active = is_training() && torch::autograd::GradMode::is_enabled() &&
                      activation.requires_grad();
  if (!active) {
    return std::vector<at::Tensor>(static_cast<size_t>(options.num_tasks()), activation);
  }
  // Each forward captures the options as they are now: a later edit of `options` does not
  // change a graph that is already built.
  return GradDropFunction::apply(
      activation, c10::make_intrusive<GradDropCall>(options, generator_, record_));
}

void GradDropLayerImpl::set_generator(optional<at::Generator> generator) {
  generator_ = std::move(generator);
}

optional<GradDropStatistics> GradDropLayerImpl::last_statistics() const {
  return record_->last();
}

}  // namespace graddrop
