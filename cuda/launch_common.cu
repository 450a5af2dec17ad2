// The per-device caches behind allow_shared_memory and resident_blocks_per_sm
// (launch_common.cuh): driver state shared by every host thread, so each is guarded by a mutex.
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include "launch_common.cuh"

namespace graddrop {
namespace cuda_kernels {

namespace {

// The kernel's static shared memory, which counts against the same per-block limits.
int64_t static_shared_bytes(const void* kernel) {
  static std::mutex mutex;
  static std::map<const void*, int64_t> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(kernel);
  if (found != known.end()) return found->second;
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const auto bytes = static_cast<int64_t>(attributes.sharedSizeBytes);
  known.emplace(kernel, bytes);
  return bytes;
}

}  // namespace

void allow_shared_memory_bytes(const void* kernel, int64_t bytes) {
  const auto* properties = at::cuda::getCurrentDeviceProperties();
  const int64_t total = bytes + static_shared_bytes(kernel);
  TORCH_CHECK(total <= static_cast<int64_t>(properties->sharedMemPerBlockOptin),
              "graddrop: the CUDA kernel needs ", total, " bytes of shared memory per block for ",
              "this task count, more than the device allows (", properties->sharedMemPerBlockOptin,
              ")");
  if (total <= 48 * 1024) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int64_t> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  int64_t& current = allowed[{kernel, static_cast<int>(c10::cuda::current_device())}];
  if (current >= bytes) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  current = bytes;
}

int resident_blocks_per_sm_of(const void* kernel, int threads, int64_t shared_bytes) {
  using Key = std::tuple<const void*, int, int, int64_t>;
  static std::mutex mutex;
  static std::map<Key, int> known;
  const Key key{kernel, static_cast<int>(c10::cuda::current_device()), threads, shared_bytes};
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads,
                                                               static_cast<size_t>(shared_bytes)));
  blocks = std::max(blocks, 1);
  known.emplace(key, blocks);
  return blocks;
}

}  // namespace cuda_kernels
}  // namespace graddrop
