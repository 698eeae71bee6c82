"""Which reader a data root needs, and :func:`build_dataset`: any roots, any formats, one dataset.

``--data`` may point at:

* a WIDER FACE folder (``wider_face_split/`` inside): format ``wider``;
* a ``.json`` file, or a folder holding Roboflow's ``_annotations.coco.json``:
  format ``coco``;
* a folder with ``images/`` and ``labels/`` (directly or per split, see
  :mod:`dsfd.data.yolo`): format ``yolo``.

``format=`` (``--data-format``) overrides the detection for every root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from ..data_paths import wider_root
from .coco import read_coco
from .dataset import DataSource, FaceDataset, ImageTransform
from .wider import WiderFaceDataset, read_wider
from .yolo import read_yolo, yolo_split_dirs

__all__ = ["FORMATS", "detect_format", "build_dataset", "read_source", "has_split"]

PathLike = Union[str, "os.PathLike[str]"]

#: Annotation formats ``build_dataset`` reads (``"auto"``: detect per root).
FORMATS = ("wider", "coco", "yolo")

_ROBOFLOW_COCO = "_annotations.coco.json"


def detect_format(root: PathLike) -> str:
    """``"wider"``, ``"coco"`` or ``"yolo"`` for a data root (see the module docstring).

    Raises ``FileNotFoundError`` for a path that does not exist and
    ``ValueError`` for one in none of the formats.
    """
    p = Path(root)
    if not p.exists():
        raise FileNotFoundError(f"data not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        raise ValueError(f"{p}: a data file must be a COCO .json annotation file")
    if (p / "wider_face_split").is_dir():
        return "wider"
    if (p / _ROBOFLOW_COCO).is_file():
        return "coco"
    if (p / "labels").is_dir() or any((p / s / "labels").is_dir() for s in ("train", "val", "valid", "test")):
        return "yolo"
    raise ValueError(
        f"{p} is in no known format: expected a WIDER FACE folder (wider_face_split/), a COCO .json file "
        "(or a folder with _annotations.coco.json), or a YOLO folder (images/ + labels/)"
    )


def has_split(root: PathLike, split: str, format: str = "auto") -> bool:
    """Whether ``root`` really has ``split`` (WIDER's ``wider_face_<split>_bbx_gt.txt``, YOLO's split folder).

    A COCO file is one split: ``False``.
    """
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "wider":
        return (Path(root) / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").is_file()
    if fmt == "yolo":
        return yolo_split_dirs(root, split, allow_unsplit=False) is not None
    return False


def read_source(
    root: PathLike,
    split: str = "train",
    format: str = "auto",
    images: Optional[PathLike] = None,
    category: Union[None, str, int, Sequence[Union[str, int]]] = None,
    min_face: float = 1.0,
    strict: bool = False,
) -> DataSource:
    """One root through its reader (:func:`~dsfd.data.wider.read_wider`,
    :func:`~dsfd.data.coco.read_coco`, :func:`~dsfd.data.yolo.read_yolo`)."""
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected auto or one of {FORMATS}")
    if fmt == "wider":
        return read_wider(root, split, min_face)
    if fmt == "coco":
        p = Path(root)
        if p.is_dir():
            p = p / _ROBOFLOW_COCO
        return read_coco(p, images=images, category=category, min_face=min_face, strict=strict)
    return read_yolo(root, split, category=category, min_face=min_face, strict=strict)


def build_dataset(
    data: Union[None, PathLike, Sequence[PathLike]] = None,
    split: str = "train",
    transform: Optional[ImageTransform] = None,
    *,
    format: str = "auto",
    images: Optional[PathLike] = None,
    category: Union[None, str, int, Sequence[Union[str, int]]] = None,
    min_face: float = 1.0,
    seed: int = 0,
    strict: bool = False,
    paint_ignore: bool = True,
) -> FaceDataset:
    """The dataset of one or more data roots of any formats (what ``dsfd train --data`` reads).

    Args:
        data: a root or a list of roots (default :func:`dsfd.data_paths.wider_root`);
            their images are concatenated in order.
        split: ``"train"`` or ``"val"`` (WIDER's split file, YOLO's split
            folder; a COCO file is its own split).
        transform: e.g. :class:`dsfd.data.TrainTransform` (``None``: raw images, pixel boxes).
        format: ``"auto"`` (per root, :func:`detect_format`) or one of :data:`FORMATS` for all.
        images: image folder of a COCO file (only with one COCO root).
        category: face categories / classes of COCO and YOLO roots, by name or id.
        min_face: faces whose shorter side is below this many pixels are dropped.
        seed: base seed of the per-sample augmentation streams.
        strict: stop at the first bad annotation (:class:`~dsfd.data.problems.AnnotationError`)
            instead of skipping and counting it.
        paint_ignore: paint ignore regions (COCO ``iscrowd``) with the mean.

    Only WIDER roots give a :class:`~dsfd.data.wider.WiderFaceDataset` (as
    before); any other mix gives a :class:`~dsfd.data.dataset.FaceDataset`.
    Both return the same samples for the same images and boxes.
    """
    if data is None:
        roots: List[PathLike] = [wider_root()]
    elif isinstance(data, (str, os.PathLike)):
        roots = [data]
    else:
        roots = list(data)
        if not roots:
            raise ValueError("data: expected at least one data root")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected auto or one of {FORMATS}")
    formats = [detect_format(r) if format == "auto" else format for r in roots]
    if images is not None and formats.count("coco") != 1:
        raise ValueError(f"--images (the image folder of a COCO file) needs exactly one COCO root, got "
                         f"{formats.count('coco')}")
    if category is not None and all(f == "wider" for f in formats):
        raise ValueError("--category chooses COCO categories / YOLO classes; WIDER FACE has only faces")
    if all(f == "wider" for f in formats):
        return WiderFaceDataset([Path(r) for r in roots], split, transform=transform, min_face=min_face, seed=seed)
    sources = [
        read_source(r, split, f, images=images if f == "coco" else None, category=category if f != "wider" else None,
                    min_face=min_face, strict=strict)
        for r, f in zip(roots, formats)
    ]
    return FaceDataset(sources, transform=transform, seed=seed, min_face=min_face, paint_ignore=paint_ignore)
