"""graddrop.GradDropLayer and the functional API in eager mode."""
import pathlib
import subprocess
import sys
import warnings

import pytest
import torch

import graddrop
import graddrop._layer

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def heads_and_loss(outputs, generator, device="cpu"):
    """Fixed linear heads and a loss per head, so every head's gradient is known."""
    losses = []
    for output in outputs:
        weight = torch.randn(output.shape[-1], 3, generator=generator).to(device)
        losses.append((output @ weight).tanh().sum())
    return losses


def test_package_loads_its_own_library():
    assert graddrop.LIBRARY_PATH.endswith("lib/libgraddrop.so")
    assert hasattr(torch.ops.graddrop, "combine") and hasattr(torch.ops.graddrop, "purity")
    assert graddrop._build_info.TORCH_VERSION == torch.__version__


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_refuses_another_torch_version():
    result = run_python("import torch; torch.__version__ = '1.2.3'; import graddrop")
    assert result.returncode != 0
    assert (f"graddrop was built against torch {torch.__version__} but this environment has "
            "torch 1.2.3") in result.stderr


def test_import_of_the_source_folder_says_to_install():
    source = pathlib.Path(__file__).resolve().parents[3] / "python"
    result = run_python(f"import sys; sys.path.insert(0, {str(source)!r}); import graddrop")
    assert result.returncode != 0
    assert "pip install --no-build-isolation ." in result.stderr


def test_repr_matches_the_cpp_pretty_print():
    layer = graddrop.GradDropLayer(3, leak=[0.0, 0.25, 1.0], keep_function="sigmoid", scale=2.0)
    assert repr(layer) == (
        "GradDropLayer(num_tasks=3, leak=[0, 0.25, 1], sign_source=activation_sign, "
        "marginalize_batch=True, keep_function=sigmoid, scale=2, zero_sign=drop, "
        "epsilon=1e-07, keep_grad_norm=False)")
    custom = graddrop.GradDropLayer(2, keep_function=lambda p: p)
    assert "leak=[0, 0]" in repr(custom) and "keep_function=custom" in repr(custom)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(num_tasks=0), ValueError, r"num_tasks must be >= 1, got 0"),
    (dict(num_tasks=2, leak=[0.0]), ValueError, r"leak must hold num_tasks \(2\) values, got 1"),
    (dict(num_tasks=2, leak=[0.0, 1.5]), ValueError, r"leak\[1\] must be in \[0, 1\], got 1.5"),
    (dict(sign_source="sideways"), ValueError, r"sign_source must be one of .* got 'sideways'"),
    (dict(keep_function="cubic"), ValueError, r"keep_function must be one of .* got 'cubic'"),
    (dict(zero_sign="maybe"), ValueError, r"zero_sign must be one of .* got 'maybe'"),
    (dict(scale=0.0), ValueError, r"scale must be a finite number > 0, got 0"),
    (dict(epsilon=float("nan")), ValueError, r"epsilon must be a finite number > 0, got nan"),
    (dict(offset=4), ValueError, r"offset \(4\) is used only with an explicit seed"),
    (dict(offset=-1, seed=1), ValueError, r"offset must be >= 0, got -1"),
    (dict(generator=7), TypeError, r"generator must be a torch.Generator"),
    (dict(process_group=object()), TypeError, r"process_group must be a torch.distributed"),
])
def test_bad_options_are_refused_with_a_clear_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        graddrop.GradDropLayer(**kwargs)


def test_forward_returns_aliases():
    layer = graddrop.GradDropLayer(3)
    activation = torch.randn(4, 5, requires_grad=True)
    outputs = layer(activation)
    assert len(outputs) == 3
    for output in outputs:
        assert output.data_ptr() == activation.data_ptr() and output.shape == activation.shape
        assert output.grad_fn is not None
    layer.eval()
    assert all(output is activation for output in layer(activation))
    layer.train()
    with torch.no_grad():
        assert all(output is activation for output in layer(activation))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_tasks", [1, 2, 3])
