// Launcher of the marginalised combine kernel (marginalize_batch on): chooses the strip width
// and between the fused kernel (one block per strip, gradients kept in shared memory) and the
// split pair (partial sums over parts of the rows, then apply), then launches.
#include <algorithm>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "launch_common.cuh"
#include "marginalized_kernel.cuh"

namespace graddrop {
namespace cuda_kernels {
namespace {

// How one call is laid out on the device.
struct MarginalizedPlan {
  int width = 4;  // columns per strip
  int64_t strips = 0;
  bool fused = true;   // kFused (one block per strip), else kPartial + kApply
  bool cache = false;  // kFused keeps the strip's gradients in shared memory
  int64_t parts = 1;   // blocks along a strip (split)
  int64_t rows_per_part = 0;
  int64_t shared_bytes = 0;  // dynamic shared memory per block
};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// The widest strip is one warp-wide 128-column run; the narrowest still reads 64-byte row
// segments (two 32-byte sectors per row). A narrower strip means more strips (blocks) and a
// smaller cache per strip.
MarginalizedPlan plan_marginalized(const ops::CombineArguments& arguments, int scalar_size,
                                   int opmath_size) {
  const auto* properties = at::cuda::getCurrentDeviceProperties();
  const int64_t multiprocessors = properties->multiProcessorCount;
  const int64_t rows = arguments.rows;
  const int64_t columns = arguments.columns;
  const int n = static_cast<int>(arguments.num_tasks());

  int widest = 4;
  while (widest < 128 && widest < columns) widest *= 2;
  const int narrowest = std::min(widest, std::max(4, 64 / scalar_size));
  // Static shared memory of the kernel, and the 1 KB the driver reserves per block.
  constexpr int64_t kReserved = 1024 + 128;
  const int64_t one_per_sm = static_cast<int64_t>(properties->sharedMemPerBlockOptin) - 128;
  const int64_t two_per_sm =
      static_cast<int64_t>(properties->sharedMemPerMultiprocessor) / 2 - kReserved;
  // Tiny calls are bound by the launch, not by filling the GPU: one launch is best.
  const bool tiny = rows * columns <= (int64_t(1) << 18);

  // Without the cache a block holds n * W column values: with very many tasks, narrower strips.
  int uncached_width = widest;
  while (uncached_width > 4 &&
         marginalized_layout(n, uncached_width, opmath_size, 0).total > one_per_sm) {
    uncached_width /= 2;
  }

  MarginalizedPlan plan;
  if (rows == 0) {  // P (0.5 everywhere) and its statistics, no output
    plan.width = uncached_width;
    plan.strips = ceil_div(columns, uncached_width);
    plan.shared_bytes = marginalized_layout(n, uncached_width, opmath_size, 0).total;
    return plan;
  }
  for (const int64_t budget : {two_per_sm, one_per_sm}) {
    for (int width = widest; width >= narrowest; width /= 2) {
      const int64_t strips = ceil_div(columns, width);
      const int64_t cache = marginalized_cache_bytes(rows, width, n, scalar_size);
      const int64_t shared = marginalized_layout(n, width, opmath_size, cache).total;
      if (shared <= budget && (strips >= multiprocessors || tiny)) {
        plan.width = width;
        plan.strips = strips;
        plan.cache = true;
        plan.rows_per_part = rows;
        plan.shared_bytes = shared;
        return plan;
      }
    }
  }
  // Split: enough (strip, part) blocks to fill the device several times over, every row lane
  // with at least one row.
  plan.width = uncached_width;
  plan.strips = ceil_div(columns, uncached_width);
  plan.fused = false;
  const int64_t row_lanes = row_lanes_of(uncached_width);
  const int64_t wanted = ceil_div(multiprocessors * 8, plan.strips);
  const int64_t parts =
      std::max<int64_t>(1, std::min({wanted, ceil_div(rows, row_lanes), int64_t(65535)}));
  plan.rows_per_part = ceil_div(ceil_div(rows, parts), row_lanes) * row_lanes;
  plan.parts = ceil_div(rows, plan.rows_per_part);
  plan.shared_bytes = marginalized_layout(n, uncached_width, opmath_size, 0).total;
  return plan;
}

template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
at::Tensor launch_marginalized_with(const ops::CombineArguments& arguments, const DrawKey& key,
                                    const at::Tensor& output, const Tasks& tasks) {
  const auto kernel = combine_marginalized_kernel<scalar_t, opmath_t, Tasks, kStatistics>;
  const int64_t n = arguments.num_tasks();
  const auto plan = plan_marginalized(arguments, sizeof(scalar_t), sizeof(opmath_t));
  allow_shared_memory(kernel, plan.shared_bytes);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto on_device = arguments.activation.options();

  MarginalizedParams<scalar_t, opmath_t, Tasks> params{};
  params.activation = arguments.activation.data_ptr<scalar_t>();
  params.output = output.data_ptr<scalar_t>();
  params.tasks = tasks;
  params.num_tasks = static_cast<int>(n);
  params.keep_probability = keep_probability_of<opmath_t>(arguments);
  params.random = random_source_of<opmath_t>(arguments, key);
  params.math = math_settings_of<opmath_t>(arguments);
  params.rows = arguments.rows;
  params.columns = arguments.columns;
  params.strip_width = plan.width;
  params.rows_per_part = plan.rows_per_part;
  params.vectorized =
      arguments.columns % 4 == 0 && all_aligned(arguments, output, vector_alignment<scalar_t, 4>());
  params.cache = plan.cache;

  if (plan.fused) {
    auto statistics = statistics_rows(arguments, plan.strips);
    double* rows = statistics.defined() ? statistics.data_ptr<double>() : nullptr;
    params.phase = MarginalizedPhase::kFused;
    params.purity_statistics = rows;
    params.output_statistics = rows;
    kernel<<<dim3(static_cast<unsigned>(plan.strips), 1), kThreads,
             static_cast<size_t>(plan.shared_bytes), stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return statistics;
  }

  // Per strip: the parts' column sums, the arrivals, then the coefficients.
  const at::Tensor part_sums =
      at::empty({plan.parts, n, arguments.columns},
                on_device.dtype(c10::CppTypeToScalarType<opmath_t>::value));
  auto arrivals = at::zeros({plan.strips}, on_device.dtype(at::kInt));
  const at::Tensor coefficients = at::empty({n, arguments.columns}, part_sums.options());
  auto statistics = statistics_rows(arguments, plan.strips * (1 + plan.parts));
  double* rows = statistics.defined() ? statistics.data_ptr<double>() : nullptr;
  params.part_sums = part_sums.data_ptr<opmath_t>();
  params.arrivals = reinterpret_cast<unsigned int*>(arrivals.data_ptr<int>());
  params.coefficients = coefficients.data_ptr<opmath_t>();
  params.purity_statistics = rows;
  params.output_statistics =
      rows != nullptr ? rows + plan.strips * ops::accumulator_size(n) : nullptr;
  const dim3 grid(static_cast<unsigned>(plan.strips), static_cast<unsigned>(plan.parts));

  params.phase = MarginalizedPhase::kPartial;
  kernel<<<grid, kThreads, static_cast<size_t>(plan.shared_bytes), stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  params.phase = MarginalizedPhase::kApply;
  kernel<<<grid, kThreads, static_cast<size_t>(plan.shared_bytes), stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return statistics;
}

}  // namespace

at::Tensor launch_marginalized(const ops::CombineArguments& arguments, const DrawKey& key,
                               const at::Tensor& output) {
  at::Tensor statistics;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, arguments.activation.scalar_type(), "combine_cuda_marginalized",
      [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        statistics = with_tasks<scalar_t, opmath_t>(arguments, [&](const auto& tasks) {
          using Tasks = std::decay_t<decltype(tasks)>;
          return arguments.needs_accumulators()
                     ? launch_marginalized_with<scalar_t, opmath_t, Tasks, true>(arguments, key,
                                                                                 output, tasks)
                     : launch_marginalized_with<scalar_t, opmath_t, Tasks, false>(arguments, key,
                                                                                  output, tasks);
        });
      });
  return statistics;
}

}  // namespace cuda_kernels
}  // namespace graddrop
