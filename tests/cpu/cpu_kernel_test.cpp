// Tests specific to the fast CPU kernel (src/cpu/): its tails (sizes that are not a multiple of
// the vector width, the block, the tile or the column group), misaligned and non-contiguous
// inputs, every specialised task count (1..8) and the generic path, both modes, all dtypes,
// the Philox draw computed side by side, the L2-sized strips and their uncached fallback, and
// bit-identical results (output, statistics, keep_grad_norm) across thread counts and
// instruction sets.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "cpu/cpu_capability.h"
#include "graddrop/combine.h"
#include "detail/math.h"
#include "detail/philox.h"
#include "graddrop/reference.h"
#include "test_support.h"

namespace graddrop {
namespace {

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
// Every specialised task count and two generic ones.
const std::vector<int64_t> kTaskCounts = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11};

// Per element: 32855 = 2 tiles of 16384 + 87 (87 = 21 Philox groups + 3). Marginalised: 1029
// columns (strips split across threads, a partial column group at the end) of 33 rows.
std::vector<int64_t> shape_for(bool marginalize) {
  return marginalize ? std::vector<int64_t>{33, 1029} : std::vector<int64_t>{5, 6571};
}

std::string dtype_name(at::ScalarType dtype) { return std::string(c10::toString(dtype)); }

double purity_tolerance(at::ScalarType dtype) { return dtype == at::kDouble ? 1e-12 : 1e-5; }

// Runs `body` with `threads` ATen threads, restoring the previous count.
template <typename Body>
void with_threads(int threads, const Body& body) {
  const int previous = at::get_num_threads();
  at::set_num_threads(threads);
  body();
  at::set_num_threads(previous);
}

// Runs `body` with the kernels of `capability`, restoring the previous level.
template <typename Body>
void with_capability(cpu::Capability capability, const Body& body) {
  const auto previous = cpu::active_capability();
  cpu::set_active_capability(capability);
  body();
  cpu::set_active_capability(previous);
}

struct Result {
  at::Tensor output;
  GradDropStatistics statistics;
};

Result run(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
           const GradDropOptions& options, const optional<at::Tensor>& uniform = nullopt) {
  Result result;
  result.output = combine(grads, activation, options, nullopt, uniform, &result.statistics);
  return result;
}

::testing::AssertionResult same_statistics(const GradDropStatistics& a,
                                           const GradDropStatistics& b) {
  // Exactly equal: the same sums in the same order.
  return testing::statistics_equal(a, b, 0.0);
}

::testing::AssertionResult bitwise_same(const Result& a, const Result& b) {
  auto output = testing::bitwise_equal(a.output, b.output);
  if (!output) return output << " (output)";
  auto statistics = same_statistics(a.statistics, b.statistics);
  if (!statistics) return statistics << " (statistics)";
  return ::testing::AssertionSuccess();
}

// A copy of `tensor` whose data pointer is one element past an aligned allocation.
at::Tensor misaligned_copy(const at::Tensor& tensor) {
  auto storage = at::empty({tensor.numel() + 1}, tensor.options());
  auto view = storage.narrow(0, 1, tensor.numel()).view(tensor.sizes());
  view.copy_(tensor);
  return view;
}

// --- The shared math (detail/math.h) --------------------------------------------------------

// The mask rule written out as docs/design.md states it, case by case.
template <typename T>
bool expected_mask(T signal, T keep, T uniform, ZeroSign zero_sign) {
  if (std::isnan(keep)) return false;  // a NaN f(P) keeps nothing (its coefficient is NaN)
  if (std::isnan(signal) || signal == T(0)) return zero_sign == ZeroSign::kKeep;
  if (signal > T(0)) return keep > uniform;  // false when keep or uniform is NaN
  return keep < uniform;
}

template <typename T>
void check_mask_rule_truth_table() {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T inf = std::numeric_limits<T>::infinity();
  const T denormal = std::numeric_limits<T>::denorm_min();
  const std::vector<T> signals = {-inf, T(-2), -denormal, T(-0.0), T(0), denormal, T(3), inf, nan};
  const std::vector<T> probabilities = {T(0), T(0.25), T(0.5), T(0.75), T(1), nan};
  const std::vector<T> leaks = {T(0), T(0.3), T(1)};
  for (auto zero_sign : {ZeroSign::kDrop, ZeroSign::kKeep}) {
    for (T signal : signals) {
      for (T keep : probabilities) {
        for (T uniform : probabilities) {
          SCOPED_TRACE(::testing::Message() << "signal " << signal << " keep " << keep
                                            << " uniform " << uniform << " zero_sign "
                                            << static_cast<int>(zero_sign));
          const bool mask = expected_mask(signal, keep, uniform, zero_sign);
          EXPECT_EQ(detail::sign_mask(signal, keep, uniform, zero_sign), mask);
          for (T leak : leaks) {
            const T coefficient = detail::task_coefficient(signal, keep, uniform, leak, zero_sign);
            if (std::isnan(keep)) {
              EXPECT_TRUE(std::isnan(coefficient)) << "a NaN f(P) must give a NaN coefficient";
            } else {
              EXPECT_EQ(coefficient, mask ? T(1) : leak);
            }
          }
        }
      }
    }
  }
}

TEST(CpuKernel, MaskRuleTruthTable) {
  check_mask_rule_truth_table<float>();
  check_mask_rule_truth_table<double>();
}

template <typename T>
void check_explicit_keep_rules() {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  EXPECT_EQ(detail::checked_keep(T(0.3), T(0.7)), T(0.7));
  EXPECT_EQ(detail::checked_keep(T(0.3), T(0)), T(0));
  EXPECT_EQ(detail::checked_keep(T(0.3), T(1)), T(1));
  EXPECT_TRUE(std::isnan(detail::checked_keep(nan, T(0.7)))) << "a NaN purity wins over f(P)";
  EXPECT_TRUE(std::isnan(detail::checked_keep(T(0.3), T(1.5))));
  EXPECT_TRUE(std::isnan(detail::checked_keep(T(0.3), T(-0.1))));
  EXPECT_EQ(detail::keep_for_uniform(T(0.7), T(0)), T(0.7));
  EXPECT_TRUE(std::isnan(detail::keep_for_uniform(T(0.7), T(1))));
  EXPECT_TRUE(std::isnan(detail::keep_for_uniform(T(0.7), T(-0.5))));
  EXPECT_TRUE(std::isnan(detail::keep_for_uniform(T(0.7), nan)));
}

TEST(CpuKernel, ExplicitKeepAndUniformOutOfRangeOrNanPurityGiveNan) {
  check_explicit_keep_rules<float>();
  check_explicit_keep_rules<double>();
}

// detail::exponential (the sigmoid's exp, the same bits on every device) against libm's exp in
// long double: within 2 ulp over the range where the result is a normal number, exact
// special values, and a sigmoid that never gives NaN for a huge scale.
template <typename T>
void check_exponential(uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::uniform_real_distribution<double> spread(-1.0, 1.0);
  const double limit = sizeof(T) == 4 ? 87.0 : 708.0;
  double worst_ulp = 0.0;
  T worst_x = 0;
  for (int i = 0; i < 200000; ++i) {
    const T x = static_cast<T>(spread(engine) * limit);
    const long double exact = std::exp(static_cast<long double>(x));
    const T value = detail::exponential(x);
    const T rounded = static_cast<T>(exact);
    const long double ulp =
        static_cast<long double>(std::nextafter(rounded, std::numeric_limits<T>::infinity())) -
        static_cast<long double>(rounded);
    const double error = static_cast<double>(std::fabs(static_cast<long double>(value) - exact) / ulp);
    if (error > worst_ulp) {
      worst_ulp = error;
      worst_x = x;
    }
  }
  EXPECT_LE(worst_ulp, 2.0) << "at x = " << worst_x << " (seed " << seed << ")";
  EXPECT_EQ(detail::exponential(T(0)), T(1));
  EXPECT_EQ(detail::exponential(std::numeric_limits<T>::infinity()),
            std::numeric_limits<T>::infinity());
  EXPECT_EQ(detail::exponential(-std::numeric_limits<T>::infinity()), T(0));
  EXPECT_TRUE(std::isnan(detail::exponential(std::numeric_limits<T>::quiet_NaN())));
  const T huge = std::numeric_limits<T>::max();
  for (T purity_value : {T(0), T(0.25), T(0.5), T(0.75), T(1)}) {
    const T keep = detail::keep_probability(purity_value, KeepFunction::kSigmoid, huge);
    EXPECT_FALSE(std::isnan(keep)) << "P " << purity_value;
    EXPECT_EQ(keep, purity_value > T(0.5) ? T(1) : (purity_value < T(0.5) ? T(0) : T(0.5)));
  }
}

TEST(CpuKernel, ExponentialIsWithinTwoUlpOfExp) {
  const uint64_t seed = testing::test_seed();
  check_exponential<float>(seed);
  check_exponential<double>(seed + 1);
}

// The canonical batch sum (docs/design.md, "The same bits on every device"): a marginalised P equals the P formed from column sums
// added exactly in the canonical order (row lanes inside chunks, the fixed tree, chunks in
// order), bit for bit, for batches around the chunk boundaries. One column, so the statistics'
// mean purity is that P itself. The plain row-by-row order must differ somewhere, or the test
// could not tell the orders apart.
TEST(CpuKernel, MarginalisedColumnSumsFollowTheCanonicalOrder) {
  auto generator = testing::seeded_generator(4242);
  int64_t sequential_differs = 0;
  for (const int64_t rows : {int64_t(1), int64_t(7), int64_t(9), int64_t(100),
                             detail::kRowChunk - 1, detail::kRowChunk, detail::kRowChunk + 3,
                             3 * detail::kRowChunk + 17}) {
    for (int trial = 0; trial < 4; ++trial) {
      const auto activation = testing::random_activation({rows, 1}, at::kFloat, generator);
      const auto grads = testing::random_grads(activation, 2, generator);
      const auto options = GradDropOptions(2).sign_source(SignSource::kActivationValue);
      const float* a = activation.data_ptr<float>();
      float canonical_signed = 0.0f, canonical_absolute = 0.0f;
      float sequential_signed = 0.0f, sequential_absolute = 0.0f;
      for (const auto& grad : grads) {
        const float* g = grad.data_ptr<float>();
        float canonical = 0.0f, sequential = 0.0f;
        for (int64_t chunk = 0; chunk < rows; chunk += detail::kRowChunk) {
          float lanes[detail::kRowLanes] = {};
          for (int64_t row = chunk; row < std::min(rows, chunk + detail::kRowChunk); ++row) {
            lanes[row % detail::kRowLanes] += a[row] * g[row];
          }
          canonical += detail::sum_of_row_lanes(lanes, 1);
        }
        for (int64_t row = 0; row < rows; ++row) sequential += a[row] * g[row];
        canonical_signed += canonical;
        canonical_absolute += std::fabs(canonical);
        sequential_signed += sequential;
        sequential_absolute += std::fabs(sequential);
      }
      const float epsilon = static_cast<float>(options.epsilon());
      const float expected = detail::purity(canonical_signed, canonical_absolute, epsilon);
      const float row_by_row = detail::purity(sequential_signed, sequential_absolute, epsilon);
      sequential_differs += expected != row_by_row;
      GradDropStatistics statistics;
      combine(grads, activation, options, nullopt, nullopt, &statistics);
      EXPECT_EQ(statistics.mean_purity, static_cast<double>(expected)) << "rows " << rows;
    }
  }
  EXPECT_GT(sequential_differs, 0) << "no case where the order of the batch sum mattered";
}

// --- Against the reference ------------------------------------------------------------------

// Every task count (specialised and generic), both modes, all dtypes, with tails everywhere;
// mixed leaks, an undefined head when n > 2, both zero policies; output and statistics.
TEST(CpuKernel, MatchesReferenceForEveryTaskCountModeAndDtype) {
  auto generator = testing::seeded_generator(301);
  for (auto dtype : kDtypes) {
    for (bool marginalize : {false, true}) {
      for (int64_t n : kTaskCounts) {
        auto options = GradDropOptions(n)
                           .marginalize_batch(marginalize)
                           .leak(testing::mixed_leaks(n, generator))
                           .zero_sign(n % 2 ? ZeroSign::kKeep : ZeroSign::kDrop)
                           .keep_grad_norm(n % 3 == 0);
        SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
        const auto activation = testing::random_activation(shape_for(marginalize), dtype,
                                                           generator);
        const auto grads = testing::decided_signals(
            testing::random_grads(activation, n, generator, n > 2 ? 3 : 0), activation, options);
        const auto uniform = testing::separated_uniform(grads, activation, options, generator);
        const auto expected = reference::combine(grads, activation, options, uniform);
        const auto actual = run(grads, activation, options, uniform);
        EXPECT_TRUE(testing::close_to_reference(actual.output, expected.output));
        EXPECT_TRUE(testing::statistics_equal(actual.statistics,
                                              testing::statistics_of_reference(expected),
                                              purity_tolerance(dtype)));
      }
    }
  }
}

// The other sign sources and keep functions go through the same vectorised loops.
TEST(CpuKernel, MatchesReferenceForSignSourcesAndKeepFunctions) {
  auto generator = testing::seeded_generator(302);
  for (auto source : {SignSource::kActivationValue, SignSource::kNone}) {
    for (auto function : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
      for (bool marginalize : {false, true}) {
        for (int64_t n : {2, 11}) {
          auto options = GradDropOptions(n)
                             .marginalize_batch(marginalize)
                             .sign_source(source)
                             .keep_function(function)
                             .scale(1.5);
          SCOPED_TRACE(testing::describe(options));
          const auto activation =
              testing::random_activation(shape_for(marginalize), at::kFloat, generator);
          const auto grads = testing::decided_signals(
              testing::random_grads(activation, n, generator), activation, options);
          const auto uniform = testing::separated_uniform(grads, activation, options, generator);
          const auto expected = reference::combine(grads, activation, options, uniform);
          EXPECT_TRUE(testing::close_to_reference(run(grads, activation, options, uniform).output,
                                                  expected.output));
        }
      }
    }
  }
}

// Many rows: even kColumnGroup columns of all rows exceed the cache budget, so the strips take
// the two-passes-from-memory path.
TEST(CpuKernel, MarginalisedUncachedStripsMatchReference) {
  auto generator = testing::seeded_generator(303);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t n : {2, 11}) {
      auto options = GradDropOptions(n).keep_grad_norm(true);
      SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
      const auto activation = testing::random_activation({12000, 37}, dtype, generator);
      const auto grads = testing::decided_signals(testing::random_grads(activation, n, generator),
                                                  activation, options);
      const auto uniform = testing::separated_uniform(grads, activation, options, generator);
      const auto expected = reference::combine(grads, activation, options, uniform);
      const auto actual = run(grads, activation, options, uniform);
      EXPECT_TRUE(testing::close_to_reference(actual.output, expected.output));
      EXPECT_TRUE(testing::statistics_equal(actual.statistics,
                                            testing::statistics_of_reference(expected),
                                            purity_tolerance(dtype)));
    }
  }
}

