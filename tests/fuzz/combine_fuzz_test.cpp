// Differential fuzzing of graddrop::combine against the float64 reference (src/reference.cpp).
//
// Each case draws everything at random: dtype, rank 0-5 and sizes (empty dims too), n = 1..10
// (one case in ten 11..64)
// with unused heads, every option, explicit U kept away from f(P) (so float op-math decides
// every mask as float64 does), the layout of every input (contiguous, strided, expanded with
// stride 0, aliased to another input, misaligned by one element) and its values (normal, wide
// exponent range, subnormals, huge, NaN/Inf). The case then runs on every CPU instruction set
// this machine has (baseline, AVX2, AVX-512 forced in turn): the output must match the
// reference as documented (NaN where a NaN/Inf reached the purity or the output), the
// statistics must match the reference's masks, every level must give the same bits, and no
// input may change.
//
// Where op-math (float32) itself decides differently from float64 -- an underflow to zero, an
// overflow to inf of a product -- the output may instead match the same formula composed in
// the op-math dtype (reference::combine_in); where a signal G_i is a cancellation below
// op-math's rounding error, its sign (so its mask) depends on the summation order, and those
// features are not compared. Both are counted and printed.
//
//   GRADDROP_FUZZ_CASES=<n>   cases per test (default 2500; a long run: 100000)
//   GRADDROP_TEST_SEED=<s>    replay a run (the seed is printed first)
//   GRADDROP_FUZZ_CASE=<k>    replay only case k of that run
//   GRADDROP_FUZZ_DEBUG=1     print the inputs, P, f(P) and U of a failing case
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include "cpu/cpu_capability.h"
#include "ops/combine_op.h"
#include "ops/validation.h"
#include "graddrop/combine.h"
#include "graddrop/reference.h"
#include "test_support.h"

namespace graddrop {
namespace {

int64_t env_integer(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  return text != nullptr ? std::strtoll(text, nullptr, 10) : fallback;
}

int64_t case_count() { return env_integer("GRADDROP_FUZZ_CASES", 2500); }

enum class Layout { kContiguous, kStrided, kExpanded, kAliased, kMisaligned };
enum class Values { kNormal, kWide, kSubnormal, kHuge, kNonFinite };

const char* name_of(Layout layout) {
  switch (layout) {
    case Layout::kContiguous: return "contiguous";
    case Layout::kStrided: return "strided";
    case Layout::kExpanded: return "expanded";
    case Layout::kAliased: return "aliased";
    default: return "misaligned";
  }
}

const char* name_of(Values values) {
  switch (values) {
    case Values::kNormal: return "normal";
    case Values::kWide: return "wide";
    case Values::kSubnormal: return "subnormal";
    case Values::kHuge: return "huge";
    default: return "non-finite";
  }
}

// Picks from the case's own stream, so a case replays from (test seed, case index) alone.
struct Dice {
  std::mt19937_64 engine;
  explicit Dice(uint64_t seed) : engine(seed) {}
  int64_t below(int64_t n) { return static_cast<int64_t>(engine() % static_cast<uint64_t>(n)); }
  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(engine) < p; }
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(engine);
  }
  template <typename T>
  T pick(const std::vector<T>& items) {
    return items[static_cast<size_t>(below(static_cast<int64_t>(items.size())))];
  }
};

at::Tensor squared(const at::Tensor& p) { return p * p; }
at::Tensor steep_clamped(const at::Tensor& p) { return (1.5 * p - 0.25).clamp(0.0, 1.0); }

struct FuzzCase {
  uint64_t index = 0;
  GradDropOptions options{1};
  std::string keep_name;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;
  Values values = Values::kNormal;
  std::vector<Layout> layouts;  // activation, then every task
  std::vector<bool> undefined;  // per task
  bool statistics = false;
  bool explicit_keep = false;   // f(P) passed to the operator (Python's custom path)

