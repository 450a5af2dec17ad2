// The edge cases of issue #10, one test each: what a hostile caller (or a fuzzer) found, through
// the C++ API and through the dispatcher operator itself (the path Python takes).
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "ops/combine_op.h"
#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Every argument of graddrop::combine with the schema's defaults; call() goes through the
// dispatcher, like torch.ops.graddrop.combine.
struct OpCall {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  std::vector<double> leak;
  std::string sign_source = "activation_sign";
  bool marginalize_batch = true;
  std::string keep_function = "linear";
  double scale = 1.0;
  std::string zero_sign = "drop";
  double epsilon = 1e-7;
  bool keep_grad_norm = false;
  optional<at::Tensor> uniform;
  optional<at::Tensor> keep_probability;
  optional<int64_t> seed;
  int64_t offset = 0;
  bool statistics = false;
  optional<std::string> group_name;

  std::tuple<at::Tensor, at::Tensor> call() const {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("graddrop::combine", "")
                         .typed<ops::CombineSignature>();
    c10::List<optional<at::Tensor>> list;
    for (const auto& grad : grads) {
      list.push_back(grad.defined() ? optional<at::Tensor>(grad) : optional<at::Tensor>());
    }
    return op.call(activation, list, leak, sign_source, marginalize_batch, keep_function, scale,
                   zero_sign, epsilon, keep_grad_norm, nullopt, uniform, keep_probability, seed,
                   offset, statistics,
                   group_name.has_value() ? optional<c10::string_view>(*group_name) : nullopt);
  }
  at::Tensor output() const { return std::get<0>(call()); }
};

at::Tensor values(std::vector<double> data, at::IntArrayRef shape,
                  at::ScalarType dtype = at::kFloat) {
  return at::tensor(data, at::TensorOptions().dtype(at::kDouble)).reshape(shape).to(dtype);
}

// --- Item 1: an explicit keep_probability must not hide a NaN purity ---------------------------

// The fuzzer's example: the feature's purity is NaN (a NaN gradient), f(P) is given explicitly
// (Python's custom keep-function path). Every coefficient of the feature must be NaN, whatever
// f(P) says and whatever zero_sign decides, on both modes; the statistics must not count the
// NaN element as kept. (Needs the kernel change that propagates a NaN purity; see issue #10.)
// A group_name the registry does not know, or any group_name in a build without data-parallel
// support (Debian's LibTorch 1.13): a c10::Error naming it, inputs untouched.
TEST(Hardening, AnUnusableGroupNameIsRefusedNamingIt) {
  OpCall op;
  op.activation = at::randn({4, 8});
  op.grads = {at::randn({4, 8}), at::randn({4, 8})};
  op.group_name = "no-such-group";
  const auto activation = op.activation.clone();
  const auto grad = op.grads[0].clone();
  const std::vector<std::string> reason =
      GRADDROP_HAS_DISTRIBUTED ? std::vector<std::string>{"registry"}
                               : std::vector<std::string>{"leaves out", "registry"};
  std::vector<std::string> parts = {"group_name 'no-such-group'"};
  parts.insert(parts.end(), reason.begin(), reason.end());
  EXPECT_TRUE(testing::throws_error_containing([&] { op.call(); }, parts));
  EXPECT_TRUE(at::equal(op.activation, activation));
  EXPECT_TRUE(at::equal(op.grads[0], grad));
}

