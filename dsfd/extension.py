"""Loads the compiled ``dsfd._C`` extension.

A failed load never breaks ``import dsfd``: the pure-PyTorch parts keep
working and every compiled op raises a clear error through
:func:`_assert_has_ops` instead.
"""

from __future__ import annotations

import torch

_LOAD_ERROR: str | None = None

try:
    from . import _C  # noqa: F401  (registers torch.ops.dsfd.*)

    _HAS_OPS = True
except (ImportError, OSError) as e:  # pragma: no cover - depends on the install
    _HAS_OPS = False
    _LOAD_ERROR = f"{type(e).__name__}: {e}"


def _has_ops() -> bool:
    return _HAS_OPS


def _assert_has_ops() -> None:
    if not _HAS_OPS:
        raise RuntimeError(
            "The dsfd C++/CUDA extension (dsfd._C) is not available "
            f"({_LOAD_ERROR}). Build it with `pip install --no-build-isolation -e .` "
            "from the repository root (see README), or use dsfd.ops.reference for the "
            "plain-PyTorch implementations."
        )


def has_cuda_kernels() -> bool:
    """True when the extension was built with its CUDA kernels."""
    if not _HAS_OPS:
        return False
    return bool(torch.ops.dsfd._built_with_cuda())


def extension_path() -> str | None:
    return getattr(_C, "__file__", None) if _HAS_OPS else None


__all__ = ["_has_ops", "_assert_has_ops", "has_cuda_kernels", "extension_path"]
