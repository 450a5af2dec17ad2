// Uses the installed graddrop: the umbrella header (every public header must be installed and
// self-contained), the dispatcher operator behind graddrop::combine, and the layer.
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <vector>

#include <ATen/ATen.h>

#include "graddrop/graddrop.h"

namespace {

int failures = 0;

void expect(bool condition, const char* what) {
  if (!condition) {
    std::cerr << "FAILED: " << what << std::endl;
    ++failures;
  }
}

}  // namespace

int main() {
  // Two tasks at A = 1: g = (1, -3), so P ~ 0.25. U = 0.1 keeps the positive task, U = 0.9 the
  // negative one; with leak 0.5 the other task enters at half weight.
  const auto activation = at::ones({2}, at::kFloat);
  const std::vector<at::Tensor> grads = {at::full({2}, 1.0f), at::full({2}, -3.0f)};
  const auto uniform = at::tensor({0.1f, 0.9f});
  auto options = graddrop::GradDropOptions(2).marginalize_batch(false).leak({0.5, 0.5});
  const auto out = graddrop::combine(grads, activation, options, graddrop::nullopt, uniform);
  std::cout << "combine: " << out << std::endl;
  expect(at::equal(out, at::tensor({-0.5f, -2.5f})), "combine with leak 0.5");

  const auto purity = graddrop::purity(grads, activation, options);
  expect(std::abs(purity[0].item<double>() - 0.25) < 1e-6, "purity 0.25");

  // The layer: one backward through two heads delivers a GradDrop combination to the trunk.
  graddrop::GradDropLayer layer(graddrop::GradDropOptions(2).seed(1));
  const auto shared = at::ones({3, 4}).requires_grad_();
  const auto outputs = layer(shared);
  (outputs[0].sum() - 2 * outputs[1].sum()).backward();
  // Every feature has G = (3, -6): P ~ 1/6, and whichever sign wins, each element of the
  // gradient is 1 or -2.
  const auto grad = shared.grad();
  expect(grad.defined() && at::logical_or(grad == 1, grad == -2).all().item<bool>(),
         "layer gradient");

  std::cout << (failures == 0 ? "graddrop consumer: OK" : "graddrop consumer: FAILED")
            << std::endl;
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
