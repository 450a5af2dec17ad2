// The CUDA kernels against the float64 reference with an explicit U: every option, every dtype,
// task counts 1 to 8 and beyond (the by-value and the table task lists), layouts (non-contiguous,
// misaligned), the shapes that take each kernel path (per-element vector and element-by-element,
// marginalised fused with the strip in shared memory, marginalised split over row parts), the
// statistics, and the edge cases of DESIGN.md §1.
#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

enum class Layout { kContiguous, kNonContiguous, kMisaligned };

struct Inputs {
  at::Tensor activation;
  std::vector<at::Tensor> grads;
  at::Tensor uniform;
};

Inputs random_inputs(const std::vector<int64_t>& shape, at::ScalarType dtype,
                     const GradDropOptions& options, uint64_t salt, int64_t undefined_every) {
  auto generator = testing::seeded_generator(salt);
  Inputs inputs;
  inputs.activation = testing::random_activation(shape, dtype, generator);
  inputs.grads =
      testing::random_grads(inputs.activation, options.num_tasks(), generator, undefined_every);
  inputs.uniform = testing::separated_uniform(inputs.grads, inputs.activation, options, generator);
  return inputs;
}

at::Tensor arranged(const at::Tensor& tensor, Layout layout) {
  if (!tensor.defined()) return tensor;
  const auto on_gpu = tensor.to(at::kCUDA);
  switch (layout) {
    case Layout::kNonContiguous:
      return testing::non_contiguous_copy(on_gpu);
    case Layout::kMisaligned:
      return cuda_testing::misaligned_copy(on_gpu);
    default:
      return on_gpu;
  }
}

// The statistics the float64 reference implies (masks agree with the kernel's: U is separated).
GradDropStatistics reference_statistics(const reference::ReferenceResult& reference) {
  GradDropStatistics statistics;
  statistics.purity_elements = reference.purity.numel();
  if (statistics.purity_elements == 0) {
    statistics.kept_fraction.assign(reference.masks.size(), 0.0);
    return statistics;
  }
  for (const auto& mask : reference.masks) {
    statistics.kept_fraction.push_back(mask.to(at::kDouble).mean().item<double>());
  }
  statistics.mean_purity = reference.purity.mean().item<double>();
  const auto signals = at::stack(reference.signals);
  const auto conflict = at::logical_and((signals > 0).any(0), (signals < 0).any(0));
  statistics.conflict_fraction = conflict.to(at::kDouble).mean().item<double>();
  return statistics;
}

// Runs combine on the GPU and checks output and statistics against the reference.
void expect_matches_reference(const std::vector<int64_t>& shape, at::ScalarType dtype,
                              const GradDropOptions& options, uint64_t salt,
                              Layout layout = Layout::kContiguous, int64_t undefined_every = 0) {
  const auto inputs = random_inputs(shape, dtype, options, salt, undefined_every);
  const auto expected =
      reference::combine(inputs.grads, inputs.activation, options, inputs.uniform);
  std::vector<at::Tensor> grads;
  for (const auto& grad : inputs.grads) grads.push_back(arranged(grad, layout));
  GradDropStatistics statistics;
  const auto output = combine(grads, arranged(inputs.activation, layout), options, nullopt,
                              inputs.uniform.to(at::kCUDA), &statistics);
  const std::string what = testing::describe(options) + " shape " +
                           c10::str(at::IntArrayRef(shape)) + " dtype " + c10::toString(dtype) +
                           " layout " + std::to_string(static_cast<int>(layout));
  ASSERT_TRUE(output.is_cuda()) << what;
  EXPECT_EQ(output.scalar_type(), dtype) << what;
  EXPECT_TRUE(testing::close_to_reference(output, expected.output)) << what;

  const auto want = reference_statistics(expected);
  ASSERT_EQ(statistics.kept_fraction.size(), want.kept_fraction.size()) << what;
  for (size_t task = 0; task < want.kept_fraction.size(); ++task) {
    EXPECT_DOUBLE_EQ(statistics.kept_fraction[task], want.kept_fraction[task])
        << what << " task " << task;
  }
  EXPECT_NEAR(statistics.mean_purity, want.mean_purity, 2e-6) << what;
  EXPECT_DOUBLE_EQ(statistics.conflict_fraction, want.conflict_fraction) << what;
  EXPECT_EQ(statistics.purity_elements, want.purity_elements) << what;
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};

