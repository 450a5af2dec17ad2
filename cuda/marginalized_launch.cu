// Launcher of the marginalised combine kernel (marginalize_batch on): launches the plan of
// cuda_plan::plan_marginalized (launch_plan.cpp), the fused kernel (one block per strip,
// gradients kept in shared memory when they fit) or the split pair (chunk sums over parts of the
// rows, then apply on its own grid). The plan only changes the speed: every sum follows an order
// fixed by the call (marginalized_kernel.cuh).
#include <algorithm>

#include "launch_common.cuh"
#include "marginalized_kernel.cuh"

namespace graddrop {
namespace cuda_kernels {
namespace {

// The plan of a marginalised call (cuda_plan::plan_marginalized) for `kernel` on the current
// device.
template <typename scalar_t, typename opmath_t, typename Kernel>
cuda_plan::LaunchPlan plan_of(const ops::CombineArguments& arguments, Kernel kernel) {
  return cuda_plan::plan_marginalized(call_shape_of<scalar_t, opmath_t>(arguments, kernel),
                                      current_device_limits());
}

// The parameters every phase shares: the call's tensors and settings and the plan's strip width.
// `output` may be undefined (kColumnSums writes none).
template <typename scalar_t, typename opmath_t, class Tasks>
MarginalizedParams<scalar_t, opmath_t, Tasks> common_params(
    const ops::CombineArguments& arguments, const DrawKey& key, const at::Tensor& output,
    const Tasks& tasks, const cuda_plan::LaunchPlan& plan, const at::Tensor& statistics) {
  MarginalizedParams<scalar_t, opmath_t, Tasks> params{};
  params.activation = arguments.activation.data_ptr<scalar_t>();
  params.output = output.defined() ? output.data_ptr<scalar_t>() : nullptr;
  params.tasks = tasks;
  params.num_tasks = static_cast<int>(arguments.num_tasks());
  params.keep_probability = keep_probability_of<opmath_t>(arguments);
  params.random = random_source_of<opmath_t>(arguments, key);
  params.math = math_settings_of<opmath_t>(arguments);
  params.rows = arguments.rows;
  params.columns = arguments.columns;
  params.strip_width = plan.strip_width;
  params.chunks_per_part = plan.chunks_per_part;
  params.apply_rows = plan.apply_rows;
  params.slices_per_part = plan.apply_slices_per_part;
  params.vectorized = arguments.columns % 4 == 0 &&
                      all_aligned(arguments, output.defined() ? output : arguments.activation,
                                  vector_alignment<scalar_t, 4>());
  params.cache = plan.cache;
  params.statistics = statistics.defined() ? statistics.data_ptr<double>() : nullptr;
  return params;
}

template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
at::Tensor launch_marginalized_with(const ops::CombineArguments& arguments, const DrawKey& key,
                                    const at::Tensor& output, const Tasks& tasks) {
  const auto kernel = combine_marginalized_kernel<scalar_t, opmath_t, Tasks, kStatistics>;
  const int64_t n = arguments.num_tasks();
  const auto plan = plan_of<scalar_t, opmath_t>(arguments, kernel);
  allow_shared_memory(kernel, std::max(plan.shared_bytes, plan.apply_shared_bytes));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto on_device = arguments.activation.options();
  const int64_t chunks = row_chunks_of(arguments.rows);
  const int64_t slices = (arguments.rows + plan.apply_rows - 1) / plan.apply_rows;
  const int64_t groups = statistics_groups_of(arguments.columns);
  const at::Tensor statistics = statistics_rows(arguments, groups + slices * groups);
  const unsigned threads = static_cast<unsigned>(plan.threads);

  auto params = common_params<scalar_t, opmath_t>(arguments, key, output, tasks, plan, statistics);

  if (plan.path != cuda_plan::KernelPath::kSplit) {
    params.phase = MarginalizedPhase::kFused;
    kernel<<<dim3(static_cast<unsigned>(plan.grid_x), 1), threads,
             static_cast<size_t>(plan.shared_bytes), stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return statistics;
  }

  // Per strip: the chunks' column sums, the arrivals, then the coefficients.
  const at::Tensor chunk_sums = at::empty(
      {chunks, n, arguments.columns}, on_device.dtype(c10::CppTypeToScalarType<opmath_t>::value));
  const at::Tensor arrivals = at::zeros({plan.strips}, on_device.dtype(at::kInt));
  const at::Tensor coefficients = at::empty({n, arguments.columns}, chunk_sums.options());
  params.chunk_sums = chunk_sums.data_ptr<opmath_t>();
  params.arrivals = reinterpret_cast<unsigned int*>(arrivals.data_ptr<int>());
  params.coefficients = coefficients.data_ptr<opmath_t>();

  params.phase = MarginalizedPhase::kPartial;
  kernel<<<dim3(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y)), threads,
           static_cast<size_t>(plan.shared_bytes), stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Pass 2 on its own grid: the coefficients are global, so its strips need not be pass 1's.
  params.phase = MarginalizedPhase::kApply;
  params.strip_width = plan.apply_width;
  kernel<<<dim3(static_cast<unsigned>(plan.apply_strips), static_cast<unsigned>(plan.apply_parts)),
           static_cast<unsigned>(plan.apply_threads), static_cast<size_t>(plan.apply_shared_bytes),
           stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return statistics;
}

// The data-parallel phases: kColumnSums on the split grid (sums written, no output), or
// kGivenSums with one block per strip over all rows. Neither keeps gradients in shared memory.
template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
at::Tensor launch_data_parallel_with(const ops::CombineArguments& arguments, const DrawKey& key,
                                     const at::Tensor& output, const at::Tensor& sums,
                                     MarginalizedPhase phase, const Tasks& tasks) {
  const auto kernel = combine_marginalized_kernel<scalar_t, opmath_t, Tasks, kStatistics>;
  const int64_t n = arguments.num_tasks();
  auto plan = plan_of<scalar_t, opmath_t>(arguments, kernel);
  plan.shared_bytes = marginalized_layout(static_cast<int>(n), Tasks::kChunk, plan.strip_width,
                                          sizeof(opmath_t), kStatistics, 0)
                          .total;
  // Pass 2 over all rows in one block per strip, in slices of one chunk.
  plan.apply_rows = detail::kRowChunk;
  allow_shared_memory(kernel, plan.shared_bytes);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto on_device = arguments.activation.options();
  const int64_t chunks = row_chunks_of(arguments.rows);
  const int64_t groups = statistics_groups_of(arguments.columns);
  const bool given = phase == MarginalizedPhase::kGivenSums;
  const at::Tensor statistics =
      given ? statistics_rows(arguments, groups + chunks * groups) : at::Tensor();
  const unsigned threads = static_cast<unsigned>(2 * plan.strip_width);

  plan.cache = false;
  auto params = common_params<scalar_t, opmath_t>(arguments, key, given ? output : at::Tensor(),
                                                  tasks, plan, statistics);
  params.phase = phase;
  params.coefficients = sums.data_ptr<opmath_t>();
  params.statistics = statistics.defined() ? statistics.data_ptr<double>() : nullptr;

  if (given) {
    params.chunks_per_part = std::max<int64_t>(chunks, 1);
    kernel<<<dim3(static_cast<unsigned>(plan.strips), 1), threads,
             static_cast<size_t>(plan.shared_bytes), stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return statistics;
  }
  // The split grid of kPartial, also when the plan would have fused: every part's chunk sums go
  // to the workspace and the strip's last block adds them in chunk order.
  if (plan.path != cuda_plan::KernelPath::kSplit) {
    plan.parts = 1;
    plan.chunks_per_part = std::max<int64_t>(chunks, 1);
  }
  const at::Tensor chunk_sums = at::empty(
      {chunks, n, arguments.columns}, on_device.dtype(c10::CppTypeToScalarType<opmath_t>::value));
  const at::Tensor arrivals = at::zeros({plan.strips}, on_device.dtype(at::kInt));
  params.chunks_per_part = plan.chunks_per_part;
  params.chunk_sums = chunk_sums.data_ptr<opmath_t>();
  params.arrivals = reinterpret_cast<unsigned int*>(arrivals.data_ptr<int>());
  const dim3 grid(static_cast<unsigned>(plan.strips), static_cast<unsigned>(plan.parts));
  kernel<<<grid, threads, static_cast<size_t>(plan.shared_bytes), stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return at::Tensor();
}

template <typename Launch>
at::Tensor dispatch_data_parallel(const ops::CombineArguments& arguments, const Launch& launch) {
  at::Tensor statistics;
  dispatch_combine(arguments, [&](auto scalar, const auto& tasks, auto with_statistics) {
    using scalar_t = decltype(scalar);
    using Tasks = std::decay_t<decltype(tasks)>;
    statistics = launch(scalar, tasks, with_statistics);
  });
  return statistics;
}

}  // namespace

void launch_marginalized_column_sums(const ops::CombineArguments& arguments,
                                     const at::Tensor& sums) {
  dispatch_data_parallel(arguments, [&](auto scalar, const auto& tasks, auto with_statistics) {
    using scalar_t = decltype(scalar);
    using Tasks = std::decay_t<decltype(tasks)>;
    return launch_data_parallel_with<scalar_t, at::opmath_type<scalar_t>, Tasks,
                                     decltype(with_statistics)::value>(
        arguments, DrawKey{}, at::Tensor(), sums, MarginalizedPhase::kColumnSums, tasks);
  });
}

at::Tensor launch_marginalized_given_sums(const ops::CombineArguments& arguments,
                                          const DrawKey& key, const at::Tensor& output,
                                          const at::Tensor& sums) {
  return dispatch_data_parallel(arguments, [&](auto scalar, const auto& tasks,
                                               auto with_statistics) {
    using scalar_t = decltype(scalar);
    using Tasks = std::decay_t<decltype(tasks)>;
    return launch_data_parallel_with<scalar_t, at::opmath_type<scalar_t>, Tasks,
                                     decltype(with_statistics)::value>(
        arguments, key, output, sums, MarginalizedPhase::kGivenSums, tasks);
  });
}

at::Tensor launch_marginalized(const ops::CombineArguments& arguments, const DrawKey& key,
                               const at::Tensor& output) {
  at::Tensor statistics;
  dispatch_combine(arguments, [&](auto scalar, const auto& tasks, auto with_statistics) {
    using scalar_t = decltype(scalar);
    using Tasks = std::decay_t<decltype(tasks)>;
    statistics = launch_marginalized_with<scalar_t, at::opmath_type<scalar_t>, Tasks,
                        decltype(with_statistics)::value>(arguments, key, output, tasks);
  });
  return statistics;
}

}  // namespace cuda_kernels
}  // namespace graddrop
