// The CUDA side of the self-test (src/selftest/cuda_checks.h): the device's description, a
// CUDA graph capture and replay, event timing, and one call shape per launch path the planner
// chooses on the device.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "graddrop/combine.h"
#include "launch_common.cuh"
#include "launch_plan.h"
#include "selftest/compare.h"
#include "selftest/cuda_checks.h"

namespace graddrop {
namespace selftest {
namespace {

std::string describe_device(int device) {
  const auto* properties = at::cuda::getDeviceProperties(device);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  std::ostringstream text;
  text << properties->name << ", compute capability " << properties->major << "."
       << properties->minor << ", " << properties->multiProcessorCount << " SMs, "
       << properties->totalGlobalMem / (1 << 20) << " MiB, shared memory "
       << properties->sharedMemPerMultiprocessor / 1024 << " KiB per SM ("
       << properties->sharedMemPerBlockOptin / 1024 << " KiB per block), driver "
       << driver / 1000 << "." << (driver % 1000) / 10 << ", runtime " << runtime / 1000 << "."
       << (runtime % 1000) / 10;
  return text.str();
}

// Both modes, captured on a side stream and replayed twice, against the eager call.
std::string graph_replay(int device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const auto options =
      at::TensorOptions(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)));
  for (bool marginalize : {true, false}) {
    const auto activation = at::randn({640, 96}, options);
    const std::vector<at::Tensor> grads = {at::randn_like(activation), at::randn_like(activation),
                                           at::randn_like(activation)};
    const auto call = GradDropOptions(3).marginalize_batch(marginalize).seed(5).offset(1);
    const auto eager = combine(grads, activation, call);
    auto stream = c10::cuda::getStreamFromPool(false, static_cast<c10::DeviceIndex>(device));
    at::Tensor captured;
    at::cuda::CUDAGraph graph;
    {
      const c10::cuda::CUDAStreamGuard stream_guard(stream);
      graph.capture_begin();
      captured = combine(grads, activation, call);
      graph.capture_end();
    }
    for (int replay = 0; replay < 2; ++replay) {
      captured.zero_();
      graph.replay();
      at::cuda::device_synchronize();
      if (auto difference = first_bitwise_difference(eager, captured)) {
        return std::string(marginalize ? "marginalised" : "per element") + " replay " +
               std::to_string(replay) + ": " + *difference;
      }
    }
  }
  return "";
}

double time_ms(const std::function<void()>& body, int iterations) {
  at::cuda::CUDAEvent start(cudaEventDefault), stop(cudaEventDefault);
  const auto stream = at::cuda::getCurrentCUDAStream();
  start.record(stream);
  for (int i = 0; i < iterations; ++i) body();
  stop.record(stream);
  stop.synchronize();
  return start.elapsed_time(stop) / iterations;
}

// The smallest shape of a fixed candidate list for each path the planner chooses on `device`
// (with this build's sm_90 register counts, as launch_plan.h's kernel_registers).
std::vector<PlannedShape> shapes_per_path(int device) {
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const auto& limits = cuda_kernels::current_device_limits();
  struct Candidate {
    int64_t rows, columns;
    int tasks;
    bool marginalize;
  };
  std::vector<Candidate> candidates = {{1, 1 << 20, 2, false}, {1, 3000001, 8, false}};
  for (int64_t rows : {16, 64, 128, 600, 2048, 8192}) {
    for (int64_t columns : {131, 1024, 4096, 65536, 131072}) {
      for (int tasks : {2, 8}) {
        if (rows * columns <= (int64_t(1) << 22)) {
          candidates.push_back({rows, columns, tasks, true});
        }
      }
    }
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    return a.rows * a.columns * a.tasks < b.rows * b.columns * b.tasks;
  });
  std::vector<PlannedShape> shapes;
  std::vector<std::string> seen;
  for (const auto& candidate : candidates) {
    cuda_plan::CallShape shape;
    shape.rows = candidate.marginalize ? candidate.rows : 1;
    shape.columns = candidate.marginalize ? candidate.columns : candidate.rows * candidate.columns;
    shape.num_tasks = candidate.tasks;
    shape.marginalized = candidate.marginalize;
    const auto plan = cuda_plan::plan_launch(shape, limits);
    const std::string path = cuda_plan::to_string(plan.path);
    if (std::find(seen.begin(), seen.end(), path) != seen.end()) continue;
    seen.push_back(path);
    PlannedShape planned;
    planned.path = path;
    planned.plan = plan.describe();
    planned.sizes = candidate.marginalize ? std::vector<int64_t>{candidate.rows, candidate.columns}
                                          : std::vector<int64_t>{candidate.columns};
    planned.num_tasks = candidate.tasks;
    planned.marginalize = candidate.marginalize;
    shapes.push_back(planned);
  }
  return shapes;
}

const CudaChecks kCudaChecks = {describe_device, graph_replay, time_ms, shapes_per_path};
[[maybe_unused]] const bool kRegistered = register_cuda_checks(kCudaChecks);

}  // namespace
}  // namespace selftest
}  // namespace graddrop
