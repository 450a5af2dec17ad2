"""graddrop's dispatcher operators called from Python (torch.ops.graddrop.*).

The shared library is found through GRADDROP_LIBRARY (set by CTest). The expected values come
from a float64 implementation of docs/design.md ("What GradDrop computes") written here in plain torch.
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
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \[4, 4\]"):
        torch.ops.graddrop.combine(activation, grads)
    with pytest.raises(ValueError, match=r"leak\[0\] must be in \[0, 1\], got 1.5"):
        torch.ops.graddrop.combine(activation, grads[:1], [1.5])
    with pytest.raises(ValueError, match=r"sign_source must be"):
        torch.ops.graddrop.combine(activation, grads[:1], sign_source="sideways")
    for g, b in zip(grads, before):
        assert torch.equal(g, b)


# ---- The operator on CUDA tensors (skipped without a GPU) ---------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="no CUDA GPU: the CUDA kernels can only run on a GPU")

BITS = {torch.float32: torch.int32, torch.float64: torch.int64,
        torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_identical_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    dtype = BITS[actual.dtype]
    a = actual.detach().cpu().contiguous().view(dtype)
    b = expected.detach().cpu().contiguous().view(dtype)
    differ = (a != b).sum().item()
    assert differ == 0, f"{differ} of {a.numel()} elements differ in their bits"


def assert_same_statistics(gpu, cpu, tasks):
    """Kept and conflict fractions exactly; the mean purity to 1e-12 relative."""
    assert gpu.is_cuda and gpu.dtype == torch.float64 and gpu.shape == (tasks + 2,)
    gpu = gpu.cpu()
    assert torch.equal(gpu[:tasks], cpu[:tasks]), (gpu, cpu)
    assert gpu[tasks + 1].item() == cpu[tasks + 1].item(), (gpu, cpu)
    assert abs(gpu[tasks].item() - cpu[tasks].item()) <= 1e-12 * abs(cpu[tasks].item())


@cuda
@pytest.mark.parametrize("keep_function", ["linear", "sigmoid"])
@pytest.mark.parametrize("marginalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 1000), (7, 13), (4096, 100)])
def test_cuda_equals_cpu_bitwise(generator, shape, dtype, marginalize, keep_function):
    activation = torch.randn(shape, generator=generator).to(dtype)
    grads = [torch.randn(shape, generator=generator).to(dtype) for _ in range(3)]
    arguments = dict(leak=[0.0, 0.5, 0.0], marginalize_batch=marginalize,
                     keep_function=keep_function, scale=2.0 if keep_function == "sigmoid" else 1.0,
                     seed=SEED, offset=(1 << 33) + 5, statistics=True)
    on_cpu, cpu_stats = torch.ops.graddrop.combine(activation, grads, **arguments)
    on_gpu, gpu_stats = torch.ops.graddrop.combine(
        activation.cuda(), [g.cuda() for g in grads], **arguments)
    assert on_gpu.is_cuda
    assert_identical_bits(on_gpu, on_cpu)
    assert_same_statistics(gpu_stats, cpu_stats, 3)
    # Statistics off (the training hot path): the same output, an empty statistics tensor.
    arguments["statistics"] = False
    hot, no_stats = torch.ops.graddrop.combine(
        activation.cuda(), [g.cuda() for g in grads], **arguments)
    assert_identical_bits(hot, on_cpu)
    assert no_stats.numel() == 0


@cuda
@pytest.mark.parametrize("marginalize", [True, False])
def test_cuda_matches_reference_with_explicit_uniform(generator, marginalize):
    activation = torch.randn(16, 5, 3, generator=generator)
    grads = [torch.randn(16, 5, 3, generator=generator) for _ in range(3)]
    leak = [0.0, 0.25, 1.0]
    _, purity = reference(activation, grads, torch.zeros(()), leak, marginalize)
    uniform = separated(purity, generator)
    expected, _ = reference(activation, grads, uniform, leak, marginalize)
    out, stats = torch.ops.graddrop.combine(
        activation.cuda(), [g.cuda() for g in grads], leak, marginalize_batch=marginalize,
        uniform=uniform.cuda(), statistics=True)
    assert out.is_cuda and stats.is_cuda and stats.shape == (5,)
    assert ((stats >= 0) & (stats <= 1)).all()
    torch.testing.assert_close(out.double().cpu(), expected, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("marginalize", [True, False])
def test_cuda_keep_probability_path(generator, marginalize):
    """f(P) given by the caller (the custom keep function path): the same bits as the CPU."""
    activation = torch.randn(32, 40, generator=generator)
    grads = [torch.randn(32, 40, generator=generator) for _ in range(2)]
    purity = torch.ops.graddrop.purity(activation.cuda(), [g.cuda() for g in grads],
                                       marginalize_batch=marginalize)
    assert purity.is_cuda
    keep = purity * purity
    uniform = torch.rand(purity.shape, generator=generator)
    on_gpu, gpu_stats = torch.ops.graddrop.combine(
        activation.cuda(), [g.cuda() for g in grads], marginalize_batch=marginalize,
        keep_function="custom", keep_probability=keep, uniform=uniform.cuda(), statistics=True)
    on_cpu, cpu_stats = torch.ops.graddrop.combine(
        activation, grads, marginalize_batch=marginalize, keep_function="custom",
        keep_probability=keep.cpu(), uniform=uniform, statistics=True)
    assert_identical_bits(on_gpu, on_cpu)
    assert_same_statistics(gpu_stats, cpu_stats, 2)


@cuda
@pytest.mark.parametrize("marginalize", [True, False])
def test_cuda_out_of_range_keep_probability_is_nan_there(generator, marginalize):
    """No host check on a GPU (no synchronisation): a bad f(P) makes its outputs NaN instead.
    The CPU refuses it."""
    activation = torch.randn(8, 10, generator=generator)
    grads = [torch.randn(8, 10, generator=generator) for _ in range(2)]
    shape = (10,) if marginalize else (8, 10)
    keep = torch.full(shape, 0.5)
    keep.view(-1)[3] = 1.5
    out, _ = torch.ops.graddrop.combine(activation.cuda(), [g.cuda() for g in grads],
                                        marginalize_batch=marginalize, keep_function="custom",
                                        keep_probability=keep.cuda(), seed=1)
    expected_nan = torch.zeros(8, 10, dtype=torch.bool)
    if marginalize:
        expected_nan[:, 3] = True
    else:
        expected_nan.view(-1)[3] = True
    assert torch.equal(out.isnan().cpu(), expected_nan)
    with pytest.raises(ValueError, match=r"keep_probability \(f\(P\).*must lie in \[0, 1\]"):
        torch.ops.graddrop.combine(activation, grads, marginalize_batch=marginalize,
                                   keep_function="custom", keep_probability=keep, seed=1)


@cuda
def test_cuda_generator_reproducible(generator):
    activation = torch.randn(64, 100, generator=generator).cuda()
    grads = [torch.randn(64, 100, generator=generator).cuda() for _ in range(2)]
    first, _ = torch.ops.graddrop.combine(
        activation, grads, generator=torch.Generator(device="cuda").manual_seed(SEED))
    again, _ = torch.ops.graddrop.combine(
        activation, grads, generator=torch.Generator(device="cuda").manual_seed(SEED))
    assert_identical_bits(first, again)
    torch.cuda.manual_seed(SEED)
    default, _ = torch.ops.graddrop.combine(activation, grads)
    next_draw, _ = torch.ops.graddrop.combine(activation, grads)
    assert not torch.equal(default, next_draw)
