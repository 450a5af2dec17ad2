// The CUDA kernels against the CPU kernel and the Philox formula. The same explicit (seed,
// offset) draws the same U on both devices, and every reduction that decides a mask (the
// marginalised per-feature batch sums) follows one canonical order on both (docs/design.md,
// "The same bits on every device"), so the outputs are bit-identical: every dtype, both modes,
// linear and sigmoid, any task count, every kernel path; no exclusion near a tie. With
// keep_grad_norm the whole-tensor rescale may differ in its last bits; the statistics' counts
// agree exactly and their mean purity to 1e-12.
// Also: U is keyed on the logical index whatever the launch shape; the CUDA generator is consumed
// one counter step per call; repeated calls are bitwise reproducible.
#include <mutex>
#include <string>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct Shape {
  std::vector<int64_t> sizes;
  bool misaligned;  // the GPU's inputs start one element past a 16-byte boundary
};

// Per element: 16-byte vectors; misaligned with an odd element count (element by element).
const std::vector<Shape> kPerElementShapes = {{{64, 1024}, false}, {{33, 7}, true}};
// Marginalised: small batches with ragged columns, then one shape per kernel path (see
// combine_cuda_reference_test.cpp), at sizes that keep the CPU side quick.
const std::vector<Shape> kMarginalizedShapes = {
    {{1, 5}, false},    {{2, 13}, false},     {{3, 1001}, false},  {{4, 5}, true},
    {{5, 13}, false},   {{6, 1001}, false},   {{7, 13}, true},     {{256, 4096}, false},
    {{65536, 64}, false}, {{4096, 100}, false}, {{8, 65536}, false}};
// The two that need more: a cached strip over 48 KB of shared memory, and many columns.
const std::vector<Shape> kLargeMarginalizedShapes = {{{512, 32768}, false},
                                                     {{64, 131072}, false}};

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

struct Result {
  at::Tensor output;
  GradDropStatistics statistics;
};

// combine on the GPU and on the CPU for the same values; with `with_statistics` the statistics
// of both are filled too.
std::pair<Result, Result> on_both_devices(const cuda_testing::Inputs& inputs, bool misaligned,
                                          const GradDropOptions& options, bool with_statistics) {
  auto grads = inputs.grads;
  auto activation = inputs.activation;
  if (misaligned) {
    grads = cuda_testing::misaligned_copies(grads);
    activation = cuda_testing::misaligned_copy(activation);
  }
  Result gpu, cpu;
  gpu.output = combine(grads, activation, options, nullopt, nullopt,
                       with_statistics ? &gpu.statistics : nullptr);
  cpu.output = combine(cuda_testing::on_cpu(inputs.grads), inputs.activation.cpu(), options,
                       nullopt, nullopt, with_statistics ? &cpu.statistics : nullptr);
  return {gpu, cpu};
}

void expect_bit_identical(const Shape& shape, at::ScalarType dtype, const GradDropOptions& options,
                          uint64_t salt, bool with_statistics) {
  const auto inputs = cuda_testing::random_cuda_inputs(shape.sizes, dtype, options.num_tasks(),
                                                       salt, options.num_tasks() > 4 ? 4 : 0);
  const auto results = on_both_devices(inputs, shape.misaligned, options, with_statistics);
  const std::string what = testing::describe(options) + " dtype " + c10::toString(dtype) +
                           " shape " + c10::str(at::IntArrayRef(shape.sizes)) +
                           (shape.misaligned ? " misaligned" : "") + " salt " +
                           std::to_string(salt);
  ASSERT_TRUE(results.first.output.is_cuda()) << what;
  EXPECT_TRUE(cuda_testing::identical_bits(results.first.output, results.second.output)) << what;
  if (with_statistics) {
    EXPECT_TRUE(cuda_testing::same_statistics(results.first.statistics,
                                              results.second.statistics))
        << what;
  }
}

uint64_t seed_of(uint64_t salt) { return testing::test_seed() * 7919 + salt; }

