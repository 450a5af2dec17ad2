// Hand-computed cases that pin each documented choice of docs/design.md: the zero policy, leaks,
// n = 1, all-zero gradients, the keep functions' values, keep_grad_norm, batch marginalisation,
// 1-d and 0-d activations, empty tensors, statistics, and NaN/Inf propagation.
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "graddrop/combine.h"
#include "graddrop/reference.h"
#include "test_support.h"

namespace graddrop {
namespace {

// A tensor of `dtype` with `values`, reshaped to `shape` (1-d when `shape` is empty and there
// is more than one value; 0-d for one value and an empty shape).
at::Tensor tensor_of(const std::vector<double>& values, at::IntArrayRef shape,
                     at::ScalarType dtype = at::kDouble) {
  auto flat = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
  return flat.reshape(shape).to(dtype);
}

at::Tensor vector_of(const std::vector<double>& values, at::ScalarType dtype = at::kDouble) {
  return tensor_of(values, {static_cast<int64_t>(values.size())}, dtype);
}

// Exact comparison for hand-computed values (converted to the output's dtype first).
::testing::AssertionResult equals(const at::Tensor& actual, const at::Tensor& expected) {
  const auto want = expected.to(actual.scalar_type());
  if (actual.sizes() == want.sizes() && at::equal(actual, want)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "got " << actual << " expected " << want;
}

const std::vector<at::ScalarType> kExactDtypes = {at::kDouble, at::kFloat, at::kHalf,
                                                   at::kBFloat16};

// --- Zero policy ------------------------------------------------------------------------------

// Where A = 0, sign(A) = 0 makes every G_i zero: P = 0.5, and the masks follow zero_sign.
TEST(CombineCases, ZeroSignalDropVersusKeepAtZeroActivation) {
  for (auto dtype : kExactDtypes) {
    SCOPED_TRACE(c10::toString(dtype));
    const auto activation = vector_of({0, 1, -1}, dtype);
    const std::vector<at::Tensor> grads = {vector_of({2, 1, 3}, dtype),
                                           vector_of({3, 2, -1}, dtype)};
    // Element 1: G = (1, 2), P ~ 1: both kept. Element 2: G = (-3, 1), P ~ 0.25 < U = 0.5:
    // the negative sign wins, task 0 (G < 0) kept, task 1 dropped.
    const auto uniform = vector_of({0.3, 0.5, 0.5});
    auto options = GradDropOptions(2).marginalize_batch(false);
    EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform), vector_of({0, 3, 3})));
    options.zero_sign(ZeroSign::kKeep);
    EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform), vector_of({5, 3, 3})));
    const auto purity_values = purity(grads, activation, options);
    EXPECT_EQ(purity_values[0].item<double>(), 0.5);
  }
}

// In marginalised mode a task's signal can be exactly zero although its gradient is not: the
// batch sum cancels. Column 0: G_0 = 1 - 1 = 0, G_1 = -1 + 2 = 1.
TEST(CombineCases, ZeroSignalDropVersusKeepFromBatchCancellation) {
  const auto activation = tensor_of({1, 1, -1, 1}, {2, 2});
  const std::vector<at::Tensor> grads = {tensor_of({1, 1, 1, 1}, {2, 2}),
                                         tensor_of({-1, 1, -2, 1}, {2, 2})};
  const auto uniform = vector_of({0.5, 0.5});
  auto options = GradDropOptions(2);
  // Column 0: P ~ 1, task 1 kept, task 0 by the zero policy. Column 1: both positive, kept.
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform),
                     tensor_of({-1, 2, -2, 2}, {2, 2})));
  options.zero_sign(ZeroSign::kKeep);
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform),
                     tensor_of({0, 2, -1, 2}, {2, 2})));
}

// --- Sign sources -------------------------------------------------------------------------------

// One column, two rows. With U = 0.1: sign(A): G = (0, -5), P ~ 0, the negative sign wins;
// A: G = (1.5, -4), P ~ 0.27 > 0.1, the positive sign wins; none: G = (2, 3), both kept.
TEST(CombineCases, SignSourcesGiveTheirDocumentedSignals) {
  const auto activation = tensor_of({2, -0.5}, {2, 1});
  const std::vector<at::Tensor> grads = {tensor_of({1, 1}, {2, 1}), tensor_of({-1, 4}, {2, 1})};
  const auto uniform = vector_of({0.1});
  auto options = GradDropOptions(2);
  EXPECT_TRUE(equals(combine(grads, activation, options.sign_source(SignSource::kActivationSign),
                             nullopt, uniform),
                     tensor_of({-1, 4}, {2, 1})));
  EXPECT_TRUE(equals(combine(grads, activation, options.sign_source(SignSource::kActivationValue),
                             nullopt, uniform),
                     tensor_of({1, 1}, {2, 1})));
  EXPECT_TRUE(equals(combine(grads, activation, options.sign_source(SignSource::kNone), nullopt,
                             uniform),
                     tensor_of({0, 5}, {2, 1})));
  // The purities behind those choices.
  EXPECT_NEAR(purity(grads, activation, options.sign_source(SignSource::kActivationSign)).item<double>(),
              0.0, 1e-7);
  EXPECT_NEAR(purity(grads, activation, options.sign_source(SignSource::kActivationValue)).item<double>(),
              0.5 * (1 - 2.5 / 5.5), 1e-7);
  EXPECT_NEAR(purity(grads, activation, options.sign_source(SignSource::kNone)).item<double>(), 1.0,
              1e-7);
}

