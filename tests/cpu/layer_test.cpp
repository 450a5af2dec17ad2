// GradDropLayer and GradDropFunction end to end: a small multitask model (Linear trunk, Linear
// heads), one backward on the summed losses, compared with the same computation done by hand
// (each head's gradient at the shared activation, graddrop::combine, backprop into the trunk).
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

constexpr int64_t kBatch = 6;
constexpr int64_t kInputs = 5;
constexpr int64_t kFeatures = 8;
constexpr int64_t kOutputs = 3;

// A trunk and `num_heads` heads with parameters drawn from `generator`, a batch and targets.
struct Model {
  torch::nn::Linear trunk{kInputs, kFeatures};
  std::vector<torch::nn::Linear> heads;
  at::Tensor input;
  std::vector<at::Tensor> targets;

  Model(int64_t num_heads, at::Generator& generator) {
    torch::NoGradGuard no_grad;
    const auto options = at::TensorOptions().dtype(at::kFloat);
    trunk->weight.copy_(at::randn(trunk->weight.sizes(), generator, options));
    trunk->bias.copy_(at::randn(trunk->bias.sizes(), generator, options));
    for (int64_t head = 0; head < num_heads; ++head) {
      heads.emplace_back(kFeatures, kOutputs);
      heads.back()->weight.copy_(at::randn(heads.back()->weight.sizes(), generator, options));
      heads.back()->bias.copy_(at::randn(heads.back()->bias.sizes(), generator, options));
      targets.push_back(at::randn({kBatch, kOutputs}, generator, options));
    }
    input = at::randn({kBatch, kInputs}, generator, options);
  }

  at::Tensor shared() { return torch::tanh(trunk(input)); }

  at::Tensor loss(size_t head, const at::Tensor& activation) {
    return (heads[head](activation) - targets[head]).pow(2).mean();
  }

  std::vector<at::Tensor> parameters() {
    std::vector<at::Tensor> result = {trunk->weight, trunk->bias};
    for (auto& head : heads) {
      result.push_back(head->weight);
      result.push_back(head->bias);
    }
    return result;
  }

  void zero_grad() {
    trunk->zero_grad();
    for (auto& head : heads) head->zero_grad();
  }

  // The gradients of every parameter (a zero tensor where none arrived), cloned.
  std::vector<at::Tensor> gradients() {
    std::vector<at::Tensor> result;
    for (auto& parameter : parameters()) {
      result.push_back(parameter.grad().defined() ? parameter.grad().clone()
                                                  : at::zeros_like(parameter));
    }
    return result;
  }
};

// What the layer must compute, by hand: per-head gradients at the activation, combine, backprop
// into the trunk. `used` says which heads enter the loss (the others get no gradient).
std::vector<at::Tensor> graddrop_by_hand(Model& model, const GradDropOptions& options,
                                         const std::vector<bool>& used,
                                         optional<at::Generator> generator = nullopt,
                                         GradDropStatistics* statistics = nullptr) {
  model.zero_grad();
  const auto activation = model.shared();
  std::vector<at::Tensor> grads;
  for (size_t head = 0; head < used.size(); ++head) {
    if (!used[head]) {
      grads.emplace_back();
      continue;
    }
    grads.push_back(torch::autograd::grad({model.loss(head, activation)}, {activation}, {},
                                          /*retain_graph=*/true)[0]);
  }
  const auto combined =
      combine(grads, activation.detach(), options, std::move(generator), nullopt, statistics);
  activation.backward(combined);
  // Head parameters got nothing from autograd::grad: give them their plain gradients.
  for (size_t head = 0; head < used.size(); ++head) {
    if (used[head]) model.loss(head, activation.detach()).backward();
  }
  return model.gradients();
}

std::vector<at::Tensor> with_layer(Model& model, GradDropLayer& layer,
                                   const std::vector<bool>& used) {
  model.zero_grad();
  const auto outputs = layer(model.shared());
  EXPECT_EQ(outputs.size(), used.size());
  at::Tensor total;
  for (size_t head = 0; head < used.size(); ++head) {
    if (!used[head]) continue;
    const auto loss = model.loss(head, outputs[head]);
    total = total.defined() ? total + loss : loss;
  }
  total.backward();
  return model.gradients();
}