TEST(Hardening, ExplicitKeepProbabilityPropagatesNanPurity) {
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const std::string zero_sign : {"keep", "drop"}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " zero_sign " + zero_sign);
      OpCall marginalised;
      marginalised.activation = at::ones({2, 1}, at::TensorOptions().dtype(dtype));
      marginalised.grads = {values({kNaN, 1.0}, {2, 1}, dtype)};
      marginalised.keep_function = "custom";
      marginalised.keep_probability = values({0.7}, {1});
      marginalised.uniform = values({0.5}, {1});
      marginalised.zero_sign = zero_sign;
      marginalised.statistics = true;
      const auto result = marginalised.call();
      EXPECT_TRUE(at::isnan(std::get<0>(result)).all().item<bool>()) << std::get<0>(result);
      EXPECT_EQ(std::get<1>(result)[0].item<double>(), 0.0) << "kept fraction of the NaN task";

      // Per element: only the element with the NaN purity; the other follows its mask.
      OpCall per_element = marginalised;
      per_element.marginalize_batch = false;
      per_element.grads = {values({kNaN, 1.0}, {2, 1}, dtype), values({2.0, -1.0}, {2, 1}, dtype)};
      per_element.keep_probability = values({0.7, 0.7}, {2, 1});
      per_element.uniform = values({0.5, 0.5}, {2, 1});
      const auto out = per_element.output().to(at::kDouble);
      EXPECT_TRUE(std::isnan(out[0][0].item<double>())) << out;
      EXPECT_EQ(out[1][0].item<double>(), 1.0) << out;  // f = 0.7 > U keeps the positive task
    }
  }
}

// --- Item 2: epsilon and scale must be usable in the op-math dtype -----------------------------

TEST(Hardening, EpsilonOrScaleOutsideTheOpMathRangeIsRefused) {
  auto generator = testing::seeded_generator(1001);
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const auto activation = testing::random_activation({3, 4}, dtype, generator);
    const auto grads = testing::random_grads(activation, 2, generator);
    const std::string name = c10::toString(dtype);
    EXPECT_TRUE(testing::throws_error_containing(
        [&] { combine(grads, activation, GradDropOptions(2).epsilon(1e-50)); },
        {"epsilon = 1e-50", name, "float32"}));
    EXPECT_TRUE(testing::throws_error_containing(
        [&] { combine(grads, activation, GradDropOptions(2).epsilon(1e-40)); },
        {"epsilon = 1e-40", "float32"}));  // subnormal in float32
    EXPECT_TRUE(testing::throws_error_containing(
        [&] { combine(grads, activation, GradDropOptions(2).epsilon(1e39)); },
        {"epsilon = 1e+39", "float32"}));
    for (auto function : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
      EXPECT_TRUE(testing::throws_error_containing(
          [&] {
            combine(grads, activation, GradDropOptions(2).keep_function(function).scale(1e39));
          },
          {"scale = 1e+39", name, "float32"}));
    }
  }
  // float64 holds them: no error, and a dead feature (every G_i = 0) gets 0, not NaN.
  const auto activation = at::zeros({2, 3}, at::TensorOptions().dtype(at::kDouble));
  const std::vector<at::Tensor> grads = {at::ones_like(activation), -at::ones_like(activation)};
  for (double epsilon : {1e-50, 1e-300}) {
    const auto out = combine(grads, activation, GradDropOptions(2).epsilon(epsilon).seed(1));
    EXPECT_TRUE(at::equal(out, at::zeros_like(out))) << out;
  }
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine(grads, activation, GradDropOptions(2).epsilon(1e-310)); },
      {"epsilon = 1e-310", "float64"}));
}

// The extremes that are accepted give no NaN for a dead feature (P = 0.5 exactly).
TEST(Hardening, LinearKeepAtExtremeEpsilonAndScaleGivesNoSpuriousNaN) {
  const double float_max = std::numeric_limits<float>::max();
  const double float_min = std::numeric_limits<float>::min();
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    const bool wide = dtype == at::kDouble;
    // Column 0 dead (A = 0 there), column 1 alive.
    const auto activation = values({0, 1, 0, -1}, {2, 2}, dtype);
    const std::vector<at::Tensor> grads = {values({1, 1, 1, 1}, {2, 2}, dtype),
                                           values({-2, 3, 5, 1}, {2, 2}, dtype)};
    for (bool marginalize : {true, false}) {
      const auto options = GradDropOptions(2)
                               .marginalize_batch(marginalize)
                               .scale(wide ? 1e308 : float_max)
                               .epsilon(wide ? 1e-300 : float_min)
                               .seed(3);
      const auto out = combine(grads, activation, options);
      EXPECT_FALSE(at::isnan(out).any().item<bool>()) << out;
      EXPECT_EQ(out.select(1, 0).abs().sum().item<double>(), 0.0) << out;
    }
  }
}

