"""Training data: readers for WIDER FACE, COCO and YOLO behind one dataset, DSFD augmentation and batching.

* :func:`build_dataset` reads any number of data roots, each in its own
  format (:func:`detect_format`: WIDER FACE folder, COCO ``.json``, YOLO
  ``images/`` + ``labels/``), into one :class:`FaceDataset`; every format
  gives the same samples and the same augmentation;
* :mod:`.wider`, :mod:`.coco`, :mod:`.yolo` are the readers (and the COCO /
  YOLO writers); :mod:`.problems` reports bad annotations with their
  location and reason;
* :mod:`.augment` and :mod:`.collate` turn samples into training batches.

Typical use::

    from torch.utils.data import DataLoader
    from dsfd.data import (WiderFaceDataset, TrainTransform, EpochRandomSampler,
                           collate_detection, worker_init_fn)

    ds = WiderFaceDataset(split="train", transform=TrainTransform(size=640), seed=0)
    sampler = EpochRandomSampler(len(ds), seed=0)
    loader = DataLoader(ds, batch_size=16, sampler=sampler, num_workers=4,
                        collate_fn=collate_detection, worker_init_fn=worker_init_fn,
                        persistent_workers=True)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, gt_boxes, gt_counts, meta in loader:
            ...

    # your own faces, in any mix of formats
    ds = build_dataset(["faces.json", "yolo_faces/", "widerface/"], "train",
                       transform=TrainTransform(size=640), category="face")
"""

from .augment import BGR_MEAN, DAS_ANCHOR_SIZES, CropInfo, EvalTransform, TrainTransform, photometric_distort
from .coco import read_coco, write_coco
from .collate import collate_detection, collate_ignore_regions
from .dataset import DataSource, FaceDataset, ImageRecord, sample_rng
from .formats import FORMATS, build_dataset, detect_format, has_split, read_source
from .problems import REASONS, AnnotationError, AnnotationProblem, ProblemReport
from .wider import (
    EpochRandomSampler,
    WiderAnnotation,
    WiderFaceDataset,
    parse_wider_annotations,
    read_wider,
    worker_init_fn,
)
from .yolo import read_yolo, write_yolo

__all__ = [
    "BGR_MEAN",
    "DAS_ANCHOR_SIZES",
    "CropInfo",
    "EvalTransform",
    "TrainTransform",
    "photometric_distort",
    "collate_detection",
    "collate_ignore_regions",
    "build_dataset",
    "detect_format",
    "has_split",
    "read_source",
    "FORMATS",
    "FaceDataset",
    "DataSource",
    "ImageRecord",
    "read_wider",
    "read_coco",
    "write_coco",
    "read_yolo",
    "write_yolo",
    "REASONS",
    "AnnotationError",
    "AnnotationProblem",
    "ProblemReport",
    "EpochRandomSampler",
    "WiderAnnotation",
    "WiderFaceDataset",
    "parse_wider_annotations",
    "sample_rng",
    "worker_init_fn",
]
