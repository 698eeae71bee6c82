"""dsfd.ops: DSFD's tensor ops, and the one place that picks their implementation.

Every op exists twice with the same signature and the same outputs:

* :mod:`dsfd.ops.compiled` - the C++/CUDA kernels (``torch.ops.dsfd.*``);
* :mod:`dsfd.ops.reference` - plain PyTorch, written as the specification.

The functions here run the compiled kernel when the extension is loaded and
the reference otherwise, or inside :func:`use_reference` (tests, ONNX export
without custom operators). Nothing outside this package decides.
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Iterator, Optional, Sequence, Tuple

import torch

from torch import Tensor

from .. import extension as _extension
from ..constants import (
    BOX_VARIANCES,
    IOU_THRESHOLD,
    MAX_KEEP,
    PRE_NMS_TOP_K,
    SCORE_THRESHOLD,
    VOTE_IOU_THRESHOLD,
)
from . import compiled, reference

__all__ = [
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "box_voting",
    "match_anchors",
    "hard_negative_mask",
    "ignore_anchors",
    "upsample_mul",
    "normalize_images",
    "decode_detections",
    "compiled_available",
    "require_compiled",
    "use_reference",
    "backend",
    "compiled",
    "reference",
]

# Process-wide (not per thread): set only by use_reference().
_reference_forced = False


def compiled_available() -> bool:
    """Whether the compiled extension ``dsfd._C`` is loaded."""
    return _extension._has_ops()


def require_compiled() -> None:
    """``RuntimeError`` saying why ``dsfd._C`` did not load and how to build it, unless it is loaded."""
    _extension._assert_has_ops()


def backend() -> str:
    """``"compiled"`` or ``"reference"``: what the functions of ``dsfd.ops`` run now."""
    return "compiled" if compiled_available() and not _reference_forced else "reference"


@contextlib.contextmanager
def use_reference(enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``dsfd.ops`` runs the plain-PyTorch references (``enabled=False``: no change).

    Process-wide, restored on exit (also on errors); blocks nest.
    """
    global _reference_forced
    previous = _reference_forced
    _reference_forced = previous or bool(enabled)
    try:
        yield
    finally:
        _reference_forced = previous


def _impl() -> ModuleType:
    return compiled if compiled_available() and not _reference_forced else reference


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, ``[N, 4] x [M, 4] -> [N, M]`` or batched (see :func:`dsfd.ops.compiled.box_iou`)."""
    return _impl().box_iou(boxes1, boxes2)


def encode_boxes(gt: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """SSD encoding of corner boxes against ``cx, cy, w, h`` anchors (see :func:`dsfd.ops.compiled.encode_boxes`)."""
    return _impl().encode_boxes(gt, anchors, variances)


def decode_boxes(deltas: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """Regression outputs to corner boxes (see :func:`dsfd.ops.compiled.decode_boxes`)."""
    return _impl().decode_boxes(deltas, anchors, variances)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS with ``torchvision.ops.nms``'s contract (see :func:`dsfd.ops.compiled.nms`)."""
    return _impl().nms(boxes, scores, iou_threshold)


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
    score_threshold: float = SCORE_THRESHOLD,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
    max_keep: int = MAX_KEEP,
    return_indices: bool = False,
):
    """Per-image NMS of a batch with fixed-size outputs (see :func:`dsfd.ops.compiled.batched_nms`).

    Returns ``(boxes[B, max_keep, 4], scores[B, max_keep], counts[B])``, plus
    ``indices[B, max_keep]`` with ``return_indices=True``.
    """
    return _impl().batched_nms(
        boxes, scores, iou_threshold, score_threshold, pre_nms_top_k, max_keep, return_indices=return_indices
    )


def box_voting(
    boxes: Tensor, scores: Tensor, iou_threshold: float = VOTE_IOU_THRESHOLD, max_keep: int = MAX_KEEP
) -> Tuple[Tensor, Tensor]:
    """The released WIDER test code's merge of multi-scale detections (see :func:`dsfd.ops.compiled.box_voting`)."""
    return _impl().box_voting(boxes, scores, iou_threshold, max_keep)


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    iou_threshold: float = 0.4,
    ignore_threshold: Optional[float] = None,
    variances: Tuple[float, float] = BOX_VARIANCES,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Ground truth to anchors, fused with encoding (see :func:`dsfd.ops.compiled.match_anchors`)."""
    return _impl().match_anchors(anchors, gt_boxes, gt_counts, iou_threshold, ignore_threshold, variances)


def hard_negative_mask(conf_loss: Tensor, labels: Tensor, neg_pos_ratio: int = 3, min_negatives: int = 0) -> Tensor:
    """Positives plus the hardest negatives per image (see :func:`dsfd.ops.compiled.hard_negative_mask`)."""
    return _impl().hard_negative_mask(conf_loss, labels, neg_pos_ratio, min_negatives)


def ignore_anchors(
    anchors: Tensor, labels: Tensor, ignore_boxes: Tensor, ignore_counts: Tensor, iou_threshold: float = 0.1
) -> Tensor:
    """Background anchors on ignore regions become -1 (see :func:`dsfd.ops.compiled.ignore_anchors`)."""
    return _impl().ignore_anchors(anchors, labels, ignore_boxes, ignore_counts, iou_threshold)


def upsample_mul(upper: Tensor, lateral: Tensor, align_corners: bool = False, relu: bool = False) -> Tensor:
    """The FEM top-down step ``relu?(bilinear_up(upper) * lateral)`` (see :func:`dsfd.ops.compiled.upsample_mul`)."""
    return _impl().upsample_mul(upper, lateral, align_corners, relu)


def normalize_images(images: Tensor, mean: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """``uint8 [B, H, W, C]`` -> ``pixel - mean`` as ``[B, C, H, W]`` channels_last (see :func:`dsfd.ops.compiled.normalize_images`)."""
    return _impl().normalize_images(images, mean, dtype)


def decode_detections(
    loc: Tensor, conf: Tensor, anchors: Tensor, variances: Tuple[float, float], max_exponent: float,
    width: float, height: float,
) -> Tuple[Tensor, Tensor]:
    """One shot's ``loc``/``conf`` -> pixel boxes and face scores (see :func:`dsfd.ops.compiled.decode_detections`)."""
    return _impl().decode_detections(loc, conf, anchors, variances, max_exponent, width, height)
