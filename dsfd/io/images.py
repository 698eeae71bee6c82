"""Reading and converting images: the one rule set for training data, inference and evaluation.

Every image that reaches a network or the data pipeline is a C-contiguous
``uint8`` array ``[H, W, 3]`` in BGR order (OpenCV's layout).
:func:`to_bgr_uint8` converts what can be converted unambiguously and raises
:class:`ImageError` (a ``ValueError``) naming the problem otherwise:

============================  =================================================
input                         handling
============================  =================================================
``[H, W]`` or ``[H, W, 1]``   grayscale: replicated to three channels
``[H, W, 4]``                 BGRA / RGBA: the alpha channel is dropped
``[H, W, 3]``                 BGR (default) or RGB with ``color="rgb"``
``uint8``                     used as is
``uint16``                    scaled to 8 bits: ``round(v / 257)`` (65535 -> 255)
float (16/32/64 bit)          must lie in ``[0, 1]``; multiplied by 255 and
                              rounded. NaN / inf / values outside ``[0, 1]``
                              raise
``bool``, signed ints, ...    raise (ambiguous range)
zero-size, other ranks,       raise
2, 5+ channels
============================  =================================================

:func:`read_image` reads a file (any format OpenCV decodes) with the same
rules, so 16-bit PNGs, grayscale and RGBA files work. Missing, empty,
unreadable, undecodable and truncated files raise :class:`ImageError`; a
JPEG is truncated when no end-of-image marker follows its last start-of-scan
(an interrupted download: OpenCV would fill the rest with grey). EXIF
orientation is ignored: annotations refer to the stored pixel grid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

__all__ = [
    "ImageError",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "read_image",
    "to_bgr_uint8",
    "is_image_path",
    "is_video_path",
    "jpeg_truncated",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File extensions treated as images by folder walks (lower case).
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


def jpeg_truncated(data: bytes) -> bool:
    """True for a JPEG byte stream whose last start-of-scan (``FF DA``) is not followed by end-of-image (``FF D9``).

    Inside entropy-coded data ``0xFF`` is always followed by ``0x00`` or a
    restart marker, so a complete file has ``FF D9`` after its last scan.
    """
    if data[:2] != b"\xff\xd8":
        return False
    return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")


def read_image(path: PathLike, color_out: str = "bgr") -> np.ndarray:
    """Read an image file into a ``uint8`` ``[H, W, 3]`` array (BGR, or RGB with ``color_out="rgb"``).

    Args:
        path: any format OpenCV decodes (JPEG, PNG incl. 16-bit / gray /
            alpha, BMP, TIFF, WebP, ...).

    Raises:
        ImageError: missing, empty, unreadable, undecodable or truncated
            file, or pixels :func:`to_bgr_uint8` rejects.
    """
    import cv2

    p = os.fspath(path)
    if not os.path.exists(p):
        raise ImageError(f"image file not found: {p!r}")
    if not os.path.isfile(p):
        raise ImageError(f"not a file: {p!r}")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read {p!r}: {e.strerror or e}") from e
    if not data:
        raise ImageError(f"image file is empty (0 bytes): {p!r}")
    if jpeg_truncated(data):
        raise ImageError(f"truncated JPEG (no end-of-image marker after the last scan): {p!r}")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f"cannot decode {p!r}: not an image, or corrupt ({len(data)} bytes)")
    out = to_bgr_uint8(img, "bgr", name=p)  # OpenCV decodes alpha images as BGRA: the alpha is dropped
    if color_out.lower() == "rgb":
        out = np.ascontiguousarray(out[:, :, ::-1])
    return out