// --- Leak ---------------------------------------------------------------------------------------

// A = 1, g = (1, -3): G = (1, -3), P ~ 0.25. U = 0.1: the positive sign wins (M = 1, 0);
// U = 0.9: the negative one (M = 0, 1).
TEST(CombineCases, LeakOnePassesATaskThroughUntouched) {
  const auto activation = vector_of({1, 1});
  const std::vector<at::Tensor> grads = {vector_of({1, 1}), vector_of({-3, -3})};
  const auto uniform = vector_of({0.1, 0.9});
  auto options = GradDropOptions(2).marginalize_batch(false);
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform), vector_of({1, -3})));
  EXPECT_TRUE(equals(combine(grads, activation, options.leak({1, 0}), nullopt, uniform),
                     vector_of({1, -2})));
  EXPECT_TRUE(equals(combine(grads, activation, options.leak({0, 1}), nullopt, uniform),
                     vector_of({-2, -3})));
  EXPECT_TRUE(equals(combine(grads, activation, options.leak({1, 1}), nullopt, uniform),
                     vector_of({-2, -2})));
}

TEST(CombineCases, LeakHalfIsHalfway) {
  const auto activation = vector_of({1, 1});
  const std::vector<at::Tensor> grads = {vector_of({1, 1}), vector_of({-3, -3})};
  const auto uniform = vector_of({0.1, 0.9});
  auto options = GradDropOptions(2).marginalize_batch(false).leak({0.5, 0.5});
  // c = 0.5 + 0.5 * M: (1, 0.5) then (0.5, 1).
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform), vector_of({-0.5, -2.5})));
  // c = 0.25 + 0.75 * M for task 1 only.
  EXPECT_TRUE(equals(combine(grads, activation, options.leak({0, 0.25}), nullopt, uniform),
                     vector_of({1 - 0.75, -3})));
}

// With every leak 1 the output is the plain sum, bit for bit, whatever the draw.
TEST(CombineCases, AllLeaksOneGiveThePlainSum) {
  auto generator = testing::seeded_generator(201);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (bool marginalize : {true, false}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + (marginalize ? " marginalised" : ""));
      const auto activation = testing::random_activation({6, 11}, dtype, generator);
      auto grads = testing::random_grads(activation, 3, generator);
      grads[1] = at::Tensor();  // an unused head counts as zero
      const auto options =
          GradDropOptions(3).marginalize_batch(marginalize).leak({1, 1, 1}).seed(99);
      EXPECT_TRUE(testing::bitwise_equal(combine(grads, activation, options), grads[0] + grads[2]));
    }
  }
}

// With random inputs: leak 1 on task 0 adds g_0 in full, the others keep their masks.
TEST(CombineCases, LeakOneOnOneTaskKeepsTheOthersMasked) {
  auto generator = testing::seeded_generator(202);
  for (bool marginalize : {true, false}) {
    const auto activation = testing::random_activation({5, 8}, at::kDouble, generator);
    const auto grads = testing::random_grads(activation, 3, generator);
    const auto options = GradDropOptions(3).marginalize_batch(marginalize).leak({1, 0, 0});
    const auto uniform = testing::separated_uniform(grads, activation, options, generator);
    const auto masks = reference::combine(grads, activation, options, uniform).masks;
    auto expected = grads[0].clone();
    for (int task = 1; task < 3; ++task) {
      auto mask = masks[task];
      if (marginalize) mask = mask.unsqueeze(0).expand(activation.sizes());
      expected = expected + at::where(mask, grads[task], at::zeros_like(grads[task]));
    }
    EXPECT_TRUE(at::allclose(combine(grads, activation, options, nullopt, uniform), expected,
                             1e-12, 1e-12));
  }
}

// --- n = 1 ---------------------------------------------------------------------------------------

