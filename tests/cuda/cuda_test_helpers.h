#pragma once
// Helpers of the GPU suites: the skip without a GPU, moving inputs to the GPU, and U computed on
// the host with the shared Philox formula (keyed on the logical index, as both kernels key it).
#include <cstdint>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "graddrop/detail/philox.h"

// Every GPU test starts with this: without a GPU the test is reported as skipped, with why.
#define GRADDROP_REQUIRE_CUDA()                                                                \
  do {                                                                                         \
    if (!torch::cuda::is_available()) {                                                        \
      GTEST_SKIP() << "no CUDA GPU on this machine: the CUDA kernels are compiled and linked " \
                      "but can only run on a GPU (scripts/gpu_check.sh)";                      \
    }                                                                                          \
  } while (false)

namespace graddrop {
namespace cuda_testing {

inline std::vector<at::Tensor> on_cuda(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> result;
  for (const auto& tensor : tensors) {
    result.push_back(tensor.defined() ? tensor.to(at::kCUDA) : at::Tensor());
  }
  return result;
}

inline std::vector<at::Tensor> on_cpu(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> result;
  for (const auto& tensor : tensors) {
    result.push_back(tensor.defined() ? tensor.cpu() : at::Tensor());
  }
  return result;
}

// U[k] = philox_uniform(seed, offset, first + k) for k in [0, count), float32 on the CPU, in
// `shape` (count elements).
inline at::Tensor host_philox_uniform(at::IntArrayRef shape, uint64_t seed, uint64_t offset,
                                      int64_t first = 0) {
  auto uniform = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  float* values = uniform.data_ptr<float>();
  for (int64_t k = 0; k < uniform.numel(); ++k) {
    values[k] = detail::philox_uniform(seed, offset, static_cast<uint64_t>(first + k));
  }
  return uniform;
}

// A copy of `tensor` whose data starts one element past a 16-byte boundary (contiguous but
// misaligned, so the kernels must take their element-by-element path).
inline at::Tensor misaligned_copy(const at::Tensor& tensor) {
  auto storage = at::empty({tensor.numel() + 1}, tensor.options());
  auto view = storage.narrow(0, 1, tensor.numel()).view(tensor.sizes());
  view.copy_(tensor);
  return view;
}

inline std::vector<at::Tensor> misaligned_copies(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> result;
  for (const auto& tensor : tensors) {
    result.push_back(tensor.defined() ? misaligned_copy(tensor) : at::Tensor());
  }
  return result;
}

// Whether two tensors hold the same dtype, shape and bytes (NaN payloads included).
inline ::testing::AssertionResult identical_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype/shape " << a.scalar_type() << " " << a.sizes()
                                         << " != " << b.scalar_type() << " " << b.sizes();
  }
  const auto x = a.cpu().contiguous();
  const auto y = b.cpu().contiguous();
  const size_t bytes = static_cast<size_t>(x.numel()) * x.element_size();
  if (bytes == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), bytes) == 0) {
    return ::testing::AssertionSuccess();
  }
  const auto differ = at::logical_not(at::eq(x.to(at::kDouble), y.to(at::kDouble)));
  return ::testing::AssertionFailure()
         << differ.sum().item<int64_t>() << " of " << x.numel() << " elements differ in their bits";
}

}  // namespace cuda_testing
}  // namespace graddrop