// --- Memory layouts ---------------------------------------------------------------------------

// Inputs one element past an aligned address (every vector load unaligned), and non-contiguous
// inputs: the same bits as aligned contiguous inputs.
TEST(CpuKernel, MisalignedAndNonContiguousInputsGiveTheSameBits) {
  auto generator = testing::seeded_generator(304);
  for (auto dtype : kDtypes) {
    for (bool marginalize : {false, true}) {
      for (int64_t n : {2, 5, 11}) {
        auto options =
            GradDropOptions(n).marginalize_batch(marginalize).seed(7).keep_grad_norm(true);
        SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
        const auto activation =
            testing::random_activation(shape_for(marginalize), dtype, generator);
        const auto grads = testing::random_grads(activation, n, generator);
        const auto aligned = run(grads, activation, options);

        std::vector<at::Tensor> misaligned_grads, strided_grads;
        for (const auto& grad : grads) {
          misaligned_grads.push_back(misaligned_copy(grad));
          strided_grads.push_back(testing::non_contiguous_copy(grad));
        }
        EXPECT_NE(reinterpret_cast<uintptr_t>(misaligned_grads[0].data_ptr()) % 16, 0u);
        EXPECT_FALSE(strided_grads[0].is_contiguous());
        EXPECT_TRUE(bitwise_same(run(misaligned_grads, misaligned_copy(activation), options),
                                 aligned));
        EXPECT_TRUE(bitwise_same(
            run(strided_grads, testing::non_contiguous_copy(activation), options), aligned));
      }
    }
  }
}

