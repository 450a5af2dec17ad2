#include "fashion/lenet.h"

#include <stdexcept>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>
#include <torch/utils.h>

namespace fashion {

MultiLeNetImpl::MultiLeNetImpl(int64_t image_side,
                               c10::optional<graddrop::GradDropOptions> graddrop) {
  // Two valid 5x5 convolutions, each followed by a 2x2 pool: 28 -> 4, 36 -> 6.
  const int64_t map_side = ((image_side - 4) / 2 - 4) / 2;
  if (map_side < 1) throw std::invalid_argument("image too small for LeNet");
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 10, 5)));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(10, 20, 5)));
  fc_ = register_module("fc", torch::nn::Linear(20 * map_side * map_side, kSharedFeatures));
  if (graddrop) {
    graddrop_layer = register_module("graddrop", graddrop::GradDropLayer(*graddrop));
  }
  for (int64_t task = 0; task < kTasks; ++task) {
    heads_[task] = register_module("head" + std::to_string(task + 1),
                                   torch::nn::Linear(kSharedFeatures, kClasses));
  }
}

torch::Tensor MultiLeNetImpl::trunk(const torch::Tensor& images) {
  namespace F = torch::nn::functional;
  auto x = torch::relu(F::max_pool2d(conv1_(images), F::MaxPool2dFuncOptions(2)));
  x = torch::relu(F::max_pool2d(conv2_(x), F::MaxPool2dFuncOptions(2)));
  return torch::relu(fc_(x.flatten(1)));
}

torch::Tensor MultiLeNetImpl::head(int64_t task, const torch::Tensor& features) {
  return heads_[task](features);
}

std::array<torch::Tensor, kTasks> MultiLeNetImpl::forward(const torch::Tensor& images) {
  auto shared = trunk(images);
  if (!graddrop_layer) return {head(0, shared), head(1, shared)};
  auto per_task = graddrop_layer(shared);
  return {head(0, per_task[0]), head(1, per_task[1])};
}

void copy_parameters(torch::nn::Module& target, const torch::nn::Module& source) {
  torch::NoGradGuard no_grad;
  const auto source_parameters = source.named_parameters();
  for (auto& item : target.named_parameters()) {
    item.value().copy_(source_parameters[item.key()]);
  }
}

}  // namespace fashion
