// Tensors of more than 2^31 elements (bfloat16, two tasks: about 4.3 GB per tensor): the kernels
// index with 64 bits. A few slices of the GPU's output are checked against the CPU kernel run on
// the same slices with U from the shared Philox formula at the slices' global logical indices,
// bit for bit.
#include <cstdint>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

constexpr int64_t kTwoTo31 = int64_t(1) << 31;

// Skips (with the reason) when the GPU has less free memory than the test needs.
#define GRADDROP_REQUIRE_FREE_GPU_MEMORY(bytes)                                          \
  do {                                                                                   \
    size_t free_bytes = 0, total_bytes = 0;                                              \
    c10::cuda::CUDACachingAllocator::emptyCache();                                       \
    ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);                   \
    if (free_bytes < static_cast<size_t>(bytes)) {                                       \
      GTEST_SKIP() << "needs " << (bytes) / (1 << 20) << " MiB of free GPU memory, has " \
                   << free_bytes / (1 << 20) << " MiB";                                  \
    }                                                                                    \
  } while (false)

std::vector<at::Tensor> large_inputs(at::IntArrayRef shape, int64_t count, uint64_t seed) {
  auto generator = at::cuda::detail::createCUDAGenerator();
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_current_seed(seed);
  }
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  std::vector<at::Tensor> tensors;
  for (int64_t i = 0; i < count; ++i) tensors.push_back(at::randn(shape, generator, options));
  return tensors;
}

TEST(CudaLarge, PerElementBeyondTwoToThe31Elements) {
  GRADDROP_REQUIRE_CUDA();
  const int64_t numel = kTwoTo31 + 1003;  // not a multiple of the vector width either
  GRADDROP_REQUIRE_FREE_GPU_MEMORY(4 * numel * 2 + (int64_t(2) << 30));
  const uint64_t seed = testing::test_seed() + 17;
  const uint64_t offset = 5;
  auto inputs = large_inputs({numel}, 3, seed);
  const auto activation = inputs[0];
  const std::vector<at::Tensor> grads = {inputs[1], inputs[2]};
  const auto options = GradDropOptions(2).marginalize_batch(false).seed(seed).offset(offset);
  const auto output = combine(grads, activation, options);
  at::cuda::device_synchronize();

  for (const int64_t first : {int64_t(0), kTwoTo31 - 2048, numel - 5000}) {
    const int64_t length = std::min<int64_t>(4096, numel - first);
    const auto slice = [&](const at::Tensor& t) { return t.narrow(0, first, length).cpu(); };
    const auto uniform = cuda_testing::host_philox_uniform({length}, seed, offset, first);
    const auto expected = combine({slice(grads[0]), slice(grads[1])}, slice(activation),
                                  GradDropOptions(2).marginalize_batch(false), nullopt, uniform);
    EXPECT_TRUE(cuda_testing::identical_bits(slice(output), expected)) << "slice at " << first;
  }
}

TEST(CudaLarge, MarginalizedBeyondTwoToThe31Elements) {
  GRADDROP_REQUIRE_CUDA();
  const int64_t rows = 65536;
  const int64_t columns = 32772;  // rows * columns = 2^31 + 2^18
  GRADDROP_REQUIRE_FREE_GPU_MEMORY(4 * rows * columns * 2 + (int64_t(2) << 30));
  const uint64_t seed = testing::test_seed() + 29;
  auto inputs = large_inputs({rows, columns}, 3, seed);
  const auto activation = inputs[0];
  const std::vector<at::Tensor> grads = {inputs[1], inputs[2]};
  const auto options = GradDropOptions(2).seed(seed);
  const auto output = combine(grads, activation, options);
  at::cuda::device_synchronize();

  for (const int64_t first : {int64_t(0), int64_t(16384), columns - 8}) {
    const int64_t width = 8;
    const auto slice = [&](const at::Tensor& t) { return t.narrow(1, first, width).cpu(); };
    const std::vector<at::Tensor> slice_grads = {slice(grads[0]), slice(grads[1])};
    const auto uniform = cuda_testing::host_philox_uniform({width}, seed, 0, first);
    const auto expected =
        combine(slice_grads, slice(activation), GradDropOptions(2), nullopt, uniform);
    // A column's batch sum follows one canonical order that depends on the rows alone
    // (docs/design.md, "The same bits on every device"), so the slice on the CPU gives the full
    // tensor's columns bit for bit.
    EXPECT_TRUE(cuda_testing::identical_bits(slice(output), expected))
        << "columns at " << first;
  }
}

}  // namespace
}  // namespace graddrop
