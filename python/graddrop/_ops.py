"""The functional API over the dispatcher operators ``torch.ops.graddrop.{combine,purity}``,
and their fake (meta) implementations for ``torch.compile``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

SIGN_SOURCES = ("activation_sign", "activation_value", "none")
KEEP_FUNCTIONS = ("linear", "sigmoid")
ZERO_SIGNS = ("drop", "keep")

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
    """The shape of P for ``activation`` (the shape an explicit ``uniform`` must have)."""
    return list(activation.shape[1:] if marginalize_batch else activation.shape)


def check_options(*, leak: Optional[Sequence[float]], num_tasks: int, sign_source: str,
                  keep_function: Union[str, KeepCallable], scale: float, zero_sign: str,
                  epsilon: float, seed: Optional[int] = None, offset: int = 0) -> None:
    """Raises ValueError (TypeError for a wrong type) naming the first invalid setting, with
    the messages of the C++ ``GradDropOptions::validate``."""
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"graddrop: num_tasks must be an int >= 1, got {num_tasks!r}")
    if leak is not None:
        if len(leak) != num_tasks:
            raise ValueError(f"graddrop: leak must hold num_tasks ({num_tasks}) values, "
                             f"got {len(leak)}")
        for task, value in enumerate(leak):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"graddrop: leak[{task}] must be in [0, 1], got {value}")
    if sign_source not in SIGN_SOURCES:
        raise ValueError(f"graddrop: sign_source must be one of {SIGN_SOURCES}, "
                         f"got {sign_source!r}")
    if not callable(keep_function) and keep_function not in KEEP_FUNCTIONS:
        raise ValueError(f"graddrop: keep_function must be one of {KEEP_FUNCTIONS} or a callable "
                         f"(Tensor P -> Tensor f(P)), got {keep_function!r}")
    if zero_sign not in ZERO_SIGNS:
        raise ValueError(f"graddrop: zero_sign must be one of {ZERO_SIGNS}, got {zero_sign!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"graddrop: scale must be a finite number > 0, got {scale}")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"graddrop: epsilon must be a finite number > 0, got {epsilon}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"graddrop: seed must be in [0, 2**63), got {seed}")
    if offset < 0 or offset >= 2**63:
        raise ValueError(f"graddrop: offset must be in [0, 2**63), got {offset}")
    if offset != 0 and seed is None:
        raise ValueError(f"graddrop: offset ({offset}) is used only with an explicit seed")


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
        statistics: bool = False, group_name: Optional[str] = None
        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One operator call (two with a callable keep function); returns the operator's
    ``(out, statistics tensor)``. Traceable by torch.compile."""
    grads = list(grads)
    keep_probability = None
    keep_name = keep_function
    if callable(keep_function):
        keep_probability = _keep_probability(keep_function, grads, activation, sign_source,
                                             marginalize_batch, epsilon)
        keep_name = "custom"
    return torch.ops.graddrop.combine(
        activation, grads, [float(x) for x in leak] if leak is not None else [],
        sign_source=sign_source, marginalize_batch=marginalize_batch, keep_function=keep_name,
        scale=float(scale), zero_sign=zero_sign, epsilon=float(epsilon),
        keep_grad_norm=keep_grad_norm, generator=generator, uniform=uniform,
        keep_probability=keep_probability, seed=seed, offset=offset, statistics=statistics,
        group_name=group_name)


def combine(grads: Sequence[Optional[torch.Tensor]], activation: torch.Tensor, *,
            leak: Optional[Sequence[float]] = None, sign_source: str = "activation_sign",
            marginalize_batch: bool = True, keep_function: Union[str, KeepCallable] = "linear",
            scale: float = 1.0, zero_sign: str = "drop", epsilon: float = 1e-7,
            keep_grad_norm: bool = False, generator: Optional[torch.Generator] = None,
            uniform: Optional[torch.Tensor] = None, seed: Optional[int] = None, offset: int = 0,
            statistics: bool = False, process_group: Any = None
            ) -> Union[torch.Tensor, Tuple[torch.Tensor, GradDropStatistics]]:
    """GradDrop's combined gradient ``sum_i c_i * g_i`` for any set of per-task gradients
    (DESIGN.md section 1): activation gradients, or flattened parameter gradients with
    ``sign_source='none', marginalize_batch=False``.

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

    Returns:
        the combined gradient (a new contiguous tensor of ``activation``'s dtype), or
        ``(combined, statistics)`` when ``statistics`` is true.
    """
    check_options(leak=leak, num_tasks=len(grads), sign_source=sign_source,
                  keep_function=keep_function, scale=scale, zero_sign=zero_sign,
                  epsilon=epsilon, seed=seed, offset=offset)
    out, values = combine_with_statistics(
        grads, activation, leak=leak, sign_source=sign_source,
        marginalize_batch=marginalize_batch, keep_function=keep_function, scale=scale,
        zero_sign=zero_sign, epsilon=epsilon, keep_grad_norm=keep_grad_norm,
        generator=generator, uniform=uniform, seed=seed, offset=offset, statistics=statistics,
        group_name=group_name_of(process_group))
    if not statistics:
        return out
    return out, GradDropStatistics.from_tensor(
        values, math.prod(purity_shape(activation, marginalize_batch)))


def _has_kernel(name: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(name, key)


def register_fake_kernels() -> None:
    """Fake (meta) implementations, so torch.compile and FakeTensor tracing see the outputs'
    shapes without running a kernel. combine's replaces the library's C++ Meta kernel, which
    runs the device kernels' checks on concrete sizes and so cannot trace dynamic (symbolic)
    shapes; purity's is registered only where no Meta or composite kernel exists."""
    if not _has_kernel("graddrop::combine", "CompositeExplicitAutograd"):
        @torch.library.register_fake("graddrop::combine", allow_override=True)
        def _combine_fake(activation, grads, leak=(), sign_source="activation_sign",
                          marginalize_batch=True, keep_function="linear", scale=1.0,
                          zero_sign="drop", epsilon=1e-7, keep_grad_norm=False, generator=None,
                          uniform=None, keep_probability=None, seed=None, offset=0,
                          statistics=False, group_name=None):
            torch._check(len(grads) >= 1,
                         lambda: "graddrop: grads must hold at least one task gradient, got 0")
            for task, grad in enumerate(grads):
                if grad is not None:
                    torch._check(grad.shape == activation.shape,
                                 lambda: f"graddrop: grads[{task}] has shape {list(grad.shape)} "
                                 f"but the activation has shape {list(activation.shape)}")
                    torch._check(grad.dtype == activation.dtype,
                                 lambda: f"graddrop: grads[{task}] has dtype {grad.dtype} but "
                                 f"the activation has dtype {activation.dtype}")
            out = torch.empty_like(activation, memory_format=torch.contiguous_format)
            stats = activation.new_empty((len(grads) + 2,) if statistics else (0,),
                                         dtype=torch.float64)
            return out, stats

    # purity is composed from ATen operations in C++ (a CompositeImplicitAutograd kernel), which
    # FakeTensor runs as it is; it needs a fake only if that ever changes.
    if not (_has_kernel("graddrop::purity", "Meta")
            or _has_kernel("graddrop::purity", "CompositeImplicitAutograd")
            or _has_kernel("graddrop::purity", "CompositeExplicitAutograd")):
        @torch.library.register_fake("graddrop::purity")
        def _purity_fake(activation, grads, sign_source="activation_sign",
                         marginalize_batch=True, epsilon=1e-7):
            dtype = torch.float64 if activation.dtype == torch.float64 else torch.float32
            return activation.new_empty(purity_shape(activation, marginalize_batch), dtype=dtype)
