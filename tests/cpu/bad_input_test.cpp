// Every invalid input is refused with a message that names the argument and the bad value, and
// the caller's tensors come back untouched.
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "graddrop/graddrop.h"
#include "test_support.h"

namespace graddrop {
namespace {

// Inputs of one call, and clones to prove they were not modified.
struct Call {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  GradDropOptions options;
  optional<at::Tensor> uniform;

  at::Tensor activation_before;
  std::vector<at::Tensor> grads_before;
  at::Tensor uniform_before;

  Call(at::Tensor activation_in, std::vector<at::Tensor> grads_in, GradDropOptions options_in,
       optional<at::Tensor> uniform_in = nullopt)
      : activation(std::move(activation_in)),
        grads(std::move(grads_in)),
        options(std::move(options_in)),
        uniform(std::move(uniform_in)) {
    activation_before = activation.clone();
    for (const auto& grad : grads) grads_before.push_back(grad.defined() ? grad.clone() : grad);
    if (uniform.has_value()) uniform_before = uniform->clone();
  }

  void run() const { combine(grads, activation, options, nullopt, uniform); }

  ::testing::AssertionResult untouched() const {
    if (!testing::bitwise_equal(activation, activation_before)) {
      return ::testing::AssertionFailure() << "the activation changed";
    }
    for (size_t task = 0; task < grads.size(); ++task) {
      if (grads[task].device().type() == at::kMeta) continue;  // no data to compare
      if (!testing::bitwise_equal(grads[task], grads_before[task])) {
        return ::testing::AssertionFailure() << "grads[" << task << "] changed";
      }
    }
    if (uniform.has_value() && uniform->device().type() != at::kMeta &&
        !testing::bitwise_equal(*uniform, uniform_before)) {
      return ::testing::AssertionFailure() << "U changed";
    }
    return ::testing::AssertionSuccess();
  }
};

void expect_refused(const Call& call, const std::vector<std::string>& parts) {
  EXPECT_TRUE(testing::throws_error_containing([&] { call.run(); }, parts));
  EXPECT_TRUE(call.untouched());
}

at::Tensor randn(at::IntArrayRef shape, at::Generator& generator,
                 at::ScalarType dtype = at::kFloat) {
  return at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat)).to(dtype);
}

std::vector<at::Tensor> randn_grads(int64_t n, at::IntArrayRef shape, at::Generator& generator) {
  std::vector<at::Tensor> grads;
  for (int64_t task = 0; task < n; ++task) grads.push_back(randn(shape, generator));
  return grads;
}

TEST(BadInput, WrongNumberOfGradients) {
  auto generator = testing::seeded_generator(501);
  expect_refused(Call(randn({4, 5}, generator), randn_grads(2, {4, 5}, generator),
                      GradDropOptions(3)),
                 {"num_tasks (3)", "got 2"});
  expect_refused(Call(randn({4, 5}, generator), randn_grads(4, {4, 5}, generator),
                      GradDropOptions(3)),
                 {"num_tasks (3)", "got 4"});
  expect_refused(Call(randn({4, 5}, generator), {}, GradDropOptions(1)), {"num_tasks (1)", "got 0"});
}

TEST(BadInput, GradientShapeDifferentFromActivation) {
  auto generator = testing::seeded_generator(502);
  auto grads = randn_grads(2, {4, 5}, generator);
  grads[1] = randn({4, 3}, generator);
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[1]", "[4, 3]", "[4, 5]"});
  grads[1] = randn({5, 4}, generator);  // same element count, other shape
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[1]", "[5, 4]", "[4, 5]"});
  grads[1] = randn({4, 5}, generator).unsqueeze(0);
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[1]", "[1, 4, 5]"});
}

TEST(BadInput, GradientDtypeDifferentFromActivation) {
  auto generator = testing::seeded_generator(503);
  auto grads = randn_grads(2, {4, 5}, generator);
  grads[0] = grads[0].to(at::kDouble);
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[0]", "Double", "Float"});
  grads[0] = grads[1].to(at::kHalf);
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[0]", "Half", "Float"});
}

// Meta tensors exist in LibTorch 1.13 and 2.x and need no GPU: a gradient on another device
// than the activation.
TEST(BadInput, GradientDeviceDifferentFromActivation) {
  auto generator = testing::seeded_generator(504);
  auto grads = randn_grads(2, {4, 5}, generator);
  grads[1] = at::empty({4, 5}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  expect_refused(Call(randn({4, 5}, generator), grads, GradDropOptions(2)),
                 {"grads[1]", "meta", "cpu"});
  const auto activation = randn({4, 5}, generator);
  const auto meta_uniform =
      at::empty({5}, at::TensorOptions().dtype(at::kFloat).device(at::kMeta));
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), GradDropOptions(2),
                      meta_uniform),
                 {"uniform (U)", "meta", "cpu"});
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { purity(grads, activation, GradDropOptions(2)); }, {"grads[1]", "meta", "cpu"}));
}

