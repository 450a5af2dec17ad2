#pragma once
// Verify mode (GRADDROP_VERIFY=1, graddrop::set_verify): the first call of each configuration
// on a device other than the CPU also runs the CPU kernels on copies of its inputs with the same
// key, and compares: the output bit for bit (within order_tolerance with keep_grad_norm, whose
// norms are summed in each device's own order), the statistics within order_tolerance. A
// mismatch is a c10::Error naming the configuration and the first differing element; the
// inputs are saved to a file the message names, so the case can be replayed. Off, it costs the
// entry one branch.
#include <string>

#include <ATen/core/Tensor.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace ops {

bool verify_enabled();
void set_verify(bool enabled);

// Whether `arguments` is a configuration (device, dtype, shape, task count, options) not yet
// verified in this process; records it.
bool first_call_of(const CombineArguments& arguments);

// The device call with its key drawn on the host, then the comparison with the CPU kernels.
// Returns the statistics tensor, as finish_combine does.
at::Tensor verified_combine(const CombineArguments& arguments,
                            const optional<at::Generator>& generator,
                            const CombineKernels& kernels, const at::Tensor& output);

// Compares a device's result with the CPU kernels' on copies of `keyed` (whose seed and offset
// are the key the device used); throws as described above. For verified_combine, and for
// tests, which pass a perturbed result to see it refused.
void compare_with_cpu(const CombineArguments& keyed, const at::Tensor& output,
                      const at::Tensor& statistics);

}  // namespace ops
}  // namespace graddrop
