"""WIDER FACE training / validation reader (official folder layout).

Layout (as released; ``root`` defaults to :func:`dsfd.data_paths.wider_root`)::

    <root>/WIDER_train/images/<event>/<name>.jpg
    <root>/WIDER_val/images/<event>/<name>.jpg
    <root>/wider_face_split/wider_face_{train,val}_bbx_gt.txt

The annotation file repeats: an image path line, a count line, then one line
per box ``x1 y1 w h blur expression illumination invalid occlusion pose``
(pixels). Images with count 0 are followed by one line of zeros, which is
skipped (a missing zero line is tolerated too).

Box filtering (every skipped box is counted in :attr:`WiderFaceDataset.stats`):

* at parse time: ``invalid`` flag set (``"invalid"``), ``w <= 0`` or
  ``h <= 0`` (``"degenerate"``), shorter side ``< min_face`` (``"small"``),
  unparsable lines (``"malformed"``);
* at load time, when the image size is known: boxes are clipped to the image
  and dropped when nothing is left (``"outside"``; counted once per image by
  the process that loaded it).

Bad images: a file :func:`dsfd.io.read_image` rejects (missing, empty,
undecodable, truncated - a JPEG without end-of-image marker after its last
scan - or with pixels it cannot convert) is logged once, recorded in
:attr:`WiderFaceDataset.bad_images` (path -> reason) and skipped:
``dataset[i]`` then returns the next loadable image ``i + 1, i + 2, ...``
(wrapping around), deterministically, with the random stream of the
*requested* index. ``meta["index"]`` tells which image was used. Only when
no image at all can be loaded is an error raised. Bad images found in
DataLoader workers are recorded in the workers' copies;
:meth:`WiderFaceDataset.verify_images` checks every file up front in the
calling process.

Loading, bad images and samples are those of
:class:`~dsfd.data.dataset.FaceDataset`, which the COCO and YOLO readers
share (:func:`dsfd.data.build_dataset` mixes roots of every format).

Pixels are converted to 8-bit BGR by the same rules as at inference
(:mod:`dsfd.io.images`: gray replicated, alpha dropped, 16 bit
``round(v / 257)``, float only in ``[0, 1]``). EXIF orientation is ignored:
the annotations refer to the stored pixel grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

from ..data_paths import wider_root
from .dataset import DataSource, FaceDataset, ImageRecord, ImageTransform, sample_rng

__all__ = [
    "WiderFaceDataset",
    "WiderAnnotation",
    "parse_wider_annotations",
    "read_wider",
    "sample_rng",
    "EpochRandomSampler",
    "worker_init_fn",
]

log = logging.getLogger(__name__)

_SPLITS = ("train", "val")


class WiderAnnotation(ImageRecord):
    """One image of the annotation file: relative path, kept boxes (``float32 [K, 4]``
    corner pixels ``x1, y1, x1 + w, y1 + h``) and ignore regions (the invalid-flagged
    and too-small faces, same units)."""

    __slots__ = ()

    def __init__(self, path: str, boxes: np.ndarray, ignore: Optional[np.ndarray] = None) -> None:
        super().__init__(path, boxes, ignore)


def _looks_like_path(line: str) -> bool:
    s = line.strip()
    return "/" in s or s.lower().endswith((".jpg", ".jpeg", ".png", ".bmp"))


def parse_wider_annotations(
    gt_file: Union[str, os.PathLike], min_face: float = 1.0
) -> Tuple[List[WiderAnnotation], Dict[str, int]]:
    """Parses ``wider_face_*_bbx_gt.txt``.

    Returns the images (in file order) with their kept boxes, and counters
    ``images, boxes_read, kept, invalid, degenerate, small, malformed``.
    """
    with open(gt_file, "r", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    stats = dict(images=0, boxes_read=0, kept=0, invalid=0, degenerate=0, small=0, malformed=0)
    out: List[WiderAnnotation] = []
    i, n = 0, len(lines)
    while i < n:
        path = lines[i]
        i += 1
        if not path:
            continue
        try:
            count = int(lines[i]) if i < n else 0
            i += 1
        except ValueError:
            raise ValueError(f"{gt_file}:{i + 1}: expected a box count after {path!r}, got {lines[i]!r}")
        if count == 0:  # one line of zeros follows (tolerate its absence)
            if i < n and lines[i] and not _looks_like_path(lines[i]):
                i += 1
            rows: List[str] = []
        else:
            rows = lines[i:i + count]
            i += count
        stats["images"] += 1
        stats["boxes_read"] += len(rows)
        table = np.zeros((len(rows), 10), dtype=np.float64)
        ok = np.ones(len(rows), dtype=bool)
        for r, row in enumerate(rows):
            parts = row.split()
            try:
                vals = [float(v) for v in parts[:10]]
            except ValueError:
                vals = []
            if len(vals) < 4 or _looks_like_path(row):
                ok[r] = False
                continue
            table[r, :len(vals)] = vals
        stats["malformed"] += int((~ok).sum())
        x, y, w, h, invalid = table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 7]
        is_invalid = ok & (invalid != 0)
        is_degenerate = ok & ~is_invalid & ((w <= 0) | (h <= 0) | ~np.isfinite(table[:, :4]).all(1))
        is_small = ok & ~is_invalid & ~is_degenerate & (np.minimum(w, h) < min_face)
        keep = ok & ~is_invalid & ~is_degenerate & ~is_small
        stats["invalid"] += int(is_invalid.sum())
        stats["degenerate"] += int(is_degenerate.sum())
        stats["small"] += int(is_small.sum())
        stats["kept"] += int(keep.sum())
        corners = np.stack([x, y, x + w, y + h], 1)
        boxes = corners[keep].astype(np.float32).reshape(-1, 4)
        # invalid-flagged and too-small faces are still faces: ignore regions, not background
        usable = ok & (w > 0) & (h > 0) & np.isfinite(table[:, :4]).all(1)
        ignore = corners[(is_invalid | is_small) & usable].astype(np.float32).reshape(-1, 4)
        out.append(WiderAnnotation(path, boxes, ignore))
    return out, stats


def read_wider(
    root: Union[str, os.PathLike], split: str = "train", min_face: float = 1.0
) -> DataSource:
    """One WIDER-layout root as a :class:`~dsfd.data.dataset.DataSource` (parse-time counters in ``stats``)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    r = Path(root)
    gt_file = r / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
    if not gt_file.is_file():
        raise FileNotFoundError(
            f"WIDER FACE annotations not found: {gt_file} (set DSFD_WIDER_ROOT to the data set folder)"
        )
    anns, stats = parse_wider_annotations(gt_file, min_face)
    if not anns:
        raise ValueError(f"no images listed in {gt_file}")
    log.info(
        "WIDER FACE %s at %s: %d images, %d boxes read, %d kept; skipped %d invalid-flagged, "
        "%d degenerate (w or h <= 0), %d smaller than %g px, %d malformed lines",
        split, r, stats["images"], stats["boxes_read"], stats["kept"], stats["invalid"],
        stats["degenerate"], stats["small"], min_face, stats["malformed"],
    )
    return DataSource(str(r), "wider", r / f"WIDER_{split}" / "images", list(anns), dict(stats))


