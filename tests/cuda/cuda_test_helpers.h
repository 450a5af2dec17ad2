#pragma once
// Helpers of the GPU suites: the skip without a GPU, inputs drawn on the GPU (fast enough for the
// large shapes that reach every kernel path), moving tensors between devices, U computed on the
// host with the shared Philox formula (keyed on the logical index, as both kernels key it), and
// comparisons: bit for bit, within a few units in the last place, statistics.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <mutex>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "detail/philox.h"
#include "graddrop/statistics.h"
#include "test_support.h"

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

// A CUDA generator (of the current device) seeded with `seed`.
inline at::Generator cuda_generator(uint64_t seed) {
  auto generator = at::cuda::detail::createCUDAGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_current_seed(seed);
  return generator;
}

// An activation and n task gradients on the GPU, drawn there from a CUDA generator seeded from
// the test seed and `salt` (printed with the test's name): the same distribution as
// testing::random_activation / random_grads (about 5 % exact zeros in the activation; every
// `undefined_every`-th gradient undefined when > 0), but fast for tens of millions of elements.
struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
};

inline Inputs random_cuda_inputs(at::IntArrayRef shape, at::ScalarType dtype, int64_t num_tasks,
                                 uint64_t salt, int64_t undefined_every = 0) {
  const uint64_t seed = testing::test_seed() * 1000003ull + salt;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info != nullptr && salt % 16 == 0) {
    std::cout << "[graddrop tests] " << info->test_suite_name() << "." << info->name()
              << " CUDA generator seed " << seed << " (salt " << salt << ")" << std::endl;
  }
  auto generator = cuda_generator(seed);
  const auto doubles = at::TensorOptions().device(at::kCUDA).dtype(at::kDouble);
  Inputs inputs;
  const auto zeros = at::rand(shape, generator, doubles) < 0.05;
  inputs.activation = at::randn(shape, generator, doubles).masked_fill(zeros, 0.0).to(dtype);
  for (int64_t task = 0; task < num_tasks; ++task) {
    if (undefined_every > 0 && num_tasks > 1 && task % undefined_every == undefined_every - 1) {
      inputs.grads.emplace_back();
      continue;
    }
    inputs.grads.push_back(at::randn(shape, generator, doubles).to(dtype));
  }
  return inputs;
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
  const auto differ =
      at::logical_not(at::eq(x.to(at::kDouble), y.to(at::kDouble))).flatten().nonzero();
  const auto first = differ.numel() > 0 ? differ[0][0].item<int64_t>() : int64_t(-1);
  auto failure = ::testing::AssertionFailure();
  failure << differ.size(0) << " of " << x.numel() << " elements differ in their bits";
  if (first >= 0) {
    failure << "; first at flat index " << first << ": "
            << x.flatten()[first].item<double>() << " vs " << y.flatten()[first].item<double>();
  }
  return failure;
}

// One unit in the last place at 1.0 of a floating dtype.
inline double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return std::ldexp(1.0, -52);
    case at::kFloat:
      return std::ldexp(1.0, -23);
    case at::kHalf:
      return std::ldexp(1.0, -10);
    default:
      return std::ldexp(1.0, -7);
  }
}

// Whether `a` and `b` (same dtype and shape) differ by at most `ulps` units in the last place of
// their dtype, relative to the larger magnitude of the tensor (NaN matches NaN, nothing else).
// For outputs that go through a whole-tensor rescale (keep_grad_norm), whose scale factor may
// differ in its last bits between devices.
inline ::testing::AssertionResult within_ulps(const at::Tensor& a, const at::Tensor& b,
                                              double ulps) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype/shape " << a.scalar_type() << " " << a.sizes()
                                         << " != " << b.scalar_type() << " " << b.sizes();
  }
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  const auto x = a.cpu().to(at::kDouble);
  const auto y = b.cpu().to(at::kDouble);
  const auto nan_x = at::isnan(x);
  if (!at::equal(nan_x, at::isnan(y))) {
    return ::testing::AssertionFailure() << "NaN in different elements";
  }
  const double unit = unit_roundoff(a.scalar_type());
  const auto bound = ulps * unit * at::maximum(x.abs(), y.abs()) + ulps * unit * 1e-30;
  const auto bad = at::logical_and(at::logical_not(nan_x), (x - y).abs() > bound);
  const int64_t count = bad.sum().item<int64_t>();
  if (count == 0) return ::testing::AssertionSuccess();
  const int64_t first = bad.flatten().nonzero()[0][0].item<int64_t>();
  return ::testing::AssertionFailure() << count << " of " << a.numel() << " elements differ by more than "
                                       << ulps << " ulps; first at flat index " << first << ": "
                                       << x.flatten()[first].item<double>() << " vs "
                                       << y.flatten()[first].item<double>();
}

// Statistics of the CPU and of the GPU for the same inputs and draw: the counts (kept and
// conflict fractions) exactly, the mean purity to `purity_relative` (the two devices may add P
// in another order).
inline ::testing::AssertionResult same_statistics(const GradDropStatistics& gpu,
                                                  const GradDropStatistics& cpu,
                                                  double purity_relative = 1e-12) {
  const bool same = gpu.purity_elements == cpu.purity_elements &&
              gpu.kept_fraction == cpu.kept_fraction &&
              gpu.conflict_fraction == cpu.conflict_fraction &&
              std::abs(gpu.mean_purity - cpu.mean_purity) <=
                  purity_relative * std::max(std::abs(cpu.mean_purity), 1e-300);
  if (same) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "GPU " << gpu << " vs CPU " << cpu;
}

}  // namespace cuda_testing
}  // namespace graddrop