  std::string describe() const {
    std::ostringstream text;
    text << "case " << index << ": " << testing::describe(options) << " keep_fn=" << keep_name
         << " epsilon=" << options.epsilon() << " dtype=" << dtype
         << " shape=" << at::IntArrayRef(shape) << " values=" << name_of(values) << " layouts=[";
    for (size_t i = 0; i < layouts.size(); ++i) text << (i ? "," : "") << name_of(layouts[i]);
    text << "] undefined=[";
    for (size_t i = 0; i < undefined.size(); ++i) text << (i ? "," : "") << undefined[i];
    text << "] statistics=" << statistics << " explicit_keep=" << explicit_keep
         << " (replay: GRADDROP_TEST_SEED=" << testing::test_seed()
         << " GRADDROP_FUZZ_CASE=" << index << ")";
    return text.str();
  }
};

std::vector<int64_t> random_shape(Dice& dice) {
  // A few large cases cross the kernels' tiles (16384 elements) and column groups.
  if (dice.chance(0.03)) {
    return {1 + dice.below(40), 300 + dice.below(900)};
  }
  const int64_t rank = dice.below(6);
  const std::vector<int64_t> sizes = {1, 1, 2, 3, 4, 5, 7, 8, 16, 17, 33};
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (int64_t d = 0; d < rank; ++d) {
    int64_t size = dice.chance(0.03) ? 0 : dice.pick(sizes);
    while (size > 1 && numel * size > 2048) size /= 2;
    shape.push_back(size);
    numel *= std::max<int64_t>(size, 1);
  }
  return shape;
}

FuzzCase random_case(uint64_t index, bool non_finite_explicit_keep) {
  Dice dice(testing::test_seed() * 0x9E3779B97F4A7C15ull + index * 1000003ull +
            (non_finite_explicit_keep ? 0x5bd1e995ull : 17));
  FuzzCase c;
  c.index = index;
  c.dtype = dice.pick(std::vector<at::ScalarType>{at::kFloat, at::kDouble, at::kHalf,
                                                  at::kBFloat16});
  c.shape = random_shape(dice);
  // Mostly 1..10 tasks; one case in ten has 11..64 (run-time task counts in groups of 8 and a
  // shorter last group).
  const int64_t n = dice.chance(0.1) ? 11 + dice.below(54) : 1 + dice.below(10);
  c.options = GradDropOptions(n);
  c.options.sign_source(dice.pick(std::vector<SignSource>{
      SignSource::kActivationSign, SignSource::kActivationValue, SignSource::kNone}));
  c.options.marginalize_batch(!c.shape.empty() && dice.chance(0.6));
  c.options.zero_sign(dice.chance(0.5) ? ZeroSign::kKeep : ZeroSign::kDrop);
  c.options.keep_grad_norm(dice.chance(0.3));
  switch (dice.below(4)) {
    case 0:
      c.options.keep_function(KeepFunction::kSigmoid);
      c.keep_name = "sigmoid";
      break;
    case 1:
      c.options.custom_keep_function(dice.chance(0.5) ? squared : steep_clamped);
      c.keep_name = "custom";
      break;
    default:
      c.options.keep_function(KeepFunction::kLinear);
      c.keep_name = "linear";
  }
  // Scales whose f(P) stays within the U margin of float64's despite P's float rounding.
  c.options.scale(dice.pick(std::vector<double>{1.0, 1.0, dice.uniform(0.2, 3.0), 10.0, 100.0}));
  c.options.epsilon(dice.pick(std::vector<double>{1e-7, 1e-7, std::pow(10.0, -dice.uniform(1, 30)),
                                                  1.0}));
  if (dice.chance(0.5)) {
    std::vector<double> leak;
    for (int64_t task = 0; task < n; ++task) {
      leak.push_back(dice.pick(std::vector<double>{0.0, 0.0, 1.0, dice.uniform(0, 1)}));
    }
    c.options.leak(leak);
  }
  c.statistics = dice.chance(0.5);
  if (non_finite_explicit_keep) {
    c.values = Values::kNonFinite;
    c.explicit_keep = true;
  } else {
    c.values = dice.pick(std::vector<Values>{Values::kNormal, Values::kNormal, Values::kWide,
                                             Values::kSubnormal, Values::kHuge,
                                             Values::kNonFinite});
    // The explicit f(P) path with a NaN purity is Fuzz.ExplicitKeepProbabilityNonFinite.
    c.explicit_keep = c.values != Values::kNonFinite && dice.chance(0.2);
  }
  for (int64_t i = 0; i <= n; ++i) {
    c.layouts.push_back(dice.pick(std::vector<Layout>{
        Layout::kContiguous, Layout::kContiguous, Layout::kStrided, Layout::kExpanded,
        Layout::kAliased, Layout::kMisaligned}));
  }
  c.layouts[0] = c.layouts[0] == Layout::kAliased ? Layout::kContiguous : c.layouts[0];
  for (int64_t task = 0; task < n; ++task) c.undefined.push_back(dice.chance(0.12));
  return c;
}