TEST(CudaReference, EveryDtypeModeAndTaskCount) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 100;
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {true, false}) {
      for (const int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 12}) {
        auto generator = testing::seeded_generator(salt);
        const auto options = GradDropOptions(n)
                                 .marginalize_batch(marginalize)
                                 .leak(testing::mixed_leaks(n, generator));
        expect_matches_reference({24, 37}, dtype, options, ++salt);
        expect_matches_reference({16, 64}, dtype, options, ++salt, Layout::kContiguous,
                                 /*undefined_every=*/3);
      }
    }
  }
}

TEST(CudaReference, EveryOption) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 300;
  for (const auto source :
       {SignSource::kActivationSign, SignSource::kActivationValue, SignSource::kNone}) {
    for (const int keep_case : {0, 1, 2, 3}) {
      for (const auto zero : {ZeroSign::kDrop, ZeroSign::kKeep}) {
        for (const bool keep_grad_norm : {false, true}) {
          for (const bool marginalize : {true, false}) {
            auto options = GradDropOptions(3)
                               .sign_source(source)
                               .zero_sign(zero)
                               .keep_grad_norm(keep_grad_norm)
                               .marginalize_batch(marginalize)
                               .leak({0.0, 0.25, 1.0});
            switch (keep_case) {
              case 1:
                options.scale(0.5);
                break;
              case 2:
                options.keep_function(KeepFunction::kSigmoid).scale(2.0);
                break;
              case 3:
                options.custom_keep_function(
                    [](const at::Tensor& purity) { return purity * purity; });
                break;
              default:
                break;
            }
            expect_matches_reference({12, 40}, at::kFloat, options, ++salt);
            expect_matches_reference({12, 40}, at::kBFloat16, options, ++salt);
          }
        }
      }
    }
  }
}

// Shapes chosen so that each kernel path runs on any GPU (see cuda/marginalized_launch.cu):
//   per-element   [64, 1024] whole 16-byte runs, [33, 7] element by element with a tail;
//   fused         [8, 65536] (hundreds of strips, the strip cached), [16, 37] (a tiny call,
//                 odd columns), [32, 7, 9] (3-d);
//   split         [100000, 8] (one strip over many row parts), [2048, 300], [4099, 130] (odd),
//                 [300000] (1-d: one column, one purity).
TEST(CudaReference, EveryKernelPathAndLayout) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 500;
  const std::vector<std::vector<int64_t>> per_element_shapes = {{64, 1024}, {33, 7}, {5}};
  const std::vector<std::vector<int64_t>> marginalized_shapes = {
      {8, 65536}, {16, 37}, {32, 7, 9}, {100000, 8}, {2048, 300}, {4099, 130}, {300000}, {1000}};
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kDouble, at::kHalf}) {
    for (const int64_t n : {2, 4, 11}) {
      for (const auto layout : {Layout::kContiguous, Layout::kNonContiguous, Layout::kMisaligned}) {
        const auto options = GradDropOptions(n).leak(std::vector<double>(n, 0.0));
        for (const auto& shape : per_element_shapes) {
          expect_matches_reference(shape, dtype, GradDropOptions(options).marginalize_batch(false),
                                   ++salt, layout);
        }
        // The large marginalised shapes once per dtype and task count (they take a while on
        // the CPU reference).
        if (layout != Layout::kContiguous) continue;
        for (const auto& shape : marginalized_shapes) {
          expect_matches_reference(shape, dtype, GradDropOptions(options).keep_grad_norm(true),
                                   ++salt, layout, /*undefined_every=*/n > 2 ? 3 : 0);
        }
      }
    }
  }
  // Misaligned and non-contiguous marginalised inputs (element-by-element loads).
  for (const auto layout : {Layout::kNonContiguous, Layout::kMisaligned}) {
    expect_matches_reference({8, 65536}, at::kFloat, GradDropOptions(3), ++salt, layout);
    expect_matches_reference({100000, 8}, at::kHalf, GradDropOptions(3), ++salt, layout);
  }
}

