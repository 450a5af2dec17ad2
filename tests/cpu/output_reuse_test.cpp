// combine_out and the layer's backward writing its result into a head gradient that nothing
// else holds: the same bits as a fresh output, and never a tensor someone else can still see.
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> result;
  for (const auto& tensor : tensors) result.push_back(tensor.defined() ? tensor.clone() : tensor);
  return result;
}

TEST(CombineOut, WritingIntoATaskGradientGivesCombinesBits) {
  auto generator = testing::seeded_generator(901);
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    for (const bool marginalize : {false, true}) {
      for (const bool statistics_and_norm : {false, true}) {
        // 3 tasks: a compile-time task count in the kernels; 9 and 40: the run-time one, which
        // accumulates over the tasks (in a buffer, not in the output that may be a task's).
        for (const int64_t n : {3, 9, 40}) {
          const auto options = GradDropOptions(n)
                                   .marginalize_batch(marginalize)
                                   .keep_grad_norm(statistics_and_norm)
                                   .leak(testing::mixed_leaks(n, generator))
                                   .seed(77);
          SCOPED_TRACE(testing::describe(options) + " " + c10::toString(dtype));
          const auto activation = testing::random_activation({37, 301}, dtype, generator);
          const auto grads = testing::random_grads(activation, n, generator);
          GradDropStatistics expected_statistics;
          const auto expected =
              combine(grads, activation, options, nullopt, nullopt, &expected_statistics);
          for (const int64_t target : {int64_t(0), int64_t(1), n / 2, n - 1}) {
            auto own = clones(grads);
            auto out = own[static_cast<size_t>(target)];
            GradDropStatistics statistics;
            combine_out(out, own, activation, options, nullopt, nullopt, &statistics);
            EXPECT_TRUE(testing::bitwise_equal(out, expected)) << "out = grads[" << target << "]";
            EXPECT_TRUE(testing::statistics_equal(statistics, expected_statistics, 0.0));
            // The other gradients are untouched.
            for (int64_t task = 0; task < n; ++task) {
              if (task == target) continue;
              EXPECT_TRUE(testing::bitwise_equal(own[static_cast<size_t>(task)],
                                                 grads[static_cast<size_t>(task)]));
            }
          }
        }
      }
    }
  }
}

TEST(CombineOut, RefusesAnOutOfTheWrongShapeOrDtype) {
  const auto activation = at::randn({4, 8});
  const std::vector<at::Tensor> grads{at::randn({4, 8}), at::randn({4, 8})};
  auto wrong_shape = at::empty({4, 9});
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine_out(wrong_shape, grads, activation); }, {"out has shape [4, 9]"}));
  auto wrong_dtype = at::empty({4, 8}, at::kDouble);
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine_out(wrong_dtype, grads, activation); }, {"out has dtype Double"}));
  auto strided = at::empty({8, 4}).t();
  EXPECT_TRUE(testing::throws_error_containing([&] { combine_out(strided, grads, activation); },
                                               {"out must be a contiguous"}));
}

// combine_out is an in-place write: it refuses what would silently cut a gradient path, and it
// bumps out's version so that a backward which saved out before the write refuses to run.
TEST(CombineOut, RefusesInputsThatRequireGradAndLeavesOutUntouched) {
  const auto activation = at::randn({4, 8});
  const std::vector<at::Tensor> grads{at::randn({4, 8}).requires_grad_(true), at::randn({4, 8})};
  auto out = at::randn({4, 8});
  const auto before = out.clone();
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine_out(out, grads, activation); },
      {"graddrop::combine.out has no derivative", "grads[0] requires grad"}));
  auto out_requiring_grad = at::randn({4, 8}).requires_grad_(true);
  const std::vector<at::Tensor> detached{grads[0].detach(), grads[1]};
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine_out(out_requiring_grad, detached, activation); },
      {"writes into out, which requires grad"}));
  at::Tensor inference_out;
  {
    c10::InferenceMode inference;
    inference_out = at::zeros({4, 8});
  }
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine_out(inference_out, detached, activation); },
      {"out is an inference tensor"}));
  EXPECT_TRUE(testing::bitwise_equal(out, before));
  EXPECT_EQ(inference_out.abs().sum().item<float>(), 0.0f);
  // With grad mode off the same call is a plain write.
  at::NoGradGuard no_grad;
  combine_out(out, grads, activation, GradDropOptions(2).seed(3));
  EXPECT_TRUE(testing::bitwise_equal(out, combine(grads, activation, GradDropOptions(2).seed(3))));
}

