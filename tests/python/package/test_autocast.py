"""Mixed precision: torch.autocast with torch.amp.GradScaler."""
import pytest
import torch
from torch import nn

import graddrop

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CASES = [("cpu", torch.bfloat16),
         pytest.param("cuda", torch.float16, marks=CUDA),
         pytest.param("cuda", torch.bfloat16, marks=CUDA)]


class Model(nn.Module):
    def __init__(self, num_tasks=2, **options):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64))
        self.graddrop = graddrop.GradDropLayer(num_tasks, **options)
        self.heads = nn.ModuleList(nn.Linear(64, 4) for _ in range(num_tasks))

    def forward(self, x):
        shared = self.graddrop(self.trunk(x))
        return [head(features).float().pow(2).mean() for head, features in zip(self.heads, shared)]


@pytest.mark.parametrize("device, dtype", CASES)
def test_16_bit_combine_equals_float32_on_the_same_inputs(seed, device, dtype):
    generator = torch.Generator().manual_seed(seed)
    activation = torch.randn(64, 128, generator=generator).to(device, dtype)
    grads = [torch.randn(64, 128, generator=generator).to(device, dtype) for _ in range(4)]
    for marginalize in (True, False):
        out = graddrop.combine(grads, activation, seed=seed, marginalize_batch=marginalize,
                               leak=[0.0, 0.1, 0.0, 0.3])
        reference = graddrop.combine([g.float() for g in grads], activation.float(), seed=seed,
                                     marginalize_batch=marginalize, leak=[0.0, 0.1, 0.0, 0.3])
        assert out.dtype == dtype
        # One rounding of the float32 result to 16 bits (the masks agree: same P, same U).
        torch.testing.assert_close(out.float(), reference.to(dtype).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("device, dtype", CASES)
def test_layer_under_autocast_combines_16_bit_gradients_like_float32(seed, device, dtype):
    torch.manual_seed(seed)
    model = Model(3, seed=seed, leak=[0.0, 0.0, 0.5]).to(device)
    captured = {}

    def keep(name):
        def hook(grad):
            captured[name] = grad.detach().clone()
        return hook

    x = torch.randn(32, 16, device=device)
    with torch.autocast(device, dtype=dtype):
        features = model.trunk(x)
        features.register_hook(keep("combined"))
        shared = model.graddrop(features)
        for task, output in enumerate(shared):
            output.register_hook(keep(task))
        losses = [head(out).float().pow(2).mean() for head, out in zip(model.heads, shared)]
    assert features.dtype == dtype
    sum(losses).backward()
    task_grads = [captured[task] for task in range(3)]
    assert all(g.dtype == dtype for g in task_grads)
    reference = graddrop.combine([g.float() for g in task_grads], features.detach().float(),
                                 seed=seed, leak=[0.0, 0.0, 0.5])
    assert captured["combined"].dtype == dtype
    torch.testing.assert_close(captured["combined"].float(), reference.to(dtype).float(),
                               rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("device, dtype", CASES)
def test_grad_scaler_steps_and_skips_an_overflowing_step(seed, device, dtype):
    torch.manual_seed(seed)
    model = Model(2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    x = torch.randn(32, 16, device=device)

    def step(overflow):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=dtype):
            losses = model(x)
        if overflow:  # task 1's gradient becomes Inf
            losses[1] = losses[1] * float("inf")
        scaler.scale(sum(losses)).backward()
        scaler.step(optimizer)
        scaler.update()

    trunk_weight = model.trunk[0].weight
    before = trunk_weight.detach().clone()
    step(overflow=False)
    assert not torch.equal(trunk_weight, before), "a finite step must update the trunk"
    assert torch.isfinite(trunk_weight).all()

    before = trunk_weight.detach().clone()
    scale = scaler.get_scale()
    step(overflow=True)
    # The Inf reached the trunk's gradient as non-finite, so the scaler skipped the step.
    assert not torch.isfinite(trunk_weight.grad).all()
    assert torch.equal(trunk_weight, before)
    assert scaler.get_scale() < scale
