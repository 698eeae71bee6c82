"""Showing detections: boxes drawn on a copy of the image, and JSON-friendly records.

Images are read and converted by :mod:`dsfd.io`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import DISPLAY_SCORE

__all__ = ["draw_detections", "detections_to_records"]


def draw_detections(
    image: np.ndarray,
    detections: np.ndarray,
    min_score: float = DISPLAY_SCORE,
    color: Tuple[int, int, int] = (0, 255, 0),
    thickness: Optional[int] = None,
    show_scores: Union[bool, str] = "auto",
) -> np.ndarray:
    """Draw boxes and scores on a copy of a BGR ``uint8`` image.

    Args:
        image: ``[H, W, 3]`` BGR ``uint8`` (see :func:`to_bgr_uint8`).
        detections: ``[K, 5]`` ``x1, y1, x2, y2, score`` in pixels.
        min_score: boxes scoring below are not drawn.
        color: BGR box colour.
        thickness: line width (default: about 1/400 of the longer side, at least 1).
        show_scores: ``"auto"`` writes a box's score above it only when the
            box is at least as wide as the text, so that in a crowd the
            labels of small faces do not cover their neighbours; ``True``
            labels every box, ``False`` none.

    Returns:
        The annotated copy.
    """
    import cv2

    out = np.ascontiguousarray(image).copy()
    H, W = out.shape[:2]
    t = max(1, round(max(H, W) / 400)) if thickness is None else int(thickness)
    d = np.asarray(detections, dtype=np.float32).reshape(-1, 5)
    font_scale = max(0.35, t * 0.4)
    if show_scores not in (True, False, "auto"):
        raise ValueError(f"show_scores must be True, False or 'auto', got {show_scores!r}")
    for x1, y1, x2, y2, s in d[d[:, 4] >= min_score]:
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, t, cv2.LINE_AA)
        if show_scores:
            label = f"{s:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            if show_scores == "auto" and p2[0] - p1[0] < tw:
                continue
            ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else p1[1] + th + 2
            cv2.rectangle(out, (p1[0], ty - th - 1), (p1[0] + tw + 1, ty + base - 1), color, -1)
            cv2.putText(out, label, (p1[0], ty - 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return out


def detections_to_records(detections: np.ndarray, min_score: float = 0.0) -> Sequence[dict]:
    """``[K, 5]`` detections -> ``[{"box": [x1, y1, x2, y2], "score": s}, ...]`` (JSON-friendly)."""
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    return [
        {"box": [round(float(v), 2) for v in row[:4]], "score": round(float(row[4]), 5)}
        for row in d[d[:, 4] >= min_score]
    ]