@pytest.mark.parametrize("marginalize_batch", [True, False])
def test_layer_backward_is_combine_of_the_heads_gradients(generator, seed, device, num_tasks,
                                                          marginalize_batch):
    options = dict(leak=[0.0, 0.5, 0.1][:num_tasks], marginalize_batch=marginalize_batch,
                   keep_function="sigmoid", zero_sign="keep")
    layer = graddrop.GradDropLayer(num_tasks, generator=torch.Generator(device).manual_seed(seed),
                                   **options)
    trunk_input = torch.randn(16, 24, generator=generator).to(device).requires_grad_()
    activation = trunk_input * 2.0
    losses = heads_and_loss(layer(activation), torch.Generator().manual_seed(seed + 1), device)
    sum(losses).backward()

    # By hand: each head's gradient at the activation, then one combine with the same draw.
    plain = activation.detach().requires_grad_()
    head_losses = heads_and_loss([plain] * num_tasks, torch.Generator().manual_seed(seed + 1),
                                 device)
    grads = [torch.autograd.grad(loss, plain)[0] for loss in head_losses]
    expected = graddrop.combine(grads, plain.detach(),
                                generator=torch.Generator(device).manual_seed(seed), **options)
    torch.testing.assert_close(trunk_input.grad, 2.0 * expected)


def test_fixed_seed_gives_the_same_draw_as_combine(generator):
    layer = graddrop.GradDropLayer(2, seed=11, offset=2)
    activation = torch.randn(8, 32, generator=generator, requires_grad=True)
    grads = [torch.randn(8, 32, generator=generator) for _ in range(2)]
    outputs = layer(activation)
    torch.autograd.backward(outputs, grads)
    expected = graddrop.combine(grads, activation.detach(), seed=11, offset=2)
    assert torch.equal(activation.grad, expected)


def test_callable_keep_function(generator):
    activation = torch.randn(32, 64, generator=generator)
    grads = [torch.randn(32, 64, generator=generator) for _ in range(3)]
    # The identity is the linear keep function at scale 1: same masks, same draw.
    by_name = graddrop.combine(grads, activation, keep_function="linear", seed=5)
    by_callable = graddrop.combine(grads, activation, keep_function=lambda p: p, seed=5)
    torch.testing.assert_close(by_callable, by_name)
    # f = 1 > U: every task with a positive signal is kept, every negative one dropped.
    positive_only = graddrop.combine(grads, activation, keep_function=torch.ones_like, seed=5)
    expected = sum(g * ((torch.sign(activation) * g).sum(0) > 0) for g in grads)
    torch.testing.assert_close(positive_only, expected)
    # Through the layer.
    layer = graddrop.GradDropLayer(3, keep_function=lambda p: p.pow(2), seed=5)
    leaf = activation.clone().requires_grad_()
    torch.autograd.backward(layer(leaf), grads)
    expected = graddrop.combine(grads, activation, keep_function=lambda p: p.pow(2), seed=5)
    assert torch.equal(leaf.grad, expected)


def test_callable_keep_function_out_of_range_is_refused(generator):
    activation = torch.randn(4, 6, generator=generator)
    grads = [torch.randn(4, 6, generator=generator) for _ in range(2)]
    with pytest.raises(ValueError, match=r"keep_probability \(f\(P\), the keep function.s values\) must lie in \[0, 1\]"):
        graddrop.combine(grads, activation, keep_function=lambda p: p + 2)
    with pytest.raises(TypeError, match=r"keep function must return a Tensor"):
        graddrop.combine(grads, activation, keep_function=lambda p: 0.5)


def test_statistics(generator):
    layer = graddrop.GradDropLayer(3, record_statistics=True, seed=3)
    assert layer.last_statistics() is None
    activation = torch.randn(16, 40, generator=generator, requires_grad=True)
    grads = [torch.randn(16, 40, generator=generator) for _ in range(3)]
    torch.autograd.backward(layer(activation), grads)
    statistics = layer.last_statistics()
    _, expected = graddrop.combine(grads, activation.detach(), seed=3, statistics=True)
    assert statistics == expected
    assert len(statistics.kept_fraction) == 3 and statistics.purity_elements == 40
    assert all(0 <= kept <= 1 for kept in statistics.kept_fraction)
    assert 0 <= statistics.mean_purity <= 1 and 0 <= statistics.conflict_fraction <= 1
    assert graddrop.GradDropLayer(2).last_statistics() is None  # not recorded


