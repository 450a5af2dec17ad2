// graddrop::combine (the CPU kernel) against the float64 composed-ATen reference with the same
// explicit U, on fresh random inputs (the seed is printed).
//
// The option settings (sign source x marginalisation x keep function x zero policy x
// keep_grad_norm) are taken as a full product; the input settings (dtype, contiguity, n, shape,
// undefined heads, leaks) are spread over those rows so that every pair of values of any two
// settings meets in at least one case. The cover is built by a small deterministic greedy
// search and checked before it is used, so a change to the lists cannot silently thin it.
#include <array>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "graddrop/combine.h"
#include "graddrop/reference.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct KeepVariant {
  const char* name;
  KeepFunction function;
  double scale;
};

// Custom f: monotone, in [0, 1] on [0, 1], and not one of the built-in shapes.
at::Tensor squared_purity(const at::Tensor& purity) { return purity * purity; }

const std::vector<SignSource> kSignSources = {SignSource::kActivationSign,
                                               SignSource::kActivationValue, SignSource::kNone};
const std::vector<bool> kMarginalize = {true, false};
const std::vector<KeepVariant> kKeepVariants = {
    {"linear", KeepFunction::kLinear, 1.0},     {"linear", KeepFunction::kLinear, 1.7},
    {"sigmoid", KeepFunction::kSigmoid, 1.0},   {"sigmoid", KeepFunction::kSigmoid, 0.45},
    {"custom P^2", KeepFunction::kCustom, 1.0},
};
const std::vector<ZeroSign> kZeroSigns = {ZeroSign::kDrop, ZeroSign::kKeep};
const std::vector<bool> kKeepGradNorm = {false, true};

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
const std::vector<bool> kContiguous = {true, false};
const std::vector<int64_t> kTaskCounts = {1, 2, 3, 4, 5, 6, 7, 8};
const std::vector<std::vector<int64_t>> kShapes = {
    {7}, {1}, {5, 9}, {1, 13}, {3, 4, 5}, {2, 3, 2, 5}, {0, 5}, {3, 0},
};
// 0: every gradient defined; k > 0: every k-th task's gradient undefined (an unused head).
const std::vector<int64_t> kUndefinedEvery = {0, 2};
// false: all leaks 0 (the default, empty leak vector); true: mixed in [0, 1] with 0 and 1.
const std::vector<bool> kMixedLeaks = {false, true};

// The levels of every setting, in the order of a case row.
enum Factor {
  kSignFactor, kMarginalizeFactor, kKeepFactor, kZeroFactor, kNormFactor,  // the full product
  kDtypeFactor, kContiguousFactor, kTasksFactor, kShapeFactor, kUndefinedFactor, kLeakFactor,
  kFactorCount
};
constexpr int kProductFactors = kDtypeFactor;

std::array<int, kFactorCount> factor_levels() {
  return {static_cast<int>(kSignSources.size()), static_cast<int>(kMarginalize.size()),
          static_cast<int>(kKeepVariants.size()), static_cast<int>(kZeroSigns.size()),
          static_cast<int>(kKeepGradNorm.size()), static_cast<int>(kDtypes.size()),
          static_cast<int>(kContiguous.size()), static_cast<int>(kTaskCounts.size()),
          static_cast<int>(kShapes.size()), static_cast<int>(kUndefinedEvery.size()),
          static_cast<int>(kMixedLeaks.size())};
}

using Row = std::array<int, kFactorCount>;
using Pair = std::array<int, 4>;  // factor a, level a, factor b, level b (a < b)

std::set<Pair> pairs_of(const Row& row) {
  std::set<Pair> pairs;
  for (int a = 0; a < kFactorCount; ++a) {
    for (int b = a + 1; b < kFactorCount; ++b) pairs.insert({a, row[a], b, row[b]});
  }
  return pairs;
}

std::set<Pair> all_pairs() {
  const auto levels = factor_levels();
  std::set<Pair> pairs;
  for (int a = 0; a < kFactorCount; ++a) {
    for (int b = a + 1; b < kFactorCount; ++b) {
      for (int x = 0; x < levels[a]; ++x) {
        for (int y = 0; y < levels[b]; ++y) pairs.insert({a, x, b, y});
      }
    }
  }
  return pairs;
}