// Sigmoid with the largest scale each op-math dtype holds: exp(-4 * scale * 0) must not become
// exp(-inf * 0) = NaN on a dead feature. (Needs the kernel's sigmoid form
// exp(-4 * (scale * (P - 0.5))); see issue #10.)
TEST(Hardening, SigmoidKeepAtHugeScaleGivesNoSpuriousNaN) {
  for (auto dtype : {at::kFloat, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    const double huge = dtype == at::kDouble ? 1e308 : std::numeric_limits<float>::max();
    const auto activation = values({0, 1, 0, -1}, {2, 2}, dtype);
    const std::vector<at::Tensor> grads = {values({1, 1, 1, 1}, {2, 2}, dtype),
                                           values({-2, 3, 5, 1}, {2, 2}, dtype)};
    for (bool marginalize : {true, false}) {
      const auto options = GradDropOptions(2)
                               .marginalize_batch(marginalize)
                               .keep_function(KeepFunction::kSigmoid)
                               .scale(huge)
                               .seed(3);
      const auto out = combine(grads, activation, options);
      EXPECT_FALSE(at::isnan(out).any().item<bool>()) << out;
      EXPECT_EQ(out.select(1, 0).abs().sum().item<double>(), 0.0) << out;
    }
  }
}

// --- Item 3: keep_grad_norm's ratio must not overflow the output dtype ------------------------

// A = 0: every signal is zero, zero_sign drop makes the output 0, so ||out|| = 0 and the ratio is
// ||g|| / epsilon, far beyond float32 (or float16). 0 * ratio must stay 0, as in float64.
TEST(Hardening, KeepGradNormOfZeroOutputStaysZero) {
  const std::vector<std::pair<at::ScalarType, double>> cases = {
      {at::kFloat, 1e33}, {at::kBFloat16, 1e33}, {at::kHalf, 6e4}, {at::kDouble, 1e150}};
  for (const auto& entry : cases) {
    SCOPED_TRACE(c10::toString(entry.first));
    for (bool marginalize : {true, false}) {
      const auto activation = at::zeros({1, 3}, at::TensorOptions().dtype(entry.first));
      const std::vector<at::Tensor> grads = {at::full_like(activation, entry.second)};
      const auto out = combine(
          grads, activation, GradDropOptions(1).keep_grad_norm(true).marginalize_batch(marginalize));
      EXPECT_TRUE(at::equal(out, at::zeros_like(out))) << out;
    }
  }
}

// A ratio beyond the output dtype's range applied to a small non-zero output: the product is
// formed in float64 and rounded once, so it is finite and matches the float64 reference (before,
// the ratio itself became inf in the output's dtype).
TEST(Hardening, KeepGradNormWithHugeRatioMatchesReference) {
  struct Case {
    at::ScalarType dtype;
    double big;   // ||plain sum|| / epsilon exceeds the dtype's largest value
    double tiny;  // the output, tiny * ratio stays inside the dtype's range
  };
  for (const auto& c : {Case{at::kFloat, 1e33, 1e-20}, Case{at::kBFloat16, 1e33, 1e-20},
                        Case{at::kHalf, 1e4, 6e-8}, Case{at::kDouble, 1e150, 1e-200}}) {
    SCOPED_TRACE(c10::toString(c.dtype));
    // Task 0 passes through (leak 1); task 1 is negative and U = 0 drops it whatever P is.
    const auto activation = values({1, 1, 1}, {1, 3}, c.dtype);
    const std::vector<at::Tensor> grads = {values({c.tiny, c.tiny, c.tiny}, {1, 3}, c.dtype),
                                           values({-c.big, -c.big, -c.big}, {1, 3}, c.dtype)};
    const auto options =
        GradDropOptions(2).marginalize_batch(false).keep_grad_norm(true).leak({1.0, 0.0});
    const auto uniform = at::zeros({1, 3}, at::kFloat);
    const auto expected = reference::combine(grads, activation, options, uniform).output;
    const auto out = combine(grads, activation, options, nullopt, uniform);
    EXPECT_TRUE(at::isfinite(out).all().item<bool>()) << out;
    EXPECT_TRUE(testing::close_to_reference(out, expected)) << out << expected;
  }
}

// --- Item 4: purity_shape on a 0-d activation with marginalisation ----------------------------

TEST(Hardening, PurityShapeOfZeroDimensionalMarginalisedActivationIsAnError) {
  const auto activation = at::scalar_tensor(1.0);
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { purity_shape(activation, GradDropOptions(2)); },
      {"marginalize_batch", "0-d activation"}));
  EXPECT_EQ(purity_shape(activation, GradDropOptions(2).marginalize_batch(false)),
            std::vector<int64_t>{});
}

