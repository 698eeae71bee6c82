"""COCO JSON face annotations (the export format of CVAT, Label Studio, Roboflow, FiftyOne).

One annotation file plus an image folder::

    {"images":      [{"id": 1, "file_name": "a/b.jpg", "width": 640, "height": 480}, ...],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0}, ...],
     "categories":  [{"id": 1, "name": "face"}, ...]}

``bbox`` is ``[x, y, width, height]`` in pixels. Annotations with
``iscrowd`` set are *ignore regions* (painted with the mean for training,
crowd boxes for the evaluation). Only the face categories are read:
``category`` chooses them by name or id; by default the only category, or
the one named ``face`` (case-insensitive); a file with several categories
and none named ``face`` needs ``category``. Annotations of other
categories are left out (counted as ``other_category``).

The image folder (``images``) defaults to the first of these that holds the
listed files: the JSON's folder, ``<json folder>/images``,
``<json folder>/../images``, ``<json folder>/../<split>`` (the official
``annotations/instances_val2017.json`` + ``val2017/`` layout) and
``<json folder>/..``.

Bad annotations (see :mod:`dsfd.data.problems`; locations are JSON paths
such as ``faces.json:annotations[12].bbox[2]``) are skipped and counted:
a listed image that does not exist (``missing_image``: the image and its
boxes are left out), a bbox that does not overlap the image
(``outside_image``), zero or negative width / height (``degenerate``), a
value that is not a finite number (``non_numeric``), a ``category_id``
that is not among the categories (``class_out_of_range``), a bbox that is
not four values, a missing ``file_name`` or a duplicate image id
(``malformed``), an ``image_id`` that is not listed (``unknown_image``).
A file that does not parse (truncated) is fatal (``invalid_json`` with its
line and column). Boxes that stick out of the image are clipped (counted as
``clipped``); faces whose shorter side is below ``min_face`` pixels are
dropped (``small``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .dataset import DataSource, FaceDataset, ImageRecord
from .problems import ProblemReport

__all__ = ["read_coco", "write_coco", "coco_categories", "FACE_NAMES"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Category / class names taken as faces when no ``category`` is given (compared case-insensitively).
FACE_NAMES = ("face", "faces", "human face", "human_face")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def select_categories(
    available: Sequence[Tuple[Any, str]], category: Union[None, str, int, Sequence[Union[str, int]]], where: str
) -> List[Any]:
    """The ids of ``available`` (``(id, name)`` pairs) that count as faces.

    ``category``: names or ids (an id may be given as text, ``"0"``);
    ``None``: the only category, else the one named like a face
    (:data:`FACE_NAMES`). Raises ``ValueError`` naming the choices.
    """
    listing = ", ".join(f"{i} {n!r}" for i, n in available) or "none"
    if category is None:
        if len(available) == 1:
            return [available[0][0]]
        faces = [i for i, n in available if str(n).strip().lower() in FACE_NAMES]
        if faces:
            return faces
        raise ValueError(
            f"{where} has {len(available)} categories ({listing}) and none is named 'face': "
            "choose the face category with --category NAME_OR_ID (category=... in Python)"
        )
    wanted = [category] if isinstance(category, (str, int)) else list(category)
    chosen: List[Any] = []
    for w in wanted:
        hits = [i for i, n in available if str(n).lower() == str(w).strip().lower()]
        if not hits:
            hits = [i for i, n in available if str(i) == str(w).strip()]
        if not hits:
            raise ValueError(f"category {w!r} is not in {where} (categories: {listing})")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def coco_categories(data: Mapping[str, Any]) -> List[Tuple[Any, str]]:
    """``(id, name)`` of a COCO dictionary's well-formed categories."""
    cats = data.get("categories") or []
    out = []
    for c in cats if isinstance(cats, list) else []:
        if isinstance(c, Mapping) and "id" in c:
            out.append((c["id"], str(c.get("name", c["id"]))))
    return out


def _image_dir_candidates(json_path: Path) -> List[Path]:
    d = json_path.parent
    split = json_path.stem.split("_")[-1]  # instances_val2017 -> val2017
    cands = [d, d / "images", d.parent / "images", d.parent / split, d.parent]
    out: List[Path] = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


def _choose_image_dir(json_path: Path, file_names: List[str]) -> Path:
    probe = [f for f in file_names if f and not os.path.isabs(f)][:20]
    if not probe:
        return json_path.parent
    best, best_hits = None, 0
    for c in _image_dir_candidates(json_path):
        hits = sum((c / f).is_file() for f in probe)
        if hits > best_hits:
            best, best_hits = c, hits
    if best is None:
        tried = ", ".join(str(c) for c in _image_dir_candidates(json_path))
        raise FileNotFoundError(
            f"none of the images of {json_path} (e.g. {probe[0]!r}) is under {tried}: "
            "give the image folder with --images DIR (images=... in Python)"
        )
    return best


