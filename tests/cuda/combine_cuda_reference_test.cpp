// The CUDA kernels against the float64 reference with an explicit U kept away from f(P) and
// marginalised column signals kept away from zero (testing::decided_signals): every
// task count 1 to 10, every dtype, every option, layouts (non-contiguous, misaligned), the shapes
// that take each kernel path, the edge cases of docs/design.md. Each call runs twice: statistics
// off (the training hot path, no accumulators) and on; both outputs must match the reference,
// and the statistics the reference implies.
//
// Shapes and the kernel path each reaches (cuda/marginalized_launch.cu plans the marginalised
// ones from the GPU's multiprocessor count and shared memory):
//   per element   [64, 1024] 16-byte vectors (numel % 8 == 0); [33, 7] misaligned, odd numel:
//                 element by element with a tail;
//   marginalised  batches of 1 to 7 rows with 5, 13, 1001 columns (columns % 4 != 0: scalar
//                 loads, ragged last strip); [256, 4096] wide strips, cached; [65536, 64] and
//                 [4096, 100] few strips, rows split over blocks; [512, 32768] n = 2 float: a
//                 cached strip needs more than 48 KB of shared memory (the raised dynamic
//                 limit); [64, 131072] many strips.
// Many tasks (CudaReference.ManyTasks, CudaKernelPaths.ManyTasks): 40 and 64 tasks, past the
// by-value task lists (<= 8) and past one 32-entry batch of the task table's fill
// (with_tasks in cuda/launch_common.cuh); the marginalised blocks then hold n x W coefficients
// in shared memory and the planner narrows the strips or drops the cache to fit them.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cuda_test_helpers.h"
#include "graddrop/combine.h"
#include "test_support.h"

namespace graddrop {
namespace {

enum class Layout { kContiguous, kNonContiguous, kMisaligned };

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::kNonContiguous:
      return "non-contiguous";
    case Layout::kMisaligned:
      return "misaligned";
    default:
      return "contiguous";
  }
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

// Runs combine on the GPU with statistics off and on, and checks both outputs and the
// statistics against the reference. Inputs are drawn on the GPU (cuda_testing::Inputs).
void expect_matches_reference(const std::vector<int64_t>& shape, at::ScalarType dtype,
                              const GradDropOptions& options, uint64_t salt,
                              Layout layout = Layout::kContiguous, int64_t undefined_every = 0) {
  const auto drawn =
      cuda_testing::random_cuda_inputs(shape, dtype, options.num_tasks(), salt, undefined_every);
  const auto activation = drawn.activation.cpu();
  // Marginalised column signals within rounding of zero pushed off it, so the float kernels
  // and the float64 reference agree on every sign (what the GPU then gets too).
  const auto grads =
      testing::decided_signals(cuda_testing::on_cpu(drawn.grads), activation, options);
  auto generator = testing::seeded_generator(salt);
  const auto uniform = testing::separated_uniform(grads, activation, options, generator);
  const auto expected = reference::combine(grads, activation, options, uniform);

  std::vector<at::Tensor> device_grads;
  for (const auto& grad : grads) device_grads.push_back(arranged(grad, layout));
  const auto device_activation = arranged(drawn.activation, layout);
  const auto device_uniform = uniform.to(at::kCUDA);
  const std::string what = testing::describe(options) + " shape " +
                           c10::str(at::IntArrayRef(shape)) + " dtype " + c10::toString(dtype) +
                           " layout " + layout_name(layout) + " salt " + std::to_string(salt);

  // Statistics off: no accumulators at all.
  const auto hot = combine(device_grads, device_activation, options, nullopt, device_uniform);
  ASSERT_TRUE(hot.is_cuda()) << what;
  EXPECT_EQ(hot.scalar_type(), dtype) << what;
  EXPECT_TRUE(testing::close_to_reference(hot, expected.output)) << what << " (statistics off)";

  GradDropStatistics statistics;
  const auto counted = combine(device_grads, device_activation, options, nullopt, device_uniform,
                               &statistics);
  EXPECT_TRUE(testing::close_to_reference(counted, expected.output)) << what << " (statistics on)";
  if (!options.keep_grad_norm()) {
    // Counting must not change what is computed.
    EXPECT_TRUE(cuda_testing::identical_bits(hot, counted)) << what << " statistics on vs off";
  }

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

// Every task count 1..10 (the by-value task lists and the table beyond), every dtype, both
// modes, on small shapes of both load paths; some tasks without a gradient.
TEST(CudaReference, EveryTaskCountAndDtype) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 100;
  for (const auto dtype : kDtypes) {
    for (int64_t n = 1; n <= 10; ++n) {
      auto generator = testing::seeded_generator(salt);
      const auto options = GradDropOptions(n).leak(testing::mixed_leaks(n, generator));
      const auto per_element = GradDropOptions(options).marginalize_batch(false);
      expect_matches_reference({64, 1024}, dtype, per_element, ++salt);
      expect_matches_reference({33, 7}, dtype, per_element, ++salt, Layout::kMisaligned,
                               /*undefined_every=*/3);
      expect_matches_reference({7, 1001}, dtype, options, ++salt);
      expect_matches_reference({3, 13}, dtype, options, ++salt, Layout::kContiguous,
                               /*undefined_every=*/3);
      expect_matches_reference({16, 64}, dtype, options, ++salt, Layout::kMisaligned);
    }
  }
}

// Marginalised batches of 1 to 7 rows with column counts that are not multiples of 4, every
// dtype, the task count cycling through 1..10.
TEST(CudaReference, SmallBatchesAndRaggedColumns) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 300;
  int64_t n = 0;
  for (const auto dtype : kDtypes) {
    for (int64_t rows = 1; rows <= 7; ++rows) {
      for (const int64_t columns : {5, 13, 1001}) {
        n = n % 10 + 1;
        expect_matches_reference({rows, columns}, dtype, GradDropOptions(n), ++salt);
      }
    }
  }
}