// Values of one input in float64, by the case's value class.
at::Tensor random_values(at::IntArrayRef shape, const FuzzCase& c, bool is_activation,
                         at::Generator& generator) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto values = at::randn(shape, generator, f64);
  values = values.masked_fill(at::rand(shape, generator, f64) < 0.05, 0.0);
  if (values.numel() == 0) return values;
  const bool half = c.dtype == at::kHalf;
  const bool wide_type = c.dtype == at::kDouble;
  const auto sprinkle = [&](double fraction, const at::Tensor& replacement) {
    const auto where = at::rand(shape, generator, f64) < fraction;
    values = at::where(where, replacement, values);
  };
  const auto signs = (at::rand(shape, generator, f64) < 0.5).to(at::kDouble) * 2 - 1;
  switch (c.values) {
    case Values::kNormal:
      break;
    case Values::kWide: {
      const double decades = wide_type ? 100 : (half ? 2 : 15);
      values = values * at::pow(10.0, (at::rand(shape, generator, f64) * 2 - 1) * decades);
      break;
    }
    case Values::kSubnormal: {
      const double tiny = wide_type ? 1e-310 : (half ? 3e-6 : (c.dtype == at::kFloat ? 1e-40 : 1e-39));
      sprinkle(0.2, signs * tiny * (1 + at::rand(shape, generator, f64)));
      break;
    }
    case Values::kHuge: {
      // Large, yet sums over 10 tasks and the batch stay finite in op-math, and products with
      // the activation too (huge activations only where its value is not used).
      if (is_activation && c.options.sign_source() == SignSource::kActivationValue) break;
      const double huge = wide_type ? 1e150 : (half ? 2e3 : 1e33);
      sprinkle(0.1, signs * huge * (1 + at::rand(shape, generator, f64)));
      break;
    }
    case Values::kNonFinite: {
      const double inf = std::numeric_limits<double>::infinity();
      sprinkle(0.02, at::full_like(values, std::numeric_limits<double>::quiet_NaN()));
      sprinkle(0.02, signs * inf);
      break;
    }
  }
  return values;
}

// One input in the case's layout. `others` are the tensors already made (for aliasing).
at::Tensor in_layout(Layout layout, at::IntArrayRef shape, const FuzzCase& c, bool is_activation,
                     const std::vector<at::Tensor>& others, at::Generator& generator,
                     Dice& dice) {
  if (layout == Layout::kAliased) {
    std::vector<at::Tensor> candidates;
    for (const auto& other : others) {
      if (other.defined()) candidates.push_back(other);
    }
    if (!candidates.empty()) return dice.pick(candidates);
    layout = Layout::kContiguous;
  }
  if (layout == Layout::kExpanded) {
    // A gradient repeated down the batch meets sign(A) = +-1 in every row: its column sum
    // v * (rows with A > 0 - rows with A < 0) is exactly 0 whenever the counts tie, and a float
    // sum of +-v (in any order) leaves a rounding residue of either sign instead. Such ties are
    // real but undecidable in op-math; they are kept out of the batch dimension here.
    const bool tie_prone = !is_activation && c.options.marginalize_batch() &&
                           c.options.sign_source() == SignSource::kActivationSign;
    std::vector<int64_t> expandable;
    for (size_t d = tie_prone ? 1 : 0; d < shape.size(); ++d) {
      if (shape[d] > 1) expandable.push_back(static_cast<int64_t>(d));
    }
    if (!expandable.empty()) {
      auto base_shape = shape.vec();
      base_shape[static_cast<size_t>(dice.pick(expandable))] = 1;
      return random_values(base_shape, c, is_activation, generator).to(c.dtype).expand(shape);
    }
    layout = Layout::kStrided;
  }
  const auto values = random_values(shape, c, is_activation, generator).to(c.dtype);
  switch (layout) {
    case Layout::kStrided:
      return testing::non_contiguous_copy(values);
    case Layout::kMisaligned: {
      auto buffer = at::empty({values.numel() + 1}, values.options());
      auto view = buffer.narrow(0, 1, values.numel()).view(shape);
      view.copy_(values);
      return view;
    }
    default:
      return values;
  }
}

struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
};

Inputs make_inputs(const FuzzCase& c) {
  const uint64_t stream = c.index * 2 + (c.explicit_keep ? 1 : 0);
  auto generator = at::detail::createCPUGenerator(testing::test_seed() * 31 + stream);
  Dice dice(testing::test_seed() + stream * 7919);
  Inputs inputs;
  inputs.activation = in_layout(c.layouts[0], c.shape, c, true, {}, generator, dice);
  std::vector<at::Tensor> made = {inputs.activation};
  for (int64_t task = 0; task < c.options.num_tasks(); ++task) {
    if (c.undefined[static_cast<size_t>(task)]) {
      inputs.grads.emplace_back();
      continue;
    }
    inputs.grads.push_back(in_layout(c.layouts[static_cast<size_t>(task + 1)], c.shape, c, false,
                                     made, generator, dice));
    made.push_back(inputs.grads.back());
  }
  return inputs;
}

struct Outcome {
  at::Tensor output;
  at::Tensor statistics;  // float64 [kept..., mean P, conflict] or empty
};

// Through the dispatcher with f(P) given, as Python's custom keep-function path calls it.
Outcome run_explicit_keep(const FuzzCase& c, const Inputs& inputs, const at::Tensor& uniform,
                          const at::Tensor& keep) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<ops::CombineSignature>();
  c10::List<optional<at::Tensor>> list;
  for (const auto& grad : inputs.grads) {
    list.push_back(grad.defined() ? optional<at::Tensor>(grad) : optional<at::Tensor>());
  }
  const auto& o = c.options;
  std::vector<double> leak(o.leak());
  auto result = op.call(inputs.activation, list, leak, to_string(o.sign_source()),
                        o.marginalize_batch(), "custom", o.scale(), to_string(o.zero_sign()),
                        o.epsilon(), o.keep_grad_norm(), nullopt, uniform, keep, nullopt, 0,
                        c.statistics, nullopt);
  return {std::get<0>(result), std::get<1>(result)};
}

Outcome run_api(const FuzzCase& c, const Inputs& inputs, const at::Tensor& uniform) {
  GradDropStatistics statistics;
  Outcome outcome;
  outcome.output = combine(inputs.grads, inputs.activation, c.options, nullopt, uniform,
                           c.statistics ? &statistics : nullptr);
  if (c.statistics) {
    std::vector<double> values = statistics.kept_fraction;
    values.push_back(statistics.mean_purity);
    values.push_back(statistics.conflict_fraction);
    outcome.statistics = at::tensor(values, at::TensorOptions().dtype(at::kDouble));
  }
  return outcome;
}

// Elementwise: NaN matches NaN, an infinity the same infinity, else within tolerance of the
// magnitude scale (sum_i |g_i| times the keep_grad_norm ratio: float sums of cancelling terms
// are exact only to that scale).
at::Tensor agrees(const at::Tensor& got, const at::Tensor& want, const at::Tensor& magnitude,
                  at::ScalarType dtype) {
  const auto both_nan = at::logical_and(at::isnan(got), at::isnan(want));
  const auto same_inf = at::logical_and(at::isinf(got), got == want);
  const auto bound = testing::absolute_tolerance(dtype) +
                     testing::relative_tolerance(dtype) * (want.abs() + magnitude);
  const auto close = (got - want).abs() <= bound;
  return at::logical_or(at::logical_or(both_nan, same_inf), close);
}