class WiderFaceDataset(FaceDataset):
    """WIDER FACE images with their face boxes (a :class:`~dsfd.data.dataset.FaceDataset`).

    Args:
        root: data set folder (default :func:`dsfd.data_paths.wider_root`),
            or a list of WIDER-layout folders whose images are concatenated
            in the given order (e.g. the official training split plus more
            images laid out the same way); :attr:`root_counts` tells how many
            images and boxes each one gave.
        split: ``"train"`` or ``"val"``.
        transform: ``transform(image_bgr_uint8, boxes_px, rng) -> (image, boxes)``,
            e.g. :class:`dsfd.data.augment.TrainTransform`; ``None`` returns
            the raw image and pixel boxes.
        min_face: boxes whose shorter side is below this many pixels (in the
            original image) are dropped at parse time.
        seed: base seed of the per-sample generators
            (:func:`sample_rng` of ``(seed, epoch, index)``).

    Item ``i`` (or ``(i, epoch)``, see :class:`EpochRandomSampler`) is
    ``(image, boxes, meta)``: without a transform ``uint8 [H, W, 3]`` BGR and
    ``float32 [K, 4]`` corner pixels; with one, whatever it returns
    (``float32 [3, S, S]`` tensor and normalised boxes for the provided
    transforms). ``meta`` has ``path``, ``name`` (``event/file`` without
    extension), ``index`` (the image used), ``requested_index``, ``orig_size``
    ``(H, W)``, ``root``.
    """

    def __init__(
        self,
        root: Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike]]] = None,
        split: str = "train",
        transform: Optional[ImageTransform] = None,
        min_face: float = 1.0,
        seed: int = 0,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if root is None:
            roots = [wider_root()]
        elif isinstance(root, (str, os.PathLike)):
            roots = [Path(root)]
        else:
            roots = [Path(r) for r in root]
            if not roots:
                raise ValueError("root: expected at least one WIDER FACE folder")
        self.roots: List[Path] = roots
        #: The first root (kept for code that reads one folder).
        self.root = roots[0]
        self.split = split
        self.image_dir = self.root / f"WIDER_{split}" / "images"
        sources = [read_wider(r, split, min_face) for r in roots]
        self._init_sources(sources, transform, seed, min_face, paint_ignore=False)


class EpochRandomSampler(Sampler):
    """Shuffles ``range(n)`` per epoch and yields ``(index, epoch)`` pairs.

    The permutation depends on ``(seed, epoch)`` only, and the epoch travels
    with each index to :meth:`WiderFaceDataset.__getitem__`, so augmentation
    is reproducible even with ``persistent_workers=True``. Call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 0x5A5]).permutation(self.n)
        else:
            order = np.arange(self.n)
        epoch = self.epoch
        return iter([(int(i), epoch) for i in order])


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread per worker (avoids oversubscription)."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
