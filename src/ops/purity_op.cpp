// graddrop::purity: P in the op-math dtype, composed of ATen operations (so autograd
// differentiates it). Used by the custom keep-function path, where f must see the whole P
// tensor anyway.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/combine_op.h"
#include "ops/validation.h"

namespace graddrop {
namespace ops {
namespace {

CombineArguments validate_purity(const at::Tensor& activation,
                                 const c10::List<optional<at::Tensor>>& grads,
                                 c10::string_view sign_source, bool marginalize_batch,
                                 double epsilon) {
  const optional<at::Tensor> none;
  return validate_combine({activation, grads, {}, sign_source, marginalize_batch, "linear", 1.0,
                           "drop", epsilon, false, none, none, nullopt, 0, false});
}

at::Tensor purity_composite(const at::Tensor& activation,
                            const c10::List<optional<at::Tensor>>& grads,
                            c10::string_view sign_source, bool marginalize_batch,
                            double epsilon) {
  const auto arguments =
      validate_purity(activation, grads, sign_source, marginalize_batch, epsilon);
  const auto opmath = arguments.opmath_type();
  const auto a = arguments.activation.to(opmath);
  at::Tensor signal_of_activation;
  switch (arguments.sign_source) {
    case SignSource::kActivationSign:
      signal_of_activation = at::sign(a);
      break;
    case SignSource::kActivationValue:
      signal_of_activation = a;
      break;
    default:
      signal_of_activation = at::ones_like(a);
  }
  // Sizes as SymInts: torch.compile traces this composed body with symbolic shapes.
  const auto shape = purity_sym_shape_of(activation, marginalize_batch);
  auto signed_sum = at::zeros_symint(shape, a.options());
  auto absolute_sum = at::zeros_symint(shape, a.options());
  for (const auto& grad : arguments.grads) {
    if (!grad.defined()) continue;
    auto signal = signal_of_activation * grad.to(opmath);
    if (marginalize_batch) signal = signal.sum(0);
    signed_sum.add_(signal);
    absolute_sum.add_(signal.abs());
  }
  return 0.5 * (1.0 + signed_sum / (absolute_sum + epsilon));
}

// The shape function for meta and fake tensors (sizes may be symbolic). The composed kernel
// cannot run on meta tensors itself: several ATen operations it uses have their meta kernels
// only in Python (torch._meta_registrations).
at::Tensor purity_meta(const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
                       c10::string_view sign_source, bool marginalize_batch, double epsilon) {
  const auto arguments =
      validate_purity(activation, grads, sign_source, marginalize_batch, epsilon);
  return at::empty_symint(purity_sym_shape_of(activation, marginalize_batch),
                          arguments.activation.options().dtype(arguments.opmath_type()));
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_FRAGMENT(graddrop, m) {
  m.def(
      "purity(Tensor activation, Tensor?[] grads, str sign_source='activation_sign', "
      "bool marginalize_batch=True, float epsilon=1e-07) -> Tensor",
      &graddrop::ops::purity_composite);
}

TORCH_LIBRARY_IMPL(graddrop, Meta, m) {
  m.impl("purity", TORCH_FN(graddrop::ops::purity_meta));
}

// With a Meta kernel of its own, purity's composed (CompositeImplicitAutograd) kernel no longer
// serves the AutogradMeta key, and LibTorch 1.13 has no autograd fallback there: fall through to
// the Meta kernel (a shape computation has nothing to differentiate).
TORCH_LIBRARY_IMPL(graddrop, AutogradMeta, m) {
  m.impl("purity", torch::CppFunction::makeFallthrough());
}
