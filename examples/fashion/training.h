#pragma once
// One epoch of multitask training and the per-task evaluation, shared by both methods.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include "fashion/lenet.h"
#include "fashion/multi_fashion.h"

namespace fashion {

/// The optimiser a run uses: "adam" (Adam, betas 0.9/0.999) or "sgd" (momentum 0.9).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        MultiLeNet& model, double learning_rate);

/// The order in which an epoch visits the training pairs: a permutation that depends only on
/// (seed, epoch), so both methods see the same batches in the same order.
torch::Tensor epoch_order(int64_t pairs, uint64_t seed, int64_t epoch);

/// The two tasks' cross-entropies for one batch; through GradDrop when the model has it.
std::array<torch::Tensor, kTasks> task_losses(MultiLeNet& model, const torch::Tensor& images,
                                              const torch::Tensor& labels_first,
                                              const torch::Tensor& labels_second);

/// Called after each batch with (batches done, batches in the epoch).
using BatchProgress = std::function<void(int64_t, int64_t)>;

/// One method being trained: its model and optimiser.
struct TrainingRun {
  std::string method;
  MultiLeNet model;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
};

struct EpochResult {
  std::array<double, kTasks> train_loss{};     // mean cross-entropy over the epoch's batches
  std::array<double, kTasks> test_accuracy{};  // fraction of test pairs classified right
  double train_seconds = 0.0;  // the run's own training steps, without evaluation
};

/// Trains every run one epoch over `train` (already on the models' device) in `order`,
/// minimising the equal-weight sum of the two cross-entropies with one backward per batch.
/// The runs take turns batch by batch (who goes first alternates), so each run's
/// `train_seconds` covers the same stretch of wall time: on a machine shared with other work,
/// a change of load falls on all runs alike and the time ratio stays meaningful. Returns one
/// result per run with the train losses and seconds; `test_accuracy` is left for `evaluate`.
std::vector<EpochResult> train_epoch(std::vector<TrainingRun>& runs, const MultiFashionSet& train,
                                     const torch::Tensor& order, int64_t batch_size,
                                     const BatchProgress& progress = nullptr);

/// One forward and backward on the first batch, gradients then cleared and the weights left as
/// they were: the first pass through LibTorch pays one-off costs (kernel selection, thread pool
/// start) that would otherwise land on the first timed epoch.
void warm_up(MultiLeNet& model, const MultiFashionSet& train, int64_t batch_size);

/// Per-task accuracy on `test` in eval mode without autograd.
std::array<double, kTasks> evaluate(MultiLeNet& model, const MultiFashionSet& test,
                                    int64_t batch_size);

/// Moves a set's tensors to `device`.
MultiFashionSet to_device(const MultiFashionSet& set, const torch::Device& device);

}  // namespace fashion