// --- Item 5: the operator under autograd ------------------------------------------------------

// The output is linear in each g_i with a random coefficient: a gradient that requires grad is
// refused by name (before, the output claimed requires_grad and its backward gave nothing). The
// output is piecewise constant in the activation, U and f(P): they may require grad (the
// activation of a model usually does) and the output does not depend on them differentiably.
TEST(Hardening, OperatorRefusesGradientsThatRequireGrad) {
  auto generator = testing::seeded_generator(1005);
  const auto activation = testing::random_activation({3, 4}, at::kFloat, generator);
  auto grads = testing::random_grads(activation, 3, generator);
  grads[1].requires_grad_();
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine(grads, activation, GradDropOptions(3)); },
      {"no derivative", "grads[1] requires grad", "no_grad"}));
  grads[2].requires_grad_();
  OpCall call;
  call.activation = activation;
  call.grads = grads;
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); },
                                               {"grads[1], grads[2] require grad"}));
  // With grad mode off the same call runs, and its output claims no gradient.
  {
    at::NoGradGuard no_grad;
    const auto out = combine(grads, activation, GradDropOptions(3).seed(2));
    EXPECT_FALSE(out.requires_grad());
  }
  // The activation, U and f(P) requiring grad: no error, an output without requires_grad.
  for (auto& grad : grads) grad = grad.detach();
  call.grads = grads;
  call.activation = activation.clone().requires_grad_();
  call.keep_function = "custom";
  call.uniform = at::rand({4}, generator).requires_grad_();
  call.keep_probability = at::rand({4}, generator).requires_grad_();
  const auto out = call.output();
  EXPECT_FALSE(out.requires_grad());
  const auto expected = combine(grads, activation, GradDropOptions(3).custom_keep_function(
                                                       [&](const at::Tensor&) {
                                                         return call.keep_probability->detach();
                                                       }),
                                nullopt, call.uniform->detach());
  EXPECT_TRUE(testing::bitwise_equal(out, expected));
}

// purity is composed of differentiable ATen operations: autograd gives its true derivative.
TEST(Hardening, PurityIsDifferentiable) {
  auto generator = testing::seeded_generator(1006);
  const auto activation = testing::random_activation({5, 3}, at::kDouble, generator);
  auto grads = testing::random_grads(activation, 2, generator);
  for (auto& grad : grads) grad.requires_grad_();
  const auto options = GradDropOptions(2).sign_source(SignSource::kActivationValue);
  const auto p = purity(grads, activation, options);
  ASSERT_TRUE(p.requires_grad());
  const auto weights = at::randn(p.sizes(), generator, at::TensorOptions().dtype(at::kDouble));
  const auto analytic = torch::autograd::grad({(p * weights).sum()}, {grads[0]})[0];
  // Central differences on a few entries.
  for (int64_t index : {0, 4, 11}) {
    const double step = 1e-6;
    auto plus = grads[0].detach().clone();
    auto minus = grads[0].detach().clone();
    plus.view({-1})[index] += step;
    minus.view({-1})[index] -= step;
    at::NoGradGuard no_grad;
    const double f_plus = (purity({plus, grads[1]}, activation, options) * weights).sum().item<double>();
    const double f_minus =
        (purity({minus, grads[1]}, activation, options) * weights).sum().item<double>();
    EXPECT_NEAR(analytic.view({-1})[index].item<double>(), (f_plus - f_minus) / (2 * step), 1e-6);
  }
}