// Same bits, except that any NaN matches any NaN: which NaN operand an operation propagates
// (and so the payload and sign of the result) depends on the instruction order, which differs
// between the scalar and vector kernels when several NaN or Inf inputs meet.
::testing::AssertionResult same_bits_up_to_nan_payload(const at::Tensor& actual,
                                                       const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes() || actual.scalar_type() != expected.scalar_type()) {
    return ::testing::AssertionFailure() << "dtype or shape differ";
  }
  const auto a = actual.to(at::kDouble);
  const auto b = expected.to(at::kDouble);
  const auto same = at::logical_or(
      at::logical_and(at::isnan(a), at::isnan(b)),
      at::logical_and(at::eq(a, b), at::eq(at::signbit(a), at::signbit(b))));
  const int64_t differ = at::logical_not(same).sum().item<int64_t>();
  if (differ == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << differ << " of " << a.numel() << " elements differ";
}

struct Totals {
  int64_t cases = 0;
  int64_t compared_elements = 0;
  int64_t op_math_elements = 0;
  int64_t undecidable_elements = 0;
};

// The purity elements whose mask op-math cannot decide as float64 does: a signal G_i whose
// float64 value lies within op-math's rounding error of its sum (a cancellation, or a tie that is
// exactly 0 in float64), or whose op-math product s(A) * g_i underflows to another sign. There
// the sign, hence the mask, legitimately depends on the summation order. Shaped like P.
at::Tensor undecidable_purity_elements(const FuzzCase& c, const Inputs& inputs) {
  const auto opmath = c.dtype == at::kDouble ? at::kDouble : at::kFloat;
  const double unit = c.dtype == at::kDouble ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  const auto activation = inputs.activation.to(at::kDouble);
  at::Tensor source;
  switch (c.options.sign_source()) {
    case SignSource::kActivationSign: source = at::sign(activation); break;
    case SignSource::kActivationValue: source = activation; break;
    default: source = at::ones_like(activation);
  }
  const auto source_opmath = source.to(opmath);
  const bool marginalize = c.options.marginalize_batch();
  const double rows = marginalize ? static_cast<double>(inputs.activation.size(0)) : 1.0;
  at::Tensor undecidable;
  for (const auto& grad : inputs.grads) {
    if (!grad.defined()) continue;
    auto signal = source * grad.to(at::kDouble);
    auto product_opmath = (source_opmath * grad.to(opmath)).to(at::kDouble);
    auto magnitude = signal.abs();
    if (marginalize) {
      signal = signal.sum(0);
      product_opmath = product_opmath.sum(0);
      magnitude = magnitude.sum(0);
    }
    const auto cancelled =
        at::logical_and(signal.abs() <= magnitude * (4 * rows * unit), magnitude > 0);
    const auto flipped = at::ne(at::sign(product_opmath), at::sign(signal));
    const auto task = at::logical_and(at::logical_or(cancelled, flipped), at::isfinite(signal));
    undecidable = undecidable.defined() ? at::logical_or(undecidable, task) : task;
  }
  if (!undecidable.defined()) {
    undecidable = at::zeros(ops::purity_shape_of(inputs.activation, marginalize), at::kBool);
  }
  return undecidable;
}

// A mask over P's elements as a mask over the output's.
at::Tensor output_mask_of(const at::Tensor& purity_mask, const FuzzCase& c,
                          const at::Tensor& output) {
  if (!c.options.marginalize_batch()) return purity_mask;
  return purity_mask.unsqueeze(0).expand(output.sizes());
}