def test_separate_backward_calls_warn_once(generator):
    graddrop._layer._warned_one_head = False
    layer = graddrop.GradDropLayer(2)
    activation = torch.randn(4, 8, generator=generator, requires_grad=True)
    first, second = layer(activation)
    with pytest.warns(UserWarning, match=r"only one of its 2 heads"):
        first.sum().backward(retain_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second.sum().backward()  # once per process


def test_unused_head_counts_as_zero(generator):
    activation = torch.randn(6, 10, generator=generator)
    grads = [torch.randn(6, 10, generator=generator) for _ in range(3)]
    layer = graddrop.GradDropLayer(3, seed=9)
    leaf = activation.clone().requires_grad_()
    outputs = layer(leaf)
    torch.autograd.backward([outputs[0], outputs[2]], [grads[0], grads[2]])
    expected = graddrop.combine([grads[0], None, grads[2]], activation, seed=9)
    assert torch.equal(leaf.grad, expected)
    assert torch.equal(expected, graddrop.combine([grads[0], torch.zeros_like(grads[1]),
                                                   grads[2]], activation, seed=9))


def test_double_backward_is_refused(generator):
    layer = graddrop.GradDropLayer(2)
    activation = torch.randn(4, 5, generator=generator, requires_grad=True)
    first, second = layer(activation)
    loss = (first.pow(2) + second.pow(3)).sum()
    with pytest.raises(RuntimeError, match=r"not twice differentiable"):
        torch.autograd.grad(loss, activation, create_graph=True)


def test_purity_and_purity_shape(generator):
    activation = torch.randn(8, 3, 5, generator=generator)
    grads = [torch.randn(8, 3, 5, generator=generator) for _ in range(2)]
    signals = [(torch.sign(activation) * g).sum(0) for g in grads]
    expected = 0.5 * (1 + sum(signals) / (sum(s.abs() for s in signals) + 1e-7))
    torch.testing.assert_close(graddrop.purity(grads, activation), expected)
    assert graddrop.purity_shape(activation) == [3, 5]
    assert graddrop.purity_shape(activation, marginalize_batch=False) == [8, 3, 5]
    assert list(graddrop.purity(grads, activation, marginalize_batch=False).shape) == [8, 3, 5]


def test_combine_with_uniform_and_leak(generator):
    activation = torch.randn(5, 7, generator=generator)
    grads = [torch.randn(5, 7, generator=generator) for _ in range(2)]
    uniform = torch.rand(7, generator=generator)
    # Leak 1 everywhere: nothing is dropped.
    assert torch.allclose(graddrop.combine(grads, activation, leak=[1, 1], uniform=uniform),
                          grads[0] + grads[1])
    # U = 0 keeps every positive signal and drops every negative one, as P > 0.
    out = graddrop.combine([grads[0]], activation, uniform=torch.zeros(7))
    positive = (torch.sign(activation) * grads[0]).sum(0) > 0
    torch.testing.assert_close(out, grads[0] * positive)


def test_bad_input_is_refused_with_a_clear_error(generator):
    activation = torch.randn(4, 3, generator=generator)
    grad = torch.randn(4, 3, generator=generator)
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \[4, 4\]"):
        graddrop.combine([grad, torch.randn(4, 4)], activation)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype Double"):
        graddrop.combine([grad.double()], activation)
    with pytest.raises(TypeError, match=r"activation must be float32, float64, float16 or"):
        graddrop.combine([grad.int()], activation.int())
    with pytest.raises(ValueError, match=r"uniform \(U\) must have the purity's shape \[3\]"):
        graddrop.combine([grad], activation, uniform=torch.rand(4))
    with pytest.raises(ValueError, match=r"leak must hold num_tasks \(1\) values, got 2"):
        graddrop.combine([grad], activation, leak=[0.0, 0.0])
    layer = graddrop.GradDropLayer(2)
    with pytest.raises(ValueError, match=r"marginalize_batch needs an activation with a batch"):
        torch.autograd.backward(layer(torch.tensor(1.0, requires_grad=True)),
                                [torch.tensor(1.0), torch.tensor(2.0)])


def test_forward_captures_the_options(generator):
    """The options are read at forward, as in the C++ layer: an edit after forward changes the
    next forward, not the pending backward."""
    activation = torch.randn(6, 64, generator=generator, requires_grad=True)
    layer = graddrop.GradDropLayer(2, seed=11)
    outputs = layer(activation)
    layer.leak = [1.0, 1.0]  # would pass both gradients through untouched
    losses = heads_and_loss(outputs, generator)
    grads = torch.autograd.grad(losses, outputs, retain_graph=True)
    (got,) = torch.autograd.grad(sum(losses), activation)
    expected = graddrop.combine(list(grads), activation.detach(), seed=11)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, grads[0] + grads[1])  # the edit did not apply
    next_outputs = layer(activation)
    next_losses = heads_and_loss(next_outputs, generator)
    next_grads = torch.autograd.grad(next_losses, next_outputs, retain_graph=True)
    (passed,) = torch.autograd.grad(sum(next_losses), activation)
    torch.testing.assert_close(passed, next_grads[0] + next_grads[1])


