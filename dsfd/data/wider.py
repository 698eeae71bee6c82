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

Pixels are converted to 8-bit BGR by the same rules as at inference
(:mod:`dsfd.io.images`: gray replicated, alpha dropped, 16 bit
``round(v / 257)``, float only in ``[0, 1]``). EXIF orientation is ignored:
the annotations refer to the stored pixel grid.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..data_paths import wider_root
from ..io import ImageError, read_image

__all__ = [
    "WiderFaceDataset",
    "WiderAnnotation",
    "parse_wider_annotations",
    "sample_rng",
    "EpochRandomSampler",
    "worker_init_fn",
]

log = logging.getLogger(__name__)

_SPLITS = ("train", "val")


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Independent generator for one sample, a function of ``(seed, epoch, index)`` only.

    Because it does not depend on the process or on the order in which
    samples are drawn, augmentation is the same for any number of
    DataLoader workers.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


class WiderAnnotation:
    """One image of the annotation file: relative path and kept boxes."""

    __slots__ = ("path", "boxes")

    def __init__(self, path: str, boxes: np.ndarray) -> None:
        self.path = path
        #: ``float32 [K, 4]`` corner pixels ``x1, y1, x1 + w, y1 + h``.
        self.boxes = boxes

    def __repr__(self) -> str:
        return f"WiderAnnotation({self.path!r}, {len(self.boxes)} boxes)"


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
        boxes = np.stack([x, y, x + w, y + h], 1)[keep].astype(np.float32).reshape(-1, 4)
        out.append(WiderAnnotation(path, boxes))
    return out, stats


ImageTransform = Callable[..., Tuple[Any, Any]]


class WiderFaceDataset(Dataset):
    """WIDER FACE images with their face boxes.

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
    ``(H, W)``.
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
        self.transform = transform
        self.min_face = float(min_face)
        self.seed = int(seed)
        self.epoch = 0
        self.image_dir = self.root / f"WIDER_{split}" / "images"
        self.annotations: List[WiderAnnotation] = []
        #: Image folder of each annotation (one entry per root, see ``_root_of``).
        self._image_dirs: List[Path] = []
        self._root_starts: List[int] = []
        #: Per root: ``{"root", "images", "boxes"}`` (boxes kept after the parse-time filter).
        self.root_counts: List[Dict[str, Any]] = []
        self._parse_stats: Dict[str, int] = {}
        for r in roots:
            gt_file = r / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt"
            if not gt_file.is_file():
                raise FileNotFoundError(
                    f"WIDER FACE annotations not found: {gt_file} (set DSFD_WIDER_ROOT to the data set folder)"
                )
            anns, stats = parse_wider_annotations(gt_file, self.min_face)
            if not anns:
                raise ValueError(f"no images listed in {gt_file}")
            self._root_starts.append(len(self.annotations))
            self._image_dirs.append(r / f"WIDER_{split}" / "images")
            self.annotations.extend(anns)
            for k, v in stats.items():
                self._parse_stats[k] = self._parse_stats.get(k, 0) + v
            self.root_counts.append({"root": str(r), "images": len(anns), "boxes": int(stats["kept"])})
            log.info(
                "WIDER FACE %s at %s: %d images, %d boxes read, %d kept; skipped %d invalid-flagged, "
                "%d degenerate (w or h <= 0), %d smaller than %g px, %d malformed lines",
                split, r, stats["images"], stats["boxes_read"], stats["kept"], stats["invalid"],
                stats["degenerate"], stats["small"], self.min_face, stats["malformed"],
            )
        #: Images that could not be loaded: path -> reason (this process only).
        self.bad_images: Dict[str, str] = {}
        self._outside: Dict[int, int] = {}

    # -- bookkeeping ---------------------------------------------------------
    @property
    def stats(self) -> Dict[str, int]:
        """Counters: parse-time ones plus ``outside`` and ``bad_images`` (this process)."""
        d = dict(self._parse_stats)
        d["outside"] = sum(self._outside.values())
        d["bad_images"] = len(self.bad_images)
        return d

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for the random streams of plain integer indices.

        DataLoader workers get a copy of the dataset when an iterator is
        created, so call this before iterating (with ``persistent_workers``
        use :class:`EpochRandomSampler`, which passes the epoch in the index).
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.annotations)

    def _root_of(self, index: int) -> int:
        return bisect.bisect_right(self._root_starts, index) - 1

    def image_path(self, index: int) -> Path:
        return self._image_dirs[self._root_of(index)] / self.annotations[index].path

    def _mark_bad(self, path: str, reason: str) -> None:
        if path not in self.bad_images:
            self.bad_images[path] = reason
            log.warning("skipping unreadable image %s: %s", path, reason)

    def load(self, index: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The image (uint8 BGR) and its boxes clipped to it, or ``None`` for a bad image."""
        ann = self.annotations[index]
        path = str(self.image_path(index))
        if path in self.bad_images:
            return None
        try:
            img = read_image(path)
        except ImageError as e:
            self._mark_bad(path, str(e))
            return None
        h, w = img.shape[:2]
        b = ann.boxes.copy()
        np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
        np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        self._outside[index] = int((~keep).sum())
        return img, b[keep]

    def verify_images(self) -> Dict[str, str]:
        """Loads every image once in this process; returns (and records) the bad ones."""
        for i in range(len(self)):
            self.load(i)
        return dict(self.bad_images)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Tuple[Any, Any, Dict[str, Any]]:
        if isinstance(item, (tuple, list)):
            index, epoch = int(item[0]), int(item[1])
        else:
            index, epoch = int(item), self.epoch
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for k in range(n):
            j = (index + k) % n
            loaded = self.load(j)
            if loaded is not None:
                break
        else:
            raise RuntimeError(f"no loadable image in {[str(d) for d in self._image_dirs]} ({len(self.bad_images)} bad)")
        img, boxes = loaded
        ann = self.annotations[j]
        meta: Dict[str, Any] = {
            "path": str(self.image_path(j)),
            "name": os.path.splitext(ann.path)[0],
            "index": j,
            "requested_index": index,
            "orig_size": (int(img.shape[0]), int(img.shape[1])),
        }
        if self.transform is None:
            return img, boxes, meta
        rng = sample_rng(self.seed, epoch, index)
        image_t, boxes_t = self.transform(img, boxes, rng)
        return image_t, boxes_t, meta


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
