"""WIDER FACE prediction files: the one writer (detector output) and reader (evaluation).

Official layout: ``<folder>/<event>/<image>.txt``, each file

* line 1: the image name (e.g. ``0--Parade/0_Parade_marchingband_1_465.jpg``),
* line 2: the number of boxes,
* then one ``x y w h score`` line per box (pixels, ``w = x2 - x1 + 1``).

Like both official tools, a file belongs to the image its *file name* says;
line 1 is checked against it. Everything that does not conform is reported
as ``<file>:<line>: <problem>`` and read as far as possible, so a malformed
file shows up as such instead of as an image without predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "image_key",
    "read_prediction_file",
    "read_prediction_folder",
    "format_prediction_file",
    "write_prediction_file",
    "write_prediction_folder",
    "wider_boxes_for_file",
]

PathLike = Union[str, "os.PathLike[str]"]  # noqa: F821 - a string annotation only

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_key(name: str) -> str:
    """``0--Parade/0_Parade_x_1.jpg`` -> ``0_Parade_x_1`` (basename without image extension)."""
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    low = base.lower()
    for ext in _IMAGE_SUFFIXES:
        if low.endswith(ext):
            return base[: -len(ext)]
    return base


def read_prediction_file(path: PathLike) -> Tuple[str, np.ndarray, List[str]]:
    """Read one prediction file: ``(image name, boxes [K, 5] float64 x, y, w, h, score, problems)``.

    The image name is the file's name without ``.txt``. Blank lines are
    skipped and columns after the fifth ignored. ``problems`` lists, as
    ``<file>:<line>: ...``, a file that is not text, a missing or different
    image name on line 1, a line 2 that is not a count or disagrees with the
    number of box lines, and unreadable box lines (which are left out).
    """
    path = Path(path)
    name = image_key(path.stem)
    problems: List[str] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return name, np.zeros((0, 5)), [f"{path}:1: cannot read as a text file ({type(e).__name__}: {e})"]
    if not lines or not lines[0].strip():
        problems.append(f"{path}:1: no image name on line 1")
    elif image_key(lines[0]) != name:
        problems.append(f"{path}:1: names image {lines[0].strip()!r}, but the file is {path.name} (read as {name})")
    declared: Optional[int] = None
    if len(lines) >= 2:
        try:
            declared = int(float(lines[1].strip()))
        except ValueError:
            problems.append(f"{path}:2: not a box count: {lines[1].strip()!r}")
    rows: List[List[float]] = []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) < 5:
                raise ValueError
            rows.append([float(v) for v in parts[:5]])
        except ValueError:
            problems.append(f"{path}:{lineno}: unreadable box line {line.strip()!r}")
    boxes = np.array(rows, dtype=np.float64).reshape(-1, 5)
    if declared is not None and declared != len(boxes):
        problems.append(f"{path}:2: line 2 says {declared} boxes, {len(boxes)} box lines read")
    return name, boxes, problems


def read_prediction_folder(
    folder: PathLike, progress: bool = False
) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Read ``<folder>/<event>/<image>.txt`` (and ``<folder>/<image>.txt``): ``({image name: [K, 5]}, problems)``.

    A second file for the same image name is reported and ignored.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"prediction folder not found: {root}")
    files: Sequence[Path] = sorted(root.glob("*/*.txt")) + sorted(root.glob("*.txt"))
    if progress:
        from tqdm import tqdm

        files = tqdm(files, desc="reading predictions", unit="file")
    preds: Dict[str, np.ndarray] = {}
    problems: List[str] = []
    for f in files:
        name, boxes, probs = read_prediction_file(f)
        problems.extend(probs)
        if name in preds:
            problems.append(f"{f}:1: second prediction file for image {name}, ignored")
            continue
        preds[name] = boxes
    return preds, problems


def wider_boxes_for_file(boxes: np.ndarray, box_format: str = "xyxy", plus_one: bool = True) -> np.ndarray:
    """Round boxes to what the released DSFD code writes to WIDER files.

    The released ``widerface_val.py`` writes ``floor(x1), floor(y1),
    ceil(x2 - x1 + 1), ceil(y2 - y1 + 1)``; ``plus_one=False`` drops the
    ``+ 1`` (``ceil(x2 - x1)``).  ``box_format`` is ``"xyxy"`` or ``"xywh"``
    (then ``x2 = x + w``).  Returns ``[K, 4]`` float64 ``x, y, w, h``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if box_format == "xywh":
        x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    elif box_format == "xyxy":
        x1, y1, x2, y2 = b.T
    else:
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', not {box_format!r}")
    extra = 1.0 if plus_one else 0.0
    return np.stack([np.floor(x1), np.floor(y1), np.ceil(x2 - x1 + extra), np.ceil(y2 - y1 + extra)], axis=1)


