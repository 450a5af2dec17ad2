// CUDA implementation of graddrop::combine: the checks shared with every device, the draw's
// reservation from the CUDA generator, the launch of the per-element or the marginalised
// kernels (per_element_launch.cu, marginalized_launch.cu), and the work shared after.
#include <mutex>
#include <string>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "combine_common.cuh"
#include "combine_launch.h"
#include "distributed/group_call.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace {

// The Philox key of this call. An explicit U touches no generator; an explicit (seed, offset)
// is used as given (the same U as the CPU kernel); otherwise one counter step is reserved from
// the CUDA generator of the activation's device, under its mutex, as a graph-safe state that
// the kernels unpack. Reserved even for empty tensors, so the generator advances the same way
// whatever the shape (as the CPU kernel draws its seed).
cuda_kernels::DrawKey reserve_draw(const ops::CombineArguments& arguments,
                                   optional<at::Generator> generator) {
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

// combine with a process group (src/distributed/group_call.h), as on the CPU: this rank's
// canonical column sums, summed over the ranks with rank 0's key, then the combine with them.
std::tuple<at::Tensor, at::Tensor> combine_cuda_in_group(ops::CombineArguments arguments,
                                                         const std::string& group_name,
                                                         optional<at::Generator> generator) {
  distributed::GroupCall group(group_name, arguments);
  distributed::materialise_zero_grads(arguments);
  const c10::cuda::CUDAGuard device_guard(arguments.activation.device());
  auto output = at::empty_like(arguments.activation);
  const auto local = reserve_draw(arguments, std::move(generator));
  TORCH_CHECK(!local.philox.captured_,
              "graddrop: a combine with a process group (group '", group_name,
              "') cannot be captured in a CUDA graph: it exchanges values with the other ranks");
  const distributed::CallKey local_key{
      local.philox.seed_.val,
      local.generator_offset ? local.philox.offset_.val / 4 : local.philox.offset_.val};
  at::Tensor sums;
  if (arguments.marginalize_batch) {
    sums = at::zeros({arguments.num_tasks(), arguments.columns},
                     arguments.activation.options().dtype(arguments.opmath_type()));
    if (arguments.rows > 0 && arguments.columns > 0) {
      cuda_kernels::launch_marginalized_column_sums(arguments, sums);
    }
  }
  const auto agreed = group.exchange(local_key, sums);
  at::Tensor partial_rows;
  if (arguments.columns > 0) {
    if (arguments.marginalize_batch) {
      // An explicit U stays as given; otherwise rank 0's key, as an explicit (seed, offset).
      const cuda_kernels::DrawKey key =
          arguments.uniform.defined()
              ? local
              : cuda_kernels::DrawKey{at::PhiloxCudaState(agreed.seed, agreed.offset), false};
      partial_rows = cuda_kernels::launch_marginalized_given_sums(arguments, key, output, sums);
    } else {
      // Per-element mode has no batch sum: each rank draws with its own key (README).
      partial_rows = cuda_kernels::launch_per_element(arguments, local, output);
    }
  }
  auto accumulators = ops::zero_accumulators(arguments);
  if (accumulators.defined()) add_partial_rows(partial_rows, accumulators);
  if (arguments.keep_grad_norm) group.sum_squared_norms(accumulators);
  return ops::finish_combine(output, accumulators, arguments);
}

std::tuple<at::Tensor, at::Tensor> combine_cuda(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name) {
  auto arguments = ops::prepare_combine(
      activation, grads, leak, sign_source, marginalize_batch, keep_function, scale, zero_sign,
      epsilon, keep_grad_norm, uniform, keep_probability, seed, offset, statistics);
  if (group_name.has_value()) {
    return combine_cuda_in_group(std::move(arguments), std::string(*group_name),
                                 std::move(generator));
  }
  const c10::cuda::CUDAGuard device_guard(arguments.activation.device());
  auto output = at::empty_like(arguments.activation);
  const auto key = reserve_draw(arguments, std::move(generator));

  at::Tensor partial_rows;
  if (arguments.columns > 0) {
    partial_rows = arguments.marginalize_batch
                       ? cuda_kernels::launch_marginalized(arguments, key, output)
                       : cuda_kernels::launch_per_element(arguments, key, output);
  }
  auto accumulators = ops::zero_accumulators(arguments);
  if (accumulators.defined()) add_partial_rows(partial_rows, accumulators);
  return ops::finish_combine(output, accumulators, arguments);
}

}  // namespace
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, CUDA, m) {
  m.impl("combine", TORCH_FN(graddrop::combine_cuda));
}
