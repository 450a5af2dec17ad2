// Which device a call runs on, and what the GPU makes of out-of-range explicit inputs.
//
// Devices: an activation on cuda:1 while the current device is 0 must run on cuda:1 (the
// launchers take a device guard) and give what cuda:0 gives for the same seed.
//
// Out of range: on a GPU an explicit U or f(P) is not range-checked on the host (that would read
// it back: a synchronisation, and an error under graph capture). Instead a U outside [0, 1) or an
// f(P) outside [0, 1] makes the coefficients of that element of P NaN, so exactly the affected
// outputs are NaN: the element (per element) or the feature column (marginalised). A NaN purity
// does the same even when f(P) is given. The CPU refuses the same inputs with c10::Error. The
// operator is called through the dispatcher, as Python does (keep_probability has no C++
// option), with keep_function 'custom' whenever f(P) is given.
#include <limits>
#include <vector>

#include <c10/cuda/CUDAGuard.h>
#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "operator_calls.h"
#include "test_support.h"

namespace graddrop {
namespace {

TEST(CudaDevices, ActivationOnTheSecondGpu) {
  GRADDROP_REQUIRE_CUDA();
  if (torch::cuda::device_count() < 2) {
    GTEST_SKIP() << "needs two GPUs, this machine has " << torch::cuda::device_count();
  }
  c10::cuda::CUDAGuard current(0);
  uint64_t salt = 2700;
  for (const bool marginalize : {false, true}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{64, 1000}, {4096, 100}}) {
      const auto options = GradDropOptions(3).marginalize_batch(marginalize).seed(++salt);
      const auto inputs = cuda_testing::random_cuda_inputs(shape, at::kFloat, 3, salt);
      const auto on_first = combine(inputs.grads, inputs.activation, options);
      const at::Device second(at::kCUDA, 1);
      std::vector<at::Tensor> grads;
      for (const auto& grad : inputs.grads) grads.push_back(grad.to(second));
      GradDropStatistics statistics;
      const auto on_second = combine(grads, inputs.activation.to(second), options, nullopt,
                                     nullopt, &statistics);
      EXPECT_EQ(on_second.device(), second);
      EXPECT_EQ(c10::cuda::current_device(), 0) << "the call changed the current device";
      EXPECT_TRUE(cuda_testing::identical_bits(on_second, on_first)) << at::IntArrayRef(shape);
      // The default generator of cuda:1 draws there too.
      const auto drawn = combine(grads, inputs.activation.to(second), GradDropOptions(3));
      EXPECT_EQ(drawn.device(), second);
    }
  }
}

// The operator with the explicit tensors given (testing::call_combine_operator, which the CPU
// suite runs with these same arguments: tests/cpu/operator_calls_test.cpp).
at::Tensor call_operator(const at::Tensor& activation, const std::vector<at::Tensor>& grads,
                         bool marginalize, const optional<at::Tensor>& uniform,
                         const optional<at::Tensor>& keep_probability) {
  return testing::call_combine_operator(activation, grads, marginalize, uniform, keep_probability);
}

// Which output elements a bad element of P affects: itself, or its whole feature column.
at::Tensor affected(const at::Tensor& bad_purity_elements, const at::Tensor& activation,
                    bool marginalize) {
  return marginalize ? bad_purity_elements.unsqueeze(0).expand(activation.sizes())
                     : bad_purity_elements;
}

struct BadCase {
  const char* name;
  bool uniform;  // else keep_probability
  float value;
};

TEST(CudaOutOfRange, ExplicitUniformOrKeepProbabilityGivesNaNExactlyThere) {
  GRADDROP_REQUIRE_CUDA();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const BadCase cases[] = {
      {"U = 1", true, 1.0f},         {"U = -0.25", true, -0.25f},
      {"U = 1.5", true, 1.5f},       {"U = NaN", true, nan},
      {"f(P) = 1.25", false, 1.25f}, {"f(P) = -0.5", false, -0.5f},
      {"f(P) = +Inf", false, std::numeric_limits<float>::infinity()},
  };
  uint64_t salt = 2800;
  for (const bool marginalize : {false, true}) {
    for (const auto& item : cases) {
      SCOPED_TRACE(item.name);
      const auto inputs = cuda_testing::random_cuda_inputs({32, 100}, at::kFloat, 2, ++salt);
      const auto shape = purity_shape(inputs.activation, GradDropOptions(2).marginalize_batch(marginalize));
      auto generator = cuda_testing::cuda_generator(salt);
      const auto cuda_float = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
      // Good values everywhere, a bad one at a few elements of P.
      auto uniform = at::rand(shape, generator, cuda_float).mul_(0.999);
      auto keep = at::rand(shape, generator, cuda_float);
      auto bad = at::zeros(shape, at::TensorOptions().device(at::kCUDA).dtype(at::kBool));
      auto flat_bad = bad.view({-1});
      for (const int64_t index : {int64_t(0), int64_t(17), bad.numel() - 1}) {
        flat_bad[index] = true;
      }
      auto& target = item.uniform ? uniform : keep;
      target.masked_fill_(bad, item.value);
      const optional<at::Tensor> given_keep =
          item.uniform ? optional<at::Tensor>() : optional<at::Tensor>(keep);
      const auto output =
          call_operator(inputs.activation, inputs.grads, marginalize, uniform, given_keep);
      const auto expected_nan = affected(bad, inputs.activation, marginalize);
      EXPECT_TRUE(at::equal(at::isnan(output).cpu(), expected_nan.cpu()))
          << "marginalize " << marginalize << ": NaN in "
          << at::isnan(output).sum().item<int64_t>() << " elements, expected "
          << expected_nan.sum().item<int64_t>();

      // The CPU refuses the same inputs.
      EXPECT_THROW(call_operator(inputs.activation.cpu(), cuda_testing::on_cpu(inputs.grads),
                                 marginalize, uniform.cpu(),
                                 given_keep ? optional<at::Tensor>(keep.cpu())
                                            : optional<at::Tensor>()),
                   c10::Error);
    }
  }
}

// A NaN purity (an infinite gradient: Inf / Inf) with f(P) given as a number: the affected
// coefficients are still NaN, whatever f(P) says. An Inf gradient times a coefficient of 0 or 1
// would give NaN or Inf; only a NaN coefficient gives NaN for sure, and in marginalised mode it
// spreads over the whole feature column.
TEST(CudaOutOfRange, NaNPurityWithExplicitKeepProbabilityGivesNaN) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 2900;
  for (const bool marginalize : {false, true}) {
    auto inputs = cuda_testing::random_cuda_inputs({32, 100}, at::kFloat, 2, ++salt);
    inputs.grads[0][4][9] = std::numeric_limits<double>::infinity();
    const auto shape =
        purity_shape(inputs.activation, GradDropOptions(2).marginalize_batch(marginalize));
    const auto cuda_float = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
    const auto keep = at::full(shape, 0.75, cuda_float);
    const auto uniform = at::full(shape, 0.5, cuda_float);
    const auto output = call_operator(inputs.activation, inputs.grads, marginalize, uniform, keep);
    auto expected_nan = at::zeros({32, 100}, at::kBool);
    if (marginalize) {
      expected_nan.select(1, 9).fill_(true);
    } else {
      expected_nan[4][9] = true;
    }
    EXPECT_TRUE(at::equal(at::isnan(output).cpu(), expected_nan))
        << "marginalize " << marginalize << ": NaN in " << at::isnan(output).sum().item<int64_t>()
        << " elements";
  }
}

}  // namespace
}  // namespace graddrop
