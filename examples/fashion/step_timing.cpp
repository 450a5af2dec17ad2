#include "fashion/step_timing.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <functional>
#include <vector>

#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>

#include "fashion/lenet.h"
#include "fashion/training.h"
#include "graddrop/combine.h"

namespace fashion {
namespace {

struct Batch {
  torch::Tensor images;
  std::array<torch::Tensor, kTasks> labels;
};

// Equal weights, or GradDrop through the layer: the model decides; one backward either way.
void one_backward(MultiLeNet& model, const Batch& batch) {
  const auto losses = task_losses(model, batch.images, batch.labels[0], batch.labels[1]);
  (losses[0] + losses[1]).backward();
}

// The Python libraries' way: each task's gradient at the shared activation from its own
// backward pass (which also gives that task's head its gradient), graddrop::combine on the
// host side, then the combined gradient backpropagated once into the trunk.
void per_task_backward(MultiLeNet& model, const Batch& batch,
                       const graddrop::GradDropOptions& options) {
  const auto shared = model->trunk(batch.images);
  std::vector<torch::Tensor> shared_grads;
  for (int64_t task = 0; task < kTasks; ++task) {
    auto& head = model->head_layer(task);
    const auto loss = torch::nn::functional::cross_entropy(model->head(task, shared),
                                                           batch.labels[task]);
    const auto grads = torch::autograd::grad({loss}, {shared, head->weight, head->bias},
                                             /*grad_outputs=*/{}, /*retain_graph=*/true);
    shared_grads.push_back(grads[0]);
    // autograd::grad may return views (the weight's is a transpose); a parameter's .grad must
    // own its storage for the optimiser's zero_grad. The heads are tiny (50x10).
    head->weight.mutable_grad() = grads[1].clone();
    head->bias.mutable_grad() = grads[2].clone();
  }
  shared.backward(graddrop::combine(shared_grads, shared, options));
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double max_gradient_difference(MultiLeNet& a, MultiLeNet& b) {
  double largest = 0.0;
  const auto b_parameters = b->named_parameters();
  for (const auto& item : a->named_parameters()) {
    const auto& other = b_parameters[item.key()];
    largest = std::max(largest, (item.value().grad() - other.grad()).abs().max().item<double>());
  }
  return largest;
}

}  // namespace

StepTimes compare_step_times(const MultiFashionSet& train, int64_t image_side,
                             const graddrop::GradDropOptions& options,
                             const StepTimingSettings& settings) {
  const auto device = train.images.device();
  const int64_t batch_size = std::min(settings.batch_size, train.size());
  const Batch batch{train.images.slice(0, 0, batch_size),
                    {train.labels_first.slice(0, 0, batch_size),
                     train.labels_second.slice(0, 0, batch_size)}};

  torch::manual_seed(0);
  MultiLeNet equal_weight(image_side, c10::nullopt);
  MultiLeNet with_layer(image_side, options);
  MultiLeNet per_task(image_side, c10::nullopt);
  for (auto* model : {&with_layer, &per_task}) copy_parameters(**model, *equal_weight);
  for (auto* model : {&equal_weight, &with_layer, &per_task}) (*model)->to(device);

  StepTimes times;
  {
    // Same function check: with one explicit Philox seed both GradDrop paths draw the same U.
    auto fixed = options;
    fixed.seed(12345);
    MultiLeNet layer_check(image_side, fixed);
    copy_parameters(*layer_check, *equal_weight);
    layer_check->to(device);
    layer_check->zero_grad();
    per_task->zero_grad();
    one_backward(layer_check, batch);
    per_task_backward(per_task, batch, fixed);
    times.max_gradient_difference = max_gradient_difference(layer_check, per_task);
  }

  auto equal_weight_optimizer =
      make_optimizer(settings.optimizer, equal_weight, settings.learning_rate);
  auto layer_optimizer = make_optimizer(settings.optimizer, with_layer, settings.learning_rate);
  auto per_task_optimizer = make_optimizer(settings.optimizer, per_task, settings.learning_rate);
  const std::array<std::function<void()>, 3> steps = {
      [&] {
        equal_weight_optimizer->zero_grad();
        one_backward(equal_weight, batch);
        equal_weight_optimizer->step();
      },
      [&] {
        layer_optimizer->zero_grad();
        one_backward(with_layer, batch);
        layer_optimizer->step();
      },
      [&] {
        per_task_optimizer->zero_grad();
        per_task_backward(per_task, batch, options);
        per_task_optimizer->step();
      }};

  for (const auto& step : steps) {
    for (int64_t i = 0; i < settings.warmup_steps; ++i) step();
  }
  synchronize(device);
  // Rounds in rotating order, so a burst of load from other processes on the machine falls on
  // every method alike; the median over rounds discards the rounds it hit hardest.
  std::array<std::vector<double>, 3> round_ms;
  for (int64_t round = 0; round < settings.rounds; ++round) {
    for (size_t k = 0; k < steps.size(); ++k) {
      const size_t method = (k + static_cast<size_t>(round)) % steps.size();
      const auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < settings.steps_per_round; ++i) steps[method]();
      synchronize(device);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      round_ms[method].push_back(1e3 * seconds / static_cast<double>(settings.steps_per_round));
    }
  }
  auto median = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    const size_t middle = values.size() / 2;
    return values.size() % 2 ? values[middle] : 0.5 * (values[middle - 1] + values[middle]);
  };
  times.equal_weight_ms = median(round_ms[0]);
  times.graddrop_layer_ms = median(round_ms[1]);
  times.per_task_backward_ms = median(round_ms[2]);
  return times;
}

}  // namespace fashion
