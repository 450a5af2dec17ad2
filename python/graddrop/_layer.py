"""GradDropLayer: insert between a shared trunk and n task heads; head i consumes output i."""
from __future__ import annotations

import math
import warnings
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from graddrop._ops import (GradDropStatistics, KeepCallable, check_options,
                           combine_with_statistics, group_name_of, purity_shape)

_ONE_HEAD_WARNING = (
    "GradDropFunction received the gradient of only one of its {n} heads. If the task losses "
    "were backpropagated separately (L1.backward(); L2.backward()), every call sees one task and "
    "GradDrop has nothing to combine: call backward once on the sum of the losses.")
_warned_one_head = False


class _CallOptions(NamedTuple):
    """A layer's options as they were when its forward ran: the backward of that forward uses
    them, whatever the layer's attributes say by then (as the C++ layer does)."""
    leak: Optional[List[float]]
    sign_source: str
    marginalize_batch: bool
    keep_function: Union[str, KeepCallable]
    scale: float
    zero_sign: str
    epsilon: float
    keep_grad_norm: bool
    record_statistics: bool
    generator: Optional[torch.Generator]
    seed: Optional[int]
    offset: int
    group_name: Optional[str]


class GradDropFunction(torch.autograd.Function):
    """The autograd node of :class:`GradDropLayer`: forward returns ``num_tasks`` aliases of the
    activation, backward combines every head's gradient with one operator call. Once
    differentiable: double backward is refused."""

    @staticmethod
    def forward(ctx: Any, activation: torch.Tensor, layer: "GradDropLayer"
                ) -> Tuple[torch.Tensor, ...]:
        # Backward must see which heads produced no gradient (None = zero, and the misuse check).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(activation)
        ctx.layer = layer
        ctx.options = _CallOptions(
            leak=layer.leak, sign_source=layer.sign_source,
            marginalize_batch=layer.marginalize_batch, keep_function=layer.keep_function,
            scale=layer.scale, zero_sign=layer.zero_sign, epsilon=layer.epsilon,
            keep_grad_norm=layer.keep_grad_norm, record_statistics=layer.record_statistics,
            generator=layer.generator, seed=layer.seed, offset=layer.offset,
            group_name=layer.group_name)
        # Aliases, not copies: each head gets its own output so autograd routes its gradient to
        # its own slot of backward's grads.
        return tuple(activation.view_as(activation) for _ in range(layer.num_tasks))

    @staticmethod
    def backward(ctx: Any, *grads: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], None]:
        # (torch.compile traces this backward once with symbolic grads and keeps double backward
        # apart itself, so the check is for eager mode.)
        for grad in grads:
            if grad is not None and grad.requires_grad and not torch.compiler.is_compiling():
                raise RuntimeError(
                    "GradDropFunction is not twice differentiable: its random masks have no "
                    "gradient; call backward without create_graph=True")
        (activation,) = ctx.saved_tensors
        layer = ctx.layer
        options = ctx.options
        defined = sum(grad is not None for grad in grads)
        # With a process group the call is collective: a rank whose heads all had no loss this
        # step still joins (its gradients count as zero), or the other ranks would wait for it.
        if defined == 0 and options.group_name is None:
            return None, None
        if defined == 1 and len(grads) > 1:
            _warn_one_head(len(grads))
        out, statistics = combine_with_statistics(
            grads, activation, leak=options.leak, sign_source=options.sign_source,
            marginalize_batch=options.marginalize_batch, keep_function=options.keep_function,
            scale=options.scale, zero_sign=options.zero_sign, epsilon=options.epsilon,
            keep_grad_norm=options.keep_grad_norm, generator=options.generator,
            seed=options.seed, offset=options.offset, statistics=options.record_statistics,
            group_name=options.group_name)
        if options.record_statistics:
            # An in-place copy into the layer's buffer, not a Python attribute: torch.compile
            # keeps a buffer mutation in the compiled backward.
            layer.statistics_buffer.copy_(statistics)
        return out, None


@torch.compiler.disable(
    reason="graddrop.GradDropLayer(generator=...) runs eagerly: torch.compile cannot trace a "
    "torch.Generator argument. Seed the default generator (torch.manual_seed) or pass seed= "
    "to compile the layer")
def _apply_with_generator(activation: torch.Tensor, layer: "GradDropLayer"
                          ) -> Tuple[torch.Tensor, ...]:
    return GradDropFunction.apply(activation, layer)


def _warn_one_head(num_heads: int) -> None:
    global _warned_one_head
    if not _warned_one_head:
        _warned_one_head = True
        warnings.warn(_ONE_HEAD_WARNING.format(n=num_heads), UserWarning, stacklevel=3)


def _number(value: float) -> str:
    """A float as C++'s ostream writes it (6 significant digits): 0, 0.25, 1e-07."""
    return f"{value:g}"


