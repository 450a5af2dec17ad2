#pragma once
// Host helpers shared by the launchers: kernel parameters from the validated arguments, the task
// list for the call's task count, the dtype/task/statistics dispatch, alignment checks,
// shared-memory limits, and the device limits and call shape the plans read (launch_plan.h).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "combine_common.cuh"
#include "combine_launch.h"
#include "launch_plan.h"

namespace graddrop {
namespace cuda_kernels {

template <typename opmath_t>
MathSettings<opmath_t> math_settings_of(const ops::CombineArguments& arguments) {
  return {arguments.sign_source, arguments.keep_function, arguments.zero_sign,
          static_cast<opmath_t>(arguments.scale), static_cast<opmath_t>(arguments.epsilon)};
}

template <typename opmath_t>
RandomSource<opmath_t> random_source_of(const ops::CombineArguments& arguments,
                                        const DrawKey& key) {
  return {arguments.uniform.defined() ? arguments.uniform.data_ptr<opmath_t>() : nullptr,
          key.philox, key.generator_offset};
}

template <typename opmath_t>
const opmath_t* keep_probability_of(const ops::CombineArguments& arguments) {
  return arguments.keep_probability.defined() ? arguments.keep_probability.data_ptr<opmath_t>()
                                              : nullptr;
}

inline bool is_aligned(const void* pointer, int alignment) {
  return reinterpret_cast<uintptr_t>(pointer) % static_cast<uintptr_t>(alignment) == 0;
}

// Whether the activation, the output and every defined gradient start on `alignment` bytes.
inline bool all_aligned(const ops::CombineArguments& arguments, const at::Tensor& output,
                        int alignment) {
  if (!is_aligned(arguments.activation.data_ptr(), alignment)) return false;
  if (!is_aligned(output.data_ptr(), alignment)) return false;
  for (const auto& grad : arguments.grads) {
    if (grad.defined() && !is_aligned(grad.data_ptr(), alignment)) return false;
  }
  return true;
}

template <typename scalar_t, typename opmath_t>
TaskEntry<scalar_t, opmath_t> task_entry_of(const ops::CombineArguments& arguments, int64_t task) {
  const auto& grad = arguments.grads[static_cast<size_t>(task)];
  return {grad.defined() ? grad.data_ptr<scalar_t>() : nullptr,
          static_cast<opmath_t>(arguments.leak[static_cast<size_t>(task)])};
}

template <typename scalar_t, typename opmath_t, int kCapacity>
FixedTasks<scalar_t, opmath_t, kCapacity> fixed_tasks_of(const ops::CombineArguments& arguments) {
  FixedTasks<scalar_t, opmath_t, kCapacity> tasks{};
  for (int64_t task = 0; task < arguments.num_tasks(); ++task) {
    tasks.entries[task] = task_entry_of<scalar_t, opmath_t>(arguments, task);
  }
  return tasks;
}

// Calls launch(tasks) with the task list that suits the call's task count: by value for up to
// 8 tasks, else a device table (filled by kernels on the current stream, kept alive by the
// caching allocator until the launch that reads it has run).
template <typename scalar_t, typename opmath_t, typename Launch>
void with_tasks(const ops::CombineArguments& arguments, Launch&& launch) {
  const int64_t n = arguments.num_tasks();
  if (n <= 2) return launch(fixed_tasks_of<scalar_t, opmath_t, 2>(arguments));
  if (n <= 4) return launch(fixed_tasks_of<scalar_t, opmath_t, 4>(arguments));
  if (n <= 8) return launch(fixed_tasks_of<scalar_t, opmath_t, 8>(arguments));


  using Entry = TaskEntry<scalar_t, opmath_t>;
  constexpr int kBatch = 32;
  auto table = at::empty({n * static_cast<int64_t>(sizeof(Entry))},
                         arguments.activation.options().dtype(at::kByte));
  auto* entries = reinterpret_cast<Entry*>(table.data_ptr());
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t begin = 0; begin < n; begin += kBatch) {
    TaskBatch<Entry, kBatch> batch{};
    batch.begin = static_cast<int>(begin);
    batch.count = static_cast<int>(std::min<int64_t>(kBatch, n - begin));
    for (int t = 0; t < batch.count; ++t) {
      batch.entries[t] = task_entry_of<scalar_t, opmath_t>(arguments, begin + t);
    }
    fill_task_table_kernel<Entry, kBatch><<<1, kBatch, 0, stream>>>(entries, batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return launch(TableTasks<scalar_t, opmath_t>{entries});
}

// Allows `kernel` `bytes` of dynamic shared memory on the current device (above the default
// 48 KB when needed). The attribute is raised once per (kernel, device) and only upward, under a
// mutex, so host threads launching at once never lower it under each other.
void allow_shared_memory_bytes(const void* kernel, int64_t bytes);

template <typename Kernel>
void allow_shared_memory(Kernel kernel, int64_t bytes) {
  allow_shared_memory_bytes(reinterpret_cast<const void*>(kernel), bytes);
}

// Blocks of `threads` threads using `shared_bytes` that fit on one multiprocessor of the current
// device at once (at least 1); asked of the driver once per (kernel, device, threads, bytes).
int resident_blocks_per_sm_of(const void* kernel, int threads, int64_t shared_bytes);

template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, int64_t shared_bytes) {
  return resident_blocks_per_sm_of(reinterpret_cast<const void*>(kernel), threads, shared_bytes);
}

// The current device's limits as the plans read them, from cudaDeviceProp once per device.
const cuda_plan::DeviceLimits& current_device_limits();

// Registers per thread of `kernel` on the current device (cudaFuncAttributes::numRegs), asked
// of the driver once per (kernel, device).
int registers_per_thread_of(const void* kernel);

// The call as the plans see it (cuda_plan::CallShape), for `kernel`'s registers.
template <typename scalar_t, typename opmath_t, typename Kernel>
cuda_plan::CallShape call_shape_of(const ops::CombineArguments& arguments, Kernel kernel) {
  cuda_plan::CallShape shape;
  shape.rows = arguments.rows;
  shape.columns = arguments.columns;
  shape.num_tasks = static_cast<int>(arguments.num_tasks());
  shape.scalar_size = static_cast<int>(sizeof(scalar_t));
  shape.opmath_size = static_cast<int>(sizeof(opmath_t));
  shape.statistics = arguments.needs_accumulators();
  shape.marginalized = arguments.marginalize_batch;
  shape.registers_per_thread = registers_per_thread_of(reinterpret_cast<const void*>(kernel));
  return shape;
}

// Calls launch(scalar_t(), tasks, std::integral_constant<bool, kStatistics>()) with the call's
// storage type, its task list (with_tasks) and whether it records statistics: the one dispatch
// every launcher shares.
template <typename Launch>
void dispatch_combine(const ops::CombineArguments& arguments, Launch&& launch) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, arguments.activation.scalar_type(), "graddrop_combine_cuda", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        with_tasks<scalar_t, opmath_t>(arguments, [&](const auto& tasks) {
          if (arguments.needs_accumulators()) {
            launch(scalar_t(), tasks, std::true_type());
          } else {
            launch(scalar_t(), tasks, std::false_type());
          }
        });
      });
}

// Zeroed statistics partial rows [rows][ops::accumulator_size], or undefined without statistics.
inline at::Tensor statistics_rows(const ops::CombineArguments& arguments, int64_t rows) {
  if (!arguments.needs_accumulators()) return at::Tensor();
  return at::zeros({rows, ops::accumulator_size(arguments.num_tasks())},
                   arguments.activation.options().dtype(at::kDouble));
}

}  // namespace cuda_kernels
}  // namespace graddrop