std::vector<at::Tensor> without_graddrop(Model& model, const std::vector<bool>& used) {
  model.zero_grad();
  const auto activation = model.shared();
  at::Tensor total;
  for (size_t head = 0; head < used.size(); ++head) {
    if (used[head]) total = total.defined() ? total + model.loss(head, activation) : model.loss(head, activation);
  }
  total.backward();
  return model.gradients();
}

::testing::AssertionResult same_gradients(const std::vector<at::Tensor>& actual,
                                          const std::vector<at::Tensor>& expected) {
  if (actual.size() != expected.size()) return ::testing::AssertionFailure() << "count differs";
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!at::allclose(actual[i], expected[i], 1e-6, 1e-7)) {
      return ::testing::AssertionFailure() << "parameter " << i << ":\n"
                                           << actual[i] << "\nexpected\n" << expected[i];
    }
  }
  return ::testing::AssertionSuccess();
}

bool trunk_differs(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  return !at::allclose(a[0], b[0], 1e-6, 1e-7) || !at::allclose(a[1], b[1], 1e-6, 1e-7);
}

struct LayerCase {
  const char* name;
  GradDropOptions options;
  std::vector<bool> used;
};

std::vector<LayerCase> layer_cases() {
  return {
      {"two heads", GradDropOptions(2), {true, true}},
      {"two heads per element, leak", GradDropOptions(2).marginalize_batch(false).leak({0.2, 0}),
       {true, true}},
      {"three heads", GradDropOptions(3), {true, true, true}},
      {"three heads sigmoid keep_grad_norm",
       GradDropOptions(3).keep_function(KeepFunction::kSigmoid).scale(2).keep_grad_norm(true),
       {true, true, true}},
      {"three heads, one unused", GradDropOptions(3).zero_sign(ZeroSign::kKeep),
       {true, false, true}},
  };
}

// options.seed(): the layer and the hand computation draw the same U.
TEST(Layer, MatchesCombineByHandWithExplicitSeed) {
  auto generator = testing::seeded_generator(301);
  for (const auto& c : layer_cases()) {
    SCOPED_TRACE(c.name);
    Model model(static_cast<int64_t>(c.used.size()), generator);
    const auto options = GradDropOptions(c.options).seed(testing::test_seed()).offset(11);
    GradDropLayer layer(options);
    const auto actual = with_layer(model, layer, c.used);
    const auto expected = graddrop_by_hand(model, options, c.used);
    EXPECT_TRUE(same_gradients(actual, expected));
    // The heads see their own gradients unchanged; the trunk sees GradDrop's.
    const auto plain = without_graddrop(model, c.used);
    for (size_t i = 2; i < actual.size(); ++i) {
      EXPECT_TRUE(at::allclose(actual[i], plain[i], 1e-6, 1e-7)) << "head parameter " << i;
    }
  }
}

// The default generator: reseeding with torch::manual_seed before each run gives the same draw.
TEST(Layer, MatchesCombineByHandWithManualSeed) {
  auto generator = testing::seeded_generator(302);
  const uint64_t seed = testing::test_seed() + 302;
  for (const auto& c : layer_cases()) {
    SCOPED_TRACE(c.name);
    Model model(static_cast<int64_t>(c.used.size()), generator);
    GradDropLayer layer(c.options);
    torch::manual_seed(seed);
    const auto actual = with_layer(model, layer, c.used);
    torch::manual_seed(seed);
    GradDropStatistics statistics;
    const auto expected = graddrop_by_hand(model, c.options, c.used, nullopt, &statistics);
    EXPECT_TRUE(same_gradients(actual, expected));
    // GradDrop changed the trunk's gradient wherever the draw dropped something.
    const auto plain = without_graddrop(model, c.used);
    bool dropped = false;
    for (double kept : statistics.kept_fraction) dropped |= kept < 1.0;
    if (dropped && !c.options.keep_grad_norm()) {
      EXPECT_TRUE(trunk_differs(actual, plain));
    }
  }
}