TEST(BadInput, LeakCountNotNumTasks) {
  auto generator = testing::seeded_generator(505);
  expect_refused(Call(randn({4, 5}, generator), randn_grads(3, {4, 5}, generator),
                      GradDropOptions(3).leak({0.1, 0.2})),
                 {"leak", "num_tasks (3)", "got 2"});
  expect_refused(Call(randn({4, 5}, generator), randn_grads(1, {4, 5}, generator),
                      GradDropOptions(1).leak({0.0, 0.0})),
                 {"leak", "num_tasks (1)", "got 2"});
}

TEST(BadInput, LeakOutsideUnitIntervalOrNaN) {
  auto generator = testing::seeded_generator(506);
  const std::vector<std::pair<double, std::string>> bad = {
      {-0.25, "-0.25"},
      {1.5, "1.5"},
      {std::nan(""), "nan"},
      {std::numeric_limits<double>::infinity(), "inf"}};
  for (const auto& value : bad) {
    expect_refused(Call(randn({4, 5}, generator), randn_grads(3, {4, 5}, generator),
                        GradDropOptions(3).leak({0.0, value.first, 1.0})),
                   {"leak[1]", "[0, 1]", "got " + value.second});
  }
}

TEST(BadInput, NumTasksBelowOne) {
  auto generator = testing::seeded_generator(507);
  for (int64_t n : {0, -2}) {
    expect_refused(Call(randn({4, 5}, generator), {}, GradDropOptions(n)),
                   {"num_tasks", ">= 1", "got " + std::to_string(n)});
  }
}

TEST(BadInput, EpsilonNotPositive) {
  auto generator = testing::seeded_generator(508);
  const std::vector<std::pair<double, std::string>> bad = {
      {0.0, "got 0"}, {-1e-7, "got -1e-07"}, {std::nan(""), "got nan"},
      {std::numeric_limits<double>::infinity(), "got inf"}};
  for (const auto& value : bad) {
    expect_refused(Call(randn({4, 5}, generator), randn_grads(2, {4, 5}, generator),
                        GradDropOptions(2).epsilon(value.first)),
                   {"epsilon", value.second});
  }
}

TEST(BadInput, ScaleNotPositive) {
  auto generator = testing::seeded_generator(509);
  const std::vector<std::pair<double, std::string>> bad = {
      {0.0, "got 0"}, {-2.0, "got -2"}, {std::nan(""), "got nan"},
      {-std::numeric_limits<double>::infinity(), "got -inf"}};
  for (const auto& value : bad) {
    for (auto function : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
      expect_refused(Call(randn({4, 5}, generator), randn_grads(2, {4, 5}, generator),
                          GradDropOptions(2).keep_function(function).scale(value.first)),
                     {"scale", value.second});
    }
  }
}

TEST(BadInput, NonFloatingActivation) {
  for (auto dtype : {at::kInt, at::kLong, at::kBool}) {
    const auto activation = at::ones({4, 5}, at::TensorOptions().dtype(dtype));
    const std::vector<at::Tensor> grads = {at::ones_like(activation), at::ones_like(activation)};
    expect_refused(Call(activation, grads, GradDropOptions(2)),
                   {"activation", "float32", "got dtype " + std::string(c10::toString(dtype))});
  }
}

TEST(BadInput, MarginalizeZeroDimensionalActivation) {
  const auto activation = at::scalar_tensor(1.0, at::TensorOptions().dtype(at::kFloat));
  const std::vector<at::Tensor> grads = {at::scalar_tensor(2.0, at::TensorOptions().dtype(at::kFloat)),
                                         at::scalar_tensor(-1.0, at::TensorOptions().dtype(at::kFloat))};
  expect_refused(Call(activation, grads, GradDropOptions(2)),
                 {"marginalize_batch", "0-d activation"});
  EXPECT_TRUE(testing::throws_error_containing(
      [&] { purity(grads, activation, GradDropOptions(2)); }, {"marginalize_batch", "0-d"}));
}

TEST(BadInput, ExplicitUniformWrongShape) {
  auto generator = testing::seeded_generator(510);
  const auto activation = randn({4, 5}, generator);
  // Marginalised P has shape [5]; per element [4, 5].
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), GradDropOptions(2),
                      at::rand({4, 5}, generator)),
                 {"uniform (U)", "[5]", "got [4, 5]"});
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator),
                      GradDropOptions(2).marginalize_batch(false), at::rand({5}, generator)),
                 {"uniform (U)", "[4, 5]", "got [5]"});
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), GradDropOptions(2),
                      at::zeros({5}, at::TensorOptions().dtype(at::kInt))),
                 {"uniform (U)", "floating", "Int"});
}

