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
// combine_into gets the same treatment, plus what an in-place write needs (below).
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

// Refuses, in grad mode, task gradients that require grad (see the top of this file).
void refuse_grads_requiring_grad(const c10::List<optional<at::Tensor>>& grads,
                                 const char* operator_name) {
  if (!c10::GradMode::is_enabled()) return;
  const auto names = grads_requiring_grad(grads);
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

std::tuple<at::Tensor, at::Tensor> combine_autograd(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name) {
  refuse_grads_requiring_grad(grads, "graddrop::combine");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("graddrop::combine", "")
                       .typed<CombineSignature>();
  return op.call(activation, grads, leak, sign_source, marginalize_batch, keep_function, scale,
                 zero_sign, epsilon, keep_grad_norm, std::move(generator), uniform,
                 keep_probability, seed, offset, statistics, group_name);
}

// combine_into is an in-place write into `out`: besides the refusal above, `out` may not require
// grad (the write would need a derivative too), and its version counter is bumped, as ATen's
// in-place operators do, so that a backward that saved `out` before the write refuses to run
// with the new values. Without this kernel the dispatcher's boxed fallback ran instead: it
// boxed every argument on each call, bumped no version and let gradients requiring grad through
// with the gradient path silently cut.
at::Tensor combine_into_autograd(
    at::Tensor& out, const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics, optional<c10::string_view> group_name) {
  refuse_grads_requiring_grad(grads, "graddrop::combine_into");
  TORCH_CHECK(!(c10::GradMode::is_enabled() && out.defined() && out.requires_grad()),
              "graddrop::combine_into writes into out, which requires grad; the write has no "
              "derivative. Pass a tensor that does not require grad, or call it with grad mode "
              "off.");
  // An inference tensor has no version counter to bump: refused before anything is written.
  TORCH_CHECK(!(out.defined() && out.is_inference()),
              "graddrop::combine_into: out is an inference tensor, which may be written in "
              "place only inside InferenceMode");
  at::Tensor values;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("graddrop::combine_into", "")
                         .typed<CombineIntoSignature>();
    values = op.call(out, activation, grads, leak, sign_source, marginalize_batch, keep_function,
                     scale, zero_sign, epsilon, keep_grad_norm, std::move(generator), uniform,
                     keep_probability, seed, offset, statistics, group_name);
  }
  out.unsafeGetTensorImpl()->bump_version();
  return values;
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, Autograd, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_autograd));
  m.impl("combine_into", TORCH_FN(graddrop::ops::combine_into_autograd));
}
