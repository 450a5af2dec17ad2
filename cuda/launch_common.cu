// The per-device caches behind allow_shared_memory, resident_blocks_per_sm,
// current_device_limits and registers_per_thread_of (launch_common.cuh): driver state shared by
// every host thread, so each is guarded by a mutex.
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

// The kernel's attributes on the current device (its static shared memory counts against the
// same per-block limits as the dynamic one).
cudaFuncAttributes attributes_of(const void* kernel) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, cudaFuncAttributes> known;
  const std::pair<const void*, int> key{kernel, static_cast<int>(c10::cuda::current_device())};
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(key);
  if (found != known.end()) return found->second;
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  known.emplace(key, attributes);
  return attributes;
}

int64_t static_shared_bytes(const void* kernel) {
  return static_cast<int64_t>(attributes_of(kernel).sharedSizeBytes);
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

const cuda_plan::DeviceLimits& current_device_limits() {
  static std::mutex mutex;
  static std::map<int, cuda_plan::DeviceLimits> known;
  const int device = static_cast<int>(c10::cuda::current_device());
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = known.find(device);
  if (found != known.end()) return found->second;
  const auto* properties = at::cuda::getCurrentDeviceProperties();
  cuda_plan::DeviceLimits limits;
  limits.name = properties->name;
  limits.multiprocessors = properties->multiProcessorCount;
  limits.shared_memory_per_multiprocessor =
      static_cast<int64_t>(properties->sharedMemPerMultiprocessor);
  limits.shared_memory_per_block_optin = static_cast<int64_t>(properties->sharedMemPerBlockOptin);
  limits.reserved_shared_memory_per_block =
      static_cast<int64_t>(properties->reservedSharedMemPerBlock);
  limits.max_threads_per_multiprocessor = properties->maxThreadsPerMultiProcessor;
  limits.max_threads_per_block = properties->maxThreadsPerBlock;
  limits.max_blocks_per_multiprocessor = properties->maxBlocksPerMultiProcessor;
  limits.registers_per_multiprocessor = properties->regsPerMultiprocessor;
  limits.max_grid_x = properties->maxGridSize[0];
  limits.max_grid_y = properties->maxGridSize[1];
  // std::map never moves its elements: the reference stays valid.
  return known.emplace(device, limits).first->second;
}

int registers_per_thread_of(const void* kernel) {
  return attributes_of(kernel).numRegs;
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