// --- Randomness -----------------------------------------------------------------------------

// The block-wise Philox draw (detail/philox_simd.h on AVX2 and AVX-512) equals the scalar one
// (detail::philox_uniform of each flat index of P), tails and 32-bit carries of the group index
// included: the seeded output is bit-identical to the output with that U passed in.
TEST(CpuKernel, VectorisedPhiloxDrawEqualsScalarPhilox) {
  auto generator = testing::seeded_generator(305);
  for (auto dtype : {at::kFloat, at::kDouble}) {
    for (bool marginalize : {false, true}) {
      for (auto shape : {std::vector<int64_t>{3, 7}, shape_for(marginalize),
                         std::vector<int64_t>{2, 70001}}) {
        for (uint64_t offset : {uint64_t(0), uint64_t(0x100000001ull)}) {
          auto options = GradDropOptions(3).marginalize_batch(marginalize).seed(99).offset(offset);
          SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
          const auto activation = testing::random_activation(shape, dtype, generator);
          const auto grads = testing::random_grads(activation, 3, generator);
          const auto uniform = testing::philox_uniform_tensor(purity_shape(activation, options),
                                                              99, offset);
          auto explicit_options = options;
          explicit_options.seed(nullopt).offset(0);  // an offset without a seed is refused
          const auto expected = run(grads, activation, explicit_options, uniform);
          for (auto level : cpu::supported_capabilities()) {
            SCOPED_TRACE(cpu::to_string(level));
            Result seeded;
            with_capability(level, [&] { seeded = run(grads, activation, options); });
            EXPECT_TRUE(bitwise_same(seeded, expected));
          }
        }
      }
    }
  }
}