// With one task and a moderate signal (|G| >= 2), P is 0 or 1 to within rounding, so the
// gradient is kept wherever G != 0 whatever U is, the extremes of U's range included.
TEST(CombineCases, SingleTaskKeepsItsGradient) {
  auto generator = testing::seeded_generator(203);
  const int64_t rows = 8, columns = 25;
  const auto double_options = at::TensorOptions().dtype(at::kDouble);
  for (auto dtype : kExactDtypes) {
    for (auto source : {SignSource::kActivationSign, SignSource::kActivationValue,
                        SignSource::kNone}) {
      SCOPED_TRACE(std::string(c10::toString(dtype)) + " " + to_string(source));
      // |A| in [1, 2], |g| in [2, 4], random signs; some A exactly 0.
      auto signs = at::where(at::rand({rows, columns}, generator, double_options) < 0.5, -1.0, 1.0);
      auto activation = signs * (1 + at::rand({rows, columns}, generator, double_options));
      activation.masked_fill_(at::rand({rows, columns}, generator, double_options) < 0.1, 0.0);
      signs = at::where(at::rand({rows, columns}, generator, double_options) < 0.5, -1.0, 1.0);
      const auto grad = (signs * (2 + 2 * at::rand({rows, columns}, generator, double_options)));
      const std::vector<at::Tensor> grads = {grad.to(dtype)};
      const auto a = activation.to(dtype);

      auto uniform = at::rand({rows, columns}, generator, at::TensorOptions().dtype(at::kFloat));
      uniform = uniform.clamp(1.0 / 16777216, 1.0 - 1.0 / 16777216);
      uniform[0][0] = 1.0 / 16777216;        // the smallest positive U the kernels draw
      uniform[0][1] = 1.0 - 1.0 / 16777216;  // the largest
      auto options = GradDropOptions(1).marginalize_batch(false).sign_source(source);
      const auto out = combine(grads, a, options, nullopt, uniform);
      const auto expected = source == SignSource::kNone
                                ? grads[0]
                                : at::where(activation == 0, at::zeros_like(grads[0]), grads[0]);
      EXPECT_TRUE(equals(out, expected));

      // Marginalised: make every column's batch sum of G moderate (A > 0, one sign per column).
      const auto column_sign =
          at::where(at::rand({1, columns}, generator, double_options) < 0.5, -1.0, 1.0);
      const auto marginal_grad = (column_sign * grad.abs()).to(dtype);
      const auto column_uniform = uniform[0];
      options.marginalize_batch(true);
      EXPECT_TRUE(equals(combine({marginal_grad}, (1 + activation.abs()).to(dtype), options,
                                 nullopt, column_uniform),
                         marginal_grad));
    }
  }
}

// --- All-zero gradients, purity -------------------------------------------------------------------

TEST(CombineCases, AllZeroGradientsHavePurityOneHalf) {
  auto generator = testing::seeded_generator(204);
  for (bool marginalize : {true, false}) {
    for (auto dtype : {at::kFloat, at::kDouble, at::kHalf}) {
      const auto activation = testing::random_activation({4, 3, 5}, dtype, generator);
      const auto options = GradDropOptions(3).marginalize_batch(marginalize);
      const std::vector<at::Tensor> zeros = {at::zeros_like(activation), at::zeros_like(activation),
                                             at::zeros_like(activation)};
      const std::vector<at::Tensor> undefined = {at::Tensor(), at::Tensor(), at::Tensor()};
      for (const auto& grads : {zeros, undefined}) {
        const auto p = purity(grads, activation, options);
        EXPECT_EQ(p.sizes(), at::IntArrayRef(purity_shape(activation, options)));
        EXPECT_EQ(p.scalar_type(), dtype == at::kDouble ? at::kDouble : at::kFloat);
        EXPECT_TRUE(at::equal(p, at::full_like(p, 0.5)));
        const auto out = combine(grads, activation, options);
        EXPECT_TRUE(at::equal(out, at::zeros_like(activation)));
      }
    }
  }
}

TEST(CombineCases, PurityMatchesTheReference) {
  auto generator = testing::seeded_generator(205);
  for (bool marginalize : {true, false}) {
    for (auto source : {SignSource::kActivationSign, SignSource::kActivationValue,
                        SignSource::kNone}) {
      const auto activation = testing::random_activation({7, 6}, at::kFloat, generator);
      const auto grads = testing::random_grads(activation, 4, generator, 3);
      const auto options = GradDropOptions(4).marginalize_batch(marginalize).sign_source(source);
      const auto uniform = at::rand(purity_shape(activation, options), generator);
      const auto expected = reference::combine(grads, activation, options, uniform).purity;
      const auto actual = purity(grads, activation, options);
      EXPECT_EQ(actual.sizes(), expected.sizes());
      EXPECT_TRUE(at::allclose(actual.to(at::kDouble), expected, 1e-6, 1e-6))
          << testing::describe(options);
    }
  }
}

// --- Keep functions -------------------------------------------------------------------------------

