#include "graddrop/function.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include "graddrop/combine.h"
#include "layer_call.h"

namespace graddrop {

optional<GradDropStatistics> StatisticsRecord::last() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_;
}

void StatisticsRecord::set(GradDropStatistics statistics) {
  std::lock_guard<std::mutex> lock(mutex_);
  last_ = std::move(statistics);
}

torch::autograd::variable_list GradDropFunction::forward(torch::autograd::AutogradContext* ctx,
                                                         const at::Tensor& activation,
                                                         c10::intrusive_ptr<GradDropCall> call) {
  TORCH_CHECK(call, "GradDropFunction: call must not be null");
  call->options.validate();
  // Backward must see which heads produced no gradient (undefined = zero, and the misuse check).
  ctx->set_materialize_grads(false);
  ctx->save_for_backward({activation});
  const int64_t num_tasks = call->options.num_tasks();
  ctx->saved_data["call"] = std::move(call);
  // Aliases, not copies: each head gets its own output so autograd routes its gradient to its
  // own slot of backward's grad_outputs.
  torch::autograd::variable_list outputs;
  outputs.reserve(static_cast<size_t>(num_tasks));
  for (int64_t task = 0; task < num_tasks; ++task) outputs.push_back(activation.alias());
  return outputs;
}

namespace {

// The index of a head gradient that this backward may overwrite with its result, or -1: on the
// CPU (where a fresh output costs an allocation and a page fault per 4 KiB, about as much as
// the kernel's own traffic), a plain contiguous tensor of the activation's shape and dtype that
// covers its whole storage and that nothing else holds (autograd hands the gradients over; a
// hook or retain_grad() that keeps one raises its count, and then it is left alone).
int64_t reusable_gradient(const torch::autograd::variable_list& grads,
                          const at::Tensor& activation) {
  if (!activation.device().is_cpu()) return -1;
  for (size_t task = 0; task < grads.size(); ++task) {
    const auto& grad = grads[task];
    if (!grad.defined() || grad.use_count() != 1 || grad.is_view() || grad.requires_grad()) {
      continue;
    }
    if (grad.layout() != at::kStrided || !grad.is_contiguous() || grad.storage_offset() != 0 ||
        grad.scalar_type() != activation.scalar_type() || grad.sizes() != activation.sizes()) {
      continue;
    }
    const auto& storage = grad.storage();
    if (storage.use_count() != 1 ||
        storage.nbytes() != static_cast<size_t>(grad.numel()) * grad.element_size()) {
      continue;
    }
    return static_cast<int64_t>(task);
  }
  return -1;
}

}  // namespace

torch::autograd::variable_list GradDropFunction::backward(
    torch::autograd::AutogradContext* ctx, torch::autograd::variable_list& grad_outputs) {
  for (const auto& grad : grad_outputs) {
    TORCH_CHECK(!(grad.defined() && grad.requires_grad()),
                "GradDropFunction is not twice differentiable: its random masks have no "
                "gradient; call backward without create_graph=true");
  }
  const auto call = ctx->saved_data["call"].toCustomClass<GradDropCall>();
  const auto activation = ctx->get_saved_variables()[0];

  int64_t defined = 0;
  for (const auto& grad : grad_outputs) defined += grad.defined();
  // With a process group the call is collective: a rank whose heads all had no loss this step
  // still joins (its gradients count as zero), or the other ranks would wait for it.
  bool in_group = false;
#if GRADDROP_HAS_DISTRIBUTED
  in_group = static_cast<bool>(call->options.process_group());
#endif
  if (defined == 0 && !in_group) return {at::Tensor(), at::Tensor()};
  if (defined == 1 && grad_outputs.size() > 1) {
    TORCH_WARN_ONCE(
        "GradDropFunction received the gradient of only one of its ", grad_outputs.size(),
        " heads. If the task losses were backpropagated separately (L1.backward(); "
        "L2.backward()), every call sees one task and GradDrop has nothing to combine: call "
        "backward once on the sum of the losses.");
  }

  // Once differentiable: with create_graph the saved activation may still require grad, and
  // the operator (which has no derivative) refuses inputs that require grad in grad mode.
  at::NoGradGuard no_grad;
  const bool record = call->options.record_statistics() && call->record;
  GradDropStatistics statistics;
  at::Tensor combined;
  const int64_t reusable = reusable_gradient(grad_outputs, activation);
  if (reusable >= 0) {
    combined = grad_outputs[static_cast<size_t>(reusable)];
    combine_out(combined, grad_outputs, activation, call->options, call->generator, nullopt,
                record ? &statistics : nullptr);
  } else {
    combined = combine(grad_outputs, activation, call->options, call->generator, nullopt,
                       record ? &statistics : nullptr);
  }
  if (record) call->record->set(std::move(statistics));
  return {combined, at::Tensor()};
}

}  // namespace graddrop

// GradDropCall travels through the autograd context's saved_data, which holds IValues.
TORCH_LIBRARY_FRAGMENT(graddrop, m) {
  m.class_<graddrop::GradDropCall>("GradDropCall");
}
