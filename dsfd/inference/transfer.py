"""Host <-> device copies of the detector: one copy of the canvas in, one copy of the boxes out.

On a GPU both directions go through pinned host memory, so the copies are
asynchronous; the canvases are pasted into reused pinned buffers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .canvas import canvas_size, paste

__all__ = ["to_device", "to_host", "CanvasUploader"]


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """``array`` as a tensor on ``device`` (through pinned memory, asynchronously, on a GPU)."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def to_host(dets: Tensor, counts: Tensor) -> List[np.ndarray]:
    """Device ``(dets[B, K, 5], counts[B])`` -> one ``[counts[b], 5]`` array per image (one synchronisation)."""
    if dets.device.type == "cuda":
        d = torch.empty(dets.shape, dtype=dets.dtype, pin_memory=True)
        c = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
        d.copy_(dets, non_blocking=True)
        c.copy_(counts, non_blocking=True)
        torch.cuda.current_stream(dets.device).synchronize()
    else:
        d, c = dets, counts
    d_np = d.numpy()
    return [d_np[b, :n].copy() for b, n in enumerate(c.tolist())]


class CanvasUploader:
    """Pastes a batch into its canvas on the device; on a GPU through reused pinned canvases (two shapes kept)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._staging: Dict[Tuple[int, int, int], List[Any]] = {}  # (B, H, W) -> [canvas, event of its last copy]

    def upload(
        self, images: Sequence[np.ndarray], input_size: Optional[Tuple[int, int]], mean_u8: np.ndarray
    ) -> Tuple[Tensor, bool]:
        """The device canvas of ``images`` and whether any image needed padding: ``(x, padded)``.

        On a GPU: pasted into a pinned canvas (torch's threads copy) and copied
        asynchronously; a buffer is written again only after its last copy has
        finished (an event per buffer), so back-to-back calls never race.
        """
        if self.device.type != "cuda":
            canvas, padded = paste(images, input_size, mean_u8)
            return to_device(canvas, self.device), padded
        B = len(images)
        H, W = canvas_size(images, input_size)
        key = (B, H, W)
        entry = self._staging.pop(key, None)
        if entry is None:
            entry = [torch.empty((B, H, W, 3), dtype=torch.uint8, pin_memory=True), None]
        elif entry[1] is not None:
            entry[1].synchronize()
        self._staging[key] = entry  # most recent last
        while len(self._staging) > 2:
            self._staging.pop(next(iter(self._staging)))
        _, padded = paste(images, input_size, mean_u8, out=entry[0])
        x = entry[0].to(self.device, non_blocking=True)
        entry[1] = torch.cuda.Event()
        entry[1].record(torch.cuda.current_stream(self.device))
        return x, padded