struct KnownKeep {
  const char* name;
  GradDropOptions options;
  double keep;  // f(P) by hand
};

// At a known P, brackets f(P) with U = f - 1e-4 (the positive sign must win) and U = f + 1e-4
// (the negative must win): this pins f to 2e-4.
void expect_keep_probability(const std::vector<double>& task_grads, double p,
                             const std::vector<KnownKeep>& cases) {
  for (const auto& known : cases) {
    SCOPED_TRACE(std::string(known.name) + " at P = " + std::to_string(p));
    for (auto dtype : {at::kDouble, at::kFloat}) {
      const auto activation = vector_of({1, 1}, dtype);
      std::vector<at::Tensor> grads;
      for (double g : task_grads) grads.push_back(vector_of({g, g}, dtype));
      const auto uniform = vector_of({known.keep - 1e-4, known.keep + 1e-4});
      const auto out = combine(grads, activation, known.options, nullopt, uniform);
      double positive = 0, negative = 0;
      for (double g : task_grads) (g > 0 ? positive : negative) += g;
      EXPECT_TRUE(equals(out, vector_of({positive, negative})));
    }
    const auto p_actual = purity({vector_of({task_grads[0]}), vector_of({task_grads[1]})},
                                 vector_of({1}), known.options);
    EXPECT_NEAR(p_actual.item<double>(), p, 1e-7);
  }
}

TEST(CombineCases, KeepFunctionValuesAtKnownPurity) {
  const auto base = GradDropOptions(2).marginalize_batch(false);
  const auto linear = [&](double scale) { return GradDropOptions(base).scale(scale); };
  const auto sigmoid = [&](double scale) {
    return GradDropOptions(base).keep_function(KeepFunction::kSigmoid).scale(scale);
  };
  const auto constant = GradDropOptions(base).custom_keep_function(
      [](const at::Tensor& p) { return at::full_like(p, 0.3); });
  const auto cubed = GradDropOptions(base).custom_keep_function(
      [](const at::Tensor& p) { return p * p * p; });
  // g = (3, -1): G = (3, -1), P = 0.5 * (1 + 2 / 4) = 0.75.
  expect_keep_probability({3, -1}, 0.75,
                          {{"linear 1", linear(1), 0.75},
                           {"linear 1.5", linear(1.5), 0.875},
                           {"linear 0.5", linear(0.5), 0.625},
                           {"sigmoid 1", sigmoid(1), 0.7310585786300049},   // sigmoid(1)
                           {"sigmoid 2", sigmoid(2), 0.8807970779778823},   // sigmoid(2)
                           {"sigmoid 0.25", sigmoid(0.25), 0.5621765008857981},
                           {"custom 0.3", constant, 0.3},
                           {"custom P^3", cubed, 0.421875}});
  // g = (1, -3): P = 0.25.
  expect_keep_probability({1, -3}, 0.25,
                          {{"linear 1", linear(1), 0.25},
                           {"linear 1.5", linear(1.5), 0.125},
                           {"sigmoid 1", sigmoid(1), 0.2689414213699951},   // sigmoid(-1)
                           {"custom P^3", cubed, 0.015625}});
  // g = (1, -1): P = 0.5, where every built-in f is 0.5.
  expect_keep_probability({1, -1}, 0.5,
                          {{"linear 1.7", linear(1.7), 0.5}, {"sigmoid 3", sigmoid(3), 0.5}});
}

// --- keep_grad_norm ---------------------------------------------------------------------------------

// By hand: A = 1, g_0 = (3, 1), g_1 = (-1, -1), U = 0.1: element 0 has P ~ 0.75 and element 1
// P = 0.5, both above U, so the positive task wins in both: out = (3, 1), ||out|| = sqrt(10);
// the plain sum (2, 0) has norm 2, so the rescaled output is out * 2 / (sqrt(10) + epsilon).
TEST(CombineCases, KeepGradNormByHand) {
  const auto activation = vector_of({1, 1});
  const std::vector<at::Tensor> grads = {vector_of({3, 1}), vector_of({-1, -1})};
  const auto uniform = vector_of({0.1, 0.1});
  auto options = GradDropOptions(2).marginalize_batch(false);
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, uniform), vector_of({3, 1})));
  const double ratio = 2.0 / (std::sqrt(10.0) + 1e-7);
  const auto rescaled = combine(grads, activation, options.keep_grad_norm(true), nullopt, uniform);
  EXPECT_TRUE(at::allclose(rescaled, vector_of({3 * ratio, 1 * ratio}), 1e-14, 0))
      << rescaled;
}