TEST(BadInput, ExplicitUniformOutsideHalfOpenUnitInterval) {
  auto generator = testing::seeded_generator(511);
  const auto activation = randn({4, 5}, generator);
  const std::vector<std::pair<double, std::string>> bad = {
      {1.0, "1]"}, {-0.5, "[-0.5"}, {1.25, "1.25]"}, {std::nan(""), "nan"}};
  for (const auto& value : bad) {
    auto uniform = at::rand({5}, generator);
    uniform[3] = value.first;
    expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), GradDropOptions(2), uniform),
                   {"uniform (U)", "[0, 1)", value.second});
  }
}

TEST(BadInput, CustomKeepFunctionOutsideUnitInterval) {
  auto generator = testing::seeded_generator(512);
  const auto activation = randn({4, 5}, generator);
  const auto doubled = GradDropOptions(2).custom_keep_function(
      [](const at::Tensor& p) { return p + 1.5; });
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), doubled),
                 {"keep function", "[0, 1]", "got values in ["});
  const auto negative = GradDropOptions(2).custom_keep_function(
      [](const at::Tensor& p) { return p - 2; });
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), negative),
                 {"keep function", "[0, 1]", "got values in [-"});
  // A keep function that returns the wrong shape.
  const auto summed = GradDropOptions(2).custom_keep_function(
      [](const at::Tensor& p) { return p.sum(); });
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator), summed),
                 {"keep_probability (f(P))", "[5]", "got []"});
  // Custom without a callable.
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator),
                      GradDropOptions(2).keep_function(KeepFunction::kCustom)),
                 {"keep_function is custom", "custom_keep_function"});
}

TEST(BadInput, UnknownEnumValuesAndOffset) {
  auto generator = testing::seeded_generator(513);
  const auto activation = randn({4, 5}, generator);
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator),
                      GradDropOptions(2).sign_source(static_cast<SignSource>(7))),
                 {"sign_source", "7"});
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator),
                      GradDropOptions(2).zero_sign(static_cast<ZeroSign>(-1))),
                 {"zero_sign", "-1"});
  expect_refused(Call(activation, randn_grads(2, {4, 5}, generator),
                      GradDropOptions(2).seed(1).offset(uint64_t{1} << 63)),
                 {"offset", std::to_string(uint64_t{1} << 63)});
}

// The layer validates its options when built and when an edited copy reaches forward.
TEST(BadInput, LayerRefusesInvalidOptions) {
  EXPECT_TRUE(testing::throws_error_containing([] { GradDropLayer layer{GradDropOptions(0)}; },
                                               {"num_tasks", "got 0"}));
  EXPECT_TRUE(testing::throws_error_containing(
      [] { GradDropLayer layer{GradDropOptions(2).leak({0.5, 2.0})}; }, {"leak[1]", "got 2"}));
  GradDropLayer layer(GradDropOptions(2));
  layer->options.epsilon(-1.0);
  const auto activation = at::ones({3, 4}).requires_grad_();
  EXPECT_TRUE(testing::throws_error_containing([&] { layer(activation); },
                                               {"epsilon", "got -1"}));
}

}  // namespace
}  // namespace graddrop

namespace graddrop {
namespace {

// The error types Python users see (ValueError, TypeError, RuntimeError) are c10's typed errors:
// a value or shape out of range is a c10::ValueError, a wrong dtype or layout a c10::TypeError,
// a device mismatch a plain c10::Error.
TEST(BadInput, ErrorsAreTyped) {
  auto generator = testing::seeded_generator(514);
  const auto activation = randn({4, 5}, generator);
  const auto grads = randn_grads(2, {4, 5}, generator);
  EXPECT_THROW(combine(grads, activation, GradDropOptions(2).leak({0.0, 1.5})), c10::ValueError);
  EXPECT_THROW(combine(grads, activation, GradDropOptions(2).epsilon(0.0)), c10::ValueError);
  EXPECT_THROW(combine({grads[0], randn({4, 6}, generator)}, activation), c10::ValueError);
  EXPECT_THROW(combine(grads, activation, GradDropOptions(2), nullopt, at::rand({4})),
               c10::ValueError);
  EXPECT_THROW(combine({grads[0], grads[1].to(at::kDouble)}, activation), c10::TypeError);
  EXPECT_THROW(combine({grads[0], grads[1].to_sparse()}, activation), c10::TypeError);
  EXPECT_THROW(combine({grads[0].to(at::kInt)}, activation.to(at::kInt), GradDropOptions(1)),
               c10::TypeError);
  EXPECT_THROW(GradDropLayer(GradDropOptions(0)), c10::ValueError);
  try {
    combine({grads[0], grads[1].to(at::kMeta)}, activation);
    ADD_FAILURE() << "a gradient on another device was accepted";
  } catch (const c10::ValueError&) {
    ADD_FAILURE() << "a device mismatch is not a ValueError";
  } catch (const c10::TypeError&) {
    ADD_FAILURE() << "a device mismatch is not a TypeError";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what()).find("is on device meta"), std::string::npos);
  }
}

}  // namespace
}  // namespace graddrop
