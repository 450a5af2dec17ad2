// Launcher of the marginalised combine kernel (marginalize_batch on): chooses the strip width and
// between the fused kernel (one block per strip, gradients kept in shared memory when they fit)
// and the split pair (chunk sums over parts of the rows, then apply), then launches. The choice
// only changes the speed: every sum follows an order fixed by the call (marginalized_kernel.cuh).
#include <algorithm>

#include "launch_common.cuh"
#include "marginalized_kernel.cuh"

namespace graddrop {
namespace cuda_kernels {
namespace {

// How one call is laid out on the device.
struct MarginalizedPlan {
  int width = 16;  // columns per strip; the block has 2 * width threads
  int64_t strips = 0;
  bool fused = true;   // kFused (one block per strip), else kPartial + kApply
  bool cache = false;  // kFused keeps the strip's gradients in shared memory
  int64_t parts = 1;   // blocks along a strip (split)
  int64_t chunks_per_part = 0;
  int64_t shared_bytes = 0;  // dynamic shared memory per block
};

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Strip widths run from kStatisticsGroup (a statistics group lies in one strip) to
// kMaxStripWidth; the narrowest strip still reads 64-byte row segments of float32. Preferred, in
// order: the widest strip whose gradients fit in shared memory while the strips still fill the
// device (read once); for long batches with few strips, the split over chunks of rows; else the
// widest strip that fits, reading the gradients twice (the second time mostly from L2).
MarginalizedPlan plan_marginalized(const ops::CombineArguments& arguments, int chunk_tasks,
                                   int scalar_size, int opmath_size) {
  const auto* properties = at::cuda::getCurrentDeviceProperties();
  const int64_t multiprocessors = properties->multiProcessorCount;
  const int64_t rows = arguments.rows;
  const int64_t columns = arguments.columns;
  const int n = static_cast<int>(arguments.num_tasks());
  const bool statistics = arguments.needs_accumulators();
  const int64_t chunks = row_chunks_of(rows);
  auto layout_bytes = [&](int width, int64_t cache) {
    return marginalized_layout(n, chunk_tasks, width, opmath_size, statistics, cache).total;
  };

  int widest = kStatisticsGroup;
  while (widest < kMaxStripWidth && widest < columns) widest *= 2;
  // The static shared memory of the kernel and the 1 KB the driver reserves per block.
  constexpr int64_t kReserved = 1024 + 64;
  const int64_t one_per_sm = static_cast<int64_t>(properties->sharedMemPerBlockOptin) - 64;
  const int64_t two_per_sm =
      static_cast<int64_t>(properties->sharedMemPerMultiprocessor) / 2 - kReserved;
  // Tiny calls are bound by the launch, not by filling the GPU: one launch is best.
  const bool tiny = rows * columns <= (int64_t(1) << 18);

  int uncached_width = widest;
  while (uncached_width > kStatisticsGroup && layout_bytes(uncached_width, 0) > one_per_sm) {
    uncached_width /= 2;
  }

  // Threads of a strip width that shared memory lets stay resident on one multiprocessor: a
  // cached plan that leaves too few of them cannot keep the memory system busy.
  auto resident_threads = [&](int width, int64_t shared) {
    const int64_t blocks = std::min<int64_t>(
        32, static_cast<int64_t>(properties->sharedMemPerMultiprocessor) / (shared + kReserved));
    return blocks * 2 * width;
  };
  constexpr int64_t kFewestResidentThreads = 256;

  MarginalizedPlan plan;
  plan.chunks_per_part = std::max<int64_t>(chunks, 1);
  if (rows > 0) {
    for (const int64_t budget : {two_per_sm, one_per_sm}) {
      for (int width = widest; width >= kStatisticsGroup; width /= 2) {
        const int64_t strips = ceil_div(columns, width);
        const int64_t shared =
            layout_bytes(width, marginalized_cache_bytes(rows, width, n, scalar_size));
        if (shared <= budget && (strips >= multiprocessors || tiny) &&
            (resident_threads(width, shared) >= kFewestResidentThreads || tiny)) {
          plan.width = width;
          plan.strips = strips;
          plan.cache = true;
          plan.shared_bytes = shared;
          return plan;
        }
      }
    }
  }
  plan.width = uncached_width;
  plan.strips = ceil_div(columns, uncached_width);
  plan.shared_bytes = layout_bytes(uncached_width, 0);
  if (chunks < 2 || plan.strips >= 2 * multiprocessors) {
    // Fused without the cache: strips narrow enough to give every multiprocessor one.
    while (plan.width > kStatisticsGroup && plan.strips < multiprocessors && !tiny) {
      plan.width /= 2;
      plan.strips = ceil_div(columns, plan.width);
      plan.shared_bytes = layout_bytes(plan.width, 0);
    }
  } else {
    // Split: enough (strip, part) blocks to fill the device several times over.
    plan.fused = false;
    const int64_t wanted = ceil_div(multiprocessors * 8, plan.strips);
    const int64_t parts = std::max<int64_t>(1, std::min({wanted, chunks, int64_t(65535)}));
    plan.chunks_per_part = ceil_div(chunks, parts);
    plan.parts = ceil_div(chunks, plan.chunks_per_part);
  }
  return plan;
}

// The parameters every phase shares: the call's tensors and settings and the plan's strip width.
// `output` may be undefined (kColumnSums writes none).
template <typename scalar_t, typename opmath_t, class Tasks>
MarginalizedParams<scalar_t, opmath_t, Tasks> common_params(
    const ops::CombineArguments& arguments, const DrawKey& key, const at::Tensor& output,
    const Tasks& tasks, const MarginalizedPlan& plan, const at::Tensor& statistics) {
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
  params.strip_width = plan.width;
  params.chunks_per_part = plan.chunks_per_part;
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
  const auto plan =
      plan_marginalized(arguments, Tasks::kChunk, sizeof(scalar_t), sizeof(opmath_t));
  allow_shared_memory(kernel, plan.shared_bytes);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto on_device = arguments.activation.options();
  const int64_t chunks = row_chunks_of(arguments.rows);
  const int64_t groups = statistics_groups_of(arguments.columns);
  const at::Tensor statistics = statistics_rows(arguments, groups + chunks * groups);
  const unsigned threads = static_cast<unsigned>(2 * plan.width);

  auto params = common_params<scalar_t, opmath_t>(arguments, key, output, tasks, plan, statistics);

  if (plan.fused) {
    params.phase = MarginalizedPhase::kFused;
    kernel<<<dim3(static_cast<unsigned>(plan.strips), 1), threads,
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
  const dim3 grid(static_cast<unsigned>(plan.strips), static_cast<unsigned>(plan.parts));

  params.phase = MarginalizedPhase::kPartial;
  kernel<<<grid, threads, static_cast<size_t>(plan.shared_bytes), stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  params.phase = MarginalizedPhase::kApply;
  kernel<<<grid, threads, static_cast<size_t>(plan.shared_bytes), stream>>>(params);
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
  auto plan = plan_marginalized(arguments, Tasks::kChunk, sizeof(scalar_t), sizeof(opmath_t));
  plan.shared_bytes = marginalized_layout(static_cast<int>(n), Tasks::kChunk, plan.width,
                                          sizeof(opmath_t), kStatistics, 0)
                          .total;
  allow_shared_memory(kernel, plan.shared_bytes);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto on_device = arguments.activation.options();
  const int64_t chunks = row_chunks_of(arguments.rows);
  const int64_t groups = statistics_groups_of(arguments.columns);
  const bool given = phase == MarginalizedPhase::kGivenSums;
  const at::Tensor statistics =
      given ? statistics_rows(arguments, groups + chunks * groups) : at::Tensor();
  const unsigned threads = static_cast<unsigned>(2 * plan.width);

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
  if (plan.fused) {
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