TEST(CombineCases, KeepGradNormRestoresThePlainSumsNorm) {
  auto generator = testing::seeded_generator(206);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (bool marginalize : {true, false}) {
      const auto activation = testing::random_activation({9, 14}, dtype, generator);
      const auto grads = testing::random_grads(activation, 4, generator);
      auto options = GradDropOptions(4).marginalize_batch(marginalize).leak({0, 0.2, 0, 0});
      const auto uniform = testing::separated_uniform(grads, activation, options, generator);
      const auto plain = combine(grads, activation, options, nullopt, uniform);
      const auto rescaled =
          combine(grads, activation, GradDropOptions(options).keep_grad_norm(true), nullopt, uniform);
      const double sum_norm = (grads[0] + grads[1] + grads[2] + grads[3]).to(at::kDouble).norm().item<double>();
      const double plain_norm = plain.to(at::kDouble).norm().item<double>();
      const double tolerance = dtype == at::kDouble ? 1e-12 : 1e-5;
      // ||out|| * ||sum g|| / (||out|| + epsilon): the norm of the plain sum, up to epsilon.
      EXPECT_NEAR(rescaled.to(at::kDouble).norm().item<double>(),
                  sum_norm * plain_norm / (plain_norm + 1e-7), tolerance * sum_norm);
      EXPECT_NEAR(rescaled.to(at::kDouble).norm().item<double>(), sum_norm, 1e-6 * sum_norm);
      // A pure rescaling of the plain GradDrop output, by ||sum g|| / (||out|| + epsilon).
      EXPECT_TRUE(at::allclose(rescaled.to(at::kDouble),
                               plain.to(at::kDouble) * (sum_norm / (plain_norm + 1e-7)), tolerance,
                               tolerance));
    }
  }
}

// Nothing kept: the output stays exactly zero (0 * ||sum|| / epsilon), never NaN.
TEST(CombineCases, KeepGradNormOfAllDroppedIsZero) {
  const auto activation = at::zeros({3, 4}, at::kFloat);
  const std::vector<at::Tensor> grads = {at::ones({3, 4}), -2 * at::ones({3, 4})};
  for (bool marginalize : {true, false}) {
    const auto options = GradDropOptions(2).marginalize_batch(marginalize).keep_grad_norm(true);
    const auto out = combine(grads, activation, options);
    EXPECT_TRUE(at::equal(out, at::zeros_like(activation))) << out;
  }
}

// --- Marginalisation --------------------------------------------------------------------------------

// Columns whose per-row signs disagree with their batch sums: marginalised, every row of a
// column takes the column's coefficients; per element, row 0 would decide differently.
TEST(CombineCases, MarginalisationSharesMasksAcrossRowsByHand) {
  const auto activation = at::ones({4, 3}, at::kDouble);
  // Column 0: sums (5, -5), P = 0.5, U = 0.2: positive wins. Column 1: the same sums, U = 0.8:
  // negative wins. Column 2: sums (3, -1), P = 0.75, U = 0.7: positive wins.
  const auto g0 = tensor_of({-1, -1, 3, 2, 2, -1, 2, 2, 0, 2, 2, 1}, {4, 3});
  const auto g1 = tensor_of({1, 1, -1, -2, -2, -1, -2, -2, -1, -2, -2, 2}, {4, 3});
  const auto uniform = vector_of({0.2, 0.8, 0.7});
  const auto out = combine({g0, g1}, activation, GradDropOptions(2), nullopt, uniform);
  const auto expected = at::stack({g0.select(1, 0), g1.select(1, 1), g0.select(1, 2)}, 1);
  EXPECT_TRUE(equals(out, expected));
  // Per element the first row of column 0 has G = (-1, 1), P = 0.5, and U = 0.2 keeps task 1.
  const auto per_element_uniform = uniform.unsqueeze(0).expand({4, 3}).contiguous();
  const auto per_element = combine({g0, g1}, activation, GradDropOptions(2).marginalize_batch(false),
                                   nullopt, per_element_uniform);
  EXPECT_EQ(per_element[0][0].item<double>(), 1.0);
  EXPECT_EQ(out[0][0].item<double>(), -1.0);
}

