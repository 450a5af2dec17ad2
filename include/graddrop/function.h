#pragma once
// GradDropFunction: the autograd node between a shared trunk and n task heads. Forward returns n
// aliases of the activation (no copy); backward receives every head's gradient in one call and
// returns their GradDrop combination.
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/autograd/custom_function.h>

namespace graddrop {

// What one backward call needs beyond tensors (the options and generator as they were at
// forward, where to record statistics): built by GradDropLayer, internal to the library.
struct GradDropCall;

struct GradDropFunction : public torch::autograd::Function<GradDropFunction> {
  /// Returns `num_tasks` aliases of `activation` (GradDropLayer builds the call).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& activation,
                                                c10::intrusive_ptr<GradDropCall> call);

  /// GradDrop's combination of the heads' gradients; once differentiable. Takes the gradients by
  /// reference (autograd's node passes its own list and drops it afterwards), so that a
  /// gradient nothing else holds can become the output buffer (combine_out).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list& grad_outputs);
};

}  // namespace graddrop