// The large shapes of the marginalised paths (see the top of this file): float with 5 tasks and
// bfloat16 with 2 (CudaKernelPaths has float with 2), the other dtypes on two mid-sized ones.
// The float64 reference runs on the CPU, so the large shapes are few.
TEST(CudaReference, EveryMarginalizedKernelPath) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 500;
  const std::vector<std::vector<int64_t>> shapes = {
      {256, 4096}, {65536, 64}, {4096, 100}, {512, 32768}, {64, 131072}};
  for (const auto& shape : shapes) {
    expect_matches_reference(shape, at::kFloat, GradDropOptions(5), ++salt);
    expect_matches_reference(shape, at::kBFloat16, GradDropOptions(2), ++salt);
  }
  for (const auto dtype : {at::kDouble, at::kHalf}) {
    expect_matches_reference({256, 4096}, dtype, GradDropOptions(3), ++salt);
    expect_matches_reference({4096, 100}, dtype, GradDropOptions(3), ++salt);
  }
  // keep_grad_norm, a task without a gradient and many tasks on the split and cached paths.
  expect_matches_reference({65536, 64}, at::kFloat, GradDropOptions(10).keep_grad_norm(true),
                           ++salt, Layout::kContiguous, /*undefined_every=*/4);
  expect_matches_reference({512, 32768}, at::kFloat, GradDropOptions(2).keep_grad_norm(true),
                           ++salt);
  // Misaligned and non-contiguous marginalised inputs (element-by-element loads).
  for (const auto layout : {Layout::kNonContiguous, Layout::kMisaligned}) {
    expect_matches_reference({256, 4096}, at::kFloat, GradDropOptions(3), ++salt, layout);
    expect_matches_reference({4096, 100}, at::kHalf, GradDropOptions(3), ++salt, layout);
  }
}

// Per element: vectors and element by element, contiguous or not, 1-d and 3-d.
TEST(CudaReference, EveryPerElementKernelPathAndLayout) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 600;
  const std::vector<std::vector<int64_t>> shapes = {{64, 1024}, {33, 7}, {5}, {8, 7, 9}, {1 << 20}};
  for (const auto dtype : kDtypes) {
    for (const int64_t n : {2, 4, 9}) {
      for (const auto layout : {Layout::kContiguous, Layout::kNonContiguous, Layout::kMisaligned}) {
        for (const auto& shape : shapes) {
          expect_matches_reference(shape, dtype, GradDropOptions(n).marginalize_batch(false),
                                   ++salt, layout);
        }
      }
    }
  }
}

