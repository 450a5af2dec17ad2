#include "distributed/group_combine.h"

#include <ATen/ATen.h>

#include "distributed/group_call.h"

namespace graddrop {
namespace distributed {

at::Tensor combine_in_group(ops::CombineArguments arguments,
                            const optional<at::Generator>& generator,
                            const std::string& group_name, const ops::CombineKernels& kernels,
                            const at::Tensor& output) {
  GroupCall group(group_name, arguments);
  // Every rank contributes a row of column sums for every task, including the tasks whose head
  // had no loss on this rank.
  materialise_zero_grads(arguments);
  // Each rank draws its own key, so the generators advance alike; rank 0's is used.
  const ops::PhiloxKey local_key = kernels.draw_key(arguments, generator);
  at::Tensor sums;
  if (arguments.marginalize_batch) {
    sums = at::zeros({arguments.num_tasks(), arguments.columns},
                     arguments.activation.options().dtype(arguments.opmath_type()));
    if (arguments.rows > 0 && arguments.columns > 0) kernels.column_sums(arguments, sums);
  }
  const ops::PhiloxKey agreed = group.exchange(local_key, sums);
  auto accumulators = ops::zero_accumulators(arguments);
  if (arguments.columns > 0) {
    kernels.combine_with_sums(arguments, sums, arguments.marginalize_batch ? agreed : local_key,
                              output, accumulators);
  }
  if (arguments.keep_grad_norm) group.sum_squared_norms(accumulators);
  return accumulators;
}

}  // namespace distributed
}  // namespace graddrop
