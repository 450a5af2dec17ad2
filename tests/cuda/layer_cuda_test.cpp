// GradDropLayer end to end on the GPU: a Linear trunk on CUDA, the layer, two or three Linear
// heads, the sum of the losses, one backward. The gradient that reaches the trunk's output must
// be combine applied by hand to the heads' gradients at the shared activation (same options,
// same fixed seed, so the same U), and the trunk's input gradient what that gives.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "cuda_test_helpers.h"
#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

constexpr int64_t kBatch = 16;
constexpr int64_t kInputs = 12;
constexpr int64_t kFeatures = 40;
constexpr int64_t kOutputs = 3;

struct CudaModel {
  torch::nn::Linear trunk{kInputs, kFeatures};
  std::vector<torch::nn::Linear> heads;
  at::Tensor input;
  std::vector<at::Tensor> targets;

  CudaModel(int64_t num_heads, uint64_t salt) {
    auto generator = testing::seeded_generator(salt);
    torch::NoGradGuard no_grad;
    const auto options = at::TensorOptions().dtype(at::kFloat);
    trunk->weight.copy_(at::randn(trunk->weight.sizes(), generator, options));
    trunk->bias.copy_(at::randn(trunk->bias.sizes(), generator, options));
    trunk->to(at::kCUDA);
    for (int64_t head = 0; head < num_heads; ++head) {
      heads.emplace_back(kFeatures, kOutputs);
      heads.back()->weight.copy_(at::randn(heads.back()->weight.sizes(), generator, options));
      heads.back()->bias.copy_(at::randn(heads.back()->bias.sizes(), generator, options));
      heads.back()->to(at::kCUDA);
      targets.push_back(at::randn({kBatch, kOutputs}, generator, options).to(at::kCUDA));
    }
    input = at::randn({kBatch, kInputs}, generator, options).to(at::kCUDA);
  }

  at::Tensor loss(size_t head, const at::Tensor& activation) {
    return (heads[head](activation) - targets[head]).pow(2).mean();
  }
};

struct Observed {
  at::Tensor at_activation;  // the gradient that reached the trunk's output
  at::Tensor at_input;       // the trunk's input gradient
};

Observed with_layer(CudaModel& model, const GradDropOptions& options) {
  GradDropLayer layer(options);
  const auto input = model.input.detach().requires_grad_();
  const auto activation = model.trunk(input);
  Observed observed;
  activation.register_hook([&observed](const at::Tensor& grad) {
    observed.at_activation = grad.clone();
  });
  const auto outputs = layer(activation);
  EXPECT_EQ(outputs.size(), model.heads.size());
  at::Tensor total;
  for (size_t head = 0; head < model.heads.size(); ++head) {
    const auto loss = model.loss(head, outputs[head]);
    total = total.defined() ? total + loss : loss;
  }
  total.backward();
  observed.at_input = input.grad().clone();
  return observed;
}

// The heads' gradients at the activation (autograd::grad per head), combine, backprop.
Observed by_hand(CudaModel& model, const GradDropOptions& options) {
  const auto input = model.input.detach().requires_grad_();
  const auto activation = model.trunk(input);
  std::vector<at::Tensor> grads;
  for (size_t head = 0; head < model.heads.size(); ++head) {
    grads.push_back(torch::autograd::grad({model.loss(head, activation)}, {activation}, {},
                                          /*retain_graph=*/true)[0]);
  }
  Observed observed;
  observed.at_activation = combine(grads, activation.detach(), options);
  activation.backward(observed.at_activation);
  observed.at_input = input.grad().clone();
  return observed;
}

TEST(CudaLayer, OneBackwardEqualsCombineByHand) {
  GRADDROP_REQUIRE_CUDA();
  struct Case {
    const char* name;
    GradDropOptions options;
  };
  const uint64_t seed = testing::test_seed() + 2500;
  const Case cases[] = {
      {"two heads", GradDropOptions(2)},
      {"two heads per element, leak", GradDropOptions(2).marginalize_batch(false).leak({0.25, 0})},
      {"three heads", GradDropOptions(3)},
      {"three heads sigmoid", GradDropOptions(3).keep_function(KeepFunction::kSigmoid).scale(2)},
  };
  uint64_t salt = 2500;
  for (const auto& item : cases) {
    SCOPED_TRACE(item.name);
    CudaModel model(item.options.num_tasks(), ++salt);
    const auto options = GradDropOptions(item.options).seed(seed + salt).offset(3);
    const auto actual = with_layer(model, options);
    const auto expected = by_hand(model, options);
    ASSERT_TRUE(actual.at_activation.defined());
    EXPECT_TRUE(actual.at_activation.is_cuda());
    EXPECT_TRUE(actual.at_input.is_cuda());
    EXPECT_TRUE(cuda_testing::identical_bits(actual.at_activation, expected.at_activation));
    EXPECT_TRUE(at::allclose(actual.at_input, expected.at_input, 1e-6, 1e-7))
        << actual.at_input.sub(expected.at_input).abs().max().item<float>();
    // GradDrop dropped something: the plain sum of the heads' gradients differs.
    const auto input = model.input.detach().requires_grad_();
    const auto activation = model.trunk(input);
    at::Tensor total;
    for (size_t head = 0; head < model.heads.size(); ++head) {
      const auto loss = model.loss(head, activation);
      total = total.defined() ? total + loss : loss;
    }
    total.backward();
    EXPECT_FALSE(at::allclose(input.grad(), actual.at_input, 1e-6, 1e-7));
  }
}

// Statistics recorded by a CUDA layer equal those of combine by hand.
TEST(CudaLayer, RecordsStatistics) {
  GRADDROP_REQUIRE_CUDA();
  CudaModel model(3, 2600);
  const auto options = GradDropOptions(3).seed(testing::test_seed() + 2600).record_statistics(true);
  GradDropLayer layer(options);
  const auto input = model.input.detach();
  const auto activation = model.trunk(input);
  const auto outputs = layer(activation);
  (model.loss(0, outputs[0]) + model.loss(1, outputs[1]) + model.loss(2, outputs[2])).backward();
  const auto recorded = layer->last_statistics();
  ASSERT_TRUE(recorded.has_value());

  const auto again = model.trunk(input);
  std::vector<at::Tensor> grads;
  for (size_t head = 0; head < 3; ++head) {
    grads.push_back(
        torch::autograd::grad({model.loss(head, again)}, {again}, {}, /*retain_graph=*/true)[0]);
  }
  GradDropStatistics expected;
  combine(grads, again.detach(), options, nullopt, nullopt, &expected);
  EXPECT_EQ(recorded->kept_fraction, expected.kept_fraction);
  EXPECT_EQ(recorded->mean_purity, expected.mean_purity);
  EXPECT_EQ(recorded->conflict_fraction, expected.conflict_fraction);
  EXPECT_EQ(recorded->purity_elements, kFeatures);
}

}  // namespace
}  // namespace graddrop