// Every kernel path once, at sizes a sanitizer gets through quickly (scripts/gpu_check.sh runs
// compute-sanitizer over CudaKernelPaths.*: racecheck and synccheck over SmallShapes only).
// [2048, 64] is small but has too few strips, and too many rows to cache a strip: rows split
// over blocks; [1024, 64] with 2 tasks caches a strip of more than 48 KB.
TEST(CudaKernelPaths, SmallShapes) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 900;
  struct DtypeTasks {
    at::ScalarType dtype;
    int64_t n;
  };
  const auto keep_square = [](const at::Tensor& purity) { return purity * purity; };
  for (const auto& item : {DtypeTasks{at::kFloat, 2}, DtypeTasks{at::kFloat, 10},
                           DtypeTasks{at::kBFloat16, 3}, DtypeTasks{at::kDouble, 5},
                           DtypeTasks{at::kHalf, 2}}) {
    const auto per_element = GradDropOptions(item.n).marginalize_batch(false);
    expect_matches_reference({64, 1024}, item.dtype, per_element, ++salt);
    expect_matches_reference({33, 7}, item.dtype, per_element, ++salt, Layout::kMisaligned);
    for (const auto& shape : std::vector<std::vector<int64_t>>{
             {1, 5}, {4, 13}, {7, 1001}, {256, 4096}, {2048, 64}, {1024, 64}, {0, 10}}) {
      expect_matches_reference(shape, item.dtype, GradDropOptions(item.n), ++salt);
    }
    for (const auto& shape : std::vector<std::vector<int64_t>>{{256, 4096}, {2048, 64}}) {
      expect_matches_reference(shape, item.dtype, GradDropOptions(item.n).keep_grad_norm(true),
                               ++salt, Layout::kContiguous, /*undefined_every=*/3);
      expect_matches_reference(shape, item.dtype,
                               GradDropOptions(item.n).custom_keep_function(keep_square), ++salt);
    }
  }
}

// The large path shapes of the issue, once each.
TEST(CudaKernelPaths, LargeShapes) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 950;
  expect_matches_reference({512, 32768}, at::kFloat, GradDropOptions(2), ++salt);
  expect_matches_reference({65536, 64}, at::kFloat, GradDropOptions(2), ++salt);
  expect_matches_reference({4096, 100}, at::kBFloat16, GradDropOptions(3), ++salt);
  expect_matches_reference({64, 131072}, at::kFloat, GradDropOptions(2).keep_grad_norm(true),
                           ++salt);
}