def read_coco(
    path: PathLike,
    images: Optional[PathLike] = None,
    category: Union[None, str, int, Sequence[Union[str, int]]] = None,
    min_face: float = 1.0,
    strict: bool = False,
) -> DataSource:
    """Read a COCO annotation file into a :class:`~dsfd.data.dataset.DataSource` (see the module docstring).

    Args:
        path: the ``.json`` file.
        images: the folder ``file_name`` is relative to (default: found, see above).
        category: face categories by name or id (default: see above).
        min_face: faces whose shorter side is below this many pixels are dropped.
        strict: raise :class:`~dsfd.data.problems.AnnotationError` at the first bad annotation.

    Raises:
        FileNotFoundError: no such file, or no listed image found.
        AnnotationError: a file that does not parse or is not a COCO
            dictionary; in strict mode, the first bad annotation.
        ValueError: an unknown or ambiguous ``category``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip())
        why = "the file ends early (truncated?)" if truncated else "not valid JSON"
        raise ProblemReport.fatal(f"{path}:{e.lineno}:{e.colno}", "invalid_json", f"{why}: {e.msg}") from None
    name = str(path)
    if not isinstance(data, dict):
        raise ProblemReport.fatal(name, "invalid_json", f"the top level is a {type(data).__name__}, not a COCO dictionary")
    for key in ("images", "annotations", "categories"):
        if key in data and not isinstance(data[key], list):
            raise ProblemReport.fatal(f"{name}:{key}", "malformed", f"expected a list, got {type(data[key]).__name__}")
    if "images" not in data:
        raise ProblemReport.fatal(name, "malformed", "no 'images' list: not a COCO annotation file")
    report = ProblemReport(name, strict)

    categories = coco_categories(data)
    if "categories" not in data:  # files without categories: every annotation is a face
        faces: Optional[set] = None
        cat_names: List[str] = []
    else:
        faces = set(select_categories(categories, category, name))
        cat_names = [n for i, n in categories if i in faces]
    known_cats = {i for i, _ in categories}

    # -- images -------------------------------------------------------------
    entries: Dict[Any, Tuple[int, str, Optional[Tuple[int, int]]]] = {}
    order: List[Any] = []
    raw_images = data["images"]
    for i, im in enumerate(raw_images):
        loc = f"{name}:images[{i}]"
        if not isinstance(im, Mapping):
            report.add(loc, "malformed", f"an image entry must be an object, got {type(im).__name__}")
            continue
        if "id" not in im or isinstance(im["id"], (list, dict)):
            report.add(f"{loc}.id", "malformed", "missing or unusable image id")
            continue
        fn = im.get("file_name")
        if not isinstance(fn, str) or not fn:
            report.add(f"{loc}.file_name", "malformed", f"missing file_name (got {fn!r})")
            continue
        if im["id"] in entries:
            report.add(f"{loc}.id", "malformed", f"duplicate image id {im['id']!r} (first at images[{entries[im['id']][0]}])")
            continue
        size = None
        w, h = im.get("width"), im.get("height")
        if w is not None or h is not None:
            if not (_is_number(w) and _is_number(h)):
                report.add(f"{loc}.{'width' if not _is_number(w) else 'height'}", "non_numeric",
                           f"width {w!r}, height {h!r}: not finite numbers (size ignored)")
            elif w > 0 and h > 0:
                size = (int(h), int(w))
        entries[im["id"]] = (i, fn, size)
        order.append(im["id"])
    image_dir = Path(images) if images is not None else _choose_image_dir(path, [entries[k][1] for k in order])
    if images is not None and not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    present: Dict[Any, bool] = {}
    for k in order:
        i, fn, _ = entries[k]
        ok = (image_dir / fn).is_file()
        present[k] = ok
        if not ok:
            report.add(f"{name}:images[{i}].file_name", "missing_image", f"{image_dir / fn} does not exist")

    # -- annotations --------------------------------------------------------
    stats = dict(images=0, boxes_read=0, kept=0, ignore_regions=0, small=0, clipped=0, other_category=0)
    faces_of: Dict[Any, List[List[float]]] = {k: [] for k in order}
    ignore_of: Dict[Any, List[List[float]]] = {k: [] for k in order}
    raw_anns = data.get("annotations") or []
    for j, a in enumerate(raw_anns):
        loc = f"{name}:annotations[{j}]"
        stats["boxes_read"] += 1
        if not isinstance(a, Mapping):
            report.add(loc, "malformed", f"an annotation must be an object, got {type(a).__name__}")
            continue
        cat = a.get("category_id")
        if faces is not None:
            if cat not in known_cats:
                listing = ", ".join(f"{i} {n!r}" for i, n in categories)
                report.add(f"{loc}.category_id", "class_out_of_range",
                           f"category_id {cat!r} is not one of the categories ({listing})")
                continue
            if cat not in faces:
                stats["other_category"] += 1
                continue
        img_id = a.get("image_id")
        if isinstance(img_id, (list, dict)) or img_id not in entries:
            report.add(f"{loc}.image_id", "unknown_image", f"image_id {img_id!r} is not in the images list")
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            report.add(f"{loc}.bbox", "malformed", f"bbox must be [x, y, width, height], got {bbox!r}")
            continue
        bad = next((k for k, v in enumerate(bbox) if not _is_number(v)), None)
        if bad is not None:
            report.add(f"{loc}.bbox[{bad}]", "non_numeric", f"{bbox[bad]!r} is not a finite number (bbox {bbox!r})")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            report.add(f"{loc}.bbox", "degenerate", f"width {w:g}, height {h:g} in bbox {bbox!r}: a box needs a "
                       "positive size")
            continue
        size = entries[img_id][2]
        if size is not None:
            ih, iw = size
            if x >= iw or y >= ih or x + w <= 0 or y + h <= 0:
                report.add(f"{loc}.bbox", "outside_image", f"bbox {bbox!r} does not overlap the {iw}x{ih} image "
                           f"{entries[img_id][1]!r}")
                continue
            if x < 0 or y < 0 or x + w > iw or y + h > ih:
                stats["clipped"] += 1
        if not present[img_id]:
            continue
        if a.get("iscrowd"):
            ignore_of[img_id].append([x, y, x + w, y + h])
            stats["ignore_regions"] += 1
            continue
        if min(w, h) < min_face:
            stats["small"] += 1
            continue
        faces_of[img_id].append([x, y, x + w, y + h])
        stats["kept"] += 1

    records = []
    for k in order:
        if not present[k]:
            continue
        _, fn, size = entries[k]
        records.append(ImageRecord(fn, np.asarray(faces_of[k], np.float32).reshape(-1, 4),
                                   np.asarray(ignore_of[k], np.float32).reshape(-1, 4), image_id=k, size=size))
    stats["images"] = len(records)
    for reason, n in report.counts.items():
        stats[reason] = n
    if not records:
        raise ValueError(f"no usable image in {name} ({report.summary() or 'no images listed'})")
    log.info(
        "COCO %s (images in %s, categories %s): %d images, %d annotations read, %d faces kept, %d ignore regions, "
        "%d clipped to the image, %d smaller than %g px, %d of other categories; bad annotations skipped: %s",
        name, image_dir, cat_names or "all", stats["images"], stats["boxes_read"], stats["kept"],
        stats["ignore_regions"], stats["clipped"], stats["small"], min_face, stats["other_category"],
        report.summary() or "none",
    )
    return DataSource(str(path), "coco", image_dir, records, stats, list(report.problems), cat_names)


def write_coco(
    dataset: FaceDataset,
    path: PathLike,
    category: str = "face",
    image_paths: str = "relative",
    indices: Optional[Sequence[int]] = None,
) -> Path:
    """Write a dataset's faces (and ignore regions, as ``iscrowd``) as a COCO annotation file.

    Every image is read once for its size; boxes are the pixel boxes the
    dataset loads (clipped to the image). ``file_name`` is the record's path
    relative to its source's image folder (``image_paths="relative"``: read
    it back with ``images=<that folder>``) or absolute
    (``image_paths="absolute"``). ``indices``: only these images (default
    all). Unreadable images are left out. Returns ``path``.
    """
    if image_paths not in ("relative", "absolute"):
        raise ValueError(f"image_paths must be 'relative' or 'absolute', got {image_paths!r}")
    out: Dict[str, Any] = {
        "info": {"description": "written by dsfd.data.write_coco"},
        "images": [], "annotations": [],
        "categories": [{"id": 1, "name": category, "supercategory": "person"}],
    }
    ann_id = 0
    for i in range(len(dataset)) if indices is None else [int(k) for k in indices]:
        rec = dataset.annotations[i]
        got = dataset.read(i)
        if got is None:
            continue
        img, faces, ignore = got
        h, w = img.shape[:2]
        fn = str(dataset.image_path(i).resolve()) if image_paths == "absolute" else Path(rec.path).as_posix()
        out["images"].append({"id": i + 1, "file_name": fn, "width": int(w), "height": int(h)})
        for crowd, boxes in ((0, faces), (1, ignore)):
            for x1, y1, x2, y2 in boxes.tolist():
                ann_id += 1
                out["annotations"].append({
                    "id": ann_id, "image_id": i + 1, "category_id": 1, "iscrowd": crowd,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path
