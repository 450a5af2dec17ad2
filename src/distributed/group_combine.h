#pragma once
// Global batch marginalisation above the devices: one combine call whose purity, draw and masks
// are those of the whole batch of a c10d process group (docs/distributed.md). The devices
// provide two kernel phases (ops::CombineKernels: the local column sums, and the combine with
// given sums and key); this runs the group protocol between them.
#include <string>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "graddrop/compat.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace distributed {

// Fills `output` for `arguments` as every rank of group `group_name` computes it together, and
// returns the accumulators (global norms with keep_grad_norm) for ops::finish_combine:
//   1. this rank's canonical column sums (marginalised mode) and its own key;
//   2. GroupCall::exchange: the sums added over the ranks, the call checked to be the same on
//      every rank, rank 0's key;
//   3. the combine with the global sums and rank 0's key (per-element mode has no batch sum:
//      each rank combines with its own key);
//   4. with keep_grad_norm, the squared norms added over the ranks.
at::Tensor combine_in_group(ops::CombineArguments arguments,
                            const optional<at::Generator>& generator,
                            const std::string& group_name, const ops::CombineKernels& kernels,
                            const at::Tensor& output);

}  // namespace distributed
}  // namespace graddrop
