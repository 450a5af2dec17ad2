#pragma once
// Time per training step of three ways to train the multitask LeNet on the same batch:
// equal weights, GradDropLayer (one backward), and GradDrop as Python libraries compute it (one
// backward per task to the shared activation, graddrop::combine, then one backward into the
// trunk).
#include <cstdint>
#include <string>

#include "fashion/multi_fashion.h"
#include "graddrop/options.h"

namespace fashion {

struct StepTimingSettings {
  int64_t batch_size = 256;
  int64_t warmup_steps = 5;
  int64_t rounds = 10;           // each round times every method once, in rotating order
  int64_t steps_per_round = 10;  // steps per method per round
  std::string optimizer = "adam";
  double learning_rate = 1e-3;
};

struct StepTimes {
  double equal_weight_ms = 0.0;  // medians over rounds of the mean step time in a round
  double graddrop_layer_ms = 0.0;
  double per_task_backward_ms = 0.0;
  // Largest |difference| between the parameter gradients of the two GradDrop paths for one
  // batch with the same fixed Philox seed (they compute the same function).
  double max_gradient_difference = 0.0;
};

StepTimes compare_step_times(const MultiFashionSet& train, int64_t image_side,
                             const graddrop::GradDropOptions& options,
                             const StepTimingSettings& settings);

}  // namespace fashion
