"""One dataset interface over every annotation format: :class:`FaceDataset`.

A reader (:mod:`.wider`, :mod:`.coco`, :mod:`.yolo`) turns one data root into
a :class:`DataSource`: the folder its image paths are relative to, one
:class:`ImageRecord` per image (face boxes, ignore regions), counters and the
bad annotations it skipped. :class:`FaceDataset` concatenates any number of
sources, of any formats, and gives every one the same samples, the same
bad-image handling and the same augmentation stream:

* item ``i`` (or ``(i, epoch)``, see :class:`dsfd.data.EpochRandomSampler`) is
  ``(image, boxes, meta)``: without a transform ``uint8 [H, W, 3]`` BGR and
  ``float32 [K, 4]`` corner pixels clipped to the image; with one, what it
  returns (``float32 [3, S, S]`` and normalised boxes for
  :class:`dsfd.data.TrainTransform` / :class:`dsfd.data.EvalTransform`),
  with the per-sample generator :func:`dsfd.data.sample_rng` of
  ``(seed, epoch, index)``;
* ``meta``: ``path``, ``name`` (relative path without extension), ``index``
  (the image used), ``requested_index``, ``orig_size`` ``(H, W)``, ``root``;
* a file :func:`dsfd.io.read_image` rejects is logged once, recorded in
  :attr:`FaceDataset.bad_images` and replaced by the next loadable image
  (deterministically, with the random stream of the requested index);
* boxes are clipped to the image when it is loaded; boxes left with nothing
  are counted as ``outside`` (per process, as for WIDER);
* ignore regions (COCO ``iscrowd``, WIDER's invalid-flagged faces, faces
  below ``min_face``) are neither learnt as faces nor as background. A
  transform that takes them (``accepts_ignore``, as
  :class:`dsfd.data.TrainTransform`) gets them with ``ignore=`` and returns
  the output's regions (plus the faces its crop dropped), which go to
  ``meta["ignore"]`` (normalised ``float32 [M, 4]``) and from there to the
  loss (:func:`dsfd.ops.ignore_anchors`); for any other transform they are
  painted with the BGR mean when ``paint_ignore``. Evaluation reads the
  pixels unpainted and gives the regions to pycocotools as crowd boxes.
"""

from __future__ import annotations

import bisect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from ..constants import BGR_MEAN
from ..io import ImageError, read_image
from .problems import AnnotationProblem

__all__ = ["ImageRecord", "DataSource", "FaceDataset", "sample_rng"]

log = logging.getLogger(__name__)