void check_case(const FuzzCase& c, Totals& totals) {
  SCOPED_TRACE(c.describe());
  const auto inputs = make_inputs(c);
  const auto activation_before = inputs.activation.clone();
  std::vector<at::Tensor> grads_before;
  for (const auto& grad : inputs.grads) grads_before.push_back(grad.defined() ? grad.clone() : grad);

  auto generator = at::detail::createCPUGenerator(testing::test_seed() * 131 + c.index);
  const auto uniform = testing::separated_uniform(inputs.grads, inputs.activation, c.options,
                                                  generator);
  const auto expected = reference::combine(inputs.grads, inputs.activation, c.options, uniform);
  at::Tensor keep;
  if (c.explicit_keep) {
    // A user f that maps a NaN purity to a number: the NaN must still reach the output.
    keep = at::nan_to_num(expected.keep_probability, 0.625).clamp(0.0, 1.0);
  }

  std::vector<Outcome> outcomes;
  const auto levels = cpu::supported_capabilities();
  const auto previous = cpu::active_capability();
  for (auto level : levels) {
    cpu::set_active_capability(level);
    outcomes.push_back(c.explicit_keep ? run_explicit_keep(c, inputs, uniform, keep)
                                       : run_api(c, inputs, uniform));
  }
  cpu::set_active_capability(previous);

  const auto& first = outcomes.front();
  ASSERT_EQ(first.output.sizes(), inputs.activation.sizes());
  ASSERT_EQ(first.output.scalar_type(), c.dtype);
  EXPECT_TRUE(first.output.is_contiguous());
  for (size_t level = 1; level < outcomes.size(); ++level) {
    EXPECT_TRUE(same_bits_up_to_nan_payload(outcomes[level].output, first.output))
        << cpu::to_string(levels[level]) << " vs " << cpu::to_string(levels[0]);
    if (c.statistics) {
      EXPECT_TRUE(same_bits_up_to_nan_payload(outcomes[level].statistics, first.statistics))
          << cpu::to_string(levels[level]) << " statistics";
    }
  }

  EXPECT_TRUE(testing::bitwise_equal(inputs.activation, activation_before)) << "activation changed";
  for (size_t task = 0; task < inputs.grads.size(); ++task) {
    EXPECT_TRUE(testing::bitwise_equal(inputs.grads[task], grads_before[task]))
        << "grads[" << task << "] changed";
  }
  ++totals.cases;
  if (first.output.numel() == 0) return;

  // The magnitude each output element is exact to.
  auto magnitude = at::zeros(inputs.activation.sizes(), at::TensorOptions().dtype(at::kDouble));
  auto plain = magnitude.clone();
  for (const auto& grad : inputs.grads) {
    if (!grad.defined()) continue;
    magnitude = magnitude + grad.to(at::kDouble).abs();
    plain = plain + grad.to(at::kDouble);
  }
  const bool any_defined = std::any_of(inputs.grads.begin(), inputs.grads.end(),
                                       [](const at::Tensor& grad) { return grad.defined(); });
  if (c.options.keep_grad_norm() && any_defined) {
    const auto unscaled = reference::combine(inputs.grads, inputs.activation,
                                             GradDropOptions(c.options).keep_grad_norm(false),
                                             uniform)
                              .output;
    const auto ratio = plain.norm() / (unscaled.norm() + c.options.epsilon());
    magnitude = magnitude * ratio;
  }
  const auto got = first.output.to(at::kDouble);
  // An undefined gradient contributes nothing, not even NaN * 0 from a non-finite activation
  // (the reference stands a zero tensor in for it): with none defined the output is 0.
  const auto want = any_defined ? expected.output.to(c.dtype).to(at::kDouble)
                                : at::zeros(got.sizes(), at::TensorOptions().dtype(at::kDouble));
  auto good = agrees(got, want, magnitude, c.dtype);
  const auto undecidable = undecidable_purity_elements(c, inputs);
  const int64_t undecidable_count = undecidable.sum().item<int64_t>();
  if (undecidable_count > 0) {
    // keep_grad_norm spreads an undecided mask over the whole output through the norm.
    const auto skip = c.options.keep_grad_norm() ? at::ones(got.sizes(), at::kBool)
                                                 : output_mask_of(undecidable, c, got);
    totals.undecidable_elements += skip.sum().item<int64_t>();
    good = at::logical_or(good, skip);
  }
  int64_t op_math = 0;
  if (!good.all().item<bool>()) {
    // Where op-math itself decides otherwise (underflow, overflow), the same formula composed in
    // op-math is what the documentation promises.
    const auto opmath = c.dtype == at::kDouble ? at::kDouble : at::kFloat;
    auto in_opmath = reference::combine_in(inputs.grads, inputs.activation, c.options, uniform,
                                           opmath)
                         .to(c.dtype)
                         .to(at::kDouble);
    const auto alternative = agrees(got, in_opmath, magnitude, c.dtype);
    op_math = at::logical_and(at::logical_not(good), alternative).sum().item<int64_t>();
    good = at::logical_or(good, alternative);
  }
  totals.compared_elements += got.numel();
  totals.op_math_elements += op_math;
  if (!good.all().item<bool>()) {
    const auto bad = at::logical_not(good).flatten().nonzero();
    const int64_t index = bad[0][0].item<int64_t>();
    ADD_FAILURE() << bad.size(0) << " of " << got.numel()
                  << " elements differ from the float64 reference; first at flat index " << index
                  << ": got " << got.flatten()[index].item<double>() << ", expected "
                  << want.flatten()[index].item<double>();
    if (std::getenv("GRADDROP_FUZZ_DEBUG") != nullptr) {
      const auto plain_options = GradDropOptions(c.options).keep_grad_norm(false);
      const auto r = reference::combine(inputs.grads, inputs.activation, plain_options, uniform);
      const auto k = combine(inputs.grads, inputs.activation, plain_options, nullopt, uniform);
      std::cout << "activation\n" << inputs.activation << "\n";
      for (const auto& g : inputs.grads) std::cout << "grad\n" << g << "\n";
      std::cout << "U " << uniform << "\nP " << r.purity << "\nf " << r.keep_probability
                << "\nP(op) " << purity(inputs.grads, inputs.activation, c.options)
                << "\nkernel-ref without norm " << (k.to(at::kDouble) - r.output) << std::endl;
    }
    return;
  }

  // Statistics: only where every mask is decided as in float64 and every input is finite. The
  // product of two subnormals underflows to 0 in op-math (a zero signal, whose mask follows
  // zero_sign) where float64 keeps its sign: the output differs only by that subnormal, the
  // kept counts by the whole mask.
  const bool finite = c.values != Values::kNonFinite;
  const bool underflows = c.values == Values::kSubnormal &&
                          c.options.sign_source() == SignSource::kActivationValue;
  if (c.statistics && finite && !underflows && op_math == 0 && undecidable_count == 0) {
    const auto reference_statistics = testing::statistics_of_reference(expected);
    const auto& s = first.statistics;
    const int64_t n = c.options.num_tasks();
    ASSERT_EQ(s.numel(), n + 2);
    for (int64_t task = 0; task < n; ++task) {
      EXPECT_NEAR(s[task].item<double>(), reference_statistics.kept_fraction[task], 1e-12)
          << "kept fraction of task " << task;
    }
    EXPECT_NEAR(s[n].item<double>(), reference_statistics.mean_purity,
                c.dtype == at::kDouble ? 1e-12 : 1e-5);
    EXPECT_NEAR(s[n + 1].item<double>(), reference_statistics.conflict_fraction, 1e-12);
  }
}