// The layer calls the operator inside its backward; with create_graph=true grad mode is on there
// and the saved activation requires grad. The layer must still work (once differentiable).
TEST(Hardening, LayerBackwardWithCreateGraphStillRuns) {
  auto generator = testing::seeded_generator(1007);
  torch::nn::Linear trunk(4, 6);
  GradDropLayer layer(GradDropOptions(2).seed(9));
  const auto input = at::randn({5, 4}, generator, at::TensorOptions().dtype(at::kFloat));
  const auto outputs = layer(trunk(input));
  // Heads without parameters: the gradients reaching the layer do not require grad.
  const auto weights = at::randn({5, 6}, generator, at::TensorOptions().dtype(at::kFloat));
  const auto loss = (outputs[0] * weights).sum() - outputs[1].sum();
  const auto grads = torch::autograd::grad({loss}, {trunk->weight}, {}, /*retain_graph=*/true,
                                           /*create_graph=*/true);
  ASSERT_TRUE(grads[0].defined());
  const auto plain = torch::autograd::grad({loss}, {trunk->weight});
  EXPECT_TRUE(at::allclose(grads[0].detach(), plain[0]));
}

// --- Item 6: messages that name the argument --------------------------------------------------

TEST(Hardening, MetaTensorsGetShapesAndNamedChecks) {
  const auto meta = at::TensorOptions().dtype(at::kHalf).device(at::kMeta);
  OpCall call;
  call.activation = at::empty({6, 3, 2}, meta);
  call.grads = {at::empty({6, 3, 2}, meta), at::Tensor(), at::empty({6, 3, 2}, meta)};
  call.statistics = true;
  auto result = call.call();
  EXPECT_TRUE(std::get<0>(result).is_meta());
  EXPECT_EQ(std::get<0>(result).sizes(), at::IntArrayRef({6, 3, 2}));
  EXPECT_EQ(std::get<0>(result).scalar_type(), at::kHalf);
  EXPECT_TRUE(std::get<0>(result).is_contiguous());
  EXPECT_EQ(std::get<1>(result).sizes(), at::IntArrayRef({5}));
  EXPECT_EQ(std::get<1>(result).scalar_type(), at::kDouble);
  call.statistics = false;
  EXPECT_EQ(std::get<1>(call.call()).sizes(), at::IntArrayRef({0}));
  // A non-contiguous meta activation still gives a contiguous output.
  call.activation = at::empty({2, 3, 6}, meta).transpose(0, 2);
  EXPECT_TRUE(std::get<0>(call.call()).is_contiguous());
  call.activation = at::empty({6, 3, 2}, meta);

  // The same checks as the kernels, naming the argument.
  auto bad = call;
  bad.grads[2] = at::empty({6, 3, 3}, meta);
  EXPECT_TRUE(testing::throws_error_containing([&] { bad.call(); }, {"grads[2]", "[6, 3, 3]"}));
  bad = call;
  bad.uniform = at::empty({6, 3, 2}, meta.dtype(at::kFloat));
  EXPECT_TRUE(testing::throws_error_containing([&] { bad.call(); }, {"uniform (U)", "[3, 2]"}));
  bad = call;
  bad.epsilon = 1e-50;
  EXPECT_TRUE(testing::throws_error_containing([&] { bad.call(); }, {"epsilon"}));
  // Meta gradients with a CPU activation: the device check names the gradient.
  bad = call;
  bad.activation = at::zeros({6, 3, 2}, at::kHalf);
  EXPECT_TRUE(testing::throws_error_containing([&] { bad.call(); },
                                               {"grads[0]", "meta", "cpu"}));
  // purity (composed ATen) on meta tensors: P's shape in the op-math dtype.
  const auto p = purity({call.grads[0], call.grads[1], call.grads[2]}, call.activation,
                        GradDropOptions(3));
  EXPECT_TRUE(p.is_meta());
  EXPECT_EQ(p.sizes(), at::IntArrayRef({3, 2}));
  EXPECT_EQ(p.scalar_type(), at::kFloat);
}

