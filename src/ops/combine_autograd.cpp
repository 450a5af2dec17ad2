// graddrop::combine (and combine.out) under autograd. The output sum_i c_i * g_i is piecewise
// constant in the activation, U and f(P) (they enter only through signs, comparisons and the
// masks), so its derivative with respect to them is zero almost everywhere, as torch.sign's is:
// they may require grad (the activation usually does) and are treated as constants. In each g_i
// the output is linear with the random coefficient c_i, a derivative this operator does not
// provide: without a registration under the Autograd key the dispatcher would return an output
// that claims requires_grad and whose backward silently gives no gradient. This kernel refuses
// that call with a message naming the gradients that require grad, and otherwise runs the
// operator below autograd. GradDropFunction (the layer's node) calls the operator inside its
// backward with grad mode off, so the layer is unaffected.
//
// combine.out is an in-place write into `out`: besides the refusal above, `out` may not require
// grad (the write would need a derivative too), and its version counter is bumped, as ATen's
// in-place operators do, so that a backward that saved `out` before the write refuses to run
// with the new values.
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

// Refuses, in grad mode, task gradients that require grad (see the top of this file).
void refuse_grads_requiring_grad(const c10::List<optional<at::Tensor>>& grads,
                                 const char* operator_name) {
  if (!c10::GradMode::is_enabled()) return;
  std::vector<std::string> names;
  for (size_t task = 0; task < grads.size(); ++task) {
    const optional<at::Tensor> entry = grads.get(task);
    if (entry.has_value() && entry->defined() && entry->requires_grad()) {
      names.push_back("grads[" + std::to_string(task) + "]");
    }
  }
  if (names.empty()) return;
  std::string list;
  for (size_t i = 0; i < names.size(); ++i) list += (i ? ", " : "") + names[i];
  TORCH_CHECK(false, operator_name,
              " has no derivative with respect to the task gradients (the output is linear in "
              "each g_i with a random coefficient c_i), but ",
              list, (names.size() == 1 ? " requires" : " require"),
              " grad. Pass detached gradients or call it with grad mode off (torch.no_grad() in "
              "Python, torch::NoGradGuard in C++); GradDropLayer does this in its backward.");
}

void refuse_out_requiring_grad(const at::Tensor& out) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && out.defined() && out.requires_grad()),
              "graddrop::combine.out writes into out, which requires grad; the write has no "
              "derivative. Pass a tensor that does not require grad, or call it with grad mode "
              "off.");
  // An inference tensor has no version counter to bump: refused before anything is written.
  TORCH_CHECK(!(out.defined() && out.is_inference()),
              "graddrop::combine.out: out is an inference tensor, which may be written in place "
              "only inside InferenceMode");
}

// The Autograd kernel of an overload, written once for both: the parameter list is the
// overload's schema signature (combine_op.h), the grads are its second argument, and the
// out= overload's `out` its last.
template <typename Signature, bool kOut>
struct AutogradKernel;

template <typename Result, typename... Arguments, bool kOut>
struct AutogradKernel<Result(Arguments...), kOut> {
  static const char* name() { return kOut ? "graddrop::combine.out" : "graddrop::combine"; }

  static Result call(Arguments... arguments) {
    const auto& all = std::forward_as_tuple(arguments...);
    refuse_grads_requiring_grad(std::get<1>(all), name());
    if constexpr (kOut) refuse_out_requiring_grad(std::get<sizeof...(Arguments) - 1>(all));
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("graddrop::combine", kOut ? "out" : "")
                         .template typed<Result(Arguments...)>();
    Result result = [&] {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return op.call(std::forward<Arguments>(arguments)...);
    }();
    if constexpr (kOut) {
      std::get<sizeof...(Arguments) - 1>(all).unsafeGetTensorImpl()->bump_version();
    }
    return result;
  }
};

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, Autograd, m) {
  using graddrop::ops::AutogradKernel;
  m.impl("combine", TORCH_FN((AutogradKernel<graddrop::ops::CombineSignature, false>::call)));
  m.impl("combine.out",
         TORCH_FN((AutogradKernel<graddrop::ops::CombineOutSignature, true>::call)));
}
