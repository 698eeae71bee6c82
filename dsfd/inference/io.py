"""Image input for the detector: reading, validation, conversion, and drawing.

Every image that reaches the network is a C-contiguous ``uint8`` array
``[H, W, 3]`` in BGR order (OpenCV's layout). :func:`to_bgr_uint8` converts
what can be converted unambiguously and raises :class:`ImageError` (a
``ValueError``) naming the problem otherwise:

============================  =================================================
input                         handling
============================  =================================================
``[H, W]`` or ``[H, W, 1]``   grayscale: replicated to three channels
``[H, W, 4]``                 BGRA / RGBA: the alpha channel is dropped
``[H, W, 3]``                 BGR (default) or RGB with ``color="rgb"``
``uint8``                     used as is
``uint16``                    scaled to 8 bits (``round(v / 257)``)
float (16/32/64 bit)          must lie in ``[0, 1]``; multiplied by 255 and
                              rounded. NaN / inf / values outside ``[0, 1]``
                              raise
``bool``, signed ints, ...    raise (ambiguous range)
zero-size, other ranks,       raise
2, 5+ channels
============================  =================================================

:func:`read_image` reads a file (any format OpenCV decodes) with the same
rules, so 16-bit PNGs, grayscale and RGBA files work; missing, empty,
unreadable and corrupt files raise :class:`ImageError`. A JPEG whose
end-of-image marker is missing (a truncated download) is decoded as far as
it goes - OpenCV fills the rest with grey - and a ``UserWarning`` says so.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "ImageError",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "read_image",
    "to_bgr_uint8",
    "draw_detections",
    "is_image_path",
    "is_video_path",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions treated as images by the CLI's folder walk (lower case).
IMAGE_EXTENSIONS: Tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".ras", ".sr",
)
#: File extensions treated as videos (read with ``cv2.VideoCapture``).
VIDEO_EXTENSIONS: Tuple[str, ...] = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
)


class ImageError(ValueError):
    """An image that cannot be read or converted; the message names the problem."""


def is_image_path(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _describe(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)}, dtype {a.dtype}"


def to_bgr_uint8(image: Any, color: str = "bgr", name: Optional[str] = None) -> np.ndarray:
    """Validate and convert an image to a contiguous BGR ``uint8`` ``[H, W, 3]`` array.

    Args:
        image: ``numpy`` array (or a ``torch`` tensor / anything
            ``np.asarray`` accepts) ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]``
            or ``[H, W, 4]``; see the module docstring for dtypes.
        color: channel order of a 3/4-channel input: ``"bgr"`` (OpenCV,
            default) or ``"rgb"`` (PIL, matplotlib, torchvision).
        name: used in error messages (e.g. the file name).

    Returns:
        A new or the same (when already conforming) C-contiguous array.

    Raises:
        ImageError: unsupported rank, channel count, dtype or value range.
    """
    what = f"image {name!r}" if name else "image"
    c = color.lower() if isinstance(color, str) else color
    if c not in ("bgr", "rgb"):
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    if image is None:
        raise ImageError(f"{what} is None (a failed cv2.imread returns None: check the path)")
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch.Tensor
        image = image.detach().cpu().numpy()
    try:
        a = np.asarray(image)
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{what} is not an array ({type(image).__name__}): {e}") from e
    if a.dtype.kind not in "biuf":
        raise ImageError(f"{what} is not a numeric image array ({type(image).__name__}, dtype {a.dtype})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3):
        raise ImageError(f"{what} must be [H, W] (gray) or [H, W, C] with C in 1, 3, 4; got {_describe(a)}")
    if a.ndim == 3 and a.shape[2] not in (3, 4):
        raise ImageError(
            f"{what} has {a.shape[2]} channels; expected 1 (gray), 3 (BGR/RGB) or 4 (BGRA/RGBA) "
            f"({_describe(a)}; channel-first [C, H, W] arrays must be transposed to [H, W, C])"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{what} is empty ({_describe(a)})")

    a = _to_uint8(a, what)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    if c == "rgb":
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f":
        f = a.astype(np.float32, copy=False)
        if not np.isfinite(f).all():
            raise ImageError(f"{what} contains NaN or infinite values ({_describe(a)})")
        lo, hi = float(f.min()), float(f.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{what} is a float image with values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] "
                "(they are multiplied by 255). Convert 0-255 float images with .astype(np.uint8)"
            )
        return np.rint(f * 255.0).astype(np.uint8)
    raise ImageError(
        f"{what} has unsupported dtype {a.dtype}; expected uint8, uint16 or float in [0, 1] ({_describe(a)})"
    )


def _jpeg_truncated(data: np.ndarray) -> bool:
    """True when a JPEG byte stream lacks its end-of-image marker (``FF D9``)."""
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    tail = data[-64:].tobytes().rstrip(b"\x00")
    return not tail.endswith(b"\xff\xd9")


def read_image(path: PathLike, color_out: str = "bgr") -> np.ndarray:
    """Read an image file into a BGR ``uint8`` ``[H, W, 3]`` array.

    Args:
        path: any format OpenCV decodes (JPEG, PNG incl. 16-bit / gray /
            alpha, BMP, TIFF, WebP, ...).
        color_out: ``"bgr"`` (default) or ``"rgb"`` for the returned array.

    Raises:
        ImageError: missing, empty, unreadable or corrupt file, or an image
            :func:`to_bgr_uint8` rejects.
    """
    import cv2

    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageError(f"image file not found: {p!r}")
    if not os.path.isfile(p):
        raise ImageError(f"not a file: {p!r}")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read {p!r}: {e}") from e
    if data.size == 0:
        raise ImageError(f"image file is empty (0 bytes): {p!r}")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"cannot decode {p!r}: not an image, corrupt, or truncated ({data.size} bytes)")
    if _jpeg_truncated(data):
        warnings.warn(f"{p!r} is a truncated JPEG (no end-of-image marker); it was decoded partially",
                      stacklevel=2)
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # OpenCV decodes alpha images as BGRA
    out = to_bgr_uint8(img, "bgr", name=p)
    if color_out.lower() == "rgb":
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out


def draw_detections(
    image: np.ndarray,
    detections: np.ndarray,
    min_score: float = 0.5,
    color: Tuple[int, int, int] = (0, 255, 0),
    thickness: Optional[int] = None,
    show_scores: bool = True,
) -> np.ndarray:
    """Draw boxes and scores on a copy of a BGR ``uint8`` image.

    Args:
        image: ``[H, W, 3]`` BGR ``uint8`` (see :func:`to_bgr_uint8`).
        detections: ``[K, 5]`` ``x1, y1, x2, y2, score`` in pixels.
        min_score: boxes scoring below are not drawn.
        color: BGR box colour.
        thickness: line width (default: about 1/400 of the longer side, at least 1).

    Returns:
        The annotated copy.
    """
    import cv2

    out = np.ascontiguousarray(image).copy()
    H, W = out.shape[:2]
    t = max(1, round(max(H, W) / 400)) if thickness is None else int(thickness)
    d = np.asarray(detections, dtype=np.float32).reshape(-1, 5)
    font_scale = max(0.35, t * 0.4)
    for x1, y1, x2, y2, s in d[d[:, 4] >= min_score]:
        p1 = (int(round(x1)), int(round(y1)))
        p2 = (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, color, t, cv2.LINE_AA)
        if show_scores:
            label = f"{s:.2f}"
            (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
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
