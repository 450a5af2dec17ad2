// Launcher of the per-element combine kernel (marginalize_batch off): a grid-stride grid of as
// many blocks as fit on the device at once.
#include <algorithm>
#include <type_traits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "launch_common.cuh"
#include "per_element_kernel.cuh"

namespace graddrop {
namespace cuda_kernels {
namespace {

template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
at::Tensor launch_per_element_with(const ops::CombineArguments& arguments, const DrawKey& key,
                                   const at::Tensor& output, const Tasks& tasks) {
  const auto kernel = combine_per_element_kernel<scalar_t, opmath_t, Tasks, kStatistics>;
  constexpr int kWidth = per_element_width<scalar_t, Tasks>();
  const int64_t n = arguments.num_tasks();
  const int64_t numel = arguments.columns;
  const int64_t shared_bytes = arguments.needs_accumulators() ? n * 8 : 0;
  allow_shared_memory(kernel, shared_bytes);

  const int64_t runs = (numel + kWidth - 1) / kWidth;
  const int64_t multiprocessors = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t resident = multiprocessors * resident_blocks_per_sm(kernel, shared_bytes);
  const int64_t blocks = std::max<int64_t>(1, std::min((runs + kThreads - 1) / kThreads, resident));
  auto statistics = statistics_rows(arguments, blocks);

  PerElementParams<scalar_t, opmath_t, Tasks> params{};
  params.activation = arguments.activation.data_ptr<scalar_t>();
  params.output = output.data_ptr<scalar_t>();
  params.tasks = tasks;
  params.num_tasks = static_cast<int>(n);
  params.keep_probability = keep_probability_of<opmath_t>(arguments);
  params.random = random_source_of<opmath_t>(arguments, key);
  params.math = math_settings_of<opmath_t>(arguments);
  params.numel = numel;
  params.vectorized = all_aligned(arguments, output, per_element_alignment<scalar_t, Tasks>());
  params.statistics = statistics.defined() ? statistics.data_ptr<double>() : nullptr;

  kernel<<<static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(shared_bytes),
           at::cuda::getCurrentCUDAStream()>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return statistics;
}

}  // namespace

at::Tensor launch_per_element(const ops::CombineArguments& arguments, const DrawKey& key,
                              const at::Tensor& output) {
  at::Tensor statistics;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, arguments.activation.scalar_type(), "combine_cuda_per_element",
      [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        statistics = with_tasks<scalar_t, opmath_t>(arguments, [&](const auto& tasks) {
          using Tasks = std::decay_t<decltype(tasks)>;
          return arguments.needs_accumulators()
                     ? launch_per_element_with<scalar_t, opmath_t, Tasks, true>(arguments, key,
                                                                                output, tasks)
                     : launch_per_element_with<scalar_t, opmath_t, Tasks, false>(arguments, key,
                                                                                 output, tasks);
        });
      });
  return statistics;
}

}  // namespace cuda_kernels
}  // namespace graddrop
