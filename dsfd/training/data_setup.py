"""The data of a training run: datasets from ``cfg.data``, subsets, DataLoaders and what the data held.

The trainer's data order and augmentation are functions of
``(seed, epoch, index)`` (:class:`~dsfd.training.distributed.ShardedBatchSampler`,
:func:`dsfd.data.sample_rng`), so nothing here keeps state a resume would
need: the loaders use their own generator and never touch the global RNG.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import (
    EvalTransform,
    TrainTransform,
    build_dataset,
    collate_detection,
    detect_format,
    has_split,
    worker_init_fn,
)
from ..data_paths import wider_root
from .config import TrainConfig

__all__ = [
    "IndexSubset",
    "training_worker_init_fn",
    "fork_safe_iter",
    "make_loader",
    "build_train_dataset",
    "build_val_dataset",
    "data_counts",
    "report_training_data",
]

log = logging.getLogger(__name__)


class IndexSubset(Dataset):
    """A subset of a dataset that forwards ``(index, epoch)`` items (unlike ``torch.utils.data.Subset``).

    Item ``i`` (or ``(i, epoch)``) is ``base[indices[i]]`` (or
    ``base[(indices[i], epoch)]``), so the augmentation stream of an image is
    the same as in the full dataset.
    """

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> Any:
        if isinstance(item, (tuple, list)):
            return self.base[(self.indices[int(item[0])], int(item[1]))]
        return self.base[self.indices[int(item)]]


def training_worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: :func:`dsfd.data.worker_init_fn` and ignore SIGINT / SIGTERM.

    Ctrl-C reaches the whole process group; the workers must survive it so
    the main process can finish its iteration and write the checkpoint.
    """
    worker_init_fn(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def fork_safe_iter(loader: DataLoader) -> Iterator[Any]:
    """``iter(loader)``, quiescing OpenCV's thread pool while the workers are forked.

    A process that has run multi-threaded OpenCV code and then forks
    DataLoader workers leaves the pool's condition variables "in use" in
    the children, where the first ``cv2.setNumThreads`` (done by
    :func:`dsfd.data.worker_init_fn`) or parallel cv2 call then blocks
    forever. Dropping the parent's pool to one thread before the fork (and
    restoring it afterwards) avoids that.
    """
    if loader.num_workers == 0:
        return iter(loader)
    import cv2

    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        return iter(loader)
    finally:
        cv2.setNumThreads(n)


def make_loader(dataset: Dataset, cfg: TrainConfig, device: torch.device, **kw: Any) -> DataLoader:
    """The DataLoader of a run (workers, pinning, collate, worker init); ``kw`` go to DataLoader."""
    workers = int(cfg.workers)
    return DataLoader(
        dataset,
        num_workers=workers,
        collate_fn=collate_detection,
        worker_init_fn=training_worker_init_fn if workers else None,
        pin_memory=device.type == "cuda",
        # own generator: creating loaders never touches the global torch RNG
        generator=torch.Generator().manual_seed(cfg.seed),
        **kw,
    )


def _data_roots(cfg: TrainConfig) -> List[Path]:
    return [Path(r) for r in cfg.data_roots()] or [wider_root()]


def _data_options(cfg: TrainConfig) -> Dict[str, Any]:
    return dict(format=cfg.data_format, images=cfg.images, category=cfg.category, min_face=cfg.min_face,
                seed=cfg.seed, strict=cfg.strict)


def build_train_dataset(cfg: TrainConfig) -> Dataset:
    """The augmented training data of ``cfg.data`` (any mix of WIDER / COCO / YOLO roots), cut to ``train_images``."""
    tf = (
        TrainTransform(size=cfg.size, das_prob=cfg.das_prob, crop_scale=cfg.crop_scale)
        if cfg.augment == "full"
        else EvalTransform(size=cfg.size)
    )
    ds = build_dataset(_data_roots(cfg), "train", transform=tf, **_data_options(cfg))
    sel = cfg.train_images
    if isinstance(sel, (list, tuple)):
        return IndexSubset(ds, sel)
    if sel and int(sel) < len(ds):
        return IndexSubset(ds, range(int(sel)))
    return ds


def build_val_dataset(cfg: TrainConfig) -> Optional[Dataset]:
    """The val split of the first root that has one (``None``, with a warning, when none has)."""
    # extra roots laid out as a training split have none; a COCO file is one split
    for root in _data_roots(cfg):
        if has_split(root, "val", cfg.data_format):
            opts = {**_data_options(cfg), "images": None}  # --images belongs to a COCO file
            if (detect_format(root) if cfg.data_format == "auto" else cfg.data_format) == "wider":
                opts["category"] = None  # WIDER has only faces
            return build_dataset(root, "val", transform=EvalTransform(size=cfg.size), **opts)
    log.warning("no validation split under %s: validation disabled", [str(r) for r in _data_roots(cfg)])
    return None


def _base(dataset: Dataset) -> Dataset:
    return dataset.base if isinstance(dataset, IndexSubset) else dataset


def data_counts(dataset: Dataset) -> List[Dict[str, Any]]:
    """Images and kept boxes per training data root (also in the log and checkpoints).

    COCO and YOLO roots add ``format`` and ``skipped`` (bad annotations per reason).
    """
    counts = getattr(_base(dataset), "root_counts", None)
    if counts is None:
        return [{"root": "custom dataset", "images": len(dataset), "boxes": None}]
    return [dict(c) for c in counts]


def report_training_data(dataset: Dataset, out: Path) -> Optional[Path]:
    """Logs the counts per root; writes every skipped bad annotation to ``<out>/data_problems.txt`` (if any).

    Returns the problems file. Called on the main rank only.
    """
    for c in data_counts(dataset):
        skipped = c.get("skipped")
        tail = f"; bad annotations skipped: {skipped}" if skipped else ""
        log.info("training data: %s: %s images, %s boxes%s", c["root"], c["images"], c["boxes"], tail)
    problems = list(getattr(_base(dataset), "problems", []))
    if not problems:
        return None
    out.mkdir(parents=True, exist_ok=True)
    path = out / "data_problems.txt"
    path.write_text("".join(f"{p}\n" for p in problems), encoding="utf-8")
    log.warning("%d bad annotation(s) skipped, listed in %s", len(problems), path)
    return path
