#pragma once
// What GradDropLayer hands its autograd node (function.h): the call's options and generator as
// they were at forward, and where the backward leaves its statistics.
#include <memory>
#include <mutex>

#include <ATen/core/Generator.h>
#include <torch/custom_class.h>

#include "graddrop/function.h"
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

}  // namespace graddrop
