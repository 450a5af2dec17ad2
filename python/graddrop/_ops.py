"""The functional API over the dispatcher operators ``torch.ops.graddrop.{combine,purity}``.
Arguments pass through to the C++ operators, which check them (and compute the shapes of meta
and fake tensors for ``torch.compile``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

#: A user keep function f: the whole purity tensor P (values in [0, 1]) in, a tensor of P's
#: shape with values in [0, 1] out.
KeepCallable = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GradDropStatistics:
    """What one ``combine`` call (one backward of the layer) did, counted over P's elements
    (features when the batch is marginalised)."""

    #: Per task, the fraction of P's elements where its mask kept the gradient (before the leak).
    kept_fraction: List[float]
    #: The mean of the purity P.
    mean_purity: float
    #: The fraction of P's elements where some task's signal is > 0 and another's < 0.
    conflict_fraction: float
    #: How many elements P has.
    purity_elements: int

    @staticmethod
    def from_tensor(values: torch.Tensor, purity_elements: int) -> "GradDropStatistics":
        """From the operator's float64 ``[kept_0 .. kept_{n-1}, mean P, conflict]``."""
        host = values.detach().to("cpu", torch.float64).tolist()
        return GradDropStatistics(kept_fraction=host[:-2], mean_purity=host[-2],
                                  conflict_fraction=host[-1], purity_elements=purity_elements)


def purity_shape(activation: torch.Tensor, marginalize_batch: bool = True) -> List[int]:
    """The shape of P for ``activation`` (the shape an explicit ``uniform`` must have). A 0-d
    activation with ``marginalize_batch`` has no batch to marginalise: the C++ shape function
    refuses it (``ValueError``), as ``combine`` does."""
    if marginalize_batch and activation.dim() == 0:
        torch.ops.graddrop.purity(activation.detach().to("meta"), [None], "activation_sign",
                                  True, 1e-7)
    return list(activation.shape[1:] if marginalize_batch else activation.shape)


def check_options(*, num_tasks: int, leak: Optional[Sequence[float]], sign_source: str,
                  keep_function: Union[str, KeepCallable], scale: float, zero_sign: str,
                  epsilon: float, seed: Optional[int] = None, offset: int = 0) -> None:
    """Runs the C++ checks of these options (the ones the operator runs on every call), so that
    a layer refuses bad options when it is built. Raises ``ValueError`` naming the first invalid
    setting (``TypeError`` for a value of the wrong type)."""
    torch.ops.graddrop.check_options(
        num_tasks, [float(x) for x in leak] if leak is not None else [], sign_source,
        "custom" if callable(keep_function) else keep_function, float(scale), zero_sign,
        float(epsilon), seed, offset)


def group_name_of(process_group: Any) -> Optional[str]:
    """The c10d registry name the operator takes: ``None`` stays ``None``, a string is a name
    already, a ``torch.distributed`` group gives its ``group_name``."""
    if process_group is None or isinstance(process_group, str):
        return process_group
    name = getattr(process_group, "group_name", None)
    if not isinstance(name, str):
        raise TypeError("graddrop: process_group must be a torch.distributed ProcessGroup (or its "
                        f"group_name), got {type(process_group)}")
    return name


def purity(grads: Sequence[Optional[torch.Tensor]], activation: torch.Tensor, *,
           sign_source: str = "activation_sign", marginalize_batch: bool = True,
           epsilon: float = 1e-7) -> torch.Tensor:
    """The purity P = (1 + sum_i G_i / sum_i |G_i|) / 2 with G_i = s(A) g_i (summed over the
    batch when ``marginalize_batch``), in float32 (float64 for float64 inputs).
    ``None`` entries of ``grads`` count as zero."""
    return torch.ops.graddrop.purity(activation, list(grads), sign_source, marginalize_batch,
                                     epsilon)


def _keep_probability(function: KeepCallable, grads: List[Optional[torch.Tensor]],
                      activation: torch.Tensor, sign_source: str, marginalize_batch: bool,
                      epsilon: float) -> torch.Tensor:
    purity_values = torch.ops.graddrop.purity(activation, grads, sign_source, marginalize_batch,
                                              epsilon)
    keep = function(purity_values)
    if not isinstance(keep, torch.Tensor):
        raise TypeError(f"graddrop: the keep function must return a Tensor, got {type(keep)}")
    # A NaN purity (a NaN or Inf gradient) must reach the kernel as a NaN f(P), whatever the
    # user's f makes of it, so that the affected outputs come out non-finite (as in C++). A result
    # of another shape, dtype or device is left for the operator's checks to refuse.
    if (keep.shape == purity_values.shape and keep.device == purity_values.device
            and keep.is_floating_point()):
        keep = keep.masked_fill(torch.isnan(purity_values), math.nan)
    return keep


