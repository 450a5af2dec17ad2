// Which kernel path each call of the GPU stream and graph tests takes on an H100 and an A100,
// planned on the CPU (cuda/launch_plan.h): every path has a test on a side stream and a test
// under graph capture, so a change of the plans that moves a shape off its path fails here.
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "launch_plan.h"
#include "operator_calls.h"

namespace graddrop {
namespace {

using cuda_plan::KernelPath;

// float32 as the GPU tests call it.
cuda_plan::CallShape call_shape(const testing::GpuPathCase& item) {
  int64_t rest = 1;
  for (size_t d = 1; d < item.shape.size(); ++d) rest *= item.shape[d];
  cuda_plan::CallShape shape;
  shape.marginalized = item.marginalize;
  shape.rows = item.marginalize ? item.shape[0] : 1;
  shape.columns = item.marginalize ? rest : item.shape[0] * rest;
  shape.num_tasks = static_cast<int>(item.num_tasks);
  shape.statistics = item.statistics || item.keep_grad_norm;
  return shape;
}

std::set<KernelPath> paths_of(const std::vector<testing::GpuPathCase>& cases,
                              const cuda_plan::DeviceLimits& device) {
  std::set<KernelPath> paths;
  for (const auto& item : cases) {
    const auto plan = cuda_plan::plan_launch(call_shape(item), device);
    std::cout << "  " << device.name << ": " << item.name << " -> " << plan.describe() << "\n";
    paths.insert(plan.path);
  }
  return paths;
}

void expect_every_path(const std::set<KernelPath>& paths, const std::string& where) {
  for (const auto path : {KernelPath::kPerElement, KernelPath::kFusedCachedSmall,
                          KernelPath::kFusedCachedLarge, KernelPath::kFusedUncached,
                          KernelPath::kSplit}) {
    EXPECT_EQ(paths.count(path), 1u) << where << " has no test of " << cuda_plan::to_string(path);
  }
}

TEST(GpuCoverage, EveryKernelPathOnASideStreamAndUnderGraphCapture) {
  const auto devices = cuda_plan::published_device_tables();
  for (const auto& device : {devices[0], devices[2]}) {  // H100 SXM, A100 80 GB
    expect_every_path(paths_of(testing::gpu_stream_cases(), device),
                      device.name + ", side stream");
    auto captured = paths_of(testing::gpu_graph_generator_cases(), device);
    for (const auto path : paths_of(testing::gpu_graph_uniform_cases(), device)) {
      captured.insert(path);
    }
    expect_every_path(captured, device.name + ", graph capture");
  }
}

// The graph replays expect two draws to differ: P must have enough elements that two draws
// agreeing is negligible (with 64 elements, under 2^-64 for any keep probability in (0, 1)).
TEST(GpuCoverage, GraphReplaysDrawEnoughElements) {
  for (const auto& item : testing::gpu_graph_generator_cases()) {
    int64_t purity_elements = 1;
    for (size_t d = item.marginalize ? 1 : 0; d < item.shape.size(); ++d) {
      purity_elements *= item.shape[d];
    }
    EXPECT_GE(purity_elements, 64) << item.name;
  }
}

}  // namespace
}  // namespace graddrop