TEST(CudaReference, EdgeCases) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 700;
  for (const auto dtype : kDtypes) {
    // n = 1 with activation_sign: P is 0 or 1, so every gradient whose signal is non-zero is
    // kept (U < 1 always); zero signals follow zero_sign.
    for (const bool marginalize : {true, false}) {
      expect_matches_reference({20, 30}, dtype, GradDropOptions(1).marginalize_batch(marginalize),
                               ++salt);
    }
    // A 0-d activation (per element only), 1-d marginalised (one purity).
    expect_matches_reference({}, dtype, GradDropOptions(2).marginalize_batch(false), ++salt);
    expect_matches_reference({7}, dtype, GradDropOptions(2), ++salt);
    // Empty activations: no output elements; an empty batch still has P = 0.5 per feature.
    expect_matches_reference({0}, dtype, GradDropOptions(2).marginalize_batch(false), ++salt);
    expect_matches_reference({3, 0}, dtype, GradDropOptions(2), ++salt);
    expect_matches_reference({0, 10}, dtype, GradDropOptions(3).keep_grad_norm(true), ++salt);
  }
}

TEST(CudaReference, AllZeroGradients) {
  GRADDROP_REQUIRE_CUDA();
  for (const bool marginalize : {true, false}) {
    for (const auto zero : {ZeroSign::kDrop, ZeroSign::kKeep}) {
      const auto options = GradDropOptions(3).marginalize_batch(marginalize).zero_sign(zero);
      auto activation = at::randn({16, 40}, at::TensorOptions().device(at::kCUDA));
      std::vector<at::Tensor> grads(3, at::zeros_like(activation));
      GradDropStatistics statistics;
      const auto output = combine(grads, activation, options, nullopt, nullopt, &statistics);
      EXPECT_EQ(output.abs().max().item<float>(), 0.0f);
      EXPECT_DOUBLE_EQ(statistics.mean_purity, 0.5);
      for (double kept : statistics.kept_fraction) {
        EXPECT_DOUBLE_EQ(kept, zero == ZeroSign::kKeep ? 1.0 : 0.0);
      }
      EXPECT_DOUBLE_EQ(statistics.conflict_fraction, 0.0);
    }
  }
}

// A NaN or Inf in any gradient makes every output element that depended on it non-finite:
// the element (per element) or the whole column (marginalised), never silently finite.
TEST(CudaReference, NonFiniteGradientsPropagate) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 900;
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {true, false}) {
      const auto options = GradDropOptions(2).marginalize_batch(marginalize);
      auto inputs = random_inputs({16, 64}, dtype, options, ++salt, 0);
      inputs.grads[0][3][5] = std::numeric_limits<double>::quiet_NaN();
      inputs.grads[1][7][9] = std::numeric_limits<double>::infinity();
      inputs.grads[1][2][40] = -std::numeric_limits<double>::infinity();
      const auto expected =
          reference::combine(inputs.grads, inputs.activation, options, inputs.uniform).output;
      const auto output =
          combine(cuda_testing::on_cuda(inputs.grads), inputs.activation.to(at::kCUDA), options,
                  nullopt, inputs.uniform.to(at::kCUDA));
      EXPECT_TRUE(testing::close_to_reference(output, expected))
          << "dtype " << dtype << " marginalize " << marginalize;
      const auto finite = at::isfinite(output.cpu());
      EXPECT_FALSE(finite[3][5].item<bool>());
      EXPECT_FALSE(finite[7][9].item<bool>());
      EXPECT_FALSE(finite[2][40].item<bool>());
      if (marginalize) {
        EXPECT_FALSE(finite.select(1, 5).any().item<bool>());
      } else {
        EXPECT_TRUE(finite[3][6].item<bool>());
      }
    }
  }
}

}  // namespace
}  // namespace graddrop