// The level of `factor` that covers the most pairs not yet in `covered` together with the
// factors already assigned in `row` (ties: rotate with `salt`).
int best_level(const Row& row, const std::array<bool, kFactorCount>& assigned, int factor,
               const std::set<Pair>& covered, int salt) {
  const int levels = factor_levels()[factor];
  int best = 0, best_gain = -1;
  for (int step = 0; step < levels; ++step) {
    const int level = (step + salt) % levels;
    int gain = 0;
    for (int other = 0; other < kFactorCount; ++other) {
      if (!assigned[other] || other == factor) continue;
      const Pair pair = other < factor ? Pair{other, row[other], factor, level}
                                       : Pair{factor, level, other, row[other]};
      gain += covered.count(pair) == 0;
    }
    if (gain > best_gain) best_gain = gain, best = level;
  }
  return best;
}

// Assigns every factor not yet assigned, in order, greedily.
void fill_greedily(Row& row, std::array<bool, kFactorCount> assigned,
                   const std::set<Pair>& covered, int salt) {
  for (int factor = 0; factor < kFactorCount; ++factor) {
    if (assigned[factor]) continue;
    row[factor] = best_level(row, assigned, factor, covered, salt);
    assigned[factor] = true;
  }
}

// The cases: every combination of the option settings, then extra rows until every pair of
// levels of any two settings is covered.
std::vector<Row> covering_rows() {
  const auto levels = factor_levels();
  std::vector<Row> rows;
  std::set<Pair> covered;
  int product = 1;
  for (int factor = 0; factor < kProductFactors; ++factor) product *= levels[factor];
  for (int index = 0; index < product; ++index) {
    Row row{};
    std::array<bool, kFactorCount> assigned{};
    int rest = index;
    for (int factor = kProductFactors - 1; factor >= 0; --factor) {
      row[factor] = rest % levels[factor];
      assigned[factor] = true;
      rest /= levels[factor];
    }
    fill_greedily(row, assigned, covered, index);
    for (const auto& pair : pairs_of(row)) covered.insert(pair);
    rows.push_back(row);
  }
  for (const auto& pair : all_pairs()) {
    if (covered.count(pair)) continue;
    // A row around the missing pair.
    Row row{};
    std::array<bool, kFactorCount> assigned{};
    row[pair[0]] = pair[1];
    row[pair[2]] = pair[3];
    assigned[pair[0]] = assigned[pair[2]] = true;
    fill_greedily(row, assigned, covered, static_cast<int>(rows.size()));
    for (const auto& row_pair : pairs_of(row)) covered.insert(row_pair);
    rows.push_back(row);
  }
  return rows;
}

struct Case {
  GradDropOptions options;
  at::ScalarType dtype;
  bool contiguous;
  std::vector<int64_t> shape;
  int64_t undefined_every;
  bool mixed_leaks;
};

Case case_of(const Row& row, at::Generator& generator) {
  const int64_t n = kTaskCounts[row[kTasksFactor]];
  const auto& keep = kKeepVariants[row[kKeepFactor]];
  Case result{GradDropOptions(n)
                  .sign_source(kSignSources[row[kSignFactor]])
                  .marginalize_batch(kMarginalize[row[kMarginalizeFactor]])
                  .keep_function(keep.function)
                  .scale(keep.scale)
                  .zero_sign(kZeroSigns[row[kZeroFactor]])
                  .keep_grad_norm(kKeepGradNorm[row[kNormFactor]]),
              kDtypes[row[kDtypeFactor]],
              kContiguous[row[kContiguousFactor]],
              kShapes[row[kShapeFactor]],
              kUndefinedEvery[row[kUndefinedFactor]],
              kMixedLeaks[row[kLeakFactor]]};
  if (keep.function == KeepFunction::kCustom) {
    result.options.custom_keep_function(squared_purity);
  }
  if (result.mixed_leaks) result.options.leak(testing::mixed_leaks(n, generator));
  return result;
}

