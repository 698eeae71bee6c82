"""YOLO face labels: ``images/`` + ``labels/`` with one ``class cx cy w h`` line per box.

Layouts (``root`` is what ``--data`` points at; ``split`` is ``train`` for
training, ``val`` for validation and ``dsfd eval``; ``val`` also finds
``valid`` and ``validation``)::

    root/images/<split>/...  root/labels/<split>/...     (Ultralytics)
    root/<split>/images/...  root/<split>/labels/...     (Roboflow's YOLO exports)
    root/images/...          root/labels/...             (one split: the whole folder)

Every image file under the image folder (recursively: ``.jpg``, ``.jpeg``,
``.png``, ``.bmp``, ``.tif``, ``.tiff``, ``.webp``) is an item; its labels
are the ``.txt`` file at the same relative path under the label folder (an
image without one has no faces). A label line is ``class cx cy w h``, all
but the class fractions of the image width / height (a polygon line,
``class x1 y1 x2 y2 ...``, stands for its bounding box). Empty lines and
``#`` comments are skipped.

Class names come from ``data.yaml`` / ``dataset.yaml`` (``names:``) or
``classes.txt`` / ``obj.names`` (one per line) in ``root`` or the label
folder; they also set how many classes there are. ``category`` chooses the
face classes by name or id; by default the only class, or the one named
``face``; with several classes and none named ``face``, ``category`` is
required. Without a names file every class id counts as a face (a warning
says so when several ids occur).

Bad annotations (see :mod:`dsfd.data.problems`; locations are
``labels/<file>.txt:<line>``) are skipped and counted: a label file without
an image (``missing_image``), a box that does not overlap the image
(``outside_image``; coordinates must be fractions in ``[0, 1]``: pixel
coordinates end up here), zero or negative width / height
(``degenerate``), a field that is not a finite number (``non_numeric``), a
class id that is negative, not an integer or not below the number of
classes (``class_out_of_range``), a wrong number of fields
(``malformed``). Boxes that stick out of the image are clipped (counted as
``clipped``); faces whose shorter side is below ``min_face`` pixels are
dropped when the image is loaded (``small``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .coco import select_categories
from .dataset import DataSource, FaceDataset, ImageRecord
from .problems import ProblemReport

__all__ = ["read_yolo", "write_yolo", "yolo_split_dirs", "read_yolo_names", "IMAGE_EXTENSIONS"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "train": ("train",), "test": ("test",)}
_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")
_NAME_FILES = ("classes.txt", "obj.names")
_YAML_FILES = ("data.yaml", "dataset.yaml", "data.yml")


def yolo_split_dirs(root: PathLike, split: str = "train", allow_unsplit: bool = True) -> Optional[Tuple[Path, Path]]:
    """``(image_dir, label_dir)`` of ``split`` under ``root`` (see the module docstring), or ``None``.

    ``allow_unsplit``: a root without split folders gives its ``images/``
    whatever the split (what ``--data`` means); ``False`` asks whether the
    split really exists (the trainer's search for a validation split).
    """
    root = Path(root)
    for name in _SPLIT_ALIASES.get(split, (split,)):
        if (root / "images" / name).is_dir():
            return root / "images" / name, root / "labels" / name
        if (root / name / "images").is_dir():
            return root / name / "images", root / name / "labels"
    if allow_unsplit and (root / "images").is_dir() and (root / "labels").is_dir():
        splits = [n for n in _SPLIT_NAMES if (root / "images" / n).is_dir() or (root / n / "images").is_dir()]
        if not splits:
            return root / "images", root / "labels"
    return None


def _strip(value: str) -> str:
    value = value.split(" #", 1)[0].strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value


def _yaml_names(text: str) -> Optional[List[str]]:
    """``names`` of a YOLO ``data.yaml`` (the list, inline list, and ``id: name`` forms), without a YAML library."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^names\s*:\s*(.*)$", line)
        if not m:
            continue
        rest = m.group(1).split("#", 1)[0].strip() if not m.group(1).strip().startswith(("'", '"')) else m.group(1)
        if rest.startswith("[") and rest.rstrip().endswith("]"):
            return [_strip(v) for v in rest.strip()[1:-1].split(",") if v.strip()]
        if rest.startswith("{") and rest.rstrip().endswith("}"):
            pairs = [p.split(":", 1) for p in rest.strip()[1:-1].split(",") if ":" in p]
            return [_strip(v) for _, v in sorted(pairs, key=lambda kv: int(kv[0].strip()))]
        if rest:
            return None
        items: Dict[int, str] = {}
        for sub in lines[i + 1:]:
            if not sub.strip() or sub.lstrip().startswith("#"):
                continue
            if not sub[:1].isspace() and not sub.startswith("-"):
                break
            s = sub.strip()
            if s.startswith("-"):
                items[len(items)] = _strip(s[1:])
            elif ":" in s:
                k, v = s.split(":", 1)
                try:
                    items[int(k.strip())] = _strip(v)
                except ValueError:
                    return None
        return [items[k] for k in sorted(items)] if items else None
    return None


