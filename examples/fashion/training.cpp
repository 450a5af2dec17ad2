#include "fashion/training.h"

#include <chrono>
#include <stdexcept>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/utils.h>

namespace fashion {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        MultiLeNet& model, double learning_rate) {
  if (name == "adam") {
    return std::make_unique<torch::optim::Adam>(model->parameters(),
                                                torch::optim::AdamOptions(learning_rate));
  }
  if (name == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        model->parameters(), torch::optim::SGDOptions(learning_rate).momentum(0.9));
  }
  throw std::invalid_argument("--optimizer must be 'adam' or 'sgd', got '" + name + "'");
}

torch::Tensor epoch_order(int64_t pairs, uint64_t seed, int64_t epoch) {
  // A generator of its own: GradDrop's draws come from the default generator and must not
  // shift the baseline's data order.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed * 1000003ULL +
                                                            static_cast<uint64_t>(epoch));
  return torch::randperm(pairs, generator, torch::kLong);
}

std::array<torch::Tensor, kTasks> task_losses(MultiLeNet& model, const torch::Tensor& images,
                                              const torch::Tensor& labels_first,
                                              const torch::Tensor& labels_second) {
  const auto logits = model->forward(images);
  return {torch::nn::functional::cross_entropy(logits[0], labels_first),
          torch::nn::functional::cross_entropy(logits[1], labels_second)};
}

std::vector<EpochResult> train_epoch(std::vector<TrainingRun>& runs, const MultiFashionSet& train,
                                     const torch::Tensor& order, int64_t batch_size,
                                     const BatchProgress& progress) {
  using Clock = std::chrono::steady_clock;
  const auto device = train.images.device();
  const auto device_order = order.to(device);
  const int64_t pairs = order.size(0);
  const int64_t batches = (pairs + batch_size - 1) / batch_size;
  const size_t run_count = runs.size();
  // Losses are summed on the device and read once at the end: a per-batch .item() would
  // synchronise a GPU every step.
  std::vector<torch::Tensor> loss_sums;
  std::vector<double> seconds(run_count, 0.0);
  for (auto& run : runs) {
    run.model->train();
    loss_sums.push_back(torch::zeros({kTasks}, torch::TensorOptions().device(device)));
  }

  for (int64_t batch = 0; batch < batches; ++batch) {
    const auto index = device_order.slice(0, batch * batch_size,
                                          std::min(pairs, (batch + 1) * batch_size));
    const auto images = train.images.index_select(0, index);
    const auto labels_first = train.labels_first.index_select(0, index);
    const auto labels_second = train.labels_second.index_select(0, index);
    for (size_t turn = 0; turn < run_count; ++turn) {
      const size_t r = (turn + static_cast<size_t>(batch)) % run_count;
      auto& run = runs[r];
      if (device.is_cuda()) torch::cuda::synchronize();
      const auto start = Clock::now();
      const auto losses = task_losses(run.model, images, labels_first, labels_second);
      run.optimizer->zero_grad();
      (losses[0] + losses[1]).backward();  // one backward: GradDrop sees both tasks at once
      run.optimizer->step();
      if (device.is_cuda()) torch::cuda::synchronize();
      seconds[r] += std::chrono::duration<double>(Clock::now() - start).count();
      torch::NoGradGuard no_grad;
      loss_sums[r] += torch::stack({losses[0].detach(), losses[1].detach()});
    }
    if (progress) progress(batch + 1, batches);
  }

  std::vector<EpochResult> results(run_count);
  for (size_t r = 0; r < run_count; ++r) {
    const auto mean_losses = (loss_sums[r] / static_cast<double>(batches)).cpu();
    for (int64_t task = 0; task < kTasks; ++task) {
      results[r].train_loss[task] = mean_losses[task].item<double>();
    }
    results[r].train_seconds = seconds[r];
  }
  return results;
}

void warm_up(MultiLeNet& model, const MultiFashionSet& train, int64_t batch_size) {
  model->train();
  const int64_t rows = std::min(batch_size, train.size());
  const auto losses = task_losses(model, train.images.slice(0, 0, rows),
                                  train.labels_first.slice(0, 0, rows),
                                  train.labels_second.slice(0, 0, rows));
  (losses[0] + losses[1]).backward();
  model->zero_grad();
}

std::array<double, kTasks> evaluate(MultiLeNet& model, const MultiFashionSet& test,
                                    int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int64_t pairs = test.size();
  auto correct = torch::zeros({kTasks}, torch::TensorOptions()
                                            .dtype(torch::kLong)
                                            .device(test.images.device()));
  for (int64_t begin = 0; begin < pairs; begin += batch_size) {
    const int64_t end = std::min(pairs, begin + batch_size);
    const auto logits = model->forward(test.images.slice(0, begin, end));
    correct[0] += logits[0].argmax(1).eq(test.labels_first.slice(0, begin, end)).sum();
    correct[1] += logits[1].argmax(1).eq(test.labels_second.slice(0, begin, end)).sum();
  }
  const auto counts = correct.cpu();
  return {counts[0].item<double>() / pairs, counts[1].item<double>() / pairs};
}

MultiFashionSet to_device(const MultiFashionSet& set, const torch::Device& device) {
  return {set.images.to(device), set.labels_first.to(device), set.labels_second.to(device)};
}

}  // namespace fashion