void run_cases(bool non_finite_explicit_keep) {
  const int64_t only = env_integer("GRADDROP_FUZZ_CASE", -1);
  const int64_t cases = case_count();
  const auto levels = cpu::supported_capabilities();
  std::cout << "[graddrop fuzz] " << (only >= 0 ? 1 : cases) << " cases on";
  for (auto level : levels) std::cout << " " << cpu::to_string(level);
  std::cout << " (GRADDROP_FUZZ_CASES=" << cases << ", seed " << testing::test_seed() << ")"
            << std::endl;
  Totals totals;
  for (int64_t index = 0; index < cases; ++index) {
    if (only >= 0 && index != only) continue;
    check_case(random_case(static_cast<uint64_t>(index), non_finite_explicit_keep), totals);
    if (::testing::Test::HasFailure() && only < 0) {
      std::cout << "[graddrop fuzz] stopping at the first failing case" << std::endl;
      break;
    }
  }
  std::cout << "[graddrop fuzz] " << totals.cases << " cases, " << totals.compared_elements
            << " output elements compared, " << totals.op_math_elements
            << " of them decided as op-math (not float64) decides, " << totals.undecidable_elements
            << " not compared (a signal whose sign op-math cannot decide)" << std::endl;
}

TEST(Fuzz, CombineMatchesTheFloat64Reference) { run_cases(false); }

// The explicit f(P) of Python's custom keep-function path, with NaN and Inf inputs: a NaN
// purity must make the feature's coefficients NaN whatever f(P) says (issue #10, item 1).
TEST(Fuzz, ExplicitKeepProbabilityWithNonFiniteInputs) { run_cases(true); }

}  // namespace
}  // namespace graddrop