def read_yolo_names(root: PathLike, label_dir: Optional[PathLike] = None) -> Tuple[Optional[List[str]], Optional[Path]]:
    """Class names from ``data.yaml`` / ``classes.txt`` / ``obj.names`` (``(None, None)`` when there is none)."""
    dirs = [Path(root)] + ([Path(label_dir)] if label_dir is not None else [])
    for d in dirs:
        for f in _YAML_FILES:
            p = d / f
            if p.is_file():
                names = _yaml_names(p.read_text(encoding="utf-8"))
                if names:
                    return names, p
        for f in _NAME_FILES:
            p = d / f
            if p.is_file():
                names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
                if names:
                    return names, p
    return None, None


def _number(text: str) -> Optional[float]:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_yolo(
    root: PathLike,
    split: str = "train",
    category: Union[None, str, int, Sequence[Union[str, int]]] = None,
    min_face: float = 1.0,
    strict: bool = False,
) -> DataSource:
    """Read a YOLO dataset folder into a :class:`~dsfd.data.dataset.DataSource` (see the module docstring).

    Boxes stay fractions of the image size (``normalized`` records) until
    the image is read. Raises ``FileNotFoundError`` when ``root`` has no
    ``split``, ``ValueError`` for an unknown or ambiguous ``category``,
    :class:`~dsfd.data.problems.AnnotationError` at the first bad
    annotation when ``strict``.
    """
    root = Path(root)
    dirs = yolo_split_dirs(root, split)
    if dirs is None:
        found = [n for n in _SPLIT_NAMES if (root / "images" / n).is_dir() or (root / n / "images").is_dir()]
        if found:
            raise FileNotFoundError(f"YOLO folder {root} has no {split!r} split (found: {', '.join(found)})")
        raise FileNotFoundError(f"not a YOLO dataset folder: {root} (expected images/ and labels/, "
                                "images/<split>/ and labels/<split>/, or <split>/images/ and <split>/labels/)")
    image_dir, label_dir = dirs
    name = str(root)
    names, names_file = read_yolo_names(root, label_dir)
    if names is not None:
        faces: Optional[set] = set(select_categories(list(enumerate(names)), category, f"{names_file}"))
        cat_names = [names[i] for i in sorted(faces)]
    elif category is not None:
        wanted = [category] if isinstance(category, (str, int)) else list(category)
        try:
            faces = {int(str(w)) for w in wanted}
        except ValueError:
            raise ValueError(f"{root} has no class names (data.yaml, classes.txt): give --category as class ids") from None
        cat_names = [str(i) for i in sorted(faces)]
    else:
        faces, cat_names = None, []
    nc = len(names) if names is not None else None
    report = ProblemReport(name, strict)

    images = sorted(
        (p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.relative_to(image_dir).as_posix(),
    )
    stems = {p.relative_to(image_dir).with_suffix("").as_posix() for p in images}
    if label_dir.is_dir():
        for lf in sorted(label_dir.rglob("*.txt")):
            if lf.name in _NAME_FILES:
                continue
            if lf.relative_to(label_dir).with_suffix("").as_posix() not in stems:
                report.add(str(lf), "missing_image",
                           f"no image {lf.relative_to(label_dir).with_suffix('.*').as_posix()} in {image_dir}")

    stats = dict(images=0, boxes_read=0, kept=0, clipped=0, other_category=0, no_label_file=0)
    seen_classes: set = set()
    records: List[ImageRecord] = []
    for img in images:
        rel = img.relative_to(image_dir)
        lf = label_dir / rel.with_suffix(".txt")
        boxes: List[List[float]] = []
        if not lf.is_file():
            stats["no_label_file"] += 1
        else:
            with open(lf, "r", encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
            for ln, line in enumerate(lines, 1):
                s = line.strip()
                if not s or s.startswith("#"):
                    continue
                loc = f"{lf}:{ln}"
                stats["boxes_read"] += 1
                fields = s.split()
                n = len(fields)
                if n != 5 and not (n >= 7 and n % 2 == 1):
                    report.add(loc, "malformed", f"expected 5 fields 'class cx cy w h' (or a polygon "
                               f"'class x1 y1 x2 y2 ...'), got {n}: {s!r}")
                    continue
                cls_v = _number(fields[0])
                if cls_v is None:
                    report.add(loc, "non_numeric", f"class id {fields[0]!r} is not a number")
                    continue
                if cls_v != int(cls_v) or cls_v < 0 or (nc is not None and cls_v >= nc):
                    allowed = f"0..{nc - 1} ({', '.join(names or [])})" if nc else "a non-negative integer"
                    report.add(loc, "class_out_of_range", f"class id {fields[0]} is not in {allowed}")
                    continue
                vals = [_number(v) for v in fields[1:]]
                bad = next((k for k, v in enumerate(vals) if v is None), None)
                if bad is not None:
                    report.add(loc, "non_numeric", f"field {bad + 2} {fields[bad + 1]!r} is not a finite number")
                    continue
                cls = int(cls_v)
                if n == 5:
                    cx, cy, w, h = vals  # type: ignore[misc]
                    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
                else:
                    xs, ys = vals[0::2], vals[1::2]
                    x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)  # type: ignore[type-var]
                    w, h = x2 - x1, y2 - y1
                if w <= 0 or h <= 0:
                    report.add(loc, "degenerate", f"width {w:g}, height {h:g}: a box needs a positive size")
                    continue
                if x1 >= 1 or y1 >= 1 or x2 <= 0 or y2 <= 0:
                    report.add(loc, "outside_image", f"box {x1:g},{y1:g} - {x2:g},{y2:g} does not overlap the image "
                               "(YOLO coordinates are fractions of the image size, in [0, 1])")
                    continue
                seen_classes.add(cls)
                if faces is not None and cls not in faces:
                    stats["other_category"] += 1
                    continue
                if x1 < 0 or y1 < 0 or x2 > 1 or y2 > 1:
                    stats["clipped"] += 1
                boxes.append([x1, y1, x2, y2])
        stats["kept"] += len(boxes)
        records.append(ImageRecord(rel.as_posix(), np.asarray(boxes, np.float64).reshape(-1, 4), normalized=True))
    stats["images"] = len(records)
    for reason, k in report.counts.items():
        stats[reason] = k
    if not records:
        raise FileNotFoundError(f"no images under {image_dir} ({', '.join(IMAGE_EXTENSIONS)})")
    if faces is None and len(seen_classes) > 1:
        log.warning("%s: no class names (data.yaml, classes.txt) and %d class ids (%s): all are read as faces; "
                    "choose with --category", name, len(seen_classes), sorted(seen_classes))
    log.info(
        "YOLO %s (%s, classes %s): %d images (%d without a label file), %d label lines read, %d faces kept, %d clipped to the image, "
        "%d of other classes; bad annotations skipped: %s",
        name, image_dir, cat_names or "all", stats["images"], stats["no_label_file"], stats["boxes_read"], stats["kept"],
        stats["clipped"], stats["other_category"], report.summary() or "none",
    )
    return DataSource(name, "yolo", image_dir, records, stats, list(report.problems), cat_names)


def write_yolo(
    dataset: FaceDataset,
    root: PathLike,
    split: Optional[str] = None,
    class_name: str = "face",
    images: str = "copy",
    indices: Optional[Sequence[int]] = None,
) -> Path:
    """Write a dataset's faces as a YOLO folder: ``root/images[/split]``, ``root/labels[/split]``, ``data.yaml``.

    Every image is read once for its size; boxes are the pixel boxes the
    dataset loads (clipped), written as ``0 cx cy w h`` fractions (ignore
    regions have no YOLO form and are left out). ``images``: ``"copy"``
    the files, ``"link"`` them (symbolic links) or ``"none"`` (labels
    only). ``indices``: only these images (default all). Unreadable
    images are left out. Returns ``root``.
    """
    if images not in ("copy", "link", "none"):
        raise ValueError(f"images must be 'copy', 'link' or 'none', got {images!r}")
    root = Path(root)
    img_root = root / "images" / split if split else root / "images"
    lab_root = root / "labels" / split if split else root / "labels"
    for i in range(len(dataset)) if indices is None else [int(k) for k in indices]:
        rec = dataset.annotations[i]
        got = dataset.read(i)
        if got is None:
            continue
        img, faces, _ = got
        h, w = img.shape[:2]
        rel = Path(rec.path)
        src = dataset.image_path(i)
        dst = img_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if images == "copy":
            shutil.copyfile(src, dst)
        elif images == "link" and not dst.exists():
            os.symlink(src.resolve(), dst)
        lab = lab_root / rel.with_suffix(".txt")
        lab.parent.mkdir(parents=True, exist_ok=True)
        b = faces.astype(np.float64)
        rows = [f"0 {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}"
                for x1, y1, x2, y2 in b.tolist()]
        lab.write_text("".join(r + "\n" for r in rows))
    (root / "data.yaml").write_text(f"names: [{class_name!r}]\n")
    return root