// Every dtype x mode x keep function x task count on the per-element shapes and the small and
// mid-sized marginalised ones.
TEST(CudaMatchesCpu, BitIdenticalEverywhere) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 2000;
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {false, true}) {
      for (const auto keep : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
        for (const int64_t n : {1, 2, 3, 5, 8, 10}) {
          const auto& shapes = marginalize ? kMarginalizedShapes : kPerElementShapes;
          for (size_t s = 0; s < shapes.size(); ++s) {
            // The mid-sized marginalised shapes with a few task counts only.
            if (shapes[s].sizes.size() == 2 && shapes[s].sizes[0] * shapes[s].sizes[1] > 100000 &&
                n != 2 && n != 10) {
              continue;
            }
            ++salt;
            auto leak = std::vector<double>(static_cast<size_t>(n), 0.0);
            if (n > 2) leak[1] = 0.5;
            const auto options = GradDropOptions(n)
                                     .marginalize_batch(marginalize)
                                     .keep_function(keep)
                                     .scale(keep == KeepFunction::kSigmoid ? 2.0 : 1.0)
                                     .leak(leak)
                                     .seed(seed_of(salt))
                                     .offset((uint64_t(1) << 33) + salt % 5);
            expect_bit_identical(shapes[s], dtype, options, salt, /*with_statistics=*/false);
          }
        }
      }
    }
  }
}

// The two largest marginalised paths; and statistics on (their counts exact).
TEST(CudaMatchesCpu, BitIdenticalLargePathsAndStatistics) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 3000;
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const auto keep : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
      for (const auto& shape : kLargeMarginalizedShapes) {
        ++salt;
        const auto options = GradDropOptions(2).keep_function(keep).seed(seed_of(salt));
        expect_bit_identical(shape, dtype, options, salt, /*with_statistics=*/false);
      }
    }
  }
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {false, true}) {
      const auto& shapes = marginalize ? kMarginalizedShapes : kPerElementShapes;
      for (const auto& shape : shapes) {
        for (const int64_t n : {1, 3, 10}) {
          ++salt;
          const auto options =
              GradDropOptions(n).marginalize_batch(marginalize).seed(seed_of(salt)).offset(7);
          expect_bit_identical(shape, dtype, options, salt, /*with_statistics=*/true);
        }
      }
    }
  }
}

// keep_grad_norm: the masks are the same (checked through the output without the rescale), the
// rescaled outputs agree to a few units in the last place.
TEST(CudaMatchesCpu, KeepGradNormWithinAFewUlps) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 4000;
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {false, true}) {
      const auto& shapes = marginalize ? kMarginalizedShapes : kPerElementShapes;
      for (const auto& shape : shapes) {
        ++salt;
        const int64_t n = 2 + static_cast<int64_t>(salt % 4);
        const auto options =
            GradDropOptions(n).marginalize_batch(marginalize).seed(seed_of(salt));
        const auto inputs =
            cuda_testing::random_cuda_inputs(shape.sizes, dtype, n, salt);
        const auto plain = on_both_devices(inputs, shape.misaligned, options, false);
        EXPECT_TRUE(cuda_testing::identical_bits(plain.first.output, plain.second.output));
        const auto rescaled = on_both_devices(
            inputs, shape.misaligned, GradDropOptions(options).keep_grad_norm(true), true);
        EXPECT_TRUE(cuda_testing::within_ulps(rescaled.first.output, rescaled.second.output, 4))
            << "dtype " << dtype << " shape " << at::IntArrayRef(shape.sizes);
        EXPECT_TRUE(
            cuda_testing::same_statistics(rescaled.first.statistics, rescaled.second.statistics));
      }
    }
  }
}

// U keyed on the logical index: the kernels with (seed, offset) equal the kernels given the U
// that the shared Philox formula computes on the host, bit for bit, for every launch shape.
TEST(CudaKeying, SeedEqualsTheHostPhiloxFormula) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 5000;
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (const bool marginalize : {false, true}) {
      for (const auto& shape : std::vector<std::vector<int64_t>>{
               {64, 1000}, {33, 7}, {100000, 8}, {8, 65536}, {512, 32768}, {9}}) {
        ++salt;
        const uint64_t seed = (uint64_t(0x9E3779B9) << 20) + salt;
        const uint64_t offset = (uint64_t(1) << 40) + 3;
        const auto options =
            GradDropOptions(4).marginalize_batch(marginalize).seed(seed).offset(offset);
        const auto inputs = cuda_testing::random_cuda_inputs(shape, dtype, 4, salt);
        const auto uniform = cuda_testing::host_philox_uniform(
            purity_shape(inputs.activation, options), seed, offset);
        const auto seeded = combine(inputs.grads, inputs.activation, options);
        const auto explicit_draw = combine(inputs.grads, inputs.activation, options, nullopt,
                                           uniform.to(at::kCUDA));
        EXPECT_TRUE(cuda_testing::identical_bits(seeded, explicit_draw))
            << "dtype " << dtype << " marginalize " << marginalize << " shape "
            << at::IntArrayRef(shape);
      }
    }
  }
}