def format_prediction_file(
    image_name: str,
    boxes: np.ndarray,
    scores: Optional[np.ndarray] = None,
    *,
    box_format: str = "xyxy",
    plus_one: bool = True,
) -> str:
    """The text of one WIDER prediction file, rounded like the released DSFD code.

    ``boxes`` is ``[K, 4]`` (``box_format`` ``"xyxy"`` or ``"xywh"``) with
    ``scores`` ``[K]``, or ``[K, 5]`` with the score last.  Coordinates are
    written as ``floor(x1) floor(y1) ceil(x2 - x1 + 1) ceil(y2 - y1 + 1)``
    (:func:`wider_boxes_for_file`; ``plus_one=False`` drops the ``+ 1``) and
    scores with 6 decimals (the released code used 3, which creates ties
    that change the ranking).  Boxes are written in descending score order.
    Line 1 is ``image_name`` as given (e.g. ``0--Parade/0_Parade_x_1.jpg``).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 5 if scores is None else 4)
    if scores is None:
        if b.ndim != 2 or b.shape[1] != 5:
            raise ValueError("boxes must be [K, 5] (with scores) when scores is None")
        b, s = b[:, :4], b[:, 4]
    else:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        b = b.reshape(-1, 4)
        if len(s) != len(b):
            raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    xywh = wider_boxes_for_file(b[order], box_format, plus_one)
    s = s[order]
    lines = [image_name, str(len(s))]
    lines += [f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {sc:.6f}" for (x, y, w, h), sc in zip(xywh.tolist(), s.tolist())]
    return "\n".join(lines) + "\n"


def write_prediction_file(
    path: PathLike,
    image_name: str,
    boxes: np.ndarray,
    scores: Optional[np.ndarray] = None,
    *,
    box_format: str = "xyxy",
    plus_one: bool = True,
) -> Path:
    """Write :func:`format_prediction_file`'s text to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_prediction_file(image_name, boxes, scores, box_format=box_format, plus_one=plus_one))
    return path


def write_prediction_folder(
    out_dir: PathLike,
    detections: Mapping[str, np.ndarray],
    events: Optional[Mapping[str, str]] = None,
    *,
    box_format: str = "xyxy",
    plus_one: bool = True,
) -> Path:
    """Write ``{name: [K, 5] boxes + score}`` as ``out_dir/<event>/<name>.txt``.

    Keys are ``"<event>/<name>"`` or a bare image name whose event is looked
    up in ``events`` (image name -> event).
    """
    out_dir = Path(out_dir)
    event_of = dict(events or {})
    for key, det in detections.items():
        parts = key.replace("\\", "/").split("/")
        name = image_key(parts[-1])
        if len(parts) >= 2:
            event = parts[-2]
        elif name in event_of:
            event = event_of[name]
        else:
            raise KeyError(f"no event known for image {key!r}: use '<event>/<name>' keys or pass events")
        write_prediction_file(out_dir / event / f"{name}.txt", f"{event}/{name}.jpg", det,
                              box_format=box_format, plus_one=plus_one)
    return out_dir