def test_out_writes_into_the_given_tensor(generator):
    activation = torch.randn(6, 5, generator=generator)
    grads = [torch.randn(6, 5, generator=generator) for _ in range(3)]
    expected = graddrop.combine(grads, activation, seed=4)
    out = torch.empty(6, 5)
    version = out._version
    assert graddrop.combine(grads, activation, seed=4, out=out) is out
    assert torch.equal(out, expected) and out._version > version
    # A task gradient may be the output.
    assert graddrop.combine(grads, activation, seed=4, out=grads[1]) is grads[1]
    assert torch.equal(grads[1], expected)
    with pytest.raises(ValueError, match=r"out has shape \[6, 4\]"):
        graddrop.combine(grads, activation, out=torch.empty(6, 4))
    with pytest.raises(TypeError, match=r"out has dtype Double"):
        graddrop.combine(grads, activation, out=torch.empty(6, 5, dtype=torch.float64))


def test_negative_seed_is_a_64_bit_key(generator):
    """The operator's seed is the 64-bit Philox key stored as int64: -1 is the key 2**64 - 1."""
    activation = torch.randn(16, 256, generator=generator)
    grads = [torch.randn(16, 256, generator=generator) for _ in range(2)]
    first = graddrop.combine(grads, activation, seed=-1)
    assert torch.equal(first, graddrop.combine(grads, activation, seed=-1))
    assert not torch.equal(first, graddrop.combine(grads, activation, seed=1))


def reference_combine(grads, activation, uniform, marginalize_batch=True, epsilon=1e-7):
    """GradDrop in float64 with an explicit U, written from the formula (docs/design.md)."""
    a = activation.double()
    signals = [torch.sign(a) * g.double() for g in grads]
    if marginalize_batch:
        signals = [s.sum(0) for s in signals]
    signed = sum(signals)
    absolute = sum(s.abs() for s in signals)
    purity = 0.5 * (1 + signed / (absolute + epsilon))
    u = uniform.double()
    out = torch.zeros_like(a)
    for g, s in zip(grads, signals):
        mask = ((purity > u) & (s > 0)) | ((purity < u) & (s < 0))
        out += mask.double() * g.double()
    return out


@pytest.mark.parametrize("marginalize_batch", [True, False])
def test_forty_heads(generator, marginalize_batch):
    """Forty heads (the paper's CelebA setting): the layer's gradient is combine's for its seed,
    and combine with an explicit U matches the float64 formula."""
    heads = 40
    activation = torch.randn(32, 24, generator=generator, requires_grad=True)
    layer = graddrop.GradDropLayer(heads, seed=9, marginalize_batch=marginalize_batch)
    outputs = layer(activation)
    losses = heads_and_loss(outputs, generator)
    grads = torch.autograd.grad(losses, outputs, retain_graph=True)
    (got,) = torch.autograd.grad(sum(losses), activation)
    detached = activation.detach()
    assert torch.equal(got, graddrop.combine(list(grads), detached, seed=9,
                                             marginalize_batch=marginalize_batch))
    uniform = torch.rand(graddrop.purity_shape(detached, marginalize_batch), generator=generator)
    explicit = graddrop.combine(list(grads), detached, uniform=uniform,
                                marginalize_batch=marginalize_batch)
    expected = reference_combine(grads, detached, uniform, marginalize_batch)
    torch.testing.assert_close(explicit.double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, sum(grads))
