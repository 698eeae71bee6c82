"""The inference path's ops: the network input of a ``uint8`` batch, and one shot's outputs decoded.

Thin typed wrappers over ``torch.ops.dsfd.normalize_images`` and
``torch.ops.dsfd.decode_detections`` (C++ CPU and CUDA kernels); the
plain-PyTorch references are in :mod:`dsfd.ops.reference`.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from ..extension import _assert_has_ops
from .boxes import _check_variances

__all__ = ["normalize_images", "decode_detections"]


def normalize_images(images: Tensor, mean: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """A ``uint8 [B, H, W, C]`` batch (``C <= 4``) as the network's input, in one pass.

    Args:
        images: ``uint8 [B, H, W, C]`` (e.g. BGR photos).
        mean: ``C`` values subtracted per channel.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        ``Tensor[B, C, H, W]`` in channels_last memory (the input's NHWC
        layout), ``float(pixel) - mean[c]`` computed in float32 and rounded
        once to ``dtype``; equal to :func:`dsfd.ops.reference.normalize_images`.
    """
    _assert_has_ops()
    return torch.ops.dsfd.normalize_images(images, [float(m) for m in mean], dtype)


def decode_detections(
    loc: Tensor, conf: Tensor, anchors: Tensor, variances: Tuple[float, float], max_exponent: float,
    width: float, height: float,
) -> Tuple[Tensor, Tensor]:
    """One shot's raw outputs -> ``(boxes[B, A, 4], scores[B, A])``, float32, in one pass.

    Args:
        loc: ``[B, A, 4]`` box offsets (any float dtype; ``conf``'s).
        conf: ``[B, A, 2]`` background and face logits.
        anchors: ``[A, 4]`` normalised ``cx, cy, w, h``.
        variances: SSD variances ``(xy, wh)``.
        max_exponent: the size offsets are clamped at this (``exp`` stays finite).
        width, height: the network input's size; boxes come out in its pixels.

    Returns:
        Corner boxes decoded as :func:`dsfd.ops.decode_boxes` does and scaled
        to pixels, and ``softmax(conf)[..., 1]`` computed as
        ``sigmoid(conf1 - conf0)``; equal to
        :func:`dsfd.ops.reference.decode_detections` up to float rounding.
    """
    _assert_has_ops()
    v0, v1 = _check_variances(variances)
    return torch.ops.dsfd.decode_detections(loc, conf, anchors, v0, v1, float(max_exponent), float(width), float(height))
