// Launcher of the per-element combine kernel (marginalize_batch off): a grid-stride grid over
// tiles, as many blocks as fit on the device at once, as cuda_plan::plan_per_element plans it.
#include <algorithm>

#include "launch_common.cuh"
#include "per_element_kernel.cuh"

namespace graddrop {
namespace cuda_kernels {
namespace {

template <typename scalar_t, typename opmath_t, class Tasks, bool kStatistics>
at::Tensor launch_per_element_with(const ops::CombineArguments& arguments, const DrawKey& key,
                                   const at::Tensor& output, const Tasks& tasks) {
  const auto kernel = combine_per_element_kernel<scalar_t, opmath_t, Tasks, kStatistics>;
  const int64_t n = arguments.num_tasks();
  const auto plan = cuda_plan::plan_per_element(call_shape_of<scalar_t, opmath_t>(arguments, kernel),
                                                current_device_limits());
  allow_shared_memory(kernel, plan.shared_bytes);
  auto statistics = statistics_rows(arguments, plan.tiles);

  PerElementParams<scalar_t, opmath_t, Tasks> params{};
  params.activation = arguments.activation.data_ptr<scalar_t>();
  params.output = output.data_ptr<scalar_t>();
  params.tasks = tasks;
  params.num_tasks = static_cast<int>(n);
  params.keep_probability = keep_probability_of<opmath_t>(arguments);
  params.random = random_source_of<opmath_t>(arguments, key);
  params.math = math_settings_of<opmath_t>(arguments);
  params.numel = arguments.columns;
  params.tile_steps = plan.tile_steps;
  params.vectorized = all_aligned(arguments, output, per_element_alignment<scalar_t, Tasks>());
  params.statistics = statistics.defined() ? statistics.data_ptr<double>() : nullptr;

  kernel<<<static_cast<unsigned>(plan.grid_x), plan.threads, static_cast<size_t>(plan.shared_bytes),
           at::cuda::getCurrentCUDAStream()>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return statistics;
}

}  // namespace

at::Tensor launch_per_element(const ops::CombineArguments& arguments, const DrawKey& key,
                              const at::Tensor& output) {
  at::Tensor statistics;
  dispatch_combine(arguments, [&](auto scalar, const auto& tasks, auto with_statistics) {
    using scalar_t = decltype(scalar);
    using Tasks = std::decay_t<decltype(tasks)>;
    statistics = launch_per_element_with<scalar_t, at::opmath_type<scalar_t>, Tasks,
                        decltype(with_statistics)::value>(arguments, key, output, tasks);
  });
  return statistics;
}

}  // namespace cuda_kernels
}  // namespace graddrop