def combine_with_statistics(
        grads: Sequence[Optional[torch.Tensor]], activation: torch.Tensor, *,
        leak: Optional[Sequence[float]] = None, sign_source: str = "activation_sign",
        marginalize_batch: bool = True, keep_function: Union[str, KeepCallable] = "linear",
        scale: float = 1.0, zero_sign: str = "drop", epsilon: float = 1e-7,
        keep_grad_norm: bool = False, generator: Optional[torch.Generator] = None,
        uniform: Optional[torch.Tensor] = None, seed: Optional[int] = None, offset: int = 0,
        statistics: bool = False, group_name: Optional[str] = None,
        out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One operator call (two with a callable keep function); returns the operator's
    ``(out, statistics tensor)``. Traceable by torch.compile (without ``out``)."""
    grads = list(grads)
    keep_probability = None
    keep_name = keep_function
    if callable(keep_function):
        keep_probability = _keep_probability(keep_function, grads, activation, sign_source,
                                             marginalize_batch, epsilon)
        keep_name = "custom"
    arguments = dict(
        sign_source=sign_source, marginalize_batch=marginalize_batch, keep_function=keep_name,
        scale=float(scale), zero_sign=zero_sign, epsilon=float(epsilon),
        keep_grad_norm=keep_grad_norm, generator=generator, uniform=uniform,
        keep_probability=keep_probability, seed=seed, offset=offset, statistics=statistics,
        group_name=group_name)
    leak_values = [float(x) for x in leak] if leak is not None else []
    if out is not None:
        return torch.ops.graddrop.combine.out(activation, grads, leak_values, **arguments, out=out)
    return torch.ops.graddrop.combine(activation, grads, leak_values, **arguments)


def combine(grads: Sequence[Optional[torch.Tensor]], activation: torch.Tensor, *,
            leak: Optional[Sequence[float]] = None, sign_source: str = "activation_sign",
            marginalize_batch: bool = True, keep_function: Union[str, KeepCallable] = "linear",
            scale: float = 1.0, zero_sign: str = "drop", epsilon: float = 1e-7,
            keep_grad_norm: bool = False, generator: Optional[torch.Generator] = None,
            uniform: Optional[torch.Tensor] = None, seed: Optional[int] = None, offset: int = 0,
            statistics: bool = False, process_group: Any = None,
            out: Optional[torch.Tensor] = None
            ) -> Union[torch.Tensor, Tuple[torch.Tensor, GradDropStatistics]]:
    """GradDrop's combined gradient ``sum_i c_i * g_i`` for any set of per-task gradients
    (docs/design.md): activation gradients, or flattened parameter gradients with
    ``sign_source='none', marginalize_batch=False``. Every argument is checked by the C++
    operator, which raises ``ValueError`` (a value or shape out of range), ``TypeError`` (a wrong
    dtype or layout) or ``RuntimeError`` (the rest), naming the argument and the value.

    Args:
        grads: one gradient per task, each of ``activation``'s shape, dtype and device;
            ``None`` counts as zero.
        activation: the shared activation A (float32, float64, float16 or bfloat16).
        leak, sign_source, marginalize_batch, keep_function, scale, zero_sign, epsilon,
            keep_grad_norm: as for :class:`GradDropLayer`.
        generator: draw U from this generator instead of the device's default one.
        uniform: an explicit U of P's shape (:func:`purity_shape`) in [0, 1); no generator used.
        seed, offset: a fixed Philox (seed, offset): the same U on every call and device.
        statistics: also return a :class:`GradDropStatistics`.
        process_group: a ``torch.distributed`` group (or its ``group_name``): data-parallel
            GradDrop, P and the masks of the global batch (see :class:`GradDropLayer`). Every
            rank of the group must make the call.
        out: write the result into this tensor (``activation``'s shape, dtype and device,
            contiguous; it may be one of ``grads``) instead of a new one, as PyTorch's ``out=``.

    Returns:
        the combined gradient (a new contiguous tensor of ``activation``'s dtype, or ``out``), or
        ``(combined, statistics)`` when ``statistics`` is true.
    """
    result, values = combine_with_statistics(
        grads, activation, leak=leak, sign_source=sign_source,
        marginalize_batch=marginalize_batch, keep_function=keep_function, scale=scale,
        zero_sign=zero_sign, epsilon=epsilon, keep_grad_norm=keep_grad_norm,
        generator=generator, uniform=uniform, seed=seed, offset=offset, statistics=statistics,
        group_name=group_name_of(process_group), out=out)
    if not statistics:
        return result
    return result, GradDropStatistics.from_tensor(
        values, math.prod(purity_shape(activation, marginalize_batch)))
