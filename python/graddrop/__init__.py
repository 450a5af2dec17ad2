"""GradDrop (gradient sign dropout) for PyTorch.

Insert :class:`GradDropLayer` between a shared trunk and the task heads, call one ``backward()``
on the sum of the task losses, and the trunk receives GradDrop's sign-consistent gradient. The
math runs in graddrop's C++/CUDA operators (``torch.ops.graddrop.combine`` and ``.purity``),
which this package loads from its own shared library.
"""
from __future__ import annotations

import os

import torch

try:
    from graddrop import _build_info
except ImportError as error:  # the source tree, not an installed package
    raise ImportError(
        "graddrop: this is the source folder of the graddrop package, not an installed copy "
        "(no _build_info.py). Install it with `pip install --no-build-isolation .` from the "
        "repository root.") from error


def _check_torch_version() -> None:
    if torch.__version__ != _build_info.TORCH_VERSION:
        raise ImportError(
            f"graddrop was built against torch {_build_info.TORCH_VERSION} but this environment "
            f"has torch {torch.__version__}; its C++ library would not load (or would crash). "
            "Rebuild it against this torch: pip install --no-build-isolation --force-reinstall "
            "<graddrop source folder>")


_check_torch_version()
LIBRARY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "libgraddrop.so")
torch.ops.load_library(LIBRARY_PATH)

from graddrop._ops import (GradDropStatistics, KeepCallable, combine,  # noqa: E402
                           purity, purity_shape)
from graddrop._layer import GradDropFunction, GradDropLayer  # noqa: E402



def set_verify(enabled: bool) -> None:
    """Verify mode: the first call of each configuration on a GPU also runs the CPU kernel on
    copies with the same key and raises on any difference, naming the first differing element
    and a file with the inputs. Off by default (``GRADDROP_VERIFY=1`` turns it on at start)."""
    torch.ops.graddrop.set_verify(bool(enabled))


def verify_enabled() -> bool:
    """Whether verify mode is on (:func:`set_verify`)."""
    return bool(torch.ops.graddrop.verify_enabled())


#: Whether the CUDA kernels were compiled into the loaded library.
CUDA_KERNELS: bool = _build_info.CUDA_KERNELS
__version__ = "0.1.0"

__all__ = ["GradDropLayer", "GradDropFunction", "GradDropStatistics", "KeepCallable", "combine",
           "purity", "purity_shape", "set_verify", "verify_enabled", "CUDA_KERNELS",
           "LIBRARY_PATH"]
