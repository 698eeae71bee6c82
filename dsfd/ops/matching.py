"""Training-side ops: GPU-side anchor assignment and hard negative mining."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..constants import BOX_VARIANCES
from ..extension import _assert_has_ops
from .boxes import _check_variances

__all__ = ["match_anchors", "hard_negative_mask", "ignore_anchors"]


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    iou_threshold: float = 0.4,
    ignore_threshold: Optional[float] = None,
    variances: Tuple[float, float] = BOX_VARIANCES,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Assigns ground truth to anchors for a whole batch, fused with encoding.

    Semantics (DSFD spec section 4, see :func:`dsfd.ops.reference.match_anchors`):
    each anchor takes its best ground truth, each ground truth forces its best
    anchor (a ground truth overlapping no anchor forces nothing), positives at
    IoU ``>= iou_threshold``, optional ignore band
    ``[ignore_threshold, iou_threshold)`` labelled -1.

    Args:
        anchors: ``Tensor[A, 4]`` ``cx, cy, w, h`` (normalised).
        gt_boxes: ``Tensor[B, G, 4]`` normalised corner boxes, padded per image.
        gt_counts: ``int Tensor[B]``: how many rows of ``gt_boxes[b]`` are real
            (on the same device; it is read on the device, never synced).
        iou_threshold: positive threshold (0.4 in DSFD's IAM).
        ignore_threshold: lower edge of the ignore band, or ``None``.
        variances: encoding variances.

    Returns:
        ``labels[B, A]`` int64 (1 face, 0 background, -1 ignore),
        ``matched_gt[B, A]`` int64 (-1 where not positive),
        ``loc_targets[B, A, 4]`` (0 where not positive).
    """
    _assert_has_ops()
    v0, v1 = _check_variances(variances)
    if ignore_threshold is not None and not ignore_threshold <= iou_threshold:
        raise ValueError(
            f"ignore_threshold ({ignore_threshold}) must be <= iou_threshold ({iou_threshold})"
        )
    return torch.ops.dsfd.match_anchors(
        anchors, gt_boxes, gt_counts, float(iou_threshold),
        None if ignore_threshold is None else float(ignore_threshold), v0, v1,
    )


def ignore_anchors(
    anchors: Tensor, labels: Tensor, ignore_boxes: Tensor, ignore_counts: Tensor, iou_threshold: float = 0.1
) -> Tensor:
    """Background anchors overlapping an ignore region become ignored (-1), batched, on the tensors' device.

    The regions are faces that training must neither learn as faces nor as
    background: faces a crop made too small or cut off, invalid-flagged
    faces, crowds. Positives keep their label, so this runs after
    :func:`match_anchors`; :func:`hard_negative_mask` never mines -1.

    Args:
        anchors: ``Tensor[A, 4]`` ``cx, cy, w, h`` (normalised).
        labels: ``int Tensor[B, A]`` (1 / 0 / -1).
        ignore_boxes: ``Tensor[B, M, 4]`` normalised corner boxes, padded per image.
        ignore_counts: ``int Tensor[B]``: real rows of ``ignore_boxes[b]``
            (read on the device, never synced).
        iou_threshold: an anchor with IoU ``>=`` this with a region is
            ignored (0.1: the smallest anchors on a face of 5 px or more).

    Returns:
        new ``int64 Tensor[B, A]`` labels.
    """
    _assert_has_ops()
    return torch.ops.dsfd.ignore_anchors(anchors, labels, ignore_boxes, ignore_counts, float(iou_threshold))


def hard_negative_mask(conf_loss: Tensor, labels: Tensor, neg_pos_ratio: int = 3, min_negatives: int = 0) -> Tensor:
    """Positives plus the hardest ``min(max(neg_pos_ratio * num_pos, min_negatives), A - 1)`` negatives per image.

    Args:
        conf_loss: ``Tensor[B, A]`` per-anchor classification loss.
        labels: ``int Tensor[B, A]`` from :func:`match_anchors` (-1 anchors
            are never mined).
        neg_pos_ratio: negatives per positive (3 in SSD/DSFD).
        min_negatives: negatives mined at least, whatever the positives (0:
            SSD; a positive value lets photos without faces teach background).

    Returns:
        ``bool Tensor[B, A]``. Ties in loss go to the lower anchor index; NaN
        losses count as the hardest (as ``torch.sort`` orders them). A linear
        selection per image, not the usual double argsort.
    """
    _assert_has_ops()
    if neg_pos_ratio < 0:
        raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    if min_negatives < 0:
        raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
    return torch.ops.dsfd.hard_negative_mask(conf_loss, labels, int(neg_pos_ratio), int(min_negatives))
