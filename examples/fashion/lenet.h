#pragma once
// The multitask LeNet of the Multi-Fashion literature: a shared convolutional trunk, an optional
// GradDropLayer, and one 10-way head per task.
#include <array>
#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "graddrop/graddrop.h"

namespace fashion {

constexpr int64_t kTasks = 2;
constexpr int64_t kClasses = 10;
constexpr int64_t kSharedFeatures = 50;

/// conv 1->10 k5, max-pool 2, ReLU, conv 10->20 k5, max-pool 2, ReLU, fc -> 50, ReLU: the shared
/// activation A. With `graddrop` set, a GradDropLayer sits between A and the two heads; without,
/// both heads read A directly and backprop sums their gradients (the equal-weight baseline).
class MultiLeNetImpl : public torch::nn::Module {
 public:
  MultiLeNetImpl(int64_t image_side, c10::optional<graddrop::GradDropOptions> graddrop);

  /// The shared activation A [B, 50].
  torch::Tensor trunk(const torch::Tensor& images);

  /// Head `task`'s logits [B, 10] for shared features.
  torch::Tensor head(int64_t task, const torch::Tensor& features);

  /// Head `task` itself (its parameters get that task's gradient only).
  torch::nn::Linear& head_layer(int64_t task) { return heads_[task]; }

  /// Both tasks' logits; through GradDrop when the model has it.
  std::array<torch::Tensor, kTasks> forward(const torch::Tensor& images);

  /// The GradDrop layer, or an empty holder for the baseline.
  graddrop::GradDropLayer graddrop_layer{nullptr};

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Linear fc_{nullptr};
  std::array<torch::nn::Linear, kTasks> heads_{torch::nn::Linear{nullptr},
                                               torch::nn::Linear{nullptr}};
};

TORCH_MODULE(MultiLeNet);

/// Copies every parameter of `source` into `target` (same architecture): both methods start
/// from the same weights whatever random numbers their construction drew.
void copy_parameters(torch::nn::Module& target, const torch::nn::Module& source);

}  // namespace fashion