// For random inputs, recover each output element's coefficients: with c_i in {l_i, 1}, exactly
// one combination reproduces an element (generic gradients); every row of a column must use
// the same one, and it must be the reference's mask of that column.
void expect_shared_coefficients(const at::Tensor& out, const std::vector<at::Tensor>& grads,
                                const std::vector<double>& leak,
                                const std::vector<at::Tensor>& masks) {
  const int64_t n = static_cast<int64_t>(grads.size());
  const auto rows = out.size(0);
  const auto flat_out = out.reshape({rows, -1});
  const auto columns = flat_out.size(1);
  std::vector<at::Tensor> flat_grads;
  for (const auto& grad : grads) flat_grads.push_back(grad.reshape({rows, -1}));
  for (int64_t column = 0; column < columns; ++column) {
    int64_t shared = -1;
    for (int64_t row = 0; row < rows; ++row) {
      int64_t matches = 0, found = -1;
      for (int64_t combination = 0; combination < (int64_t{1} << n); ++combination) {
        double value = 0;
        for (int64_t task = 0; task < n; ++task) {
          const double c = (combination >> task) & 1 ? 1.0 : leak[task];
          value += c * flat_grads[task][row][column].item<double>();
        }
        if (std::abs(value - flat_out[row][column].item<double>()) < 1e-12) ++matches, found = combination;
      }
      ASSERT_EQ(matches, 1) << "row " << row << " column " << column;
      if (shared < 0) shared = found;
      EXPECT_EQ(found, shared) << "row " << row << " column " << column << " uses other masks";
    }
    for (int64_t task = 0; task < n; ++task) {
      EXPECT_EQ(((shared >> task) & 1) == 1, masks[task].flatten()[column].item<bool>())
          << "task " << task << " column " << column;
    }
  }
}

TEST(CombineCases, MarginalisationSharesMasksAcrossRowsRandom) {
  auto generator = testing::seeded_generator(207);
  for (int64_t n : {2, 3}) {
    for (auto shape : {std::vector<int64_t>{6, 10}, std::vector<int64_t>{4, 3, 2}}) {
      const auto activation = testing::random_activation(shape, at::kDouble, generator);
      const auto grads = testing::random_grads(activation, n, generator);
      const std::vector<double> leak = n == 2 ? std::vector<double>{0, 0.3}
                                              : std::vector<double>{0.6, 0, 0};
      const auto options = GradDropOptions(n).leak(leak);
      const auto uniform = testing::separated_uniform(grads, activation, options, generator);
      const auto masks = reference::combine(grads, activation, options, uniform).masks;
      expect_shared_coefficients(combine(grads, activation, options, nullopt, uniform), grads,
                                 leak, masks);
    }
  }
}

// A 1-d activation marginalised is one batch: one purity (a 0-d P) for the whole vector.
TEST(CombineCases, OneDimensionalMarginalisedHasOnePurity) {
  const auto activation = vector_of({1, -1, 2, 0, 1, -3});
  const std::vector<at::Tensor> grads = {vector_of({1, 1, 1, 1, 1, 1}),
                                         vector_of({-2, 0, -2, 0, 0, 0})};
  const auto options = GradDropOptions(2);
  EXPECT_TRUE(purity_shape(activation, options).empty());
  // G = (1 - 1 + 1 + 0 + 1 - 1, -2 - 2) = (1, -4): P = 0.5 * (1 - 3 / 5) = 0.2.
  const auto p = purity(grads, activation, options);
  EXPECT_EQ(p.dim(), 0);
  EXPECT_NEAR(p.item<double>(), 0.2, 1e-7);
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, at::scalar_tensor(0.5)), grads[1]));
  // The positive sign wins: task 0 everywhere, also where its element's signal is negative.
  EXPECT_TRUE(equals(combine(grads, activation, options, nullopt, at::scalar_tensor(0.1)), grads[0]));

  auto generator = testing::seeded_generator(208);
  const auto random_activation = testing::random_activation({40}, at::kDouble, generator);
  const auto random_grads = testing::random_grads(random_activation, 3, generator);
  const auto random_options = GradDropOptions(3).leak({0, 0.5, 0});
  const auto uniform = testing::separated_uniform(random_grads, random_activation, random_options,
                                                  generator);
  ASSERT_EQ(uniform.dim(), 0);
  const auto masks =
      reference::combine(random_grads, random_activation, random_options, uniform).masks;
  expect_shared_coefficients(
      combine(random_grads, random_activation, random_options, nullopt, uniform), random_grads,
      {0, 0.5, 0}, masks);
}

// A 0-d activation has no batch: per element it works, with a 0-d P and U.
TEST(CombineCases, ZeroDimensionalActivationPerElement) {
  for (auto dtype : kExactDtypes) {
    const auto activation = at::scalar_tensor(1.5, at::TensorOptions().dtype(dtype));
    const std::vector<at::Tensor> grads = {at::scalar_tensor(2.0, at::TensorOptions().dtype(dtype)),
                                           at::scalar_tensor(-1.0, at::TensorOptions().dtype(dtype))};
    auto options = GradDropOptions(2).marginalize_batch(false);
    EXPECT_TRUE(purity_shape(activation, options).empty());
    // G = (2, -1): P = 0.5 * (1 + 1 / 3) = 2/3.
    EXPECT_NEAR(purity(grads, activation, options).item<double>(), 2.0 / 3.0, 1e-7);
    auto out = combine(grads, activation, options, nullopt, at::scalar_tensor(0.5));
    EXPECT_EQ(out.dim(), 0);
    EXPECT_EQ(out.item<double>(), 2.0);
    EXPECT_EQ(combine(grads, activation, options, nullopt, at::scalar_tensor(0.8)).item<double>(), -1.0);
    // Drawn: one of the two.
    const double drawn = combine(grads, activation, options).item<double>();
    EXPECT_TRUE(drawn == 2.0 || drawn == -1.0) << drawn;
  }
}

