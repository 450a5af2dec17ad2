#pragma once
// What the self-test needs from the CUDA build (cuda/selftest_checks.cu registers it; a build
// without CUDA kernels has none, and the self-test then reports its GPU checks as skipped).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

namespace graddrop {
namespace selftest {

// One call shape that takes a given launch path on a device, as the planner chose it.
struct PlannedShape {
  std::string path;         // the planner's name of the path
  std::string plan;         // the plan in words (grid, threads, shared memory, occupancy)
  std::vector<int64_t> sizes;
  int num_tasks = 2;
  c10::ScalarType dtype = c10::kFloat;
  bool marginalize = true;
  bool statistics = false;
};

struct CudaChecks {
  // Name, compute capability, multiprocessors, memory, driver and runtime versions.
  std::string (*describe)(int device);
  // A combine captured in a CUDA graph and replayed gives the eager call's bits: "" when it
  // does, else what differs.
  std::string (*graph_replay)(int device);
  // Milliseconds per run of `body` (already warm), timed with CUDA events on the current stream.
  double (*time_ms)(const std::function<void()>& body, int iterations);
  // One shape per launch path the planner can choose on `device`.
  std::vector<PlannedShape> (*shapes_per_path)(int device);
};

bool register_cuda_checks(const CudaChecks& checks);
// The registered checks, or null.
const CudaChecks* cuda_checks();

}  // namespace selftest
}  // namespace graddrop
