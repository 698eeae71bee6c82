"""Anonymised copies carry none of the source's EXIF (issue #31, item 4): no GPS, no serial, no thumbnail.

The source photo is made here: the packaged portrait stored sideways (as a
phone stores a portrait shot) with a hand-written EXIF APP1 segment holding
Orientation = 6, a camera make, a body serial number, a GPS position and a
JPEG thumbnail. The copy must hold no EXIF at all, be upright (the
orientation applied to its pixels), and have its face found and hidden.
"""

import json
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dsfd.data_paths import repo_root
from dsfd.inference.metadata import apply_orientation, exif_orientation

PHOTO = repo_root() / "dsfd" / "assets" / "grace_hopper.jpg"
SERIAL = b"SN-0042-SECRET"
MAKE = b"PhoneMaker"

# TIFF types: 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL
_SIZES = {2: 1, 3: 2, 4: 4, 5: 8}


def _ifd(entries, start, next_ifd=0):
    """One little-endian IFD at offset ``start`` of the TIFF: (bytes, end offset). Entries: (tag, type, value bytes, count)."""
    head = 2 + 12 * len(entries) + 4
    data = b""
    table = struct.pack("<H", len(entries))
    for tag, typ, raw, count in sorted(entries):
        if len(raw) <= 4:
            table += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, typ, count, start + head + len(data))
            data += raw + (b"\0" if len(raw) % 2 else b"")
    table += struct.pack("<I", next_ifd)
    return table + data, start + head + len(data)


def _ascii(tag, text):
    return (tag, 2, text + b"\0", len(text) + 1)


def _long(tag, v):
    return (tag, 4, struct.pack("<I", v), 1)


def exif_app1(orientation=6, thumbnail=b""):
    """An APP1 ``Exif`` segment: IFD0 (make, orientation, Exif and GPS pointers), Exif IFD (serial), GPS IFD, IFD1 (thumbnail)."""
    # layout, in order: header, IFD0, Exif IFD, GPS IFD, IFD1, thumbnail; sizes are fixed so offsets are computed once
    ifd0_at = 8
    ifd0_len = 2 + 12 * 4 + 4 + len(MAKE) + 1 + ((len(MAKE) + 1) % 2)
    exif_at = ifd0_at + ifd0_len
    exif_ifd, gps_at = _ifd([_ascii(0xA431, SERIAL)], exif_at)
    lat = struct.pack("<6I", 52, 1, 31, 1, 1234, 100)
    gps_ifd, ifd1_at = _ifd([(0x0001, 2, b"N\0", 2), (0x0002, 5, lat, 3), (0x0003, 2, b"E\0", 2),
                             (0x0004, 5, struct.pack("<6I", 13, 1, 24, 1, 5678, 100), 3)], gps_at)
    ifd1_len = 2 + 12 * 3 + 4
    thumb_at = ifd1_at + ifd1_len
    ifd1, _ = _ifd([(0x0103, 3, struct.pack("<H", 6), 1), _long(0x0201, thumb_at), _long(0x0202, len(thumbnail))],
                   ifd1_at)
    ifd0, end0 = _ifd([_ascii(0x010F, MAKE), (0x0112, 3, struct.pack("<H", orientation), 1),
                       _long(0x8769, exif_at), _long(0x8825, gps_at)], ifd0_at, next_ifd=ifd1_at)
    assert end0 == exif_at and len(ifd1) == ifd1_len
    tiff = b"II*\0" + struct.pack("<I", ifd0_at) + ifd0 + exif_ifd + gps_ifd + ifd1 + thumbnail
    payload = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif(jpeg: bytes, app1: bytes) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def _segments(jpeg: bytes):
    """Marker bytes of the header segments of a JPEG (up to the first scan)."""
    out, i = [], 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF and jpeg[i + 1] not in (0xDA, 0xD9):
        out.append((jpeg[i + 1], jpeg[i + 4:i + 10]))
        i += 2 + struct.unpack(">H", jpeg[i + 2:i + 4])[0]
    return out


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_is_read_and_applied_as_opencv_shows_it(orientation):
    img = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    img = cv2.resize(img, (80, 48), interpolation=cv2.INTER_NEAREST)  # blocks: survive JPEG
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    data = with_exif(buf.tobytes(), exif_app1(orientation, b""))
    assert exif_orientation(data) == orientation
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies the EXIF orientation
    assert np.array_equal(apply_orientation(stored, orientation), shown)