void set_seed(at::Generator& generator, uint64_t seed) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_current_seed(seed);
}

TEST(CudaGenerator, ManualSeedReproducesAndEachCallDrawsAnew) {
  GRADDROP_REQUIRE_CUDA();
  auto generator = at::cuda::detail::getDefaultCUDAGenerator();
  for (const bool marginalize : {false, true}) {
    const auto inputs =
        cuda_testing::random_cuda_inputs({64, 1000}, at::kFloat, 3, 5100 + marginalize);
    const auto& grads = inputs.grads;
    const auto& activation = inputs.activation;
    const auto options = GradDropOptions(3).marginalize_batch(marginalize);
    set_seed(generator, 42);
    const auto first = combine(grads, activation, options);
    const auto second = combine(grads, activation, options);
    EXPECT_FALSE(cuda_testing::identical_bits(first, second));
    set_seed(generator, 42);
    EXPECT_TRUE(cuda_testing::identical_bits(first, combine(grads, activation, options)));

    // A generator of the caller's, seeded alike, draws alike; the default one is left alone.
    const uint64_t before = generator.get_offset();
    auto mine = cuda_testing::cuda_generator(42);
    EXPECT_TRUE(cuda_testing::identical_bits(first, combine(grads, activation, options, mine)));
    EXPECT_EQ(generator.get_offset(), before);
  }
}

// One counter step per call, reserved even for empty tensors (the CPU kernel draws its seed
// whatever the shape); an explicit U or (seed, offset) touches no generator.
TEST(CudaGenerator, OneReservationPerCall) {
  GRADDROP_REQUIRE_CUDA();
  auto generator = at::cuda::detail::getDefaultCUDAGenerator();
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  const auto activation = at::randn({16, 40}, cuda);
  const std::vector<at::Tensor> grads = {at::randn({16, 40}, cuda), at::randn({16, 40}, cuda)};
  const auto empty = at::empty({0, 40}, cuda);
  const std::vector<at::Tensor> empty_grads = {at::empty({0, 40}, cuda), at::Tensor()};

  const uint64_t start = generator.get_offset();
  combine(grads, activation);
  EXPECT_EQ(generator.get_offset(), start + 4);
  combine(empty_grads, empty);
  EXPECT_EQ(generator.get_offset(), start + 8);
  combine(empty_grads, empty, GradDropOptions(2).marginalize_batch(false));
  EXPECT_EQ(generator.get_offset(), start + 12);
  combine(grads, activation, GradDropOptions(2).seed(1));
  combine(grads, activation, GradDropOptions(2), nullopt, at::rand({40}, cuda));
  EXPECT_EQ(generator.get_offset(), start + 12);
}

// keep_grad_norm and the statistics sum per-block rows in a fixed order: bitwise reproducible.
TEST(CudaDeterminism, RepeatedCallsAreBitwiseEqual) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 5200;
  struct Case {
    std::vector<int64_t> shape;
    bool marginalize;
  };
  for (const auto& item : {Case{{64, 1000}, false}, Case{{8, 65536}, true}, Case{{100000, 8}, true},
                           Case{{2048, 300}, true}, Case{{4096, 100}, true}}) {
    for (const int64_t n : {3, 10}) {
      const auto options =
          GradDropOptions(n).marginalize_batch(item.marginalize).keep_grad_norm(true).seed(++salt);
      const auto inputs = cuda_testing::random_cuda_inputs(item.shape, at::kFloat, n, salt);
      GradDropStatistics first_statistics, second_statistics;
      const auto first =
          combine(inputs.grads, inputs.activation, options, nullopt, nullopt, &first_statistics);
      const auto second =
          combine(inputs.grads, inputs.activation, options, nullopt, nullopt, &second_statistics);
      EXPECT_TRUE(cuda_testing::identical_bits(first, second)) << at::IntArrayRef(item.shape);
      EXPECT_EQ(first_statistics.kept_fraction, second_statistics.kept_fraction);
      EXPECT_EQ(first_statistics.mean_purity, second_statistics.mean_purity);
      EXPECT_EQ(first_statistics.conflict_fraction, second_statistics.conflict_fraction);
    }
  }
}

}  // namespace
}  // namespace graddrop
