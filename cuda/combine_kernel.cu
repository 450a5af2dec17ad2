// The CUDA kernels behind graddrop::combine (registered as ops::CombineKernels, combine_op.h):
// the draw's reservation from the CUDA generator, the launch of the per-element or the
// marginalised kernels (per_element_launch.cu, marginalized_launch.cu), and the ordered sum of
// their statistics rows.
#include <mutex>
#include <string>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "combine_common.cuh"
#include "combine_launch.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace {

// The Philox key of this call. An explicit U touches no generator; an explicit (seed, offset)
// is used as given (the same U as the CPU kernel); otherwise one counter step is reserved from
// the CUDA generator of the activation's device, under its mutex, as a graph-safe state that
// the kernels unpack. Reserved even for empty tensors, so the generator advances the same way
// whatever the shape (as the CPU kernel draws its seed).
cuda_kernels::DrawKey reserve_draw(const ops::CombineArguments& arguments,
                                   const optional<at::Generator>& generator) {
  if (arguments.uniform.defined()) return {at::PhiloxCudaState(0, 0), false};
  if (arguments.seed.has_value()) {
    return {at::PhiloxCudaState(*arguments.seed, arguments.offset), false};
  }
  auto* cuda_generator = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(arguments.activation.get_device()));
  TORCH_CHECK(cuda_generator->device() == arguments.activation.device(),
              "graddrop: the generator is on device ", cuda_generator->device(),
              " but the activation is on ", arguments.activation.device());
  std::lock_guard<std::mutex> lock(cuda_generator->mutex_);
  return {cuda_generator->philox_cuda_state(4), true};
}

// result[slot] = the sum of partials[row][slot] over the rows, kThreads threads per slot: thread
// t adds rows t, t + kThreads, ... in order, then block_sum's fixed tree. The order depends on
// the number of rows alone, never on the device. One block per slot.
__global__ void __launch_bounds__(cuda_kernels::kThreads)
    sum_rows_in_order_kernel(const double* partials, int64_t rows, int width, double* result) {
  __shared__ double scratch[cuda_kernels::kWarps];
  const int slot = static_cast<int>(blockIdx.x);
  double total = 0.0;
  for (int64_t row = threadIdx.x; row < rows; row += cuda_kernels::kThreads) {
    total += partials[row * width + slot];
  }
  total = cuda_kernels::block_sum(total, scratch);
  if (threadIdx.x == 0) result[slot] = total;
}

// accumulators += the ordered sum of the kernels' partial rows (when there are any).
void add_partial_rows(const at::Tensor& partial_rows, const at::Tensor& accumulators) {
  if (!partial_rows.defined() || partial_rows.size(0) == 0) return;
  const int width = static_cast<int>(accumulators.numel());
  sum_rows_in_order_kernel<<<static_cast<unsigned>(width), cuda_kernels::kThreads, 0,
                             at::cuda::getCurrentCUDAStream()>>>(
      partial_rows.data_ptr<double>(), partial_rows.size(0), width,
      accumulators.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The reserved key as host values, for the data-parallel phases (the group agrees on rank 0's
// key and passes it back as an explicit one) and verify mode. Reading the values needs a call
// that is not being captured in a CUDA graph.
ops::PhiloxKey draw_key_cuda(const ops::CombineArguments& arguments,
                             const optional<at::Generator>& generator) {
  const auto key = reserve_draw(arguments, generator);
  TORCH_CHECK(!key.philox.captured_,
              "graddrop: this call needs its Philox key on the host (a call with a process "
              "group, or the first call of a configuration in verify mode), which a CUDA graph "
              "capture does not allow; run it once before capturing");
  return {key.philox.seed_.val,
          key.generator_offset ? key.philox.offset_.val / 4 : key.philox.offset_.val};
}

// An explicit key, as the kernels take it.
cuda_kernels::DrawKey explicit_key(ops::PhiloxKey key) {
  return {at::PhiloxCudaState(key.seed, key.offset), false};
}

void combine_cuda(const ops::CombineArguments& arguments, const optional<at::Generator>& generator,
                  const at::Tensor& output, const at::Tensor& accumulators) {
  const c10::cuda::CUDAGuard device_guard(arguments.activation.device());
  const auto key = reserve_draw(arguments, generator);
  if (arguments.columns == 0) return;
  const auto partial_rows = arguments.marginalize_batch
                                ? cuda_kernels::launch_marginalized(arguments, key, output)
                                : cuda_kernels::launch_per_element(arguments, key, output);
  if (accumulators.defined()) add_partial_rows(partial_rows, accumulators);
}

void column_sums_cuda(const ops::CombineArguments& arguments, const at::Tensor& sums) {
  const c10::cuda::CUDAGuard device_guard(arguments.activation.device());
  cuda_kernels::launch_marginalized_column_sums(arguments, sums);
}

void combine_with_sums_cuda(const ops::CombineArguments& arguments, const at::Tensor& sums,
                            ops::PhiloxKey key, const at::Tensor& output,
                            const at::Tensor& accumulators) {
  const c10::cuda::CUDAGuard device_guard(arguments.activation.device());
  const auto partial_rows =
      sums.defined()
          ? cuda_kernels::launch_marginalized_given_sums(arguments, explicit_key(key), output,
                                                         sums)
          : cuda_kernels::launch_per_element(arguments, explicit_key(key), output);
  if (accumulators.defined()) add_partial_rows(partial_rows, accumulators);
}

const ops::CombineKernels kCudaKernels = {combine_cuda, draw_key_cuda, column_sums_cuda,
                                          combine_with_sums_cuda};

}  // namespace
}  // namespace graddrop

GRADDROP_REGISTER_COMBINE_KERNELS(CUDA, graddrop::kCudaKernels);
