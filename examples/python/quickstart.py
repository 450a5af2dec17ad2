"""Quick start: a shared MLP trunk feeding two heads whose tasks pull the shared features in
opposite directions, trained with graddrop.GradDropLayer between trunk and heads.

    python examples/python/quickstart.py [steps]
"""
import sys

import torch
from torch import nn

import graddrop


class TwoTaskModel(nn.Module):
    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.graddrop = graddrop.GradDropLayer(2, record_statistics=True)
        self.head_a = nn.Linear(hidden, 1)
        self.head_b = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor):
        shared_a, shared_b = self.graddrop(self.trunk(x))  # two aliases of the activation
        return self.head_a(shared_a), self.head_b(shared_b)


def main(steps: int) -> None:
    torch.manual_seed(0)
    inputs, hidden, batch = 32, 64, 128
    # Two regression targets that share a direction with opposite signs: their gradients at the
    # shared features conflict.
    direction = torch.randn(inputs, 1)
    weights_a = direction + torch.randn(inputs, 1)
    weights_b = -direction + torch.randn(inputs, 1)

    model = TwoTaskModel(inputs, hidden)
    print(model.graddrop)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, steps + 1):
        x = torch.randn(batch, inputs)
        prediction_a, prediction_b = model(x)
        loss_a = nn.functional.mse_loss(prediction_a, x @ weights_a)
        loss_b = nn.functional.mse_loss(prediction_b, x @ weights_b)
        optimizer.zero_grad()
        (loss_a + loss_b).backward()  # ONE backward: GradDrop sees both tasks at once
        optimizer.step()
        if step == 1 or step % 50 == 0 or step == steps:
            statistics = model.graddrop.last_statistics()
            print(f"step {step:4d}  loss_a {loss_a.item():8.4f}  loss_b {loss_b.item():8.4f}  "
                  f"conflicts {statistics.conflict_fraction:.3f}  "
                  f"mean purity {statistics.mean_purity:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