// Many tasks: 40 (two batches of the task table's fill, five chunks of 8 tasks) and 64, both
// modes, float32 and bfloat16, with mixed leaks, statistics (every call also runs with them),
// keep_grad_norm and undefined gradients. The marginalised shapes take the planner's many-task
// plans (on an H100, 40 tasks): [256, 4096] the split pair with strips of 256 columns and over
// 100 KB of shared memory per pass-1 block; [4096, 100] the split pair with parts along the
// rows and a ragged strip; [64, 1024] a cached strip of 16 columns in ~170 KB (float32);
// [7, 1001] a cached strip with scalar loads. With 64 tasks [64, 1024] float32 runs the fused
// kernel without the cache (strips of 256 columns, 128 KB).
TEST(CudaReference, ManyTasks) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1500;
  for (const int64_t n : {40, 64}) {
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      auto generator = testing::seeded_generator(salt);
      const auto options = GradDropOptions(n).leak(testing::mixed_leaks(n, generator));
      const auto per_element = GradDropOptions(options).marginalize_batch(false);
      expect_matches_reference({64, 1024}, dtype, per_element, ++salt);
      expect_matches_reference({33, 7}, dtype, per_element, ++salt, Layout::kMisaligned,
                               /*undefined_every=*/3);
      expect_matches_reference({4096, 100}, dtype, options, ++salt);
      expect_matches_reference({64, 1024}, dtype, options, ++salt);
      expect_matches_reference({7, 1001}, dtype, options, ++salt, Layout::kContiguous,
                               /*undefined_every=*/5);
      if (n == 40) expect_matches_reference({256, 4096}, dtype, options, ++salt);
    }
  }
  // keep_grad_norm (its norms from the statistics rows) with undefined gradients, on the split
  // and the cached paths, and per element.
  expect_matches_reference({256, 4096}, at::kFloat, GradDropOptions(40).keep_grad_norm(true),
                           ++salt, Layout::kContiguous, /*undefined_every=*/7);
  expect_matches_reference({4096, 100}, at::kBFloat16, GradDropOptions(40).keep_grad_norm(true),
                           ++salt, Layout::kContiguous, /*undefined_every=*/4);
  expect_matches_reference({64, 1024}, at::kFloat, GradDropOptions(64).keep_grad_norm(true),
                           ++salt, Layout::kContiguous, /*undefined_every=*/3);
  expect_matches_reference({64, 1024}, at::kBFloat16,
                           GradDropOptions(40).keep_grad_norm(true).marginalize_batch(false),
                           ++salt, Layout::kContiguous, /*undefined_every=*/6);
  // Non-contiguous and misaligned marginalised inputs: element-by-element loads.
  expect_matches_reference({4096, 100}, at::kFloat, GradDropOptions(40), ++salt,
                           Layout::kNonContiguous);
  expect_matches_reference({64, 1024}, at::kBFloat16, GradDropOptions(40), ++salt,
                           Layout::kMisaligned);
}

// The many-task plans at sizes a sanitizer gets through quickly (scripts/gpu_check.sh runs
// memcheck and initcheck over CudaKernelPaths.*): 40 tasks on [2048, 64] (split over row parts),
// [16, 64] and [1, 5] (cached strips), 64 tasks on [64, 1024] float32 (fused, uncached).
TEST(CudaKernelPaths, ManyTasks) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1600;
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const auto& shape : std::vector<std::vector<int64_t>>{{2048, 64}, {16, 64}, {1, 5}}) {
      expect_matches_reference(shape, dtype, GradDropOptions(40), ++salt);
      expect_matches_reference(shape, dtype, GradDropOptions(40).keep_grad_norm(true), ++salt,
                               Layout::kContiguous, /*undefined_every=*/3);
    }
    expect_matches_reference({33, 7}, dtype, GradDropOptions(40).marginalize_batch(false),
                             ++salt, Layout::kMisaligned, /*undefined_every=*/3);
  }
  expect_matches_reference({64, 1024}, at::kFloat, GradDropOptions(64), ++salt);
}

TEST(CudaReference, EveryOption) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1000;
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

TEST(CudaReference, EdgeCases) {
  GRADDROP_REQUIRE_CUDA();
  uint64_t salt = 1300;
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
    expect_matches_reference({300000}, dtype, GradDropOptions(2), ++salt);
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
      EXPECT_EQ(combine(grads, activation, options).abs().max().item<float>(), 0.0f);
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
  uint64_t salt = 1400;
  for (const auto dtype : kDtypes) {
    for (const bool marginalize : {true, false}) {
      const auto options = GradDropOptions(2).marginalize_batch(marginalize);
      auto generator = testing::seeded_generator(++salt);
      const auto activation = testing::random_activation({16, 64}, dtype, generator);
      auto grads = testing::random_grads(activation, 2, generator);
      grads[0][3][5] = std::numeric_limits<double>::quiet_NaN();
      grads[1][7][9] = std::numeric_limits<double>::infinity();
      grads[1][2][40] = -std::numeric_limits<double>::infinity();
      // (Non-finite columns are never undecided: only finite ones can be adjusted.)
      grads = testing::decided_signals(grads, activation, options);
      const auto uniform = testing::separated_uniform(grads, activation, options, generator);
      const auto expected = reference::combine(grads, activation, options, uniform).output;
      const auto output = combine(cuda_testing::on_cuda(grads), activation.to(at::kCUDA),
                                  options, nullopt, uniform.to(at::kCUDA));
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