std::string describe(const Case& c) {
  std::ostringstream text;
  text << testing::describe(c.options) << " dtype=" << c.dtype << " shape=" << at::IntArrayRef(c.shape)
       << " contiguous=" << c.contiguous << " undefined_every=" << c.undefined_every
       << " leak=[";
  for (size_t task = 0; task < c.options.leak().size(); ++task) {
    text << (task ? ", " : "") << c.options.leak()[task];
  }
  text << "]";
  return text.str();
}

// The purity's mean is summed in op-math by the kernel: float rounding for reduced types.
double purity_tolerance(at::ScalarType dtype) { return dtype == at::kDouble ? 1e-12 : 1e-5; }

// Runs one case: kernel vs reference (output and statistics); the inputs must come back
// unchanged.
void check_case(const Case& c, at::Generator& generator) {
  SCOPED_TRACE(describe(c));
  auto activation = testing::random_activation(c.shape, c.dtype, generator);
  auto grads = testing::decided_signals(
      testing::random_grads(activation, c.options.num_tasks(), generator, c.undefined_every),
      activation, c.options);
  if (!c.contiguous) {
    activation = testing::non_contiguous_copy(activation);
    for (auto& grad : grads) {
      if (grad.defined()) grad = testing::non_contiguous_copy(grad);
    }
    if (activation.numel() > 1) {
      ASSERT_FALSE(activation.is_contiguous());
    }
  }
  const auto uniform = testing::separated_uniform(grads, activation, c.options, generator);
  ASSERT_EQ(uniform.sizes(), at::IntArrayRef(purity_shape(activation, c.options)));
  const auto activation_before = activation.clone();
  std::vector<at::Tensor> grads_before;
  for (const auto& grad : grads) grads_before.push_back(grad.defined() ? grad.clone() : grad);

  const auto expected = reference::combine(grads, activation, c.options, uniform);
  GradDropStatistics statistics;
  const auto actual = combine(grads, activation, c.options, nullopt, uniform, &statistics);

  EXPECT_EQ(actual.scalar_type(), c.dtype);
  EXPECT_EQ(actual.sizes(), activation.sizes());
  EXPECT_TRUE(testing::close_to_reference(actual, expected.output));
  EXPECT_TRUE(testing::statistics_equal(statistics, testing::statistics_of_reference(expected),
                                        purity_tolerance(c.dtype)));
  EXPECT_TRUE(testing::bitwise_equal(activation, activation_before));
  for (size_t task = 0; task < grads.size(); ++task) {
    EXPECT_TRUE(testing::bitwise_equal(grads[task], grads_before[task])) << "grads[" << task << "]";
  }
}

TEST(CombineReference, CoverIsPairwiseComplete) {
  const auto rows = covering_rows();
  std::set<Pair> covered;
  for (const auto& row : rows) {
    for (const auto& pair : pairs_of(row)) covered.insert(pair);
  }
  const auto wanted = all_pairs();
  EXPECT_EQ(covered.size(), wanted.size());
  for (const auto& pair : wanted) {
    EXPECT_TRUE(covered.count(pair)) << "factor " << pair[0] << " level " << pair[1]
                                     << " never meets factor " << pair[2] << " level " << pair[3];
  }
  // The option settings are a full product.
  std::set<std::vector<int>> option_rows;
  for (const auto& row : rows) option_rows.insert(std::vector<int>(row.begin(), row.begin() + kProductFactors));
  EXPECT_EQ(option_rows.size(), 3u * 2u * 5u * 2u * 2u);
  std::cout << "[graddrop tests] " << rows.size() << " reference cases" << std::endl;
}

