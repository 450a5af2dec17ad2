#pragma once
// The graddrop::combine operator as the device kernels see it: the validated arguments of one
// call, the layout of the statistics accumulators, and the hook through which each device
// provides its kernels. The operator is written once (combine_op.cpp: one entry validates,
// allocates and calls the hook of the activation's device); src/cpu and cuda/ each register
// their kernels here, as ATen's DispatchStub does, and know nothing of the rest.
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/string_view.h>

#include "detail/host_device.h"
#include "graddrop/compat.h"
#include "graddrop/enums.h"

namespace graddrop {
namespace ops {

// The C++ signatures of the two schemas (combine_op.cpp), in schema order; the dispatcher calls
// every kernel of an operator with its schema's signature.
using CombineSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name);
// combine.out: the same, then `out`, which receives the output and is returned (the same
// tensor) with the statistics tensor.
using CombineOutSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name, at::Tensor& out);

using PuritySignature = at::Tensor(const at::Tensor& activation,
                                   const c10::List<optional<at::Tensor>>& grads,
                                   c10::string_view sign_source, bool marginalize_batch,
                                   double epsilon);

// Validated arguments of one combine call, with every tensor contiguous (validation.h).
struct CombineArguments {
  at::Tensor activation;
  std::vector<at::Tensor> grads;  // one per task; undefined = zero gradient
  std::vector<double> leak;       // one per task
  SignSource sign_source = SignSource::kActivationSign;
  bool marginalize_batch = true;
  KeepFunction keep_function = KeepFunction::kLinear;
  double scale = 1.0;
  ZeroSign zero_sign = ZeroSign::kDrop;
  double epsilon = 1e-7;
  bool keep_grad_norm = false;
  bool statistics = false;
  at::Tensor uniform;           // explicit U in the op-math dtype, or undefined
  at::Tensor keep_probability;  // explicit f(P) in the op-math dtype, or undefined
  optional<uint64_t> seed;
  uint64_t offset = 0;
  // The activation viewed as [rows, columns]: marginalised, rows = size(0) and P has `columns`
  // elements; otherwise rows = 1 and columns = numel. Left 0 for meta tensors, whose sizes may
  // be symbolic (the shape function needs none of these).
  int64_t rows = 0;
  int64_t columns = 0;
  std::vector<int64_t> purity_shape;

  int64_t num_tasks() const { return static_cast<int64_t>(grads.size()); }
  bool needs_accumulators() const { return statistics || keep_grad_norm; }
  at::ScalarType opmath_type() const;
};

// The kernels' per-call accumulators, float64 on the activation's device:
// [kept count of task 0 .. n-1, sum of P, conflict count, sum out^2, sum (sum_i g_i)^2].
// Host and device functions: the CUDA kernels write their per-block rows in this layout.
GRADDROP_HOST_DEVICE int64_t accumulator_size(int64_t num_tasks) { return num_tasks + 4; }
GRADDROP_HOST_DEVICE int64_t purity_sum_slot(int64_t num_tasks) { return num_tasks; }
GRADDROP_HOST_DEVICE int64_t conflict_slot(int64_t num_tasks) { return num_tasks + 1; }
GRADDROP_HOST_DEVICE int64_t output_square_slot(int64_t num_tasks) { return num_tasks + 2; }
GRADDROP_HOST_DEVICE int64_t plain_square_slot(int64_t num_tasks) { return num_tasks + 3; }

// The Philox key of a call as host values, in Philox counter units.
struct PhiloxKey {
  uint64_t seed = 0;
  uint64_t offset = 0;
};

// What a device provides. Each function runs on the activation's device (and its current
// stream); `output` has the activation's shape, dtype and device and is contiguous (it may be one
// of the task gradients: every kernel reads an element of each input before it writes that
// element of the output); `accumulators` is defined exactly when
// arguments.needs_accumulators() (zeros, the layout above) and receives the call's sums, less
// the kept counts of undefined gradients, which finish_combine supplies.
struct CombineKernels {
  // One whole call. The device draws its own key (from `generator`, or the explicit seed and
  // offset; none when U is explicit), also for an empty call, so the generator advances the same
  // way whatever the shape.
  void (*combine)(const CombineArguments& arguments, const optional<at::Generator>& generator,
                  const at::Tensor& output, const at::Tensor& accumulators);

  // The two phases of a data-parallel call (src/distributed/group_combine.cpp runs the group
  // protocol between them):
  // the key `combine` would draw, as host values (the generator advances as in `combine`);
  PhiloxKey (*draw_key)(const CombineArguments& arguments,
                        const optional<at::Generator>& generator);
  // marginalised mode, every gradient defined: this device's canonical column sums of the
  // signals into `sums` ([num_tasks, columns] in op-math, zeros);
  void (*column_sums)(const CombineArguments& arguments, const at::Tensor& sums);
  // and the combine with `key` and, in marginalised mode, the column sums `sums` given
  // (undefined in per-element mode), for arguments.columns > 0.
  void (*combine_with_sums)(const CombineArguments& arguments, const at::Tensor& sums,
                            PhiloxKey key, const at::Tensor& output,
                            const at::Tensor& accumulators);
};

// Called once per device type by its kernel file (GRADDROP_REGISTER_COMBINE_KERNELS).
bool register_combine_kernels(c10::DeviceType device, const CombineKernels& kernels);
// The kernels of `device`; a c10::Error naming the device when it has none.
const CombineKernels& combine_kernels_for(c10::DeviceType device);

#define GRADDROP_REGISTER_COMBINE_KERNELS(device, kernels)             \
  static const bool graddrop_combine_kernels_registered_##device [[maybe_unused]] = \
      ::graddrop::ops::register_combine_kernels(c10::DeviceType::device, kernels)

// The accumulators a kernel fills: zeros when arguments.needs_accumulators(), else undefined
// (the training hot path allocates nothing for them).
at::Tensor zero_accumulators(const CombineArguments& arguments);

// After the kernels filled `output` and `accumulators`: rescales for keep_grad_norm and turns the
// accumulators into the statistics tensor [kept fraction per task, mean P, conflict fraction]
// (an empty float64 tensor when statistics are off).
at::Tensor finish_combine(const at::Tensor& output, const at::Tensor& accumulators,
                          const CombineArguments& arguments);

}  // namespace ops
}  // namespace graddrop
