"""torch.compile and the operators' fake kernels (torch.library.opcheck)."""
import pytest
import torch
from torch import nn

import graddrop

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


class TwoTaskModel(nn.Module):
    def __init__(self, num_tasks=2, **options):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.graddrop = graddrop.GradDropLayer(num_tasks, **options)
        self.heads = nn.ModuleList(nn.Linear(32, 3) for _ in range(num_tasks))

    def forward(self, x, targets):
        shared = self.graddrop(self.trunk(x))
        return sum(nn.functional.cross_entropy(head(features), target)
                   for head, features, target in zip(self.heads, shared, targets))


def gradients(model, x, targets, seed, step=None):
    """The parameters' gradients after one step of `step` (the model itself, or compiled)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the operator draws from the default generator
    (model if step is None else step)(x, targets).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# Inductor (code generation, a C++ compile on the CPU: slow on small CI machines) for the default
# layer; AOTAutograd without code generation ("aot_eager", the same tracing of forward and
# backward through the fake kernels) for the other options.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend, options", [
    ("inductor", dict()),
    ("aot_eager", dict(keep_function="sigmoid", leak=[0.0, 0.2, 0.0], marginalize_batch=False)),
    ("aot_eager", dict(keep_function=lambda p: p * p, record_statistics=True)),
], ids=["default", "sigmoid-per-element", "callable-statistics"])
def test_compiled_step_matches_eager(seed, device, backend, options):
    torch._dynamo.reset()
    num_tasks = 3 if "leak" in options else 2
    torch.manual_seed(seed)
    model = TwoTaskModel(num_tasks, **options).to(device)
    x = torch.randn(16, 12, device=device)
    targets = [torch.randint(0, 3, (16,), device=device) for _ in range(num_tasks)]
    eager = gradients(model, x, targets, seed)
    eager_statistics = model.graddrop.last_statistics()
    compiled = torch.compile(model, fullgraph=True, backend=backend)  # fails on a graph break
    for _ in range(2):  # the second step reuses the compiled graphs
        got = gradients(model, x, targets, seed, step=compiled)
        assert got.keys() == eager.keys()
        for name in eager:
            torch.testing.assert_close(got[name], eager[name], msg=name)
    if options.get("record_statistics"):
        assert model.graddrop.last_statistics() == eager_statistics
    # The combined gradient really went through GradDrop: it differs from the plain sum.
    model.graddrop.eval()
    plain = gradients(model, x, targets, seed)
    assert any(not torch.allclose(plain[name], eager[name]) for name in eager)


def combine_samples(device):
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(6, 5, generator=generator).to(device)
    grads = [torch.randn(6, 5, generator=generator).to(device) for _ in range(3)]
    uniform = torch.rand(5, generator=generator).to(device)
    keep = torch.rand(5, generator=generator).to(device)
    return [
        ((activation, grads), dict(uniform=uniform)),
        ((activation, grads, [0.0, 0.5, 1.0]),
         dict(seed=3, offset=1, statistics=True, keep_function="sigmoid", scale=2.0)),
        ((activation, [grads[0], None, grads[2]]),
         dict(marginalize_batch=False, uniform=uniform.expand(6, 5).contiguous(),
              keep_grad_norm=True, zero_sign="keep")),
        ((activation, grads), dict(keep_function="custom", keep_probability=keep, seed=1)),
        ((activation.bfloat16(), [g.bfloat16() for g in grads]),
         dict(seed=2, statistics=True, sign_source="activation_value")),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_combine(device):
    for args, kwargs in combine_samples(device):
        torch.library.opcheck(torch.ops.graddrop.combine.default, args, kwargs)


def purity_samples(device):
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(6, 5, generator=generator).to(device)
    grads = [torch.randn(6, 5, generator=generator).to(device), None]
    return [(activation, grads), (activation, grads, "none", False)]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_purity(device):
    for args in purity_samples(device):
        torch.library.opcheck(torch.ops.graddrop.purity.default, args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor", "test_aot_dispatch_static"))


# purity is a C++ CompositeImplicitAutograd kernel, traced by running its C++ body with symbolic
# sizes: that body is SymInt-aware, so a callable keep function traces with dynamic shapes too.
def test_opcheck_purity_dynamic_shapes():
    for args in purity_samples("cpu"):
        torch.library.opcheck(torch.ops.graddrop.purity.default, args,
                              test_utils=("test_aot_dispatch_dynamic",))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        activation = torch.empty(7, 4, 3)
        out, stats = torch.ops.graddrop.combine(activation, [torch.empty(7, 4, 3)] * 2,
                                                statistics=True)
        assert out.shape == (7, 4, 3) and stats.shape == (4,) and stats.dtype == torch.float64
        _, no_stats = torch.ops.graddrop.combine(activation, [torch.empty(7, 4, 3)])
        assert no_stats.shape == (0,)
        assert torch.ops.graddrop.purity(activation, [activation]).shape == (4, 3)


def test_layer_with_a_generator_runs_eagerly_inside_compiled_code(seed):
    """torch.compile cannot trace a torch.Generator argument: the layer is then left out of the
    graph (a graph break with the reason), and gives the eager result."""
    torch._dynamo.reset()
    torch.manual_seed(seed)
    model = TwoTaskModel(2, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(8, 12)
    targets = [torch.randint(0, 3, (8,)) for _ in range(2)]
    eager = gradients(model, x, targets, seed)
    model.graddrop.generator.manual_seed(seed)
    got = gradients(model, x, targets, seed, step=torch.compile(model, backend="aot_eager"))
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], msg=name)
    torch._dynamo.reset()  # else the frames compiled above, with their graph break, are reused
    with pytest.raises(Exception, match=r"cannot trace a torch.Generator argument"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(x, targets)