TEST(CombineReference, PairwiseCoverOfEverySetting) {
  auto generator = testing::seeded_generator(101);
  const auto rows = covering_rows();
  // Small shapes make a case cheap: every case three times, each with fresh inputs.
  for (int repetition = 0; repetition < 3; ++repetition) {
    for (size_t index = 0; index < rows.size(); ++index) {
      SCOPED_TRACE("case " + std::to_string(index) + ", repetition " +
                   std::to_string(repetition));
      check_case(case_of(rows[index], generator), generator);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

// Shapes large enough to cross the kernel's tiles (16384 elements per tile; 256 columns and 64
// rows per tile when marginalised) and to leave ragged tails, in every dtype and both modes.
TEST(CombineReference, MultiTileShapes) {
  auto generator = testing::seeded_generator(102);
  for (auto dtype : kDtypes) {
    for (bool marginalize : {true, false}) {
      for (bool keep_grad_norm : {false, true}) {
        Case c{GradDropOptions(3)
                   .marginalize_batch(marginalize)
                   .keep_grad_norm(keep_grad_norm)
                   .leak({0.0, 0.25, 0.0}),
               dtype, true, {67, 263}, 0, true};
        check_case(c, generator);
      }
    }
  }
}

// The explicit seed path: U[k] = detail::philox_uniform(seed, offset, k) for the flat index k
// of P. U is not moved away from f(P) here, so elements whose f(P) lies within float rounding
// of U may legitimately go either way; they are excluded (a whole column when marginalised),
// and must be rare.
TEST(CombineReference, ExplicitSeedMatchesReferenceWithPhiloxUniform) {
  auto generator = testing::seeded_generator(103);
  struct Key {
    uint64_t seed;
    uint64_t offset;
  };
  const std::vector<Key> keys = {{0, 0},
                                 {testing::test_seed(), 5},
                                 {0xfedcba9876543210ull, 0x100000003ull},
                                 {42, 1ull << 40}};
  for (const auto& key : keys) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      for (bool marginalize : {true, false}) {
        for (auto shape : {std::vector<int64_t>{9, 37}, std::vector<int64_t>{5, 1100},
                           std::vector<int64_t>{3, 6000}}) {
          auto options = GradDropOptions(3)
                             .marginalize_batch(marginalize)
                             .leak({0.0, 0.5, 0.0})
                             .seed(key.seed)
                             .offset(key.offset);
          SCOPED_TRACE(testing::describe(options) + " seed=" + std::to_string(key.seed) +
                       " offset=" + std::to_string(key.offset) + " dtype=" +
                       std::string(c10::toString(dtype)));
          const auto activation = testing::random_activation(shape, dtype, generator);
          const auto grads = testing::random_grads(activation, 3, generator);
          const auto uniform =
              testing::philox_uniform_tensor(purity_shape(activation, options), key.seed, key.offset);
          const auto expected = reference::combine(grads, activation, options, uniform);
          const auto actual = combine(grads, activation, options);

          const double margin = dtype == at::kDouble ? 1e-12 : 1e-5;
          auto ambiguous = (expected.keep_probability - uniform.to(at::kDouble)).abs() < margin;
          EXPECT_LE(ambiguous.sum().item<int64_t>(), 2 + ambiguous.numel() / 1000);
          if (marginalize) ambiguous = ambiguous.unsqueeze(0).expand(activation.sizes());
          const auto keep = at::logical_not(ambiguous);
          EXPECT_TRUE(testing::close_to_reference(actual.masked_select(keep),
                                                  expected.output.masked_select(keep)));
        }
      }
    }
  }
}

// Same (seed, offset) twice: the same output; a different offset: a different draw.
TEST(CombineReference, ExplicitSeedIsAPureFunctionOfSeedAndOffset) {
  auto generator = testing::seeded_generator(104);
  const auto activation = testing::random_activation({16, 64}, at::kFloat, generator);
  const auto grads = testing::random_grads(activation, 4, generator);
  for (bool marginalize : {true, false}) {
    auto options = GradDropOptions(4).marginalize_batch(marginalize).seed(7).offset(3);
    const auto first = combine(grads, activation, options);
    const auto second = combine(grads, activation, options);
    EXPECT_TRUE(testing::bitwise_equal(first, second));
    const auto other_offset = combine(grads, activation, GradDropOptions(options).offset(4));
    const auto other_seed = combine(grads, activation, GradDropOptions(options).seed(8));
    EXPECT_FALSE(at::equal(first, other_offset));
    EXPECT_FALSE(at::equal(first, other_seed));
  }
}

}  // namespace
}  // namespace graddrop