// The vector draw directly, at logical indices no test tensor reaches: group indices that cross
// 2^32 inside one register (the high counter word must step in those lanes only), huge offsets,
// and ragged counts.
TEST(CpuKernel, VectorisedPhiloxDrawCarriesIntoTheHighGroupWord) {
  struct Range {
    uint64_t first_group;
    int64_t count;
  };
  const std::vector<Range> ranges = {{0, 333},
                                     {(uint64_t(1) << 32) - 5, 256},
                                     {(uint64_t(1) << 32) - 1, 64},
                                     {(uint64_t(3) << 32) - 9, 131},
                                     {(uint64_t(1) << 40) + 7, 70}};
  for (auto level : cpu::supported_capabilities()) {
    for (const auto& range : ranges) {
      for (uint64_t offset : {uint64_t(0), uint64_t(0xfffffffffull)}) {
        SCOPED_TRACE(cpu::to_string(level) + " first group " + std::to_string(range.first_group) +
                     " offset " + std::to_string(offset));
        std::vector<float> drawn(static_cast<size_t>((range.count + 3) / 4 * 4));
        const auto first = static_cast<int64_t>(range.first_group * 4);
        cpu::draw_uniform(level, 0x0123456789abcdefull, offset, first, range.count,
                          drawn.data());
        for (int64_t k = 0; k < range.count; ++k) {
          const float expected = detail::philox_uniform(0x0123456789abcdefull, offset,
                                                        static_cast<uint64_t>(first + k));
          ASSERT_EQ(drawn[static_cast<size_t>(k)], expected) << "index " << first + k;
        }
      }
    }
  }
}

