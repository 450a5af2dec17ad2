// The CUDA combine on a non-default stream and inside CUDA graphs.
//
// Streams: every kernel and every allocation of a call must be ordered on the caller's current
// stream. The test makes that observable: the inputs are written on a side stream behind a long
// sleep kernel, and combine is called on that stream with no synchronisation, so a kernel that
// ran on another stream would read the buffers before they are written (they hold NaN then).
//
// Graphs: a call must read nothing back to the host, so that it can be captured; a captured call
// reads its inputs and the generator's state at replay, not at capture. Captured: an explicit U
// (changed between replays), the custom keep function path, every kernel path
// (testing::gpu_graph_generator_cases and gpu_graph_uniform_cases, whose paths the CPU suite
// checks on H100 and A100 tables), the default generator and a generator of the caller's.
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAGuard.h>
#include <gtest/gtest.h>
#include <torch/version.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "operator_calls.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct StreamCase {
  std::string name;
  std::vector<int64_t> shape;
  GradDropOptions options;
  bool with_statistics;
};

// Every kernel path (testing::gpu_stream_cases, whose paths the CPU suite checks on H100 and
// A100 tables), seeded; and the custom keep function (purity operator, f, then the kernel),
// whose {128, 300} x 3 plans as a fused cached strip over 48 KB.
std::vector<StreamCase> stream_cases() {
  std::vector<StreamCase> cases;
  uint64_t seed = 11;
  for (const auto& item : testing::gpu_stream_cases()) {
    cases.push_back({item.name, item.shape, item.options().seed(seed++), item.statistics});
  }
  cases.push_back({"custom keep function", {128, 300},
                   GradDropOptions(3).seed(seed).custom_keep_function(
                       [](const at::Tensor& purity) { return purity * purity; }),
                   true});
  return cases;
}

TEST(CudaStreams, KernelsRunOnTheCurrentStream) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1700;
  for (const auto& item : stream_cases()) {
    SCOPED_TRACE(item.name);
    const int64_t n = item.options.num_tasks();
    const auto inputs = cuda_testing::random_cuda_inputs(item.shape, at::kFloat, n, ++salt);
    GradDropStatistics expected_statistics;
    const auto expected = combine(inputs.grads, inputs.activation, item.options, nullopt,
                                  nullopt, item.with_statistics ? &expected_statistics : nullptr);

    // Buffers that hold NaN until the side stream writes the inputs into them.
    auto activation = at::full_like(inputs.activation, std::numeric_limits<float>::quiet_NaN());
    std::vector<at::Tensor> grads;
    for (const auto& grad : inputs.grads) {
      grads.push_back(at::full_like(grad, std::numeric_limits<float>::quiet_NaN()));
    }
    at::cuda::device_synchronize();

    auto stream = at::cuda::getStreamFromPool();
    at::Tensor actual;
    GradDropStatistics actual_statistics;
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      at::cuda::sleep(200 * 1000 * 1000);  // about 0.1 s at H200 clocks
      activation.copy_(inputs.activation);
      for (size_t task = 0; task < grads.size(); ++task) grads[task].copy_(inputs.grads[task]);
      // The caching allocator must not hand these buffers to the other stream early.
      activation.record_stream(stream);
      for (auto& grad : grads) grad.record_stream(stream);
      actual = combine(grads, activation, item.options, nullopt, nullopt,
                       item.with_statistics ? &actual_statistics : nullptr);
    }
    stream.synchronize();
    EXPECT_TRUE(cuda_testing::identical_bits(actual, expected)) << at::IntArrayRef(item.shape);
    if (item.with_statistics) {
      EXPECT_EQ(actual_statistics.kept_fraction, expected_statistics.kept_fraction);
      EXPECT_EQ(actual_statistics.mean_purity, expected_statistics.mean_purity);
      EXPECT_EQ(actual_statistics.conflict_fraction, expected_statistics.conflict_fraction);
    }
  }
}

