// graddrop::combine under autograd. The output sum_i c_i * g_i is piecewise constant in the
// activation, U and f(P) (they enter only through signs, comparisons and the masks), so its
// derivative with respect to them is zero almost everywhere, as torch.sign's is: they may
// require grad (the activation usually does) and are treated as constants. In each g_i the
// output is linear with the random coefficient c_i, a derivative this operator does not provide:
// without a registration under the Autograd key the dispatcher would return an output that
// claims requires_grad and whose backward silently gives no gradient. This kernel refuses that
// call with a message naming the gradients that require grad, and otherwise runs the device
// kernel below autograd. GradDropFunction (the layer's node) calls the operator inside its
// backward with grad mode off, so the layer is unaffected.
//
// purity needs no such kernel: it is composed of differentiable ATen operations
// (CompositeImplicitAutograd), so autograd differentiates it correctly.
#include <string>
#include <vector>

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace ops {
namespace {

std::vector<std::string> grads_requiring_grad(const c10::List<optional<at::Tensor>>& grads) {
  std::vector<std::string> names;
  for (size_t task = 0; task < grads.size(); ++task) {
    const optional<at::Tensor> entry = grads.get(task);
    if (entry.has_value() && entry->defined() && entry->requires_grad()) {
      names.push_back("grads[" + std::to_string(task) + "]");
    }
  }
  return names;
}

std::tuple<at::Tensor, at::Tensor> combine_autograd(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name) {
  if (c10::GradMode::is_enabled()) {
    const auto names = grads_requiring_grad(grads);
    if (!names.empty()) {
      std::string list;
      for (size_t i = 0; i < names.size(); ++i) list += (i ? ", " : "") + names[i];
      TORCH_CHECK(false, "graddrop::combine has no derivative with respect to the task gradients "
                         "(the output is linear in each g_i with a random coefficient c_i), but ",
                  list, (names.size() == 1 ? " requires" : " require"),
                  " grad. Pass detached gradients or call it with grad mode off (torch.no_grad() "
                  "in Python, torch::NoGradGuard in C++); GradDropLayer does this in its "
                  "backward.");
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<CombineSignature>();
  return op.call(activation, grads, leak, sign_source, marginalize_batch, keep_function, scale,
                 zero_sign, epsilon, keep_grad_norm, std::move(generator), uniform,
                 keep_probability, seed, offset, statistics, group_name);
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, Autograd, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_autograd));
}
