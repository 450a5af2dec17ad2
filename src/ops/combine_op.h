#pragma once
// The graddrop::combine operator as the kernels see it: its C++ signature, the checks every
// device runs before launching, and the work every device does after. Device kernels
// (src/cpu, cuda/) include this header; users call graddrop::combine (include/graddrop).
#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "graddrop/compat.h"
#include "graddrop/detail/host_device.h"
#include "graddrop/detail/math.h"

namespace graddrop {
namespace ops {

// The schema's C++ signature; every device implementation has exactly this type.
using CombineSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name);

// combine_into: the same arguments after `out`, which receives the output (it may be one of the
// task gradients: each kernel reads an element of every input before it writes that element of
// the output). Returns the statistics tensor.
using CombineIntoSignature = at::Tensor(
    at::Tensor& out, const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name);

// Refuses an `out` for combine_into that does not have the activation's shape, dtype and device,
// or is not contiguous, naming what differs.
void check_out(const at::Tensor& out, const at::Tensor& activation);

using PuritySignature = at::Tensor(const at::Tensor& activation,
                                   const c10::List<optional<at::Tensor>>& grads,
                                   c10::string_view sign_source, bool marginalize_batch,
                                   double epsilon);

// Validated arguments of one combine call, with every tensor contiguous.
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
  // elements; otherwise rows = 1 and columns = numel.
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

// Checks every argument (TORCH_CHECK naming the argument and value) and makes them contiguous.
// Reads no tensor data except an explicit U or f(P) on the CPU (their range), so the Meta kernel
// runs it too.
CombineArguments prepare_combine(const at::Tensor& activation,
                                 const c10::List<optional<at::Tensor>>& grads,
                                 c10::ArrayRef<double> leak, c10::string_view sign_source,
                                 bool marginalize_batch, c10::string_view keep_function,
                                 double scale, c10::string_view zero_sign, double epsilon,
                                 bool keep_grad_norm, const optional<at::Tensor>& uniform,
                                 const optional<at::Tensor>& keep_probability,
                                 optional<int64_t> seed, int64_t offset, bool statistics);

// The shape of P for an activation; a 0-d activation with marginalize_batch is refused with the
// same c10::Error as combine gives.
std::vector<int64_t> purity_shape_of(const at::Tensor& activation, bool marginalize_batch);

// Refuses a tensor argument that is not dense (sparse COO, CSR, ...), naming it and its layout.
// Run first by prepare_combine, and by the kernels registered under the sparse dispatch keys.
void check_dense_layouts(const at::Tensor& activation,
                         const c10::List<optional<at::Tensor>>& grads,
                         const optional<at::Tensor>& uniform,
                         const optional<at::Tensor>& keep_probability);

// The accumulators a kernel fills: zeros when arguments.needs_accumulators(), else undefined
// (the training hot path allocates nothing for them).
at::Tensor zero_accumulators(const CombineArguments& arguments);

// After a kernel filled `output` and `accumulators`: rescales for keep_grad_norm and turns the
// accumulators into the statistics tensor [kept fraction per task, mean P, conflict fraction]
// (an empty float64 tensor when statistics are off). `accumulators` is defined exactly when
// arguments.needs_accumulators(). Every device ends with this. Returns (output, statistics).
std::tuple<at::Tensor, at::Tensor> finish_combine(at::Tensor output,
                                                  const at::Tensor& accumulators,
                                                  const CombineArguments& arguments);

}  // namespace ops
}  // namespace graddrop
