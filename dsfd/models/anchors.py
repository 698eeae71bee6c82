"""Anchor ("prior box") generation for DSFD, vectorised and LRU-cached.

DSFD uses one anchor per feature-map location (spec section 3): on level ``k``
with stride ``step_k`` and anchor size ``S_k`` the anchor of cell ``(i, j)`` is

* ``cx = (j + 0.5) * step_k / W``, ``cy = (i + 0.5) * step_k / H``
  (from the *input* size and the stride, not from the map size);
* ``w = S_k / W / sqrt(r)``, ``h = S_k / H * sqrt(r)`` with the aspect ratio
  ``r = 1.5`` (height : width).

Anchors are ``cx, cy, w, h`` normalised by the input size, ordered by level,
then row, then column. The released code clamps all four numbers to
``[0, 1]`` (``clip=True``), which matters for large anchors at small inputs.

Values are computed in float64 the way the authors' ``PriorBox`` loop does
(``(j + 0.5) / (W / step)``) and then rounded once to the requested dtype,
so they are bit-identical to that loop. Results are cached per
``(H, W, feature sizes, device, dtype, config)`` in a bounded LRU cache, so
serving thousands of distinct image sizes cannot grow memory without bound;
:func:`anchor_feature_sizes` reads the feature sizes back from a cached tensor.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "STEPS",
    "FIRST_SHOT_SIZES",
    "SECOND_SHOT_SIZES",
    "ASPECT_RATIO",
    "generate_anchors",
    "cached_anchors",
    "anchor_feature_sizes",
    "anchor_cache_info",
    "clear_anchor_cache",
    "set_anchor_cache_size",
    "AnchorGenerator",
]

#: Feature-map strides of the six levels.
STEPS: Tuple[int, ...] = (4, 8, 16, 32, 64, 128)
#: Second-shot (and released face) anchor sizes in pixels.
SECOND_SHOT_SIZES: Tuple[float, ...] = (16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
#: First-shot anchor sizes: half of the second shot's (PAL).
FIRST_SHOT_SIZES: Tuple[float, ...] = tuple(s / 2 for s in SECOND_SHOT_SIZES)
#: Height : width ratio of every anchor.
ASPECT_RATIO: float = 1.5

_Size = Tuple[int, int]


def _as_sizes(feature_sizes: Sequence[Sequence[int]]) -> Tuple[_Size, ...]:
    return tuple((int(s[0]), int(s[1])) for s in feature_sizes)


def generate_anchors(
    image_size: Sequence[int],
    feature_sizes: Sequence[Sequence[int]],
    sizes: Sequence[float],
    steps: Sequence[float],
    aspect_ratio: float = ASPECT_RATIO,
    clip: bool = False,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Anchors for one shot, uncached.

    Args:
        image_size: ``(H, W)`` of the network input in pixels.
        feature_sizes: ``(h_k, w_k)`` of each level's feature map.
        sizes: anchor size ``S_k`` in pixels per level.
        steps: stride in pixels per level.
        aspect_ratio: height : width ratio (DSFD: 1.5).
        clip: clamp ``cx, cy, w, h`` to ``[0, 1]`` (the released code does).
        device, dtype: of the result.

    Returns:
        ``Tensor[A, 4]`` of ``cx, cy, w, h`` with ``A = sum(h_k * w_k)``,
        ordered level, row, column.
    """
    H, W = int(image_size[0]), int(image_size[1])
    fs = _as_sizes(feature_sizes)
    if not (len(fs) == len(sizes) == len(steps)):
        raise ValueError(
            f"feature_sizes ({len(fs)}), sizes ({len(sizes)}) and steps ({len(steps)}) must have equal length"
        )
    sq = math.sqrt(aspect_ratio)
    per_level: List[Tensor] = []
    for (fh, fw), size, step in zip(fs, sizes, steps):
        # float64 with the released loop's operation order, rounded once at the end
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) / (H / step)
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) / (W / step)
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        w = torch.full_like(gx, (size / W) / sq)
        h = torch.full_like(gx, (size / H) * sq)
        per_level.append(torch.stack([gx, gy, w, h], -1).reshape(-1, 4))
    out = torch.cat(per_level, 0) if per_level else torch.zeros(0, 4, dtype=torch.float64)
    out = out.to(dtype)
    if clip:
        out = out.clamp_(0.0, 1.0)
    return out.to(device) if device is not None else out


