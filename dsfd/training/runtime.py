"""Where and how a training process computes: device, process group, precision, determinism, seeds, signals.

:class:`Runtime` is decided once, before the model exists (the CUDA device
must be set and cuBLAS configured before the first handle is created), and
every other room reads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .config import TrainConfig
from .distributed import DistInfo, init_distributed

__all__ = ["Runtime", "resolve_device", "amp_dtype", "seed_everything", "deterministic_algorithms", "StopSignal"]

log = logging.getLogger(__name__)


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``cfg.device`` with ``auto`` resolved (:func:`dsfd.precision.resolve_device`); no GPU for CUDA is an error."""
    from ..precision import resolve_device as resolve

    return resolve(cfg.device)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``cfg.amp`` on ``device`` (``None``: float32)."""
    amp = cfg.amp
    if amp == "auto":
        # bf16 where the device computes it in hardware (CUDA; CPUs with
        # AVX-512 BF16 / AMX), fp32 elsewhere: see dsfd.precision.
        from ..precision import auto_dtype

        amp = "bf16" if auto_dtype(device) == torch.bfloat16 else "none"
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("--dtype float16 needs a CUDA device (use bfloat16 or float32 on the CPU)")
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch global generators: the model's initialisation is the same on every rank."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(deterministic: bool, device: torch.device) -> Iterator[None]:
    """cuDNN autotuning off and deterministic kernels on for the block (``deterministic``), restored after it."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
    prev: Optional[Tuple[bool, bool]] = None
    if deterministic:
        prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        if prev is not None:
            torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


@dataclass
class Runtime:
    """This process's part of a run: rank layout, device, precision, memory format, per-rank batch."""

    info: DistInfo
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    local_batch: int

    @classmethod
    def from_config(cls, cfg: TrainConfig, info: Optional[DistInfo] = None) -> "Runtime":
        """Join the process group (``info``: default from ``torchrun``'s environment) and pick the device."""
        if cfg.deterministic:  # before the first cuBLAS handle is created
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        device = resolve_device(cfg)
        info = info if info is not None else init_distributed(device.type)
        if device.type == "cuda" and info.distributed:
            device = torch.device("cuda", info.local_rank)
        if device.type == "cuda":
            if device.index is None:  # torch.cuda.set_device wants an index (torch 2.11 refuses a bare "cuda")
                device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(device)
        dtype = amp_dtype(cfg, device)
        # channels_last: on CUDA, and on CPU with bf16 (oneDNN's bf16 convolutions want NHWC).
        default_cl = device.type == "cuda" or dtype == torch.bfloat16
        channels_last = default_cl if cfg.channels_last is None else bool(cfg.channels_last)
        if cfg.batch_size % info.world_size:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by the world size {info.world_size}")
        return cls(info, device, dtype, channels_last, cfg.batch_size // info.world_size)

    def autocast(self) -> Any:
        """The training precision's autocast context (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def move(self, t: Tensor) -> Tensor:
        """``t`` on the device (asynchronously from pinned memory on CUDA)."""
        return t.to(self.device, non_blocking=self.device.type == "cuda")

    def to_device(self, batch: Sequence[Any]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(images, gt_boxes, gt_counts)`` of a collated batch on the device (images in the memory format)."""
        images = self.move(batch[0])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self.move(batch[1]), self.move(batch[2])


class StopSignal:
    """Context manager: SIGINT / SIGTERM set :attr:`requested` instead of killing the process.

    A second SIGINT raises ``KeyboardInterrupt``. Handlers are only installed
    from the main thread (elsewhere the flag can still be set by hand) and
    the previous ones are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        log.warning("received %s: saving a checkpoint at the next iteration boundary "
                    "(press Ctrl-C again to abort without saving)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