class GradDropLayer(nn.Module):
    r"""GradDrop (gradient sign dropout) between a shared trunk and ``num_tasks`` task heads.

    ``forward(A)`` returns ``num_tasks`` aliases of ``A`` (no copy); head ``i`` consumes output
    ``i``. One ``backward()`` on the sum of the task losses then hands every head's gradient
    ``g_i`` to one call of the ``graddrop::combine`` operator, and the trunk receives
    ``sum_i c_i * g_i`` with ``c_i = l_i + (1 - l_i) M_i``. In eval mode, under
    ``torch.no_grad()``, or when ``A`` does not require grad, the outputs are plain aliases at no
    cost.

    Example::

        layer = graddrop.GradDropLayer(2)
        shared_a, shared_b = layer(trunk(x))
        loss = loss_fn(head_a(shared_a), y_a) + loss_fn(head_b(shared_b), y_b)
        loss.backward()  # one backward: the trunk receives GradDrop's combined gradient

    Args:
        num_tasks: number of heads n (>= 1).
        leak: per task l_i in [0, 1]; ``None`` is all 0 (the paper's GradDrop). 1 passes task i
            through untouched.
        sign_source: s(A) in G_i = s(A) g_i: ``'activation_sign'`` (the paper),
            ``'activation_value'``, or ``'none'`` (for parameter-space use).
        marginalize_batch: sum G_i over dim 0, so purity, draw and masks are per feature.
        keep_function: f(P): ``'linear'`` (0.5 + scale (P - 0.5)), ``'sigmoid'``
            (sigmoid(4 scale (P - 0.5))), or a callable taking the whole purity tensor P and
            returning f(P) of P's shape in [0, 1] (a slower path: P by one operator, f, then the
            masks by the kernel).
        scale: slope of f at P = 0.5; > 0.
        zero_sign: the mask where G_i == 0: ``'drop'`` (0) or ``'keep'`` (1, as Lingvo).
        epsilon: added to sum |G_i| in the purity's denominator and to ||out|| for
            ``keep_grad_norm``; > 0.
        keep_grad_norm: rescale the output so that ||out||_2 = ||sum_i g_i||_2.
        record_statistics: record :class:`GradDropStatistics` at each backward
            (:meth:`last_statistics`).
        generator: draw from this ``torch.Generator`` instead of the device's default one.
        seed, offset: fix the Philox (seed, offset): every call then draws the same U, identical
            on CPU and CUDA. For tests; for reproducible training use ``torch.manual_seed``.
        process_group: a ``torch.distributed`` process group (e.g. ``dist.group.WORLD``) or its
            ``group_name``: data-parallel GradDrop. In marginalised mode every rank then uses the
            purity, draw and masks of the global batch (one all-reduce of the
            ``[num_tasks, features]`` column sums per backward; rank 0's draw), as one process
            would on the concatenated batch. Works under ``DistributedDataParallel``. Every rank
            must run the backward. CPU tensors (Gloo) in this version.

    The options are read when ``forward`` runs: changing an attribute afterwards affects the next
    forward, not the backward of one already run (as the C++ ``GradDropLayer``, which copies its
    options at forward). Invalid options are refused here, by the C++ checks the operator runs.
    """

    def __init__(self, num_tasks: int = 2, *, leak: Optional[Sequence[float]] = None,
                 sign_source: str = "activation_sign", marginalize_batch: bool = True,
                 keep_function: Union[str, KeepCallable] = "linear", scale: float = 1.0,
                 zero_sign: str = "drop", epsilon: float = 1e-7, keep_grad_norm: bool = False,
                 record_statistics: bool = False, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None, offset: int = 0,
                 process_group: Optional[Any] = None) -> None:
        super().__init__()
        check_options(num_tasks=num_tasks, leak=leak, sign_source=sign_source,
                      keep_function=keep_function, scale=scale, zero_sign=zero_sign,
                      epsilon=epsilon, seed=seed, offset=offset)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"graddrop: generator must be a torch.Generator, got {type(generator)}")
        self.num_tasks = num_tasks
        self.leak = [float(x) for x in leak] if leak is not None else None
        self.sign_source = sign_source
        self.marginalize_batch = bool(marginalize_batch)
        self.keep_function = keep_function
        self.scale = float(scale)
        self.zero_sign = zero_sign
        self.epsilon = float(epsilon)
        self.keep_grad_norm = bool(keep_grad_norm)
        self.record_statistics = bool(record_statistics)
        self.generator = generator
        self.seed = seed
        self.offset = int(offset)
        # The name, not the group: the operator takes it, and torch.compile traces a string.
        self.group_name = group_name_of(process_group)
        # [kept_0 .. kept_{n-1}, mean P, conflict] of the last backward; NaN before the first.
        # Not in the state dict: it is a log, not a parameter.
        self.register_buffer("statistics_buffer",
                             torch.full((num_tasks + 2,), math.nan, dtype=torch.float64),
                             persistent=False)
        self._purity_elements = 0

    def forward(self, activation: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``num_tasks`` aliases of ``activation``; in training mode with autograd on, their
        backward is GradDrop's."""
        if not (self.training and torch.is_grad_enabled() and activation.requires_grad):
            return tuple(activation for _ in range(self.num_tasks))
        if self.record_statistics:
            self._purity_elements = math.prod(purity_shape(activation, self.marginalize_batch))
        if self.generator is not None:
            return _apply_with_generator(activation, self)
        return GradDropFunction.apply(activation, self)

    def last_statistics(self) -> Optional[GradDropStatistics]:
        """The statistics of the most recent backward, or ``None`` when ``record_statistics`` is
        off or no backward has run yet. Reading them synchronises with the device."""
        if not self.record_statistics:
            return None
        values = self.statistics_buffer
        if bool(torch.isnan(values).all()):
            return None
        return GradDropStatistics.from_tensor(values, self._purity_elements)

    def extra_repr(self) -> str:
        leak = self.leak if self.leak is not None else [0.0] * self.num_tasks
        keep = "custom" if callable(self.keep_function) else self.keep_function
        return (f"num_tasks={self.num_tasks}, leak=[{', '.join(_number(x) for x in leak)}], "
                f"sign_source={self.sign_source}, marginalize_batch={self.marginalize_batch}, "
                f"keep_function={keep}, scale={_number(self.scale)}, zero_sign={self.zero_sign}, "
                f"epsilon={_number(self.epsilon)}, keep_grad_norm={self.keep_grad_norm}")