// --- Task handling --------------------------------------------------------------------------

// Undefined heads are removed before the kernel: n = 11 with 8 undefined runs the specialised
// 3-task kernel and gives the bits of the 3 defined heads alone.
TEST(CpuKernel, UndefinedHeadsAreSkippedExactly) {
  auto generator = testing::seeded_generator(306);
  for (bool marginalize : {false, true}) {
    const auto activation = testing::random_activation(shape_for(marginalize), at::kFloat,
                                                       generator);
    const auto defined = testing::random_grads(activation, 3, generator);
    std::vector<at::Tensor> sparse(11);
    std::vector<double> sparse_leak(11, 0.0);
    const std::vector<double> leak = {0.0, 0.5, 0.25};
    for (int task = 0; task < 3; ++task) {
      sparse[static_cast<size_t>(3 * task + 1)] = defined[static_cast<size_t>(task)];
      sparse_leak[static_cast<size_t>(3 * task + 1)] = leak[static_cast<size_t>(task)];
    }
    const auto dense = run(defined, activation,
                           GradDropOptions(3).marginalize_batch(marginalize).leak(leak).seed(3));
    const auto with_holes =
        run(sparse, activation,
            GradDropOptions(11).marginalize_batch(marginalize).leak(sparse_leak).seed(3));
    EXPECT_TRUE(testing::bitwise_equal(with_holes.output, dense.output));
    for (int task = 0; task < 3; ++task) {
      EXPECT_EQ(with_holes.statistics.kept_fraction[static_cast<size_t>(3 * task + 1)],
                dense.statistics.kept_fraction[static_cast<size_t>(task)]);
    }
    EXPECT_EQ(with_holes.statistics.kept_fraction[0], 0.0);  // zero_sign drop
    EXPECT_EQ(with_holes.statistics.mean_purity, dense.statistics.mean_purity);
    EXPECT_EQ(with_holes.statistics.conflict_fraction, dense.statistics.conflict_fraction);
  }
}