ImageTransform = Callable[..., Tuple[Any, Any]]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Independent generator for one sample, a function of ``(seed, epoch, index)`` only.

    Because it does not depend on the process or on the order in which
    samples are drawn, augmentation is the same for any number of
    DataLoader workers.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _paint(img: np.ndarray, regions: np.ndarray) -> None:
    """Fills pixel boxes of ``img`` with the BGR mean, in place."""
    if not len(regions):
        return
    fill = np.round(np.asarray(BGR_MEAN)).astype(np.uint8)
    for x1, y1, x2, y2 in regions:
        img[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = fill


class ImageRecord:
    """One annotated image.

    Attributes:
        path: image path relative to its source's ``image_dir`` (or absolute).
        boxes: ``float32 [K, 4]`` face corners ``x1, y1, x2, y2``: pixels, or
            fractions of the width / height when ``normalized`` (YOLO, whose
            image size is only known once the image is read).
        ignore: ``float32 [M, 4]`` ignore regions, same units.
        normalized: see ``boxes``.
        image_id: the annotation file's own id (COCO), else ``None``.
        size: ``(H, W)`` the annotation file states, when it does.
    """

    __slots__ = ("path", "boxes", "ignore", "normalized", "image_id", "size")

    def __init__(
        self,
        path: str,
        boxes: np.ndarray,
        ignore: Optional[np.ndarray] = None,
        normalized: bool = False,
        image_id: Any = None,
        size: Optional[Tuple[int, int]] = None,
    ) -> None:
        self.path = path
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.ignore = _empty_boxes() if ignore is None else np.asarray(ignore, dtype=np.float32).reshape(-1, 4)
        self.normalized = bool(normalized)
        self.image_id = image_id
        self.size = size

    def __repr__(self) -> str:
        extra = f", {len(self.ignore)} ignore" if len(self.ignore) else ""
        return f"{type(self).__name__}({self.path!r}, {len(self.boxes)} boxes{extra})"


@dataclass
class DataSource:
    """What a reader made of one data root.

    Attributes:
        root: the root as given (``--data``).
        format: ``"wider"``, ``"coco"`` or ``"yolo"``.
        image_dir: folder the records' paths are relative to.
        records: the images, in a deterministic order.
        stats: counters (``images``, ``boxes_read``, ``kept``, ... and one
            per problem reason that occurred).
        problems: the bad annotations skipped (location, reason, detail).
        categories: the class names read as faces (COCO / YOLO).
    """

    root: str
    format: str
    image_dir: Path
    records: List[ImageRecord]
    stats: Dict[str, int] = field(default_factory=dict)
    problems: List[AnnotationProblem] = field(default_factory=list)
    categories: List[str] = field(default_factory=list)

    def counts(self) -> Dict[str, Any]:
        """The per-root summary logged and stored in checkpoints (``data.roots``)."""
        c: Dict[str, Any] = {"root": self.root}
        if self.format != "wider":  # WIDER roots keep the record of earlier runs
            c["format"] = self.format
        c["images"] = len(self.records)
        c["boxes"] = int(self.stats.get("kept", sum(len(r.boxes) for r in self.records)))
        if self.format != "wider":
            skipped: Dict[str, int] = {}
            for p in self.problems:
                skipped[p.reason] = skipped.get(p.reason, 0) + 1
            c["skipped"] = skipped
        return c


class FaceDataset(Dataset):
    """Images with face boxes from one or more :class:`DataSource` (see the module docstring).

    Args:
        sources: the data roots, read by :func:`dsfd.data.build_dataset` or
            the readers; their images are concatenated in order.
        transform: ``transform(image_bgr_uint8, boxes_px, rng) -> (image, boxes)``.
        seed: base seed of the per-sample generators.
        min_face: faces of normalised records (YOLO) whose shorter side is
            below this many pixels are dropped when the image is loaded
            (pixel formats apply it when parsing).
        paint_ignore: paint ignore regions with the BGR mean (training).
    """

    def __init__(
        self,
        sources: Sequence[DataSource],
        transform: Optional[ImageTransform] = None,
        seed: int = 0,
        min_face: float = 1.0,
        paint_ignore: bool = True,
    ) -> None:
        self._init_sources(list(sources), transform, seed, min_face, paint_ignore)

    def _init_sources(
        self, sources: List[DataSource], transform: Optional[ImageTransform], seed: int, min_face: float,
        paint_ignore: bool,
    ) -> None:
        if not sources:
            raise ValueError("a dataset needs at least one data source")
        self.sources = sources
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.min_face = float(min_face)
        self.paint_ignore = bool(paint_ignore)
        self.annotations: List[ImageRecord] = []
        self._image_dirs: List[Path] = []
        self._root_starts: List[int] = []
        for s in sources:
            self._root_starts.append(len(self.annotations))
            self._image_dirs.append(Path(s.image_dir))
            self.annotations.extend(s.records)
        #: Per root: ``{"root", "images", "boxes"}`` (+ ``format`` and ``skipped`` per reason for COCO / YOLO).
        self.root_counts: List[Dict[str, Any]] = [s.counts() for s in sources]
        #: Images that could not be loaded: path -> reason (this process only).
        self.bad_images: Dict[str, str] = {}
        self._outside: Dict[int, int] = {}
        self._small: Dict[int, int] = {}
        self._size_warned: set = set()

    # -- bookkeeping ---------------------------------------------------------
    @property
    def stats(self) -> Dict[str, int]:
        """Counters of all sources summed, plus ``outside`` and ``bad_images`` (this process)."""
        d: Dict[str, int] = {}
        for s in self.sources:
            for k, v in s.stats.items():
                d[k] = d.get(k, 0) + int(v)
        if self._small:
            d["small"] = d.get("small", 0) + sum(self._small.values())
        d["outside"] = sum(self._outside.values())
        d["bad_images"] = len(self.bad_images)
        return d

    @property
    def problems(self) -> List[AnnotationProblem]:
        """Every bad annotation the readers skipped, source by source."""
        return [p for s in self.sources for p in s.problems]

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

    def source_of(self, index: int) -> DataSource:
        """The source image ``index`` comes from."""
        return self.sources[self._root_of(index)]

    def image_path(self, index: int) -> Path:
        return self._image_dirs[self._root_of(index)] / self.annotations[index].path

    def _mark_bad(self, path: str, reason: str) -> None:
        if path not in self.bad_images:
            self.bad_images[path] = reason
            log.warning("skipping unreadable image %s: %s", path, reason)

    def read(self, index: int) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(image, faces, ignore)`` in pixels, clipped to the image, unpainted; ``None`` for a bad image."""
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
        if ann.size is not None and tuple(ann.size) != (h, w) and path not in self._size_warned:
            self._size_warned.add(path)
            log.warning("%s is %dx%d but its annotation says %dx%d (boxes are clipped to the file; an EXIF "
                        "rotation the annotation tool applied is not applied here)", path, w, h, ann.size[1],
                        ann.size[0])
        b = ann.boxes.copy()
        ign = ann.ignore.copy()
        if ann.normalized:
            scale = np.array([w, h, w, h], dtype=np.float32)
            b *= scale
            ign *= scale
        np.clip(b[:, 0::2], 0, w, out=b[:, 0::2])
        np.clip(b[:, 1::2], 0, h, out=b[:, 1::2])
        np.clip(ign[:, 0::2], 0, w, out=ign[:, 0::2])
        np.clip(ign[:, 1::2], 0, h, out=ign[:, 1::2])
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        self._outside[index] = int((~keep).sum())
        if ann.normalized:  # the pixel size is known only now
            big = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= self.min_face
            self._small[index] = int((keep & ~big).sum())
            ign = np.concatenate([ign, b[keep & ~big]], 0)  # too small to learn, still a face
            keep &= big
        ign = ign[(ign[:, 2] > ign[:, 0]) & (ign[:, 3] > ign[:, 1])]
        return img, b[keep], ign

    def load(self, index: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The image (uint8 BGR, ignore regions painted when ``paint_ignore``) and its boxes, or ``None``."""
        got = self.read(index)
        if got is None:
            return None
        img, boxes, ign = got
        if self.paint_ignore:
            _paint(img, ign)
        return img, boxes

    def verify_images(self) -> Dict[str, str]:
        """Loads every image once in this process; returns (and records) the bad ones."""
        for i in range(len(self)):
            self.load(i)
        return dict(self.bad_images)

    def _meta(self, j: int, index: int, img: np.ndarray) -> Dict[str, Any]:
        ann = self.annotations[j]
        return {
            "path": str(self.image_path(j)),
            "name": os.path.splitext(ann.path)[0],
            "index": j,
            "requested_index": index,
            "orig_size": (int(img.shape[0]), int(img.shape[1])),
            "root": self.sources[self._root_of(j)].root,
        }

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
            got = self.read(j)
            if got is not None:
                break
        else:
            raise RuntimeError(f"no loadable image in {[str(d) for d in self._image_dirs]} ({len(self.bad_images)} bad)")
        img, boxes, ign = got
        meta = self._meta(j, index, img)
        takes_ignore = getattr(self.transform, "accepts_ignore", False)
        if self.paint_ignore and not takes_ignore:
            _paint(img, ign)
        if self.transform is None:
            return img, boxes, meta
        rng = sample_rng(self.seed, epoch, index)
        if takes_ignore:
            image_t, boxes_t, meta["ignore"] = self.transform(img, boxes, rng, ignore=ign)
        else:
            image_t, boxes_t = self.transform(img, boxes, rng)
        return image_t, boxes_t, meta
