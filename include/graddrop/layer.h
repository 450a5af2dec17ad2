#pragma once
// GradDropLayer: insert between a shared trunk and n task heads; head i consumes output i.
#include <ostream>
#include <vector>

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "graddrop/function.h"
#include "graddrop/options.h"
#include "graddrop/statistics.h"

namespace graddrop {

class StatisticsRecord;

/// Example:
/// ```
/// graddrop::GradDropLayer graddrop_layer(graddrop::GradDropOptions(2));
/// auto shared = graddrop_layer(trunk(x));
/// auto loss = loss_a(head_a(shared[0])) + loss_b(head_b(shared[1]));
/// loss.backward();  // the trunk receives GradDrop's combined gradient
/// ```
class GradDropLayerImpl : public torch::nn::Cloneable<GradDropLayerImpl> {
 public:
  explicit GradDropLayerImpl(GradDropOptions options = GradDropOptions());

  /// Validates the options and starts a fresh statistics record.
  void reset() override;

  void pretty_print(std::ostream& stream) const override;

  /// `options.num_tasks()` outputs, each the activation itself. In training mode, when the
  /// activation requires grad and grad mode is on, they lead to one GradDrop backward node;
  /// otherwise they are plain aliases at no cost.
  std::vector<at::Tensor> forward(const at::Tensor& activation);

  /// Draw from this generator instead of the device's default one.
  void set_generator(optional<at::Generator> generator);

  /// The statistics of the most recent backward (needs `options.record_statistics(true)`).
  optional<GradDropStatistics> last_statistics() const;

  GradDropOptions options;

 private:
  optional<at::Generator> generator_;
  std::shared_ptr<StatisticsRecord> record_;
};

TORCH_MODULE(GradDropLayer);

}  // namespace graddrop
