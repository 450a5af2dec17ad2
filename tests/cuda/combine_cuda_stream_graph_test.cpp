// The CUDA combine on a non-default stream and inside CUDA graphs: a captured call draws new
// masks at every replay (the generator's state is read at replay, not baked in at capture), and
// each replay equals an eager call made from the same generator state.
#include <mutex>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct StreamCase {
  std::vector<int64_t> shape;
  bool marginalize;
  int64_t num_tasks;
  bool keep_grad_norm;
};

// Per element; marginalised fused (strip cached); marginalised split with the task table.
const StreamCase kCases[] = {
    {{64, 1000}, false, 3, false},
    {{8, 65536}, true, 2, true},
    {{100000, 8}, true, 11, false},
};

TEST(CudaStreams, NonDefaultStreamGivesTheSameResult) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1700;
  for (const auto& item : kCases) {
    auto generator = testing::seeded_generator(++salt);
    const auto activation =
        testing::random_activation(item.shape, at::kFloat, generator).to(at::kCUDA);
    const auto grads =
        cuda_testing::on_cuda(testing::random_grads(activation.cpu(), item.num_tasks, generator));
    const auto options = GradDropOptions(item.num_tasks)
                             .marginalize_batch(item.marginalize)
                             .keep_grad_norm(item.keep_grad_norm)
                             .seed(salt);
    const auto expected = combine(grads, activation, options);
    at::cuda::device_synchronize();
    auto stream = at::cuda::getStreamFromPool();
    at::Tensor actual;
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      actual = combine(grads, activation, options);
    }
    stream.synchronize();
    EXPECT_TRUE(cuda_testing::identical_bits(actual, expected)) << at::IntArrayRef(item.shape);
  }
}

TEST(CudaGraphs, ReplaysDrawNewMasksAndMatchEagerCalls) {
  GRADDROP_REQUIRE_CUDA();
  auto generator = at::cuda::detail::getDefaultCUDAGenerator();
  uint64_t salt = 1800;
  for (const auto& item : kCases) {
    auto cpu_generator = testing::seeded_generator(++salt);
    const auto activation =
        testing::random_activation(item.shape, at::kFloat, cpu_generator).to(at::kCUDA);
    const auto grads = cuda_testing::on_cuda(
        testing::random_grads(activation.cpu(), item.num_tasks, cpu_generator));
    // No seed and no U: the draw comes from the default CUDA generator.
    const auto options = GradDropOptions(item.num_tasks)
                             .marginalize_batch(item.marginalize)
                             .keep_grad_norm(item.keep_grad_norm);
    at::cuda::device_synchronize();

    at::cuda::CUDAGraph graph;
    at::Tensor captured;
    auto side = at::cuda::getStreamFromPool();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      combine(grads, activation, options);  // warm-up outside the capture
      side.synchronize();
      graph.capture_begin();
      captured = combine(grads, activation, options);
      graph.capture_end();
    }

    std::vector<at::Tensor> replays;
    for (int replay = 0; replay < 3; ++replay) {
      at::Tensor state;
      {
        std::lock_guard<std::mutex> lock(generator.mutex());
        state = generator.get_state();
      }
      graph.replay();
      at::cuda::device_synchronize();
      replays.push_back(captured.clone());
      {
        std::lock_guard<std::mutex> lock(generator.mutex());
        generator.set_state(state);
      }
      const auto eager = combine(grads, activation, options);
      at::cuda::device_synchronize();
      EXPECT_TRUE(cuda_testing::identical_bits(replays.back(), eager))
          << "replay " << replay << " shape " << at::IntArrayRef(item.shape);
    }
    EXPECT_FALSE(cuda_testing::identical_bits(replays[0], replays[1]))
        << at::IntArrayRef(item.shape);
    EXPECT_FALSE(cuda_testing::identical_bits(replays[1], replays[2]))
        << at::IntArrayRef(item.shape);
  }
}

}  // namespace
}  // namespace graddrop
