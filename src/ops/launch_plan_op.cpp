// graddrop::launch_plan: what the CUDA launch planner (cuda/launch_plan.h) plans for a call, as
// one line of text. No tensor is involved, so it runs in every build, with or without a GPU:
// tests and the GPU self-check ask it which kernel path a shape takes on a given device.
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "../../cuda/launch_plan.h"

namespace graddrop {
namespace ops {
namespace {

// device_limits: cuda_plan::to_fields's order (launch_plan.h), or empty for the first published
// table (an H100 SXM).
std::string launch_plan(int64_t rows, int64_t columns, int64_t num_tasks, at::ScalarType dtype,
                        bool marginalize_batch, bool statistics,
                        std::vector<int64_t> device_limits) {
  TORCH_CHECK_VALUE(rows >= 0 && columns >= 0, "graddrop: launch_plan needs rows >= 0 and ",
                    "columns >= 0, got ", rows, " and ", columns);
  TORCH_CHECK_VALUE(num_tasks >= 1, "graddrop: launch_plan needs num_tasks >= 1, got ",
                    num_tasks);
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   "graddrop: launch_plan takes float32, float64, float16 or bfloat16, got ",
                   dtype);
  cuda_plan::DeviceLimits device;
  if (device_limits.empty()) {
    device = cuda_plan::published_device_tables().front();
  } else {
    TORCH_CHECK_VALUE(static_cast<int>(device_limits.size()) == cuda_plan::kDeviceLimitFields,
                      "graddrop: launch_plan's device_limits takes ",
                      cuda_plan::kDeviceLimitFields,
                      " values (multiprocessors, shared memory per multiprocessor, per block "
                      "opt-in, reserved per block, threads per multiprocessor, threads per "
                      "block, blocks per multiprocessor, registers per multiprocessor, grid x, "
                      "grid y), got ",
                      device_limits.size());
    try {
      device = cuda_plan::from_fields(device_limits);
    } catch (const std::invalid_argument& error) {
      TORCH_CHECK_VALUE(false, error.what());
    }
  }
  cuda_plan::CallShape shape;
  shape.marginalized = marginalize_batch;
  shape.rows = marginalize_batch ? rows : 1;
  shape.columns = marginalize_batch ? columns : rows * columns;
  shape.num_tasks = static_cast<int>(num_tasks);
  shape.scalar_size = static_cast<int>(c10::elementSize(dtype));
  shape.opmath_size = dtype == at::kDouble ? 8 : 4;
  shape.statistics = statistics;
  return cuda_plan::plan_launch(shape, device).describe();
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_FRAGMENT(graddrop, m) {
  m.def(
      "launch_plan(int rows, int columns, int num_tasks, ScalarType dtype, "
      "bool marginalize_batch, bool statistics=False, int[] device_limits=[]) -> str",
      &graddrop::ops::launch_plan);
}