// No defined task gradient, or a batch of no rows, in marginalised mode: the output is zero and
// the strip sizing has nothing to divide by (the fuzz test found that division by zero).
TEST(CpuKernel, MarginalisedWithoutRowsOrGradientsGivesZeros) {
  auto generator = testing::seeded_generator(308);
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{0, 70}, {5, 70}}) {
    for (bool any_defined : {false, true}) {
      SCOPED_TRACE("rows=" + std::to_string(shape[0]) + " any_defined=" +
                   std::to_string(any_defined));
      const auto activation = testing::random_activation(shape, at::kFloat, generator);
      std::vector<at::Tensor> grads(3);
      if (any_defined) grads[1] = testing::random_grads(activation, 1, generator)[0];
      const auto output =
          combine(grads, activation, GradDropOptions(3).marginalize_batch(true).seed(4));
      EXPECT_EQ(output.sizes(), activation.sizes());
      if (!any_defined) EXPECT_EQ(output.count_nonzero().item<int64_t>(), 0);
    }
  }
}

// --- Determinism ------------------------------------------------------------------------------

// Output, statistics and the keep_grad_norm rescaling are bit-identical on 1 and 2 threads, for
// specialised and generic task counts, both modes and all dtypes (shapes large enough to run in
// parallel).
TEST(CpuKernel, OneAndTwoThreadsGiveTheSameBits) {
  auto generator = testing::seeded_generator(307);
  for (auto dtype : kDtypes) {
    for (bool marginalize : {false, true}) {
      for (int64_t n : {2, 3, 11}) {
        for (bool keep_grad_norm : {false, true}) {
          auto options = GradDropOptions(n)
                             .marginalize_batch(marginalize)
                             .keep_grad_norm(keep_grad_norm)
                             .zero_sign(ZeroSign::kKeep)
                             .seed(11);
          SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
          const std::vector<int64_t> shape =
              marginalize ? std::vector<int64_t>{64, 2053} : std::vector<int64_t>{3, 40011};
          const auto activation = testing::random_activation(shape, dtype, generator);
          const auto grads = testing::random_grads(activation, n, generator);
          Result one, two;
          with_threads(1, [&] { one = run(grads, activation, options); });
          with_threads(2, [&] { two = run(grads, activation, options); });
          EXPECT_TRUE(bitwise_same(one, two));
        }
      }
    }
  }
}