class _AnchorCache:
    """A small thread-safe LRU cache of anchor tensors, which also knows the key of each tensor it holds."""

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = int(maxsize)
        self._data: "OrderedDict[tuple, Tensor]" = OrderedDict()
        self._keys: Dict[int, tuple] = {}  # id(tensor) -> key, for the tensors held (so no id is reused meanwhile)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> Optional[Tensor]:
        with self._lock:
            t = self._data.get(key)
            if t is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return t

    def key_of(self, value: Tensor) -> Optional[tuple]:
        """The key under which ``value`` itself is held, or ``None``."""
        with self._lock:
            key = self._keys.get(id(value))
            return key if key is not None and self._data.get(key) is value else None

    def put(self, key: tuple, value: Tensor) -> None:
        with self._lock:
            old = self._data.get(key)
            if old is not None:
                self._keys.pop(id(old), None)
            self._data[key] = value
            self._keys[id(value)] = key
            self._data.move_to_end(key)
            self._evict()

    def _evict(self) -> None:
        while len(self._data) > self.maxsize:
            _, value = self._data.popitem(last=False)
            self._keys.pop(id(value), None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._keys.clear()
            self.hits = self.misses = 0

    def resize(self, maxsize: int) -> None:
        with self._lock:
            self.maxsize = int(maxsize)
            self._evict()

    def __len__(self) -> int:
        return len(self._data)


_CACHE = _AnchorCache(64)


class AnchorCacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int


def anchor_cache_info() -> AnchorCacheInfo:
    """Hits, misses, bound and current size of the shared anchor cache."""
    return AnchorCacheInfo(_CACHE.hits, _CACHE.misses, _CACHE.maxsize, len(_CACHE))


def clear_anchor_cache() -> None:
    _CACHE.clear()


def set_anchor_cache_size(maxsize: int) -> None:
    """Change the bound of the shared anchor cache (evicting the oldest entries)."""
    if maxsize < 0:
        raise ValueError("maxsize must be >= 0")
    _CACHE.resize(maxsize)


def anchor_feature_sizes(anchors: Tensor) -> Optional[Tuple[_Size, ...]]:
    """The per-level feature-map sizes ``anchors`` were generated for, if the shared cache holds this tensor.

    A network's output carries the cached anchors of its input size, built
    from the sizes its forward handed the generator: who holds the output
    (the detector's padding mask) reads those sizes here. ``None`` for
    anchors the cache did not produce (compiled or traced networks, ONNX
    Runtime, an evicted entry, the cache turned off).
    """
    key = _CACHE.key_of(anchors)
    return None if key is None else key[2]


def _tracing() -> bool:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def cached_anchors(
    image_size: Sequence[int],
    feature_sizes: Sequence[Sequence[int]],
    sizes: Sequence[float],
    steps: Sequence[float],
    aspect_ratio: float = ASPECT_RATIO,
    clip: bool = False,
    device: Optional[torch.device] = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`generate_anchors` through the shared bounded LRU cache.

    The returned tensor is shared between callers: treat it as read-only.
    While tracing or compiling, the cache is bypassed.
    """
    if _tracing():
        return generate_anchors(image_size, feature_sizes, sizes, steps, aspect_ratio, clip, device, dtype)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (
        int(image_size[0]),
        int(image_size[1]),
        _as_sizes(feature_sizes),
        tuple(float(s) for s in sizes),
        tuple(float(s) for s in steps),
        float(aspect_ratio),
        bool(clip),
        str(dev),
        dtype,
    )
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    out = generate_anchors(image_size, feature_sizes, sizes, steps, aspect_ratio, clip, dev, dtype)
    if _CACHE.maxsize > 0:
        _CACHE.put(key, out)
    return out


class AnchorGenerator(nn.Module):
    """Anchors of one shot (or one released anchor set), as a module.

    Args:
        sizes: anchor size in pixels per level.
        steps: stride in pixels per level.
        aspect_ratio: height : width (1.5).
        clip: clamp to ``[0, 1]`` like the released code.

    ``forward(image_size, feature_sizes, device, dtype)`` returns
    ``Tensor[A, 4]`` (``cx, cy, w, h``, normalised; level, row, column),
    served from the shared bounded LRU cache.
    """

    def __init__(
        self,
        sizes: Sequence[float] = SECOND_SHOT_SIZES,
        steps: Sequence[float] = STEPS,
        aspect_ratio: float = ASPECT_RATIO,
        clip: bool = False,
    ) -> None:
        super().__init__()
        if len(sizes) != len(steps):
            raise ValueError("sizes and steps must have the same length")
        self.sizes = tuple(float(s) for s in sizes)
        self.steps = tuple(float(s) for s in steps)
        self.aspect_ratio = float(aspect_ratio)
        self.clip = bool(clip)

    def num_anchors_per_location(self) -> List[int]:
        return [1] * len(self.sizes)

    def forward(
        self,
        image_size: Sequence[int],
        feature_sizes: Sequence[Sequence[int]],
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        return cached_anchors(
            image_size, feature_sizes, self.sizes, self.steps, self.aspect_ratio, self.clip, device, dtype
        )

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, steps={self.steps}, aspect_ratio={self.aspect_ratio}, clip={self.clip}"

    def config(self) -> Dict[str, object]:
        return {"sizes": self.sizes, "steps": self.steps, "aspect_ratio": self.aspect_ratio, "clip": self.clip}
