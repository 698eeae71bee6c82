"""Which compute precision to use on which device.

One place decides, for inference (:class:`dsfd.Detector`) and training
(``dsfd train --dtype auto``), whether the network runs in bfloat16 autocast:

* CUDA: bf16 when the GPU supports it.
* CPU: bf16 autocast (with channels_last) only where the processor has
  bf16 arithmetic in hardware (AVX-512 BF16 or AMX), where oneDNN's bf16
  convolutions are much faster than fp32; fp32 elsewhere, where bf16 would be
  emulated and slower. ``DSFD_CPU_BF16=0`` / ``1`` overrides the detection
  (for a processor the checks misjudge, and for tests).
"""

from __future__ import annotations

import functools
import os
from typing import Dict, Optional, Union

import torch

__all__ = ["cpu_bf16_support", "cpu_has_bf16", "auto_dtype", "resolve_dtype", "resolve_device", "DTYPE_NAMES"]

#: Names accepted where a dtype is given as text (CLI flags, configs).
DTYPE_NAMES: Dict[str, Optional[torch.dtype]] = {
    "auto": None,
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> Dict[str, bool]:
    """What this CPU offers for bf16: ``{"avx512_bf16", "amx_bf16"}`` flags (torch's checks or /proc/cpuinfo)."""
    flags = _cpu_flags()
    cpu = getattr(torch, "cpu", None)

    def _probe(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # pragma: no cover - private torch helpers may change
            return False

    return {
        "avx512_bf16": _probe("_is_avx512_bf16_supported") or "avx512_bf16" in flags,
        "amx_bf16": _probe("_is_amx_tile_supported") or "amx_bf16" in flags,
    }


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (or ``DSFD_CPU_BF16=1``; ``=0`` forces False)."""
    env = os.environ.get("DSFD_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    if not torch.backends.mkldnn.is_available():
        return False
    return any(cpu_bf16_support().values())


def auto_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """The fastest exact-enough network dtype on ``device``: bf16 where supported in hardware, else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return torch.float32


def resolve_dtype(dtype: Union[None, str, torch.dtype], device: Union[str, torch.device]) -> torch.dtype:
    """``None`` / ``"auto"`` -> :func:`auto_dtype`; names and dtypes checked against the device.

    Raises ``ValueError`` for unknown names and for float16 on a CPU (no fast
    CPU kernels; use bf16 or fp32).
    """
    device = torch.device(device)
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPE_NAMES)}")
        dtype = DTYPE_NAMES[key]
    if dtype is None:
        return auto_dtype(device)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16 (or 'auto'), got {dtype}")
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("float16 is not supported on the CPU (no fast kernels): use bfloat16 or float32")
    return dtype


def resolve_device(device: Union[None, str, torch.device]) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; a named device must exist."""
    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available here; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r}; use 'cpu' or 'cuda'")
    return dev
