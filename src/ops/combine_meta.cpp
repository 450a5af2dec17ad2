// graddrop::combine on meta tensors: the shapes and dtypes of the outputs, after the same
// argument checks as the device kernels (prepare_combine reads no data of meta tensors). Lets
// shape propagation and tracing (fake tensors, torch.compile) run through the operator, and
// gives a mismatched call the message that names the argument instead of the dispatcher's.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace ops {
namespace {

std::tuple<at::Tensor, at::Tensor> combine_meta(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> /*generator*/,
    const optional<at::Tensor>& uniform, const optional<at::Tensor>& keep_probability,
    optional<int64_t> seed, int64_t offset, bool statistics,
    optional<c10::string_view> /*group_name*/) {
  const auto arguments = prepare_combine(activation, grads, leak, sign_source, marginalize_batch,
                                         keep_function, scale, zero_sign, epsilon, keep_grad_norm,
                                         uniform, keep_probability, seed, offset, statistics);
  // As the kernels return them: a contiguous output of the activation's dtype, and the float64
  // statistics [kept fraction per task, mean P, conflict fraction] or an empty float64 tensor.
  auto output = at::empty(arguments.activation.sizes(), arguments.activation.options());
  const int64_t statistics_size = statistics ? arguments.num_tasks() + 2 : 0;
  auto values = at::empty({statistics_size}, arguments.activation.options().dtype(at::kDouble));
  return {output, values};
}

// P in the op-math dtype. purity's composed kernel cannot run on meta tensors itself: several
// ATen operations it uses have their meta kernels only in Python (torch._meta_registrations).
at::Tensor purity_meta(const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
                       c10::string_view sign_source, bool marginalize_batch, double epsilon) {
  const auto arguments = prepare_combine(activation, grads, {}, sign_source, marginalize_batch,
                                         "linear", 1.0, "drop", epsilon, false, nullopt, nullopt,
                                         nullopt, 0, false);
  return at::empty(arguments.purity_shape,
                   arguments.activation.options().dtype(arguments.opmath_type()));
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, Meta, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_meta));
  m.impl("purity", TORCH_FN(graddrop::ops::purity_meta));
}

// With a Meta kernel of its own, purity's composed (CompositeImplicitAutograd) kernel no longer
// serves the AutogradMeta key, and LibTorch 1.13 has no autograd fallback there: fall through to
// the Meta kernel (a shape computation has nothing to differentiate).
TORCH_LIBRARY_IMPL(graddrop, AutogradMeta, m) {
  m.impl("purity", torch::CppFunction::makeFallthrough());
}
