"""What an anonymised copy keeps of its source's metadata: nothing but the orientation, applied to the pixels.

Phone photos carry EXIF: the GPS position, the camera's serial number, the
time, and a thumbnail that still shows every face. ``dsfd detect
--anonymize`` writes its copies with OpenCV's encoders, which write no EXIF
at all, so none of it reaches the copy (``tests/test_metadata.py`` pins it
on a photo with a GPS tag, a serial number and a thumbnail). The one tag
that matters for what a viewer shows is the orientation (a portrait shot
is usually stored sideways with ``Orientation = 6``); with ``--anonymize``
it is applied to the pixels before the faces are looked for (a sideways
face is a face the detector may miss) and the copy is written upright, so
it shows the way the source does without any tag. The boxes of its JSON
file refer to the copy's (upright) pixels.

Only JPEG EXIF is read (the format phones write); other formats are taken
as stored.
"""

from __future__ import annotations

import struct
from typing import Optional

import numpy as np

__all__ = ["exif_orientation", "apply_orientation", "read_orientation"]

_ORIENTATION_TAG = 0x0112


def _tiff_orientation(tiff: bytes) -> int:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    e = "<" if tiff[:2] == b"II" else ">"
    if struct.unpack(e + "H", tiff[2:4])[0] != 42:
        return 1
    ifd = struct.unpack(e + "I", tiff[4:8])[0]
    if ifd + 2 > len(tiff):
        return 1
    n = struct.unpack(e + "H", tiff[ifd:ifd + 2])[0]
    for k in range(n):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, typ, count = struct.unpack(e + "HHI", tiff[at:at + 8])
        if tag == _ORIENTATION_TAG and typ == 3 and count >= 1:  # SHORT, stored in the entry itself
            value = struct.unpack(e + "H", tiff[at + 8:at + 10])[0]
            return value if 1 <= value <= 8 else 1
    return 1


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG byte stream; 1 when there is none (or not a JPEG)."""
    if data[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no more headers
            break
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        size = struct.unpack(">H", data[i + 2:i + 4])[0]
        seg = data[i + 4:i + 2 + size]
        if marker == 0xE1 and seg[:6] == b"Exif\0\0":
            return _tiff_orientation(seg[6:])
        i += 2 + size
    return 1


def read_orientation(path: "str | bytes", head: int = 1 << 17) -> int:
    """:func:`exif_orientation` of a file's first ``head`` bytes (EXIF sits at the start of a JPEG)."""
    try:
        with open(path, "rb") as f:
            return exif_orientation(f.read(head))
    except OSError:
        return 1


def apply_orientation(image: np.ndarray, orientation: Optional[int]) -> np.ndarray:
    """``image`` (stored pixels) turned the way EXIF ``orientation`` says it is shown (a contiguous copy, or itself for 1)."""
    o = int(orientation or 1)
    if o == 1 or not 1 <= o <= 8:
        return image
    ops = {
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # 180 degrees
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # shown turned 90 degrees clockwise
        7: lambda a: np.rot90(a, -1)[::-1],  # transverse
        8: lambda a: np.rot90(a, 1),  # shown turned 90 degrees counter-clockwise
    }
    return np.ascontiguousarray(ops[o](image))
