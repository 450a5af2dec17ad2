#pragma once
// GradDropFunction: the autograd node between a shared trunk and n task heads. Forward returns n
// aliases of the activation (no copy); backward receives every head's gradient in one call and
// returns their GradDrop combination.
#include <memory>
#include <mutex>

#include <torch/csrc/autograd/custom_function.h>
#include <torch/custom_class.h>

#include "graddrop/options.h"
#include "graddrop/statistics.h"

namespace graddrop {

// Where a layer's backward calls leave their statistics; read by the layer.
class StatisticsRecord {
 public:
  optional<GradDropStatistics> last() const;
  void set(GradDropStatistics statistics);

 private:
  mutable std::mutex mutex_;
  optional<GradDropStatistics> last_;
};

// What one backward call needs beyond tensors: the options and generator as they were at
// forward time, and where to record statistics (may be null).
struct GradDropCall : torch::CustomClassHolder {
  GradDropCall(GradDropOptions options_in, optional<at::Generator> generator_in,
               std::shared_ptr<StatisticsRecord> record_in)
      : options(std::move(options_in)),
        generator(std::move(generator_in)),
        record(std::move(record_in)) {}

  GradDropOptions options;
  optional<at::Generator> generator;
  std::shared_ptr<StatisticsRecord> record;
};

struct GradDropFunction : public torch::autograd::Function<GradDropFunction> {
  /// Returns `call->options.num_tasks()` aliases of `activation`.
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& activation,
                                                c10::intrusive_ptr<GradDropCall> call);

  /// GradDrop's combination of the heads' gradients; once differentiable. Takes the gradients by
  /// reference (autograd's node passes its own list and drops it afterwards), so that on the CPU
  /// a gradient nothing else holds can become the output buffer (combine_into).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list& grad_outputs);
};

}  // namespace graddrop