// Every instruction set this CPU runs gives the bits of the baseline kernels.
// Every instruction set, with the output streamed past the cache or stored plainly, gives the
// baseline's bits.
TEST(CpuKernel, InstructionSetsGiveTheSameBits) {
  const auto levels = cpu::supported_capabilities();
  std::cout << "[graddrop tests] CPU kernel levels:";
  for (auto level : levels) std::cout << " " << cpu::to_string(level);
  std::cout << " (active " << cpu::to_string(cpu::active_capability()) << ")" << std::endl;
  auto generator = testing::seeded_generator(308);
  for (auto dtype : kDtypes) {
    for (bool marginalize : {false, true}) {
      for (int64_t n : {1, 4, 8, 11}) {
        for (bool non_finite : {false, true}) {
          // Finite inputs check keep_grad_norm's rescaling; non-finite ones the NaN payloads
          // and infinities (whose NaN norm would make keep_grad_norm's output all NaN).
          auto options = GradDropOptions(n)
                             .marginalize_batch(marginalize)
                             .leak(testing::mixed_leaks(n, generator))
                             .keep_grad_norm(!non_finite)
                             .seed(5);
          SCOPED_TRACE(testing::describe(options) + " dtype=" + dtype_name(dtype));
          auto activation = testing::random_activation(shape_for(marginalize), dtype, generator);
          auto grads = testing::random_grads(activation, n, generator);
          if (non_finite) {
            grads[0].view({-1})[17].fill_(std::numeric_limits<double>::infinity());
            grads[0].view({-1})[1000].fill_(std::numeric_limits<double>::quiet_NaN());
          }
          Result baseline;
          with_capability(cpu::Capability::kBaseline,
                          [&] { baseline = run(grads, activation, options); });
          for (auto level : levels) {
            for (auto streaming : {cpu::Streaming::kNever, cpu::Streaming::kAlways}) {
              SCOPED_TRACE(cpu::to_string(level) +
                           (streaming == cpu::Streaming::kAlways ? " streaming" : " plain stores"));
              Result result;
              cpu::set_streaming(streaming);
              with_capability(level, [&] { result = run(grads, activation, options); });
              cpu::set_streaming(cpu::Streaming::kAuto);
              EXPECT_TRUE(testing::bitwise_equal(result.output, baseline.output));
              EXPECT_EQ(result.statistics.kept_fraction, baseline.statistics.kept_fraction);
              EXPECT_EQ(result.statistics.conflict_fraction, baseline.statistics.conflict_fraction);
              // NaN where a column or element saw the NaN gradient; else bit for bit.
              if (!std::isnan(baseline.statistics.mean_purity)) {
                EXPECT_EQ(result.statistics.mean_purity, baseline.statistics.mean_purity);
              } else {
                EXPECT_TRUE(std::isnan(result.statistics.mean_purity));
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace graddrop
