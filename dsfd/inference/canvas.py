"""Host-side preparation of a batch: resizing, and pasting images of any sizes into one canvas.

Every image sits in the *top-left* corner of a ``uint8 [B, H, W, 3]``
canvas (the largest height x the largest width of the batch, or the fixed
``input_size``), so its boxes map back by its own scale alone. The padding
holds the pixel mean, i.e. exactly zero after normalisation, like the
convolutions' own zero padding at the first layer.

What batching does to the results: anchors whose cell starts inside the
padding are ignored (:mod:`.padding`), so no box comes from the padding.
Images that need no padding (all of one size, or one that fills the canvas)
get exactly their single-image result up to floating-point summation order;
an image that needed padding is *close to* it (deeper layers see the
padding). With a fixed ``input_size`` every image is letterboxed into the
same canvas alone or batched, so single and batched results are equal for
any mix of sizes - also the mode for CUDA graphs and ``torch.compile``.
"""

from __future__ import annotations

import math
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import MIN_INPUT_SIZE  # inputs smaller than this (per side) are padded up to it

__all__ = ["MIN_INPUT_SIZE", "Prepared", "as_hw", "prepare", "resize_by", "canvas_size", "paste", "batch_meta"]



class Prepared(NamedTuple):
    image: np.ndarray  # resized BGR uint8 [h, w, 3]
    orig_hw: Tuple[int, int]
    scale_xy: Tuple[float, float]  # resized / original, per axis


def as_hw(size: Union[None, int, Sequence[int]]) -> Optional[Tuple[int, int]]:
    """``None``, ``S`` or ``(H, W)`` -> ``None`` or ``(H, W)``, each at least :data:`MIN_INPUT_SIZE`."""
    if size is None:
        return None
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise ValueError(f"input_size must be at least {MIN_INPUT_SIZE} px per side, got {size!r}")
    return h, w


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """``cv2.resize(fx=scale, fy=scale, INTER_LINEAR)`` like the released test code (at least 1 px)."""
    import cv2

    if scale == 1:
        return image
    h, w = image.shape[:2]
    if round(w * scale) >= 1 and round(h * scale) >= 1:
        return cv2.resize(image, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def prepare(image: np.ndarray, input_size: Optional[Tuple[int, int]], max_size: int) -> Prepared:
    """Letterbox into ``input_size`` (aspect kept), or downscale (with a warning) beyond ``max_size``."""
    h, w = image.shape[:2]
    if input_size is not None:
        H, W = input_size
        s = min(H / h, W / w)
        rh, rw = min(H, max(1, round(h * s))), min(W, max(1, round(w * s)))
    elif max(h, w) > max_size:
        s = max_size / max(h, w)
        rh, rw = max(1, round(h * s)), max(1, round(w * s))
        warnings.warn(
            f"image of {w}x{h} px downscaled to {rw}x{rh} (longer side > max_size={max_size}); "
            "boxes are mapped back to the original",
            stacklevel=5,
        )
    else:
        rh, rw = h, w
    return Prepared(_resize(image, rw, rh), (h, w), (rw / w, rh / h))


def canvas_size(images: Sequence[np.ndarray], input_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """``(H, W)`` of the canvas that holds ``images`` (``input_size`` when fixed)."""
    if input_size is not None:
        return input_size
    return (max(MIN_INPUT_SIZE, max(im.shape[0] for im in images)),
            max(MIN_INPUT_SIZE, max(im.shape[1] for im in images)))


def paste(
    images: Sequence[np.ndarray], input_size: Optional[Tuple[int, int]], pad_value: np.ndarray,
    out: Optional["torch.Tensor"] = None,
) -> Tuple[np.ndarray, bool]:
    """Images top-left in a ``pad_value``-filled ``uint8 [B, H, W, 3]`` canvas: ``(canvas, padded)``.

    ``out``: a CPU ``uint8`` tensor of the canvas shape to fill (e.g. pinned
    memory for the copy to a GPU); the copies then run on torch's threads.
    """
    H, W = canvas_size(images, input_size)
    padded = any(im.shape[0] != H or im.shape[1] != W for im in images)
    if out is not None:
        import torch

        if tuple(out.shape) != (len(images), H, W, 3) or out.dtype != torch.uint8:
            raise ValueError(f"paste: out is {tuple(out.shape)} {out.dtype}, expected ({len(images)}, {H}, {W}, 3) uint8")
        if padded:
            out.copy_(torch.from_numpy(np.ascontiguousarray(pad_value, dtype=np.uint8)).view(1, 1, 1, 3)
                      .expand_as(out))
        for b, im in enumerate(images):
            out[b, : im.shape[0], : im.shape[1]].copy_(torch.from_numpy(im))
        return out.numpy(), padded
    if not padded:
        if len(images) == 1:
            return np.ascontiguousarray(images[0])[None], False
        return np.stack(images), False
    canvas = np.empty((len(images), H, W, 3), dtype=np.uint8)
    canvas[...] = pad_value
    for b, im in enumerate(images):
        canvas[b, : im.shape[0], : im.shape[1]] = im
    return canvas, True


def batch_meta(
    images: Sequence[np.ndarray],
    scales: Sequence[Tuple[float, float]],
    orig_hw: Optional[Sequence[Tuple[int, int]]],
) -> np.ndarray:
    """``float32 [B, 14]``: per image ``h, w, sx, sy, sx, sy, lo x4, hi x4`` (valid size, scales, clip bounds)."""
    rows: List[List[float]] = []
    for b, im in enumerate(images):
        sx, sy = scales[b]
        if orig_hw is None:
            lo, hi = [-math.inf] * 4, [math.inf] * 4
        else:
            h0, w0 = orig_hw[b]
            lo, hi = [0.0] * 4, [float(w0), float(h0), float(w0), float(h0)]
        rows.append([float(im.shape[0]), float(im.shape[1]), sx, sy, sx, sy, *lo, *hi])
    return np.asarray(rows, dtype=np.float32)