TEST(Hardening, SparseTensorsAreRefusedByName) {
  const auto dense = at::ones({4, 3});
  const auto sparse = dense.to_sparse();
  OpCall call;
  call.activation = dense;
  call.grads = {dense, sparse};
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); },
                                               {"grads[1]", "dense", "Sparse"}));
  call.grads = {dense, dense};
  call.activation = sparse;
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); },
                                               {"activation", "dense", "Sparse"}));
  call.activation = dense;
  call.uniform = at::rand({3}).to_sparse();
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); }, {"uniform (U)", "Sparse"}));
  call.uniform = nullopt;
  call.grads = {dense, dense.to_sparse_csr()};
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); }, {"grads[1]", "SparseCsr"}));
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine({dense, sparse}, dense, GradDropOptions(2)); }, {"grads[1]", "Sparse"}));
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { purity({dense, sparse}, dense, GradDropOptions(2)); }, {"grads[1]", "Sparse"}));
}

TEST(Hardening, KeepProbabilityOutOfRangeNamesTheArgument) {
  OpCall call;
  call.activation = at::ones({4, 3});
  call.grads = {at::ones({4, 3})};
  call.keep_function = "custom";
  call.keep_probability = values({0.5, 1.25, 0.5}, {3});
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { call.call(); }, {"keep_probability (f(P)", "[0, 1]", "got values in [0.5, 1.25]"}));
}

TEST(Hardening, KeepProbabilityWithABuiltInKeepFunctionIsRefused) {
  OpCall call;
  call.activation = at::ones({4, 3});
  call.grads = {at::ones({4, 3})};
  call.keep_probability = values({0.5, 0.5, 0.5}, {3});
  for (const std::string function : {"linear", "sigmoid"}) {
    call.keep_function = function;
    EXPECT_TRUE(testing::throws_error_containing(
        [&] { call.call(); }, {"keep_probability", "keep_function must be 'custom'", function}));
  }
  call.keep_function = "custom";
  EXPECT_NO_THROW(call.call());
}

TEST(Hardening, CustomKeepFunctionReturningUndefinedIsNamed) {
  const auto options =
      GradDropOptions(2).custom_keep_function([](const at::Tensor&) { return at::Tensor(); });
  const auto activation = at::ones({4, 3});
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine({activation, activation}, activation, options); },
      {"custom keep function returned an undefined tensor", "[3]"}));
}

// The operator's seed is a signed int64 holding the 64-bit Philox key: -1 is key 2^64 - 1, the
// same key the C++ API's uint64_t seed(2^64 - 1) gives. Documented in the README.
TEST(Hardening, NegativeSeedIsTheTwosComplementKey) {
  auto generator = testing::seeded_generator(1010);
  const auto activation = testing::random_activation({4, 64}, at::kFloat, generator);
  const auto grads = testing::random_grads(activation, 2, generator);
  OpCall call;
  call.activation = activation;
  call.grads = grads;
  call.seed = -1;
  call.offset = 7;
  const auto through_op = call.output();
  const auto through_api = combine(
      grads, activation, GradDropOptions(2).seed(std::numeric_limits<uint64_t>::max()).offset(7));
  EXPECT_TRUE(testing::bitwise_equal(through_op, through_api));
  const auto uniform = testing::philox_uniform_tensor({64}, std::numeric_limits<uint64_t>::max(), 7);
  const auto with_uniform = combine(grads, activation, GradDropOptions(2), nullopt, uniform);
  EXPECT_TRUE(testing::bitwise_equal(through_op, with_uniform));
}

TEST(Hardening, OffsetWithoutSeedIsRefused) {
  OpCall call;
  call.activation = at::ones({4, 3});
  call.grads = {at::ones({4, 3})};
  call.offset = 5;
  EXPECT_TRUE(testing::throws_error_containing([&] { call.call(); },
                                               {"offset (5)", "explicit seed"}));
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { combine(call.grads, call.activation, GradDropOptions(1).offset(5)); },
      {"offset (5)", "seed"}));
  call.seed = 1;
  EXPECT_NO_THROW(call.call());
}

}  // namespace
}  // namespace graddrop