// A generator given to the layer is the one it draws from.
TEST(Layer, UsesItsOwnGenerator) {
  auto generator = testing::seeded_generator(303);
  Model model(3, generator);
  const uint64_t seed = testing::test_seed() + 303;
  GradDropLayer layer(GradDropOptions(3));
  layer->set_generator(at::detail::createCPUGenerator(seed));
  const auto before = at::detail::getDefaultCPUGenerator().get_state();
  const auto actual = with_layer(model, layer, {true, true, true});
  EXPECT_TRUE(at::equal(at::detail::getDefaultCPUGenerator().get_state(), before))
      << "the default generator was used";
  const auto expected = graddrop_by_hand(model, GradDropOptions(3), {true, true, true},
                                         at::detail::createCPUGenerator(seed));
  EXPECT_TRUE(same_gradients(actual, expected));
}

// Each forward takes the options as they are then: editing them before backward changes
// nothing in a graph already built.
TEST(Layer, ForwardCapturesTheOptions) {
  auto generator = testing::seeded_generator(304);
  Model model(2, generator);
  const auto options = GradDropOptions(2).seed(5);
  GradDropLayer layer(options);
  model.zero_grad();
  const auto outputs = layer(model.shared());
  layer->options.leak({1, 1});
  (model.loss(0, outputs[0]) + model.loss(1, outputs[1])).backward();
  const auto actual = model.gradients();
  EXPECT_TRUE(same_gradients(actual, graddrop_by_hand(model, options, {true, true})));
}

// Eval mode, NoGradGuard, and an activation that needs no gradient: the outputs are the
// activation itself (same TensorImpl), no GradDrop node.
TEST(Layer, IdentityWithoutAutograd) {
  auto generator = testing::seeded_generator(305);
  GradDropLayer layer(GradDropOptions(3));
  const auto leaf = at::randn({4, 5}, generator).requires_grad_();
  {
    layer->eval();
    const auto outputs = layer(leaf);
    ASSERT_EQ(outputs.size(), 3u);
    for (const auto& output : outputs) {
      EXPECT_TRUE(output.is_same(leaf));
      EXPECT_FALSE(output.grad_fn());
    }
    layer->train();
  }
  {
    torch::NoGradGuard no_grad;
    for (const auto& output : layer(leaf)) {
      EXPECT_TRUE(output.is_same(leaf));
      EXPECT_FALSE(output.grad_fn());
    }
  }
  const auto constant = at::randn({4, 5}, generator);
  for (const auto& output : layer(constant)) {
    EXPECT_TRUE(output.is_same(constant));
    EXPECT_FALSE(output.requires_grad());
  }
  // Training with autograd: aliases (same storage, no copy) behind one GradDrop node.
  const auto outputs = layer(leaf);
  ASSERT_EQ(outputs.size(), 3u);
  for (const auto& output : outputs) {
    EXPECT_FALSE(output.is_same(leaf));
    EXPECT_EQ(output.data_ptr(), leaf.data_ptr());
    ASSERT_TRUE(output.grad_fn());
    EXPECT_NE(output.grad_fn()->name().find("GradDropFunction"), std::string::npos)
        << output.grad_fn()->name();
    EXPECT_EQ(output.grad_fn().get(), outputs[0].grad_fn().get());
  }
}

TEST(Layer, PrettyPrint) {
  std::ostringstream default_text;
  GradDropLayer(GradDropOptions(2))->pretty_print(default_text);
  EXPECT_EQ(default_text.str(),
            "graddrop::GradDropLayer(num_tasks=2, leak=[0, 0], sign_source=activation_sign, "
            "marginalize_batch=true, keep_function=linear, scale=1, zero_sign=drop, "
            "epsilon=1e-07, keep_grad_norm=false)");
  std::ostringstream custom_text;
  GradDropLayer(GradDropOptions(3)
                    .leak({0, 0.5, 1})
                    .sign_source(SignSource::kNone)
                    .marginalize_batch(false)
                    .keep_function(KeepFunction::kSigmoid)
                    .scale(2.5)
                    .zero_sign(ZeroSign::kKeep)
                    .epsilon(1e-6)
                    .keep_grad_norm(true))
      ->pretty_print(custom_text);
  EXPECT_EQ(custom_text.str(),
            "graddrop::GradDropLayer(num_tasks=3, leak=[0, 0.5, 1], sign_source=none, "
            "marginalize_batch=false, keep_function=sigmoid, scale=2.5, zero_sign=keep, "
            "epsilon=1e-06, keep_grad_norm=true)");
  std::ostringstream value_text;
  GradDropLayer(GradDropOptions(1)
                    .sign_source(SignSource::kActivationValue)
                    .custom_keep_function([](const at::Tensor& p) { return p; }))
      ->pretty_print(value_text);
  EXPECT_EQ(value_text.str(),
            "graddrop::GradDropLayer(num_tasks=1, leak=[0], sign_source=activation_value, "
            "marginalize_batch=true, keep_function=custom, scale=1, zero_sign=drop, "
            "epsilon=1e-07, keep_grad_norm=false)");
}