at::Tensor generator_state(at::Generator& generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void restore_generator_state(at::Generator& generator, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

// Captures `call` on a side stream after one warm-up call there; returns its captured output.
template <typename Call>
at::Tensor capture(at::cuda::CUDAGraph& graph, Call call) {
  at::cuda::device_synchronize();
  auto side = at::cuda::getStreamFromPool();
  at::Tensor captured;
  {
    c10::cuda::CUDAStreamGuard guard(side);
    call();  // warm-up outside the capture (allocator, kernel attributes)
    side.synchronize();
    graph.capture_begin();
    captured = call();
    graph.capture_end();
  }
  at::cuda::device_synchronize();
  return captured;
}

// Replays that draw from `generator`: each replay draws new masks, and equals an eager call
// made from the same generator state.
template <typename Call>
void expect_replays_match_eager(at::cuda::CUDAGraph& graph, const at::Tensor& captured,
                                at::Generator generator, Call eager, const std::string& what) {
  std::vector<at::Tensor> replays;
  for (int replay = 0; replay < 3; ++replay) {
    const auto state = generator_state(generator);
    graph.replay();
    at::cuda::device_synchronize();
    replays.push_back(captured.clone());
    restore_generator_state(generator, state);
    const auto expected = eager();
    at::cuda::device_synchronize();
    EXPECT_TRUE(cuda_testing::identical_bits(replays.back(), expected))
        << what << " replay " << replay;
  }
  EXPECT_FALSE(cuda_testing::identical_bits(replays[0], replays[1])) << what;
  EXPECT_FALSE(cuda_testing::identical_bits(replays[1], replays[2])) << what;
}

// No seed and no U: the draw comes from the default CUDA generator.
TEST(CudaGraphs, DefaultGeneratorReplaysDrawAnewAndMatchEagerCalls) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1800;
  for (const auto& item : testing::gpu_graph_generator_cases()) {
    const auto options = item.options();
    const auto inputs =
        cuda_testing::random_cuda_inputs(item.shape, at::kFloat, item.num_tasks, ++salt);
    const auto call = [&] { return combine(inputs.grads, inputs.activation, options); };
    at::cuda::CUDAGraph graph;
    const auto captured = capture(graph, call);
    expect_replays_match_eager(graph, captured, at::cuda::detail::getDefaultCUDAGenerator(), call,
                               item.name);
  }
}

// A generator of the caller's, registered with the graph (PyTorch >= 2.4 lets a graph own the
// replay state of generators other than the default one).
TEST(CudaGraphs, CallersGeneratorReplaysDrawAnewAndMatchEagerCalls) {
  GRADDROP_REQUIRE_CUDA();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
  uint64_t salt = 1900;
  for (const bool marginalize : {false, true}) {
    const auto inputs = cuda_testing::random_cuda_inputs({256, 1000}, at::kFloat, 3, ++salt);
    auto generator = cuda_testing::cuda_generator(testing::test_seed() + salt);
    const auto options = GradDropOptions(3).marginalize_batch(marginalize);
    const auto default_offset = at::cuda::detail::getDefaultCUDAGenerator().get_offset();
    const auto call = [&] {
      return combine(inputs.grads, inputs.activation, options, generator);
    };
    at::cuda::CUDAGraph graph;
    graph.register_generator_state(generator);
    const auto captured = capture(graph, call);
    expect_replays_match_eager(graph, captured, generator, call,
                               marginalize ? "marginalised" : "per element");
    EXPECT_EQ(at::cuda::detail::getDefaultCUDAGenerator().get_offset(), default_offset)
        << "the default generator was used";
  }
#else
  GTEST_SKIP() << "CUDAGraph::register_generator_state needs PyTorch 2.4 or later";
#endif
}

// An explicit U is read at replay: a new U written into the captured buffer gives the result of
// an eager call with that U.
TEST(CudaGraphs, ExplicitUniformIsReadAtReplay) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 2000;
  for (const auto& item : testing::gpu_graph_uniform_cases()) {
    const auto options = item.options();
    const auto inputs =
        cuda_testing::random_cuda_inputs(item.shape, at::kFloat, item.num_tasks, ++salt);
    auto generator = cuda_testing::cuda_generator(testing::test_seed() + salt);
    const auto cuda_float = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    auto uniform = at::rand(purity_shape(inputs.activation, options), generator, cuda_float);
    const auto call = [&] {
      return combine(inputs.grads, inputs.activation, options, nullopt, uniform);
    };
    const uint64_t default_offset = at::cuda::detail::getDefaultCUDAGenerator().get_offset();
    at::cuda::CUDAGraph graph;
    const auto captured = capture(graph, call);
    std::vector<at::Tensor> replays;
    for (int replay = 0; replay < 2; ++replay) {
      uniform.copy_(at::rand(uniform.sizes(), generator, cuda_float));
      graph.replay();
      at::cuda::device_synchronize();
      replays.push_back(captured.clone());
      EXPECT_TRUE(cuda_testing::identical_bits(replays.back(), call()))
          << item.name << " replay " << replay;
    }
    EXPECT_FALSE(cuda_testing::identical_bits(replays[0], replays[1])) << item.name;
    EXPECT_EQ(at::cuda::detail::getDefaultCUDAGenerator().get_offset(), default_offset)
        << item.name << ": an explicit U must touch no generator";
  }
}

// The custom keep function path (purity operator, the user's f, the kernel) is capturable, and
// reads the gradients at replay; with a seed, and with the default generator.
TEST(CudaGraphs, CustomKeepFunctionIsCapturable) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 2100;
  for (const bool marginalize : {true, false}) {
    const auto keep = [](const at::Tensor& purity) { return purity * purity; };
    const auto inputs = cuda_testing::random_cuda_inputs({128, 300}, at::kFloat, 3, ++salt);
    // Buffers the graph reads, refilled between replays.
    auto activation = inputs.activation.clone();
    std::vector<at::Tensor> grads;
    for (const auto& grad : inputs.grads) grads.push_back(grad.clone());

    const auto seeded =
        GradDropOptions(3).marginalize_batch(marginalize).seed(salt).custom_keep_function(keep);
    const auto seeded_call = [&] { return combine(grads, activation, seeded); };
    at::cuda::CUDAGraph seeded_graph;
    const auto seeded_output = capture(seeded_graph, seeded_call);
    for (int replay = 0; replay < 2; ++replay) {
      const auto fresh =
          cuda_testing::random_cuda_inputs({128, 300}, at::kFloat, 3, salt * 10 + replay);
      activation.copy_(fresh.activation);
      for (size_t task = 0; task < grads.size(); ++task) grads[task].copy_(fresh.grads[task]);
      seeded_graph.replay();
      at::cuda::device_synchronize();
      EXPECT_TRUE(cuda_testing::identical_bits(seeded_output,
                                               combine(fresh.grads, fresh.activation, seeded)))
          << "marginalize " << marginalize << " replay " << replay;
    }

    const auto drawn = GradDropOptions(3).marginalize_batch(marginalize).custom_keep_function(keep);
    const auto drawn_call = [&] { return combine(grads, activation, drawn); };
    at::cuda::CUDAGraph drawn_graph;
    const auto drawn_output = capture(drawn_graph, drawn_call);
    expect_replays_match_eager(drawn_graph, drawn_output,
                               at::cuda::detail::getDefaultCUDAGenerator(), drawn_call,
                               marginalize ? "custom, marginalised" : "custom, per element");
  }
}

}  // namespace
}  // namespace graddrop
