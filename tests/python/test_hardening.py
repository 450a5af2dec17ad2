"""Issue #10 from Python: the operator under autograd, on meta and sparse tensors, and the
arguments whose misuse used to pass silently."""
import os

import pytest
import torch

torch.ops.load_library(os.environ["GRADDROP_LIBRARY"])


def test_combine_refuses_gradients_that_require_grad():
    activation = torch.randn(4, 3, requires_grad=True)
    grads = [torch.randn(4, 3), torch.randn(4, 3, requires_grad=True)]
    with pytest.raises(RuntimeError, match=r"no derivative.*grads\[1\] requires grad"):
        torch.ops.graddrop.combine(activation, grads)
    with torch.no_grad():
        out, _ = torch.ops.graddrop.combine(activation, grads, seed=1)
    assert not out.requires_grad
    # The activation requiring grad is fine: the output is piecewise constant in it.
    out, _ = torch.ops.graddrop.combine(activation, [g.detach() for g in grads], seed=1)
    assert not out.requires_grad


def test_purity_gradient_is_the_true_derivative():
    activation = torch.randn(5, 3, dtype=torch.float64)
    grads = [torch.randn(5, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    torch.autograd.gradcheck(
        lambda a, b: torch.ops.graddrop.purity(activation, [a, b], "activation_value"), grads)


def test_meta_tensors_give_shapes():
    activation = torch.empty(6, 3, 2, device="meta", dtype=torch.bfloat16)
    grads = [torch.empty(6, 3, 2, device="meta", dtype=torch.bfloat16) for _ in range(3)]
    out, stats = torch.ops.graddrop.combine(activation, grads, statistics=True)
    assert out.device.type == "meta" and out.shape == (6, 3, 2) and out.dtype == torch.bfloat16
    assert stats.shape == (5,) and stats.dtype == torch.float64
    p = torch.ops.graddrop.purity(activation, grads)
    assert p.shape == (3, 2) and p.dtype == torch.float32
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \[6, 3, 3\]"):
        torch.ops.graddrop.combine(activation, [grads[0], torch.empty(6, 3, 3, device="meta",
                                                                       dtype=torch.bfloat16)])
    with pytest.raises(RuntimeError, match=r"grads\[0\] is on device meta"):
        torch.ops.graddrop.combine(torch.zeros(6, 3, 2, dtype=torch.bfloat16), grads)


def test_sparse_tensors_are_refused_by_name():
    dense = torch.ones(4, 3)
    with pytest.raises(TypeError, match=r"grads\[1\] must be a dense .* layout Sparse"):
        torch.ops.graddrop.combine(dense, [dense, dense.to_sparse()])
    with pytest.raises(TypeError, match=r"activation must be a dense"):
        torch.ops.graddrop.combine(dense.to_sparse(), [dense])


def test_argument_misuse_is_named():
    activation = torch.ones(4, 3)
    grads = [torch.ones(4, 3)]
    with pytest.raises(ValueError, match=r"offset \(5\) is used only with an explicit seed"):
        torch.ops.graddrop.combine(activation, grads, offset=5)
    keep = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match=r"keep_function must be 'custom', got 'linear'"):
        torch.ops.graddrop.combine(activation, grads, keep_probability=keep)
    with pytest.raises(ValueError, match=r"keep_probability \(f\(P\).*\[0, 1\]"):
        torch.ops.graddrop.combine(activation, grads, keep_function="custom",
                                   keep_probability=keep + 1)
    with pytest.raises(ValueError, match=r"epsilon = 1e-50 .*float32"):
        torch.ops.graddrop.combine(activation, grads, epsilon=1e-50)


def test_negative_seed_is_the_twos_complement_key():
    activation = torch.randn(4, 64)
    grads = [torch.randn(4, 64), torch.randn(4, 64)]
    a, _ = torch.ops.graddrop.combine(activation, grads, seed=-1, offset=2)
    b, _ = torch.ops.graddrop.combine(activation, grads, seed=-1, offset=2)
    c, _ = torch.ops.graddrop.combine(activation, grads, seed=(1 << 63) - 1, offset=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_explicit_keep_probability_propagates_nan_purity():
    # Issue #10 item 1 (needs the kernel change): the README promises [nan, nan].
    out, _ = torch.ops.graddrop.combine(
        torch.ones(2, 1), [torch.tensor([[float("nan")], [1.0]])], keep_function="custom",
        keep_probability=torch.tensor([0.7]), uniform=torch.tensor([0.5]), zero_sign="keep")
    assert torch.isnan(out).all(), out
