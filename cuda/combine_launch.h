#pragma once
// The host interface between the CUDA combine entry point (combine_kernel.cu) and the launchers
// of the two kernel families (per_element_launch.cu, marginalized_launch.cu).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/PhiloxCudaState.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace cuda_kernels {

// The Philox key of one call (unused when U is explicit).
struct DrawKey {
  at::PhiloxCudaState philox;  // from the generator (graph-safe) or an explicit (seed, offset)
  bool generator_offset;       // the offset is the generator's: the kernels use offset / 4
};

// Each launcher fills `output` (contiguous, the activation's shape and dtype) on the current
// stream, for arguments.columns > 0. When arguments.needs_accumulators() it returns float64
// partial rows [rows][num_tasks + 4] laid out as ops::accumulator_size, one per unit of work
// fixed by the call (not by the grid), whose ordered sum over dim 0 is the accumulators tensor
// (less the kept counts of undefined gradients, which finish_combine supplies); otherwise an
// undefined tensor.
at::Tensor launch_per_element(const ops::CombineArguments& arguments, const DrawKey& key,
                              const at::Tensor& output);
at::Tensor launch_marginalized(const ops::CombineArguments& arguments, const DrawKey& key,
                               const at::Tensor& output);

// Data-parallel calls (src/distributed), marginalised mode, every gradient defined:
// the canonical column sums of this rank's rows into `sums` ([num_tasks, columns], op-math);
void launch_marginalized_column_sums(const ops::CombineArguments& arguments,
                                     const at::Tensor& sums);
// and the combine with the column sums given (the global ones), returning partial rows as
// launch_marginalized does.
at::Tensor launch_marginalized_given_sums(const ops::CombineArguments& arguments,
                                          const DrawKey& key, const at::Tensor& output,
                                          const at::Tensor& sums);

}  // namespace cuda_kernels
}  // namespace graddrop