TEST(Layer, CloneKeepsTheOptions) {
  GradDropLayer layer(GradDropOptions(3).leak({0, 0.25, 0}).keep_grad_norm(true));
  const auto copy = std::dynamic_pointer_cast<GradDropLayerImpl>(layer->clone());
  ASSERT_TRUE(copy);
  std::ostringstream original_text, copy_text;
  layer->pretty_print(original_text);
  copy->pretty_print(copy_text);
  EXPECT_EQ(copy_text.str(), original_text.str());
}

// Separate per-task backward calls: each call sees one head. The gradient is then the sum of
// the single tasks' GradDrop results (each keeps its own sign), and a warning is issued once.
std::vector<at::Tensor> separate_backward(Model& model, GradDropLayer& layer) {
  model.zero_grad();
  const auto outputs = layer(model.shared());
  model.loss(0, outputs[0]).backward({}, /*retain_graph=*/true);
  model.loss(1, outputs[1]).backward();
  return model.gradients();
}

TEST(Layer, SeparateBackwardCallsSeeOneTaskEach) {
  auto generator = testing::seeded_generator(306);
  Model model(2, generator);
  const auto options = GradDropOptions(2).seed(17);
  GradDropLayer layer(options);
  const auto actual = separate_backward(model, layer);

  model.zero_grad();
  const auto activation = model.shared();
  const auto g0 = torch::autograd::grad({model.loss(0, activation)}, {activation}, {}, true)[0];
  const auto g1 = torch::autograd::grad({model.loss(1, activation)}, {activation}, {}, true)[0];
  const auto only0 = combine({g0, at::Tensor()}, activation.detach(), options);
  const auto only1 = combine({at::Tensor(), g1}, activation.detach(), options);
  // Two backwards through the trunk, as the separate calls make them: the trunk's gradients
  // are accumulated in the same order (one backward of only0 + only1 rounds differently and
  // failed the tolerance for some seeds).
  activation.backward(only0, /*retain_graph=*/true);
  activation.backward(only1);
  model.loss(0, activation.detach()).backward();
  model.loss(1, activation.detach()).backward();
  EXPECT_TRUE(same_gradients(actual, model.gradients()));
}

// TORCH_WARN_ONCE fires once per process, so the check runs in a fresh process (a death test
// in the "threadsafe" style re-executes this test binary) where nothing has warned yet.
void count_separate_backward_warnings() {
  auto generator = at::detail::createCPUGenerator(7);
  Model model(2, generator);
  GradDropLayer layer(GradDropOptions(2));
  const std::string needle = "received the gradient of only one of its 2 heads";
  testing::WarningCapture capture;
  with_layer(model, layer, {true, true});
  const auto after_summed = capture.count_containing(needle);
  separate_backward(model, layer);
  const auto after_first = capture.count_containing(needle);
  separate_backward(model, layer);
  const auto after_second = capture.count_containing(needle);
  std::cerr << "warnings: summed " << after_summed << ", separate " << after_first << ", again "
            << after_second << std::endl;
  std::exit(after_summed == 0 && after_first == 1 && after_second == 1 ? 0 : 1);
}

TEST(Layer, SeparateBackwardCallsWarnOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(count_separate_backward_warnings(), ::testing::ExitedWithCode(0),
              "warnings: summed 0, separate 1, again 1");
}

TEST(Layer, DoubleBackwardIsAClearError) {
  auto generator = testing::seeded_generator(307);
  Model model(2, generator);
  GradDropLayer layer(GradDropOptions(2));
  const auto outputs = layer(model.shared());
  const auto loss = model.loss(0, outputs[0]) + model.loss(1, outputs[1]);
  EXPECT_TRUE(testing::throws_error_containing(
      [&] {
        torch::autograd::grad({loss}, {model.trunk->weight}, {}, /*retain_graph=*/true,
                              /*create_graph=*/true);
      },
      {"not twice differentiable", "create_graph"}));
  // Once differentiable: the same graph still runs a plain backward.
  torch::autograd::grad({loss}, {model.trunk->weight});
}

