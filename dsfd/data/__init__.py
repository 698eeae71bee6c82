"""Training data: the WIDER FACE reader, DSFD augmentation and batching.

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
"""

from .augment import BGR_MEAN, DAS_ANCHOR_SIZES, CropInfo, EvalTransform, TrainTransform, photometric_distort
from .collate import collate_detection
from .wider import (
    EpochRandomSampler,
    WiderAnnotation,
    WiderFaceDataset,
    parse_wider_annotations,
    sample_rng,
    worker_init_fn,
)

__all__ = [
    "BGR_MEAN",
    "DAS_ANCHOR_SIZES",
    "CropInfo",
    "EvalTransform",
    "TrainTransform",
    "photometric_distort",
    "collate_detection",
    "EpochRandomSampler",
    "WiderAnnotation",
    "WiderFaceDataset",
    "parse_wider_annotations",
    "sample_rng",
    "worker_init_fn",
]
