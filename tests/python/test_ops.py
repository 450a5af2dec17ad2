"""graddrop's dispatcher operators called from Python (torch.ops.graddrop.*).

The shared library is found through GRADDROP_LIBRARY (set by CTest). The expected values come
from a float64 implementation of DESIGN.md section 1 written here in plain torch.
"""
import os
import random

import pytest
import torch

torch.ops.load_library(os.environ["GRADDROP_LIBRARY"])

SEED = int(os.environ.get("GRADDROP_TEST_SEED", random.randrange(1 << 30)))
print(f"[graddrop python tests] seed {SEED} (replay with GRADDROP_TEST_SEED={SEED})")


def reference(activation, grads, uniform, leak, marginalize, zero_keep=False):
    a = activation.double()
    gs = [g.double() for g in grads]
    signals = [torch.sign(a) * g for g in gs]
    if marginalize:
        signals = [s.sum(0) for s in signals]
    stacked = torch.stack(signals)
    purity = 0.5 * (1 + stacked.sum(0) / (stacked.abs().sum(0) + 1e-7))
    u = uniform.double()
    out = torch.zeros_like(a)
    for g, s, l in zip(gs, signals, leak):
        mask = ((purity > u) & (s > 0)) | ((purity < u) & (s < 0))
        if zero_keep:
            mask = mask | (s == 0)
        out = out + (l + (1 - l) * mask.double()) * g
    return out, purity


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(SEED)


def separated(purity, generator, margin=1e-3):
    u = torch.rand(purity.shape, generator=generator, dtype=torch.float64)
    close = (u - purity).abs() < margin
    u = torch.where(close, (purity + 2 * margin) % 1.0, u)
    return u.float()


@pytest.mark.parametrize("marginalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_combine_matches_reference(generator, marginalize, dtype):
    activation = torch.randn(8, 5, 3, generator=generator).to(dtype)
    grads = [torch.randn(8, 5, 3, generator=generator).to(dtype) for _ in range(3)]
    leak = [0.0, 0.25, 1.0]
    _, purity = reference(activation, grads, torch.zeros(()), leak, marginalize)
    uniform = separated(purity, generator)
    expected, _ = reference(activation, grads, uniform, leak, marginalize)
    out, stats = torch.ops.graddrop.combine(
        activation, grads, leak, marginalize_batch=marginalize, uniform=uniform)
    assert out.dtype == dtype and out.shape == activation.shape
    assert stats.numel() == 0
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double(), expected.to(dtype).double(), rtol=tol, atol=tol)


def test_undefined_gradient_is_zero(generator):
    activation = torch.randn(4, 6, generator=generator)
    grad = torch.randn(4, 6, generator=generator)
    uniform = torch.rand(6, generator=generator)
    with_none, _ = torch.ops.graddrop.combine(activation, [grad, None], uniform=uniform)
    with_zero, _ = torch.ops.graddrop.combine(
        activation, [grad, torch.zeros_like(grad)], uniform=uniform)
    torch.testing.assert_close(with_none, with_zero)


def test_seed_reproducible_and_statistics(generator):
    activation = torch.randn(16, 32, generator=generator)
    grads = [torch.randn(16, 32, generator=generator) for _ in range(2)]
    first, stats = torch.ops.graddrop.combine(activation, grads, seed=7, offset=3, statistics=True)
    second, _ = torch.ops.graddrop.combine(activation, grads, seed=7, offset=3)
    other, _ = torch.ops.graddrop.combine(activation, grads, seed=8, offset=3)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert stats.shape == (4,) and stats.dtype == torch.float64
    assert ((stats >= 0) & (stats <= 1)).all()


def test_purity_operator(generator):
    activation = torch.randn(8, 10, generator=generator)
    grads = [torch.randn(8, 10, generator=generator) for _ in range(3)]
    _, expected = reference(activation, grads, torch.zeros(()), [0, 0, 0], True)
    purity = torch.ops.graddrop.purity(activation, grads)
    torch.testing.assert_close(purity.double(), expected, rtol=1e-5, atol=1e-6)


def test_bad_input_names_argument(generator):
    activation = torch.randn(4, 3, generator=generator)
    grads = [torch.randn(4, 3, generator=generator), torch.randn(4, 4, generator=generator)]
    before = [g.clone() for g in grads]
    with pytest.raises(RuntimeError, match=r"grads\[1\] has shape \[4, 4\]"):
        torch.ops.graddrop.combine(activation, grads)
    with pytest.raises(RuntimeError, match=r"leak\[0\] must be in \[0, 1\], got 1.5"):
        torch.ops.graddrop.combine(activation, grads[:1], [1.5])
    with pytest.raises(RuntimeError, match=r"sign_source must be"):
        torch.ops.graddrop.combine(activation, grads[:1], sign_source="sideways")
    for g, b in zip(grads, before):
        assert torch.equal(g, b)