TEST(CombineOut, BumpsTheVersionOfOut) {
  const auto activation = at::randn({4, 8});
  const std::vector<at::Tensor> grads{at::randn({4, 8}), at::randn({4, 8})};
  auto out = at::randn({4, 8});
  const auto version = out._version();
  combine_out(out, grads, activation);
  EXPECT_EQ(out._version(), version + 1);
  // A product that saved out for its backward sees the write.
  auto weight = at::randn({4, 8}).requires_grad_(true);
  auto product = (weight * out).sum();
  combine_out(out, grads, activation);
  EXPECT_TRUE(testing::throws_error_containing([&] { product.backward(); },
                                               {"modified by an inplace operation"}));
}

// A trunk activation that is a leaf, so its .grad is the layer's output itself (autograd keeps
// an incoming gradient it alone holds), and a hook per head that notes its gradient's address
// and keeps a copy (or, with `keep`, the gradient itself).
struct ReuseProbe {
  at::Tensor activation = at::randn({16, 40}, at::kFloat).requires_grad_(true);
  GradDropLayer layer{GradDropOptions(2).seed(5)};
  std::vector<const void*> head_addresses = std::vector<const void*>(2, nullptr);
  std::vector<at::Tensor> head_gradients = std::vector<at::Tensor>(2);

  at::Tensor backward(bool keep) {
    auto shared = layer(activation);
    for (size_t head = 0; head < shared.size(); ++head) {
      shared[head].register_hook([this, keep, head](const at::Tensor& grad) {
        head_addresses[head] = grad.data_ptr();
        head_gradients[head] = keep ? grad : grad.clone();
      });
    }
    const auto weights = at::randn({40, 3});
    ((shared[0].mm(weights)).pow(2).sum() + (shared[1].mm(weights.flip(1))).sum()).backward();
    return activation.grad();
  }
  at::Tensor expected() const {
    return combine(head_gradients, activation.detach(), layer->options);
  }
};

// LibTorch 2.x's autograd hands a custom node the only reference to each incoming gradient;
// 1.13's keeps a second one for the duration of the call, so there the layer must (and does)
// leave the gradients alone and allocate.
constexpr bool kAutogradHandsGradientsOver = TORCH_VERSION_MAJOR >= 2;

TEST(LayerOutputReuse, BackwardWritesIntoAHeadGradientNothingElseHolds) {
  ReuseProbe probe;
  const auto result = probe.backward(/*keep=*/false);
  const bool reused = result.data_ptr() == probe.head_addresses[0] ||
                      result.data_ptr() == probe.head_addresses[1];
  EXPECT_EQ(reused, kAutogradHandsGradientsOver)
      << (reused ? "a head gradient that autograd still holds was overwritten"
                 : "the layer's output is a fresh tensor although a head gradient was free");
  EXPECT_TRUE(testing::bitwise_equal(result, probe.expected()));
}

TEST(LayerOutputReuse, AGradientAHookKeepsIsNeverOverwritten) {
  ReuseProbe probe;
  const auto result = probe.backward(/*keep=*/true);
  for (const auto& kept : probe.head_gradients) EXPECT_NE(result.data_ptr(), kept.data_ptr());
  // The kept gradients still hold the heads' values: combining them again gives the result.
  EXPECT_TRUE(testing::bitwise_equal(result, probe.expected()));
}

}  // namespace
}  // namespace graddrop