TEST(Layer, LastStatisticsWhenRecorded) {
  auto generator = testing::seeded_generator(308);
  Model model(3, generator);
  const auto options = GradDropOptions(3).seed(23);
  {
    GradDropLayer layer(options);
    with_layer(model, layer, {true, true, true});
    EXPECT_FALSE(layer->last_statistics().has_value());
  }
  GradDropLayer layer(GradDropOptions(options).record_statistics(true));
  EXPECT_FALSE(layer->last_statistics().has_value());
  with_layer(model, layer, {true, true, true});
  const auto recorded = layer->last_statistics();
  ASSERT_TRUE(recorded.has_value());
  GradDropStatistics expected;
  graddrop_by_hand(model, options, {true, true, true}, nullopt, &expected);
  EXPECT_EQ(recorded->purity_elements, kFeatures);
  EXPECT_TRUE(testing::statistics_equal(*recorded, expected, 1e-12));
  // The next backward replaces them.
  layer->options.marginalize_batch(false);
  with_layer(model, layer, {true, true, true});
  EXPECT_EQ(layer->last_statistics()->purity_elements, kBatch * kFeatures);
}

// The same torch::manual_seed gives the same trunk gradient through the layer; another seed
// (almost surely) another.
TEST(Layer, ReproducibleUnderManualSeed) {
  auto generator = testing::seeded_generator(309);
  Model model(3, generator);
  GradDropLayer layer(GradDropOptions(3).marginalize_batch(false));
  const uint64_t seed = testing::test_seed() + 309;
  torch::manual_seed(seed);
  const auto first = with_layer(model, layer, {true, true, true});
  torch::manual_seed(seed);
  const auto second = with_layer(model, layer, {true, true, true});
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(testing::bitwise_equal(first[i], second[i]));
  torch::manual_seed(seed + 1);
  const auto third = with_layer(model, layer, {true, true, true});
  EXPECT_TRUE(trunk_differs(first, third));
}

}  // namespace
}  // namespace graddrop

namespace graddrop {
namespace {

// Forty heads (the paper's CelebA setting), end to end: the gradient the layer hands the trunk
// equals the float64 reference's combination of the forty head gradients, with the U the kernel
// draws for the layer's seed (testing::philox_uniform_tensor). Both modes.
TEST(Layer, FortyHeadsMatchTheFloat64Reference) {
  constexpr int64_t kHeads = 40;
  auto generator = testing::seeded_generator(305);
  for (bool marginalize : {true, false}) {
    SCOPED_TRACE(marginalize ? "marginalised" : "per element");
    Model model(kHeads, generator);
    const auto options = GradDropOptions(kHeads).marginalize_batch(marginalize).seed(77).offset(5);
    GradDropLayer layer(options);
    const auto activation = model.shared();
    const auto outputs = layer(activation);
    // Each head's gradient at its output, then the layer's gradient at the activation (no
    // retain_grad: it would also collect the per-head gradients).
    std::vector<at::Tensor> grads;
    at::Tensor total;
    for (size_t head = 0; head < static_cast<size_t>(kHeads); ++head) {
      const auto loss = model.loss(head, outputs[head]);
      grads.push_back(torch::autograd::grad({loss}, {outputs[head]}, {},
                                            /*retain_graph=*/true)[0]);
      total = total.defined() ? total + loss : loss;
    }
    const auto combined = torch::autograd::grad({total}, {activation})[0];
    const auto uniform =
        testing::philox_uniform_tensor(purity_shape(activation, options), 77, 5);
    const auto expected = reference::combine(grads, activation.detach(), options, uniform);
    EXPECT_TRUE(testing::bitwise_equal(combined, combine(grads, activation.detach(), options)));
    EXPECT_TRUE(testing::bitwise_equal(
        combine(grads, activation.detach(), options),
        combine(grads, activation.detach(), GradDropOptions(kHeads).marginalize_batch(marginalize),
                nullopt, uniform)));
    EXPECT_TRUE(testing::close_to_reference(combined, expected.output));
    // Not the plain sum: forty heads disagree somewhere.
    EXPECT_FALSE(at::allclose(combined, at::stack(grads).sum(0)));
  }
}

}  // namespace
}  // namespace graddrop