// --- Undefined gradients and empty tensors ---------------------------------------------------------

TEST(CombineCases, UndefinedGradientsCountAsZero) {
  auto generator = testing::seeded_generator(209);
  for (bool marginalize : {true, false}) {
    for (auto zero : {ZeroSign::kDrop, ZeroSign::kKeep}) {
      const auto activation = testing::random_activation({5, 7}, at::kFloat, generator);
      auto grads = testing::random_grads(activation, 3, generator);
      const auto options = GradDropOptions(3).marginalize_batch(marginalize).zero_sign(zero)
                               .keep_grad_norm(true);
      const auto uniform = at::rand(purity_shape(activation, options), generator);
      auto with_zero = grads;
      with_zero[1] = at::zeros_like(activation);
      auto with_undefined = grads;
      with_undefined[1] = at::Tensor();
      GradDropStatistics zero_statistics, undefined_statistics;
      EXPECT_TRUE(testing::bitwise_equal(
          combine(with_undefined, activation, options, nullopt, uniform, &undefined_statistics),
          combine(with_zero, activation, options, nullopt, uniform, &zero_statistics)));
      EXPECT_TRUE(testing::statistics_equal(undefined_statistics, zero_statistics, 0));
    }
  }
}

TEST(CombineCases, EmptyTensors) {
  for (auto shape : {std::vector<int64_t>{0, 5}, std::vector<int64_t>{3, 0},
                     std::vector<int64_t>{0}, std::vector<int64_t>{2, 0, 3}}) {
    for (bool marginalize : {true, false}) {
      for (auto dtype : kExactDtypes) {
        SCOPED_TRACE(std::string(c10::toString(dtype)) + " " +
                     c10::str(at::IntArrayRef(shape)) + (marginalize ? " marginalised" : ""));
        const auto activation = at::empty(shape, at::TensorOptions().dtype(dtype));
        const std::vector<at::Tensor> grads = {at::empty_like(activation), at::Tensor()};
        auto options = GradDropOptions(2).marginalize_batch(marginalize).keep_grad_norm(true);
        GradDropStatistics statistics;
        const auto out = combine(grads, activation, options, nullopt, nullopt, &statistics);
        EXPECT_EQ(out.sizes(), activation.sizes());
        EXPECT_EQ(out.scalar_type(), dtype);
        const auto p_shape = purity_shape(activation, options);
        int64_t p_elements = 1;
        for (auto size : p_shape) p_elements *= size;
        EXPECT_EQ(statistics.purity_elements, p_elements);
        // An empty batch still has features: P = 0.5 there, nothing kept, nothing conflicts.
        EXPECT_EQ(statistics.mean_purity, p_elements > 0 ? 0.5 : 0.0);
        EXPECT_EQ(statistics.conflict_fraction, 0.0);
        EXPECT_EQ(statistics.kept_fraction, std::vector<double>({0.0, 0.0}));
        const auto p = purity(grads, activation, options);
        EXPECT_EQ(p.sizes(), at::IntArrayRef(p_shape));
        // Explicit U of P's shape, and statistics of the zero policy "keep".
        options.zero_sign(ZeroSign::kKeep);
        const auto uniform = at::full(p_shape, 0.5);
        combine(grads, activation, options, nullopt, uniform, &statistics);
        const double kept = p_elements > 0 ? 1.0 : 0.0;
        EXPECT_EQ(statistics.kept_fraction, std::vector<double>({kept, kept}));
      }
    }
  }
}

// --- Statistics ---------------------------------------------------------------------------------------

