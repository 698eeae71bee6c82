"""Box ops: IoU, SSD encoding/decoding, NMS and fixed-size batched NMS.

Thin typed wrappers over ``torch.ops.dsfd.*`` (C++ CPU and CUDA kernels).
The plain-PyTorch references with the same semantics live in
:mod:`dsfd.ops.reference`.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..constants import (
    BOX_VARIANCES,
    IOU_THRESHOLD,
    MAX_KEEP,
    PRE_NMS_TOP_K,
    SCORE_THRESHOLD,
    VOTE_IOU_THRESHOLD,
)
from ..extension import _assert_has_ops
from .reference import check_nms_sizes

__all__ = ["box_iou", "encode_boxes", "decode_boxes", "nms", "batched_nms", "box_voting"]


def _check_variances(variances: Tuple[float, float]) -> Tuple[float, float]:
    if len(variances) != 2 or not all(float(v) > 0 for v in variances):
        raise ValueError(f"variances must be two positive numbers, got {variances!r}")
    return float(variances[0]), float(variances[1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``x1, y1, x2, y2`` boxes.

    Args:
        boxes1: ``Tensor[N, 4]`` or batched ``Tensor[B, N, 4]``.
        boxes2: ``Tensor[M, 4]`` or batched ``Tensor[B, M, 4]`` (same rank,
            dtype and device as ``boxes1``).

    Returns:
        ``Tensor[N, M]`` (or ``[B, N, M]``) in the input dtype, computed in
        float32 for half inputs. Same values as ``torchvision.ops.box_iou``
        (including for degenerate boxes; a NaN coordinate gives NaN).
    """
    _assert_has_ops()
    return torch.ops.dsfd.box_iou(boxes1, boxes2)


def encode_boxes(gt: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """SSD encoding of corner boxes against ``cx, cy, w, h`` anchors.

    ``t_xy = (g_c - a_c) / (v0 * a_wh)``, ``t_wh = log(g_wh / a_wh) / v1``.

    Args:
        gt: ``Tensor[..., A, 4]`` corner boxes.
        anchors: ``Tensor[A, 4]`` (broadcast over the leading dims of ``gt``)
            or the same shape as ``gt``.
        variances: ``(v0, v1)``; DSFD uses ``(0.1, 0.2)``.

    Returns:
        ``Tensor`` shaped like ``gt``. Zero-size ground truths give ``-inf``
        sizes (log 0), as in the reference.
    """
    _assert_has_ops()
    v0, v1 = _check_variances(variances)
    return torch.ops.dsfd.encode_boxes(gt, anchors, v0, v1)


def decode_boxes(deltas: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """Inverse of :func:`encode_boxes`: regression outputs to corner boxes.

    Args:
        deltas: ``Tensor[B, A, 4]`` or ``Tensor[A, 4]`` network outputs.
        anchors: ``Tensor[A, 4]`` ``cx, cy, w, h`` anchors.
        variances: ``(v0, v1)``.

    Returns:
        Corner boxes shaped like ``deltas`` (normalised if the anchors are).
        No clamping of the size exponent, for parity with the released code.
    """
    _assert_has_ops()
    v0, v1 = _check_variances(variances)
    return torch.ops.dsfd.decode_boxes(deltas, anchors, v0, v1)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression with ``torchvision.ops.nms``'s contract.

    Args:
        boxes: ``Tensor[N, 4]`` corner boxes.
        scores: ``Tensor[N]``; NaN scores raise ``ValueError``.
        iou_threshold: boxes with IoU ``> iou_threshold`` to a kept,
            higher-scoring box are discarded.

    Returns:
        ``int64 Tensor[K]`` indices of the kept boxes in decreasing score
        order (ties: lower index first).
    """
    _assert_has_ops()
    if scores.is_floating_point() and scores.numel() and bool(torch.isnan(scores).any()):
        raise ValueError("nms: scores contain NaN")
    return torch.ops.dsfd.nms(boxes, scores, float(iou_threshold))


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
    score_threshold: float = SCORE_THRESHOLD,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
    max_keep: int = MAX_KEEP,
    return_indices: bool = False,
):
    """Per-image NMS for a whole batch in one call, with fixed-size outputs.

    DSFD's post-processing: per image keep ``score > score_threshold``, take
    the ``pre_nms_top_k`` highest (ties: lower index first), greedy NMS at
    ``iou_threshold``, keep at most ``max_keep``. On CUDA nothing synchronises
    with the host, so the call can be captured in a CUDA graph.

    Args:
        boxes: ``Tensor[B, N, 4]`` corner boxes.
        scores: ``Tensor[B, N]``. NaN scores never pass the threshold.
        return_indices: also return ``int64 Tensor[B, max_keep]``, the kept
            boxes' indices into ``N`` (-1 in padding).

    Returns:
        ``(boxes[B, max_keep, 4], scores[B, max_keep], counts[B])`` (plus
        ``indices`` when asked); row ``b`` holds ``counts[b]`` detections in
        decreasing score order followed by zero padding.
    """
    _assert_has_ops()
    check_nms_sizes(pre_nms_top_k, max_keep)
    out_boxes, out_scores, out_idx, counts = torch.ops.dsfd.batched_nms(
        boxes, scores, float(iou_threshold), float(score_threshold), int(pre_nms_top_k), int(max_keep)
    )
    if return_indices:
        return out_boxes, out_scores, counts, out_idx
    return out_boxes, out_scores, counts


def box_voting(
    boxes: Tensor, scores: Tensor, iou_threshold: float = VOTE_IOU_THRESHOLD, max_keep: int = MAX_KEEP
) -> Tuple[Tensor, Tensor]:
    """Merges (multi-scale) detections by the released DSFD code's box voting.

    Repeatedly takes the highest-scoring remaining box (ties: lower index);
    every remaining box with IoU ``>= iou_threshold`` to it (inclusive-pixel
    IoU, ``w = x2 - x1 + 1``, as in the released code) joins its group and is
    removed. A group of one box is dropped (no partner, no vote); otherwise
    the output box is the score-weighted mean of the group's coordinates and
    its score the group's maximum. NaN scores are ignored. Unlike the released
    code, an input with no boxes (or no groups) returns empty tensors.

    Args:
        boxes: ``Tensor[N, 4]`` pixel boxes ``x1, y1, x2, y2``.
        scores: ``Tensor[N]`` (same dtype).
        iou_threshold: group threshold (0.3 in DSFD).
        max_keep: at most this many merged boxes (750 in DSFD).

    Returns:
        ``(boxes[K, 4], scores[K])`` in decreasing order of each group's top score.
    """
    _assert_has_ops()
    return torch.ops.dsfd.box_voting(boxes, scores, float(iou_threshold), int(max_keep))