def test_orientation_of_other_bytes_is_1():
    assert exif_orientation(b"\x89PNG\r\n") == 1 and exif_orientation(b"") == 1
    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    assert exif_orientation(buf.tobytes()) == 1


def test_anonymised_copy_has_no_exif_and_is_upright(tmp_path):
    upright = cv2.imread(str(PHOTO))  # 606 x 517 portrait, one face
    stored = np.rot90(upright, 1).copy()  # stored sideways: Orientation 6 turns it back
    ok, thumb = cv2.imencode(".jpg", cv2.resize(stored, (64, 54)))
    ok, body = cv2.imencode(".jpg", stored, [cv2.IMWRITE_JPEG_QUALITY, 95])
    src = tmp_path / "phone.jpg"
    src.write_bytes(with_exif(body.tobytes(), exif_app1(6, thumb.tobytes())))
    data = src.read_bytes()
    assert SERIAL in data and MAKE in data and data.count(b"\xff\xd8") == 2  # the thumbnail is a second JPEG
    try:  # a second reader agrees the source holds what it should
        from PIL import ExifTags, Image

        exif = Image.open(src).getexif()
        assert exif[0x0112] == 6 and exif.get_ifd(ExifTags.IFD.GPSInfo)[1] == "N"
        assert exif.get_ifd(ExifTags.IFD.Exif)[0xA431] == SERIAL.decode()
        assert exif.get_ifd(ExifTags.IFD.IFD1)[0x0202] == len(thumb)
    except ImportError:
        pass

    r = subprocess.run([sys.executable, "-m", "dsfd", "detect", str(src), "--out", str(tmp_path / "out"),
                        "--anonymize", "box", "--min-score", "0.5", "--device", "cpu", "--no-progress"],  # the face only
                       capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    out_bytes = (tmp_path / "out" / "phone.jpg").read_bytes()
    # no EXIF (nor XMP) segment, no GPS, serial, make, and no thumbnail: the copy is a single JPEG
    assert all(m != 0xE1 for m, _ in _segments(out_bytes)), _segments(out_bytes)
    for secret in (SERIAL, MAKE, b"Exif\0\0", b"GPS"):
        assert secret not in out_bytes
    assert out_bytes.count(b"\xff\xd8") == 1
    # upright: the orientation is in the pixels, as the source is shown
    out = cv2.imread(str(tmp_path / "out" / "phone.jpg"), cv2.IMREAD_UNCHANGED)
    assert out.shape == upright.shape
    record = json.loads((tmp_path / "out" / "phone.json").read_text())
    assert (record["width"], record["height"]) == (upright.shape[1], upright.shape[0])
    assert record["detections"], "the face, shown upright, must be found"
    x1, y1, x2, y2 = (int(round(v)) for v in record["detections"][0]["box"])
    assert (out[y1:y2, x1:x2] < 8).all()  # hidden (box: black) in the upright grid
    far = np.ones(out.shape[:2], bool)
    far[max(0, y1 - 80):y2 + 80, max(0, x1 - 80):x2 + 80] = False
    assert np.abs(out[far].astype(int) - upright[far].astype(int)).mean() < 4  # the rest is the upright photo


def test_png_copy_has_no_metadata_chunks(tmp_path):
    """Photos OpenCV writes as PNG: only the image chunks (no eXIf, tEXt, iTXt)."""
    src = tmp_path / "p.png"
    cv2.imwrite(str(src), cv2.imread(str(PHOTO)))
    r = subprocess.run([sys.executable, "-m", "dsfd", "detect", str(src), "--out", str(tmp_path / "out"),
                        "--anonymize", "blur", "--device", "cpu", "--no-progress"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "out" / "p.png").read_bytes()
    chunks, i = [], 8
    while i + 8 <= len(data):
        n = struct.unpack(">I", data[i:i + 4])[0]
        chunks.append(data[i + 4:i + 8])
        i += 12 + n
    assert set(chunks) <= {b"IHDR", b"IDAT", b"IEND"}, chunks