TEST(CombineCases, StatisticsByHand) {
  // The zero-policy example: P = (0.5, ~1, ~0.25); masks drop: (0, 1, 1), (0, 1, 0).
  const auto activation = vector_of({0, 1, -1});
  const std::vector<at::Tensor> grads = {vector_of({2, 1, 3}), vector_of({3, 2, -1})};
  const auto uniform = vector_of({0.3, 0.5, 0.5});
  auto options = GradDropOptions(2).marginalize_batch(false);
  GradDropStatistics statistics;
  combine(grads, activation, options, nullopt, uniform, &statistics);
  EXPECT_EQ(statistics.purity_elements, 3);
  EXPECT_DOUBLE_EQ(statistics.kept_fraction[0], 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(statistics.kept_fraction[1], 1.0 / 3.0);
  EXPECT_NEAR(statistics.mean_purity, (0.5 + 1.0 + 0.25) / 3.0, 1e-7);
  EXPECT_DOUBLE_EQ(statistics.conflict_fraction, 1.0 / 3.0);
  combine(grads, activation, options.zero_sign(ZeroSign::kKeep), nullopt, uniform, &statistics);
  EXPECT_DOUBLE_EQ(statistics.kept_fraction[0], 1.0);
  EXPECT_DOUBLE_EQ(statistics.kept_fraction[1], 2.0 / 3.0);
}

TEST(CombineCases, StatisticsMatchTheReferenceMasks) {
  auto generator = testing::seeded_generator(210);
  for (bool marginalize : {true, false}) {
    for (auto zero : {ZeroSign::kDrop, ZeroSign::kKeep}) {
      for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
        const auto activation = testing::random_activation({12, 9}, dtype, generator);
        const auto grads = testing::random_grads(activation, 4, generator, 4);
        const auto options = GradDropOptions(4).marginalize_batch(marginalize).zero_sign(zero);
        const auto uniform = testing::separated_uniform(grads, activation, options, generator);
        GradDropStatistics statistics;
        combine(grads, activation, options, nullopt, uniform, &statistics);
        const auto expected =
            testing::statistics_of_reference(reference::combine(grads, activation, options, uniform));
        EXPECT_TRUE(testing::statistics_equal(statistics, expected,
                                              dtype == at::kDouble ? 1e-12 : 1e-6))
            << testing::describe(options) << " " << dtype;
        // A sanity bound that does not come from the reference: kept fractions are fractions.
        for (double kept : statistics.kept_fraction) {
          EXPECT_GE(kept, 0.0);
          EXPECT_LE(kept, 1.0);
        }
      }
    }
  }
}

// --- NaN and Inf ------------------------------------------------------------------------------------

// A NaN or an Inf in one task's gradient makes every output element that depended on it
// non-finite: that element per element, the whole column when marginalised. Everything else
// stays finite (unless keep_grad_norm spreads the NaN through the norm).
TEST(CombineCases, NonFiniteGradientsGiveNonFiniteOutput) {
  auto generator = testing::seeded_generator(211);
  const std::vector<std::pair<GradDropOptions, std::string>> variants = {
      {GradDropOptions(3), "default"},
      {GradDropOptions(3).keep_function(KeepFunction::kSigmoid).scale(2), "sigmoid"},
      {GradDropOptions(3).custom_keep_function([](const at::Tensor& p) { return p * p; }),
       "custom"},
      // A user f that maps a NaN purity to a number: the NaN must still reach the output.
      {GradDropOptions(3).custom_keep_function([](const at::Tensor& p) {
         return at::where(p > 0.5, at::full_like(p, 0.75), at::full_like(p, 0.25));
       }),
       "custom threshold"},
      {GradDropOptions(3).leak({1, 1, 0.5}), "leaks"},
      {GradDropOptions(3).sign_source(SignSource::kNone).zero_sign(ZeroSign::kKeep), "none keep"},
      {GradDropOptions(3).sign_source(SignSource::kActivationValue), "value"},
  };
  for (const auto& variant : variants) {
    for (bool marginalize : {true, false}) {
      for (auto dtype : kExactDtypes) {
        SCOPED_TRACE(variant.second + " " + c10::toString(dtype) + (marginalize ? " marginalised" : ""));
        auto options = GradDropOptions(variant.first).marginalize_batch(marginalize);
        auto activation = testing::random_activation({4, 6}, dtype, generator);
        activation[0][0] = 0;  // 0 * Inf must not hide the Inf either
        auto grads = testing::random_grads(activation, 3, generator);
        grads[2][0][0] = -INFINITY;
        grads[1][1][2] = NAN;
        grads[0][3][4] = INFINITY;
        auto affected = at::zeros({4, 6}, at::kBool);
        for (auto index : {std::make_pair(0, 0), std::make_pair(1, 2), std::make_pair(3, 4)}) {
          if (marginalize) {
            affected.select(1, index.second).fill_(true);
          } else {
            affected[index.first][index.second] = true;
          }
        }
        for (bool keep_grad_norm : {false, true}) {
          const auto out = combine(grads, activation, GradDropOptions(options).keep_grad_norm(keep_grad_norm));
          const auto finite = at::isfinite(out);
          EXPECT_FALSE(at::logical_and(affected, finite).any().item<bool>())
              << "finite where a NaN/Inf gradient contributed, keep_grad_norm " << keep_grad_norm
              << ":\n" << out;
          if (!keep_grad_norm) {
            EXPECT_TRUE(at::logical_or(affected, finite).all().item<bool>())
                << "non-finite elsewhere:\n" << out;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace graddrop
