// Quick start: a shared MLP trunk feeding two heads whose tasks pull the shared features in
// opposite directions, trained with GradDropLayer between trunk and heads.
#include <cstdio>
#include <iostream>

#include <torch/torch.h>

#include "graddrop/graddrop.h"

namespace {

struct TwoTaskModelImpl : torch::nn::Module {
  TwoTaskModelImpl(int64_t inputs, int64_t hidden, graddrop::GradDropOptions options)
      : trunk(register_module("trunk", torch::nn::Sequential(torch::nn::Linear(inputs, hidden),
                                                            torch::nn::ReLU(),
                                                            torch::nn::Linear(hidden, hidden),
                                                            torch::nn::ReLU()))),
        graddrop_layer(register_module("graddrop", graddrop::GradDropLayer(options))),
        head_a(register_module("head_a", torch::nn::Linear(hidden, 1))),
        head_b(register_module("head_b", torch::nn::Linear(hidden, 1))) {}

  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& x) {
    auto shared = graddrop_layer(trunk->forward(x));
    return {head_a(shared[0]), head_b(shared[1])};
  }

  torch::nn::Sequential trunk;
  graddrop::GradDropLayer graddrop_layer;
  torch::nn::Linear head_a, head_b;
};
TORCH_MODULE(TwoTaskModel);

}  // namespace

int main(int argc, char** argv) {
  const int64_t steps = argc > 1 ? std::atoll(argv[1]) : 300;
  torch::manual_seed(0);
  at::set_num_threads(2);
  std::cout << "graddrop quickstart: " << steps << " steps, " << at::get_num_threads()
            << " threads\n";

  // Two regression tasks on the same inputs whose targets share a direction with opposite
  // signs: their gradients at the shared features conflict.
  const int64_t inputs = 32, hidden = 64, batch = 128;
  auto direction = torch::randn({inputs, 1});
  auto private_a = torch::randn({inputs, 1});
  auto private_b = torch::randn({inputs, 1});

  auto options = graddrop::GradDropOptions(2).record_statistics(true);
  TwoTaskModel model(inputs, hidden, options);
  std::cout << *model->graddrop_layer << "\n";
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));

  for (int64_t step = 1; step <= steps; ++step) {
    auto x = torch::randn({batch, inputs});
    auto target_a = torch::matmul(x, direction + private_a);
    auto target_b = torch::matmul(x, -direction + private_b);
    auto [prediction_a, prediction_b] = model->forward(x);
    auto loss_a = torch::mse_loss(prediction_a, target_a);
    auto loss_b = torch::mse_loss(prediction_b, target_b);
    optimizer.zero_grad();
    (loss_a + loss_b).backward();  // one backward: GradDrop sees both tasks at once
    optimizer.step();
    if (step == 1 || step % 50 == 0 || step == steps) {
      const auto statistics = model->graddrop_layer->last_statistics();
      std::printf("step %4lld  loss_a %8.4f  loss_b %8.4f  conflicts %.3f  mean purity %.3f\n",
                  static_cast<long long>(step), loss_a.item<double>(), loss_b.item<double>(),
                  statistics ? statistics->conflict_fraction : 0.0,
                  statistics ? statistics->mean_purity : 0.0);
    }
  }
  return 0;
}
