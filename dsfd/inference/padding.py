"""Which anchors of a padded batch start inside the padding (their scores are zeroed).

An anchor whose cell origin lies at or beyond an image's width or height in
the canvas sees only padding, so no box may come from it. The cell origins
need each level's feature-map size for the canvas size; the networks compute
those sizes on the fly, so they are recorded from the calls of the model's
test-time anchor generator (a forward hook).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any, Callable, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["PaddingMask"]

Sizes = Tuple[Tuple[int, int], ...]


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


class PaddingMask:
    """Feature-map sizes per input size (recorded) and the anchors' cell origins (cached, LRU).

    Args:
        anchor_generator: the model's test-time anchor generator.
        device: where the cell origins live.
        probe: runs the eager model once on an ``H x W`` input; used when a
            compiled network (which runs no Python hooks) saw a size first.
    """

    def __init__(self, anchor_generator: nn.Module, device: torch.device, probe: Callable[[int, int], None]) -> None:
        self.device = device
        self.probe = probe
        self._levels: "OrderedDict[Tuple[int, int], Tuple[Sizes, Tuple[float, ...]]]" = OrderedDict()
        self._origins: "OrderedDict[Tuple[int, int], Tensor]" = OrderedDict()
        this = weakref.ref(self)

        def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> None:
            mask = this()
            if mask is not None and not _compiling():
                mask._record(module, args)

        handle = anchor_generator.register_forward_hook(hook)
        weakref.finalize(self, handle.remove)  # a model shared by several detectors keeps no dead hooks

    def _record(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if len(args) < 2:
            return
        try:
            key = (int(args[0][0]), int(args[0][1]))
            sizes = tuple((int(s[0]), int(s[1])) for s in args[1])
        except (TypeError, IndexError, ValueError):
            return
        self._levels[key] = (sizes, tuple(float(s) for s in module.steps))
        self._levels.move_to_end(key)
        while len(self._levels) > 64:
            self._levels.popitem(last=False)

    def feature_sizes(self, height: int, width: int) -> Optional[Sizes]:
        """The recorded per-level ``(h, w)`` for an ``height x width`` input, or ``None``."""
        info = self._levels.get((height, width))
        return None if info is None else info[0]

    def cached_origins(self, height: int, width: int) -> Optional[Tensor]:
        return self._origins.get((height, width))

    def cell_origins(self, height: int, width: int, num_anchors: int, compiled: bool) -> Optional[Tensor]:
        """``[A, 2]`` pixel ``(x, y)`` of each anchor cell's top-left corner (``None`` when unknown)."""
        key = (height, width)
        hit = self._origins.get(key)
        if hit is not None:
            return hit
        if key not in self._levels and compiled:
            self.probe(height, width)
        info = self._levels.get(key)
        if info is None:
            return None
        sizes, steps = info
        if len(steps) != len(sizes) or sum(h * w for h, w in sizes) != num_anchors:
            return None
        parts = []
        for (fh, fw), step in zip(sizes, steps):
            ys = torch.arange(fh, dtype=torch.float32) * step
            xs = torch.arange(fw, dtype=torch.float32) * step
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            parts.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        origins = torch.cat(parts).to(self.device)
        self._origins[key] = origins
        while len(self._origins) > 16:
            self._origins.popitem(last=False)
        return origins

    def mask_scores(self, scores: Tensor, meta: Tensor, height: int, width: int, compiled: bool) -> Tensor:
        """``scores[B, A]`` with the anchors outside each image's valid ``meta[:, 0:2]`` (h, w) set to 0."""
        origins = self.cell_origins(height, width, scores.shape[1], compiled)
        if origins is None:
            return scores
        valid = (origins[None, :, 0] < meta[:, 1:2]) & (origins[None, :, 1] < meta[:, 0:1])
        return scores.masked_fill(~valid, 0.0)
