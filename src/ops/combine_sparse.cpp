// graddrop::combine on sparse tensors: refused with a message that names the argument and its
// layout. Without these registrations the dispatcher answers "could not run with arguments from
// the 'SparseCPU' backend", which names neither. (purity is composed of ATen operations and runs
// prepare_combine's layout check itself.)
#include <torch/library.h>

#include "ops/combine_op.h"

namespace graddrop {
namespace ops {
namespace {

std::tuple<at::Tensor, at::Tensor> combine_sparse(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> /*leak*/, c10::string_view /*sign_source*/,
    bool /*marginalize_batch*/, c10::string_view /*keep_function*/, double /*scale*/,
    c10::string_view /*zero_sign*/, double /*epsilon*/, bool /*keep_grad_norm*/,
    optional<at::Generator> /*generator*/, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> /*seed*/,
    int64_t /*offset*/, bool /*statistics*/,
    optional<c10::string_view> /*group_name*/) {
  check_dense_layouts(activation, grads, uniform, keep_probability);
  TORCH_INTERNAL_ASSERT(false, "graddrop: a sparse dispatch key was chosen but every tensor "
                               "argument is dense");
  return {};
}

}  // namespace
}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, SparseCPU, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_sparse));
}
TORCH_LIBRARY_IMPL(graddrop, SparseCUDA, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_sparse));
}
TORCH_LIBRARY_IMPL(graddrop, SparseCsrCPU, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_sparse));
}
TORCH_LIBRARY_IMPL(graddrop, SparseCsrCUDA, m) {
  m.impl("combine", TORCH_FN(graddrop::ops::combine_sparse));
}
