// The CUDA kernels against the CPU kernel and the Philox formula: the same explicit (seed,
// offset) draws the same U on both devices, so the masks agree except where |f(P) - U| is within
// the rounding of the two devices' P (the marginalised column sums add rows in another order);
// U is keyed on the logical index whatever the launch shape; the CUDA generator is consumed one
// counter step per call; repeated calls are bitwise reproducible.
#include <mutex>
#include <vector>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

struct CpuInputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
};

CpuInputs cpu_inputs(const std::vector<int64_t>& shape, at::ScalarType dtype, int64_t n,
                     uint64_t salt) {
  auto generator = testing::seeded_generator(salt);
  CpuInputs inputs;
  inputs.activation = testing::random_activation(shape, dtype, generator);
  inputs.grads = testing::random_grads(inputs.activation, n, generator);
  return inputs;
}

TEST(CudaMatchesCpu, SameSeedSameMasks) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1100;
  for (const auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    for (const bool marginalize : {false, true}) {
      const std::vector<std::vector<int64_t>> shapes =
          marginalize ? std::vector<std::vector<int64_t>>{{64, 300}, {4099, 130}, {8, 65536}}
                      : std::vector<std::vector<int64_t>>{{64, 1000}, {33, 7}};
      for (const auto keep : {KeepFunction::kLinear, KeepFunction::kSigmoid}) {
        for (const auto& shape : shapes) {
          ++salt;
          const uint64_t seed = testing::test_seed() * 7919 + salt;
          const uint64_t offset = (uint64_t(1) << 33) + salt % 5;
          const auto options = GradDropOptions(3)
                                   .marginalize_batch(marginalize)
                                   .keep_function(keep)
                                   .scale(keep == KeepFunction::kSigmoid ? 2.0 : 1.0)
                                   .leak({0.0, 0.5, 0.0})
                                   .seed(seed)
                                   .offset(offset);
          const auto inputs = cpu_inputs(shape, dtype, 3, salt);
          const auto on_cpu = combine(inputs.grads, inputs.activation, options);
          const auto on_gpu =
              combine(cuda_testing::on_cuda(inputs.grads), inputs.activation.to(at::kCUDA), options)
                  .cpu();

          // Elements of P where the two devices' f(P) may fall on different sides of U.
          const auto shape_of_p = purity_shape(inputs.activation, options);
          const auto uniform = cuda_testing::host_philox_uniform(shape_of_p, seed, offset);
          const auto keep_probability =
              reference::combine(inputs.grads, inputs.activation, options, uniform)
                  .keep_probability;
          const auto near = (keep_probability - uniform.to(at::kDouble)).abs() < 1e-4;
          const auto near_output =
              marginalize ? near.unsqueeze(0).expand(inputs.activation.sizes()) : near;
          const auto far = near_output.logical_not();
          EXPECT_TRUE(at::equal(on_cpu.masked_select(far), on_gpu.masked_select(far)))
              << testing::describe(options) << " dtype " << dtype << " shape "
              << at::IntArrayRef(shape);
          EXPECT_LE(near.sum().item<int64_t>(), near.numel() / 100 + 2)
              << "too many purities near U: the comparison would say little";
        }
      }
    }
  }
}

// U keyed on the logical index: the kernels with (seed, offset) equal the kernels given the U
// that the shared Philox formula computes on the host, bit for bit, for every launch shape.
TEST(CudaKeying, SeedEqualsTheHostPhiloxFormula) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1300;
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16}) {
    for (const bool marginalize : {false, true}) {
      for (const auto& shape :
           std::vector<std::vector<int64_t>>{{64, 1000}, {33, 7}, {100000, 8}, {8, 65536}, {9}}) {
        ++salt;
        const uint64_t seed = (uint64_t(0x9E3779B9) << 20) + salt;
        const uint64_t offset = (uint64_t(1) << 40) + 3;
        const auto options =
            GradDropOptions(4).marginalize_batch(marginalize).seed(seed).offset(offset);
        const auto inputs = cpu_inputs(shape, dtype, 4, salt);
        const auto grads = cuda_testing::on_cuda(inputs.grads);
        const auto activation = inputs.activation.to(at::kCUDA);
        const auto uniform = cuda_testing::host_philox_uniform(
            purity_shape(inputs.activation, options), seed, offset);
        const auto seeded = combine(grads, activation, options);
        const auto explicit_draw =
            combine(grads, activation, options, nullopt, uniform.to(at::kCUDA));
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
    const auto inputs = cpu_inputs({64, 1000}, at::kFloat, 3, 1400 + marginalize);
    const auto grads = cuda_testing::on_cuda(inputs.grads);
    const auto activation = inputs.activation.to(at::kCUDA);
    const auto options = GradDropOptions(3).marginalize_batch(marginalize);
    set_seed(generator, 42);
    const auto first = combine(grads, activation, options);
    const auto second = combine(grads, activation, options);
    EXPECT_FALSE(cuda_testing::identical_bits(first, second));
    set_seed(generator, 42);
    EXPECT_TRUE(cuda_testing::identical_bits(first, combine(grads, activation, options)));

    // A generator of the caller's, seeded alike, draws alike; the default one is left alone.
    const uint64_t before = generator.get_offset();
    auto mine = at::cuda::detail::createCUDAGenerator();
    set_seed(mine, 42);
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
  uint64_t salt = 1600;
  struct Case {
    std::vector<int64_t> shape;
    bool marginalize;
  };
  for (const auto& item : {Case{{64, 1000}, false}, Case{{8, 65536}, true}, Case{{100000, 8}, true},
                           Case{{2048, 300}, true}}) {
    for (const int64_t n : {3, 10}) {
      const auto options =
          GradDropOptions(n).marginalize_batch(item.marginalize).keep_grad_norm(true).seed(++salt);
      const auto inputs = cpu_inputs(item.shape, at::kFloat, n, salt);
      const auto grads = cuda_testing::on_cuda(inputs.grads);
      const auto activation = inputs.activation.to(at::kCUDA);
      GradDropStatistics first_statistics, second_statistics;
      const auto first = combine(grads, activation, options, nullopt, nullopt, &first_statistics);
      const auto second = combine(grads, activation, options, nullopt, nullopt, &second_statistics);
      EXPECT_TRUE(cuda_testing::identical_bits(first, second)) << at::IntArrayRef(item.shape);
      EXPECT_EQ(first_statistics.kept_fraction, second_statistics.kept_fraction);
      EXPECT_EQ(first_statistics.mean_purity, second_statistics.mean_purity);
      EXPECT_EQ(first_statistics.conflict_fraction, second_statistics.conflict_fraction);
    }
  }
}

}  // namespace
}  // namespace graddrop
