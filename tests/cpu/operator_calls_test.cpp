// The argument sets of the GPU out-of-range tests (tests/cuda/combine_cuda_device_test.cpp), run
// through the same helper on the CPU: in range they combine, out of range the CPU refuses them.
// A change of the operator's signature or of its argument rules breaks this CPU test, not only
// the GPU suite that no CPU machine runs.
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "graddrop/combine.h"
#include "operator_calls.h"
#include "test_support.h"

namespace graddrop {
namespace {

TEST(OperatorCalls, GpuOutOfRangeArgumentSetsOnTheCpu) {
  auto generator = testing::seeded_generator(2800);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const bool marginalize : {false, true}) {
    const auto activation = at::randn({32, 100}, generator);
    const std::vector<at::Tensor> grads = {at::randn({32, 100}, generator),
                                           at::randn({32, 100}, generator)};
    const auto shape = purity_shape(activation, GradDropOptions(2).marginalize_batch(marginalize));
    const auto uniform = at::rand(shape, generator).mul_(0.999);
    const auto keep = at::rand(shape, generator);
    // In range: U alone, and U with f(P) (keep function 'custom').
    EXPECT_EQ(testing::call_combine_operator(activation, grads, marginalize, uniform, nullopt)
                  .sizes(),
              activation.sizes());
    EXPECT_EQ(testing::call_combine_operator(activation, grads, marginalize, uniform, keep).sizes(),
              activation.sizes());
    for (const float bad : {1.0f, -0.25f, 1.5f, nan}) {
      auto bad_uniform = uniform.clone();
      bad_uniform.view({-1})[17] = bad;
      EXPECT_THROW(
          testing::call_combine_operator(activation, grads, marginalize, bad_uniform, nullopt),
          c10::Error)
          << "U = " << bad;
    }
    for (const float bad : {1.25f, -0.5f, std::numeric_limits<float>::infinity()}) {
      auto bad_keep = keep.clone();
      bad_keep.view({-1})[17] = bad;
      EXPECT_THROW(
          testing::call_combine_operator(activation, grads, marginalize, uniform, bad_keep),
          c10::Error)
          << "f(P) = " << bad;
    }
  }
}

}  // namespace
}  // namespace graddrop
