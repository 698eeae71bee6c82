"""Plain-PyTorch reference implementations of every ``dsfd`` kernel.

These define the semantics the C++/CUDA kernels must reproduce; tests compare
the two on random inputs and edge cases. They are written for clarity, not
speed (the ``match_anchors`` reference builds the full ``[B, G, A]`` IoU
tensor, ``batched_nms`` loops over images in Python).

Conventions: boxes are ``x1, y1, x2, y2``; anchors are ``cx, cy, w, h``.
Arithmetic is float32 (half inputs are upcast), results are returned in the
input dtype where the kernel does so.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import (
    BOX_VARIANCES,
    IOU_THRESHOLD,
    MAX_KEEP,
    PRE_NMS_TOP_K,
    SCORE_THRESHOLD,
    VOTE_IOU_THRESHOLD,
)

#: Most image channels :func:`normalize_images` takes (the kernels' limit).
MAX_IMAGE_CHANNELS = 4

__all__ = [
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "match_anchors",
    "hard_negative_mask",
    "ignore_anchors",
    "upsample_mul",
    "normalize_images",
    "decode_detections",
    "box_voting",
    "anchors_to_corners",
]


def _acc(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def anchors_to_corners(anchors: Tensor) -> Tensor:
    """``[..., 4]`` ``cx, cy, w, h`` -> ``x1, y1, x2, y2``."""
    return torch.cat([anchors[..., :2] - anchors[..., 2:] / 2, anchors[..., :2] + anchors[..., 2:] / 2], -1)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corner boxes: ``[N,4] x [M,4] -> [N,M]`` or ``[B,N,4] x [B,M,4] -> [B,N,M]``.

    Degenerate (zero-area or inverted) boxes have area ``0`` for the
    intersection but their (possibly negative) area enters the union exactly as
    in ``torchvision.ops.box_iou``.
    """
    a, b = _acc(boxes1), _acc(boxes2)
    area1 = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area2 = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (area1[..., :, None] + area2[..., None, :] - inter)
    return iou.to(boxes1.dtype)


def encode_boxes(gt: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """SSD encoding of corner boxes ``gt`` against ``cx,cy,w,h`` anchors (broadcasting).

    Anchors are used in ``gt``'s math precision (float32 for half inputs).
    """
    g = _acc(gt)
    a = anchors.to(g.dtype)
    g_c = (g[..., :2] + g[..., 2:]) / 2
    g_wh = g[..., 2:] - g[..., :2]
    t_xy = (g_c - a[..., :2]) / (variances[0] * a[..., 2:])
    t_wh = torch.log(g_wh / a[..., 2:]) / variances[1]
    return torch.cat([t_xy, t_wh], -1).to(gt.dtype)


def decode_boxes(deltas: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES) -> Tensor:
    """Inverse of :func:`encode_boxes`: ``deltas[..., A, 4]`` and ``anchors[A, 4]`` -> corner boxes.

    As in the released DSFD code: ``x1 = c - w / 2`` and then ``x2 = x1 + w``.
    """
    d = _acc(deltas)
    a = anchors.to(d.dtype)
    c = a[..., :2] + d[..., :2] * variances[0] * a[..., 2:]
    wh = a[..., 2:] * torch.exp(d[..., 2:] * variances[1])
    xy1 = c - wh / 2
    return torch.cat([xy1, xy1 + wh], -1).to(deltas.dtype)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS, torchvision's contract: indices of kept boxes, decreasing score.

    Ties in score are broken by the lower index first (stable sort).
    A box is suppressed by a kept box when their IoU is ``> iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(_acc(scores), descending=True, stable=True).indices
    iou = box_iou(_acc(boxes)[order], _acc(boxes)[order])
    n = order.numel()
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep = []
    iou_cpu = iou.cpu()
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou_cpu[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def check_nms_sizes(pre_nms_top_k: int, max_keep: int) -> None:
    """``ValueError`` unless both sizes are at least 1 (the kernel wrapper checks the same)."""
    if pre_nms_top_k < 1 or max_keep < 1:
        raise ValueError(f"pre_nms_top_k and max_keep must be >= 1, got {pre_nms_top_k}, {max_keep}")


def batched_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
    score_threshold: float = SCORE_THRESHOLD,
    pre_nms_top_k: int = PRE_NMS_TOP_K,
    max_keep: int = MAX_KEEP,
    return_indices: bool = False,
):
    """Per-image NMS of ``boxes[B,N,4]`` / ``scores[B,N]``.

    Per image: keep ``score > score_threshold`` (NaN scores never pass), take
    the ``pre_nms_top_k`` best (ties: lower index first), greedy NMS at
    ``iou_threshold``, keep at most ``max_keep``. Returns padded
    ``(boxes[B,max_keep,4], scores[B,max_keep], counts[B])``, plus
    ``indices[B,max_keep]`` with ``return_indices=True`` (the kernel's
    contract); padding is 0 for boxes and scores and -1 for indices.
    """
    check_nms_sizes(pre_nms_top_k, max_keep)
    B, N = scores.shape
    out_boxes = boxes.new_zeros(B, max_keep, 4)
    out_scores = scores.new_zeros(B, max_keep)
    out_idx = torch.full((B, max_keep), -1, dtype=torch.long, device=boxes.device)
    counts = torch.zeros(B, dtype=torch.long, device=boxes.device)
    for b in range(B):
        s = _acc(scores[b])
        cand = torch.nonzero(s > score_threshold).flatten()
        order = torch.sort(s[cand], descending=True, stable=True).indices[:pre_nms_top_k]
        cand = cand[order]
        keep = cand[nms(boxes[b, cand], s[cand], iou_threshold)][:max_keep]
        k = keep.numel()
        counts[b] = k
        out_boxes[b, :k] = boxes[b, keep]
        out_scores[b, :k] = scores[b, keep]
        out_idx[b, :k] = keep
    if return_indices:
        return out_boxes, out_scores, counts, out_idx
    return out_boxes, out_scores, counts


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    iou_threshold: float = 0.4,
    ignore_threshold: Optional[float] = None,
    variances: Tuple[float, float] = BOX_VARIANCES,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SSD/DSFD anchor assignment, fused with encoding.

    ``anchors[A,4]`` are ``cx,cy,w,h``; ``gt_boxes[B,G,4]`` are corner boxes,
    padded per image, of which the first ``gt_counts[b]`` are real.

    * each anchor takes the ground truth with the highest IoU (ties: lowest
      ground-truth index);
    * each ground truth forces its best anchor (ties: lowest anchor index) to
      match it, even below the threshold; ground truths are applied in index
      order, so a later one wins an anchor two ground truths both pick. A
      ground truth that overlaps no anchor at all (best IoU 0, e.g. a
      zero-area box) forces nothing: this deliberately differs from the
      classic SSD code, which would glue it to anchor 0;
    * label 1 where the (possibly forced) IoU is ``>= iou_threshold``; with
      ``ignore_threshold`` set, ``ignore_threshold <= IoU < iou_threshold`` is
      -1 (ignored); everything else 0.

    Returns ``labels[B,A]`` (int64), ``matched_gt[B,A]`` (int64, the ground
    truth index for positives, -1 elsewhere) and ``loc_targets[B,A,4]``
    (encoded offsets for positives, 0 elsewhere; dtype of ``gt_boxes``).
    """
    B, G, _ = gt_boxes.shape
    A = anchors.shape[0]
    dev = gt_boxes.device
    labels = torch.zeros(B, A, dtype=torch.long, device=dev)
    matched = torch.full((B, A), -1, dtype=torch.long, device=dev)
    targets = torch.zeros(B, A, 4, dtype=gt_boxes.dtype, device=dev)
    math_dtype = _acc(gt_boxes).dtype
    anchors = anchors.to(math_dtype)
    a_corners = anchors_to_corners(anchors)
    for b in range(B):
        g = int(gt_counts[b])
        if g == 0:
            continue
        gt = _acc(gt_boxes[b, :g])
        iou = box_iou(gt, a_corners)  # [g, A]
        best_gt_iou, best_gt = iou.max(0)  # per anchor; first max on ties
        best_anchor_iou, best_anchor = iou.max(1)  # per gt
        for j in range(g):
            if best_anchor_iou[j] > 0:
                best_gt[best_anchor[j]] = j
                best_gt_iou[best_anchor[j]] = 2.0
        pos = best_gt_iou >= iou_threshold
        lab = pos.long()
        if ignore_threshold is not None:
            lab[(best_gt_iou >= ignore_threshold) & ~pos] = -1
        labels[b] = lab
        matched[b, pos] = best_gt[pos]
        enc = encode_boxes(gt[best_gt[pos]], anchors[pos], variances)
        targets[b, pos] = enc.to(targets.dtype)
    return labels, matched, targets


def hard_negative_mask(conf_loss: Tensor, labels: Tensor, neg_pos_ratio: int = 3, min_negatives: int = 0) -> Tensor:
    """Positives plus the hardest negatives per image.

    Negatives are anchors with label 0 (label -1 is ignored, never mined).
    Per image ``k = min(max(neg_pos_ratio * num_pos, min_negatives), A - 1)``
    negatives with the largest ``conf_loss`` are kept (ties: lower anchor
    index first; NaN counts as the largest, as in ``torch.sort``).
    ``min_negatives`` lets an image without faces teach background too.
    """
    B, A = conf_loss.shape
    is_neg = labels == 0
    num_pos = (labels > 0).sum(1, keepdim=True)
    num_neg = torch.clamp(torch.clamp(neg_pos_ratio * num_pos, min=int(min_negatives)), max=A - 1)
    # Hardest first (stable: ties keep the lower index), then negatives in
    # front of everything else, keeping that order.
    order = torch.sort(_acc(conf_loss), dim=1, descending=True, stable=True).indices
    neg_first = torch.sort(torch.gather(is_neg, 1, order).to(torch.uint8), dim=1, descending=True, stable=True)
    order = torch.gather(order, 1, neg_first.indices)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(A, device=conf_loss.device).expand(B, A).contiguous())
    neg = (rank < num_neg) & is_neg
    return neg | (labels > 0)


def ignore_anchors(
    anchors: Tensor, labels: Tensor, ignore_boxes: Tensor, ignore_counts: Tensor, iou_threshold: float = 0.1
) -> Tensor:
    """Background anchors that overlap an ignore region become ignored (-1).

    ``anchors[A, 4]`` are ``cx, cy, w, h``; ``labels[B, A]`` come from
    :func:`match_anchors`; ``ignore_boxes[B, M, 4]`` are corner boxes, padded
    per image, of which the first ``ignore_counts[b]`` are real. An anchor
    labelled 0 whose IoU with any of its image's regions is
    ``>= iou_threshold`` gets -1; positives and already ignored anchors keep
    their label. Returns new int64 labels (the input is not modified).
    """
    out = labels.to(torch.long, copy=True)
    corners = anchors_to_corners(_acc(anchors))
    for b in range(labels.shape[0]):
        m = int(ignore_counts[b])
        if m == 0:
            continue
        iou = box_iou(_acc(ignore_boxes[b, :m]).to(corners.dtype), corners)  # [m, A]
        hit = (iou >= iou_threshold).any(0)
        out[b] = torch.where(hit & (out[b] == 0), torch.full_like(out[b], -1), out[b])
    return out


def upsample_mul(upper: Tensor, lateral: Tensor, align_corners: bool = False, relu: bool = False) -> Tensor:
    """FEM top-down step: ``bilinear_up(upper, lateral's HxW) * lateral`` (then ReLU if asked)."""
    up = F.interpolate(upper, size=lateral.shape[-2:], mode="bilinear", align_corners=align_corners)
    out = up * lateral
    return F.relu(out) if relu else out


def normalize_images(images: Tensor, mean: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """``uint8 [B, H, W, C]`` images -> ``float(pixel) - mean[c]`` in ``dtype``, as ``[B, C, H, W]`` channels_last.

    Computed in float32 and rounded once to ``dtype``.
    """
    _check_normalize(images, mean, dtype)
    x = images.float() - torch.tensor([float(m) for m in mean], device=images.device)
    return x.to(dtype).permute(0, 3, 1, 2)


def _check_normalize(images: Tensor, mean: Sequence[float], dtype: torch.dtype) -> None:
    op = "dsfd::normalize_images"
    if images.dtype != torch.uint8:
        raise RuntimeError(f"{op}: images must be uint8, got {images.dtype}")
    if images.dim() != 4:
        raise RuntimeError(f"{op}: images must be [B, H, W, C], got {tuple(images.shape)}")
    if images.shape[3] != len(mean):
        raise RuntimeError(f"{op}: images have {images.shape[3]} channels but mean has {len(mean)} values")
    if not 1 <= len(mean) <= MAX_IMAGE_CHANNELS:
        raise RuntimeError(f"{op}: 1 to {MAX_IMAGE_CHANNELS} channels are supported, got {len(mean)}")
    if not all(math.isfinite(float(m)) for m in mean):
        raise RuntimeError(f"{op}: mean values must be finite, got {list(mean)}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise RuntimeError(f"{op}: dtype must be float32, bfloat16 or float16, got {dtype}")


def decode_detections(
    loc: Tensor, conf: Tensor, anchors: Tensor, variances: Tuple[float, float], max_exponent: float,
    width: float, height: float,
) -> Tuple[Tensor, Tensor]:
    """One shot's raw outputs -> ``boxes[B, A, 4]`` (float32 input pixels) and face ``scores[B, A]`` (float32).

    ``loc[B, A, 4]`` offsets (size offsets clamped at ``max_exponent``),
    ``conf[B, A, 2]`` background / face logits, ``anchors[A, 4]`` normalised
    ``cx, cy, w, h``; decoded as :func:`decode_boxes`, then scaled to
    ``width`` x ``height``. ``score = softmax(conf)[1] = sigmoid(conf1 - conf0)``.
    """
    op = "dsfd::decode_detections"
    if loc.dim() != 3 or loc.shape[-1] != 4 or conf.dim() != 3 or conf.shape[-1] != 2:
        raise RuntimeError(f"{op}: loc must be [B, A, 4] and conf [B, A, 2], got {tuple(loc.shape)} and {tuple(conf.shape)}")
    if loc.shape[:2] != conf.shape[:2] or anchors.dim() != 2 or anchors.shape != (loc.shape[1], 4):
        raise RuntimeError(f"{op}: loc {tuple(loc.shape)}, conf {tuple(conf.shape)} and anchors "
                           f"{tuple(anchors.shape)} must agree on B and A")
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise RuntimeError(f"{op}: width and height must be positive, got {width} x {height}")
    scores = torch.sigmoid(conf[..., 1].float() - conf[..., 0].float())
    loc = torch.cat([loc[..., :2].float(), loc[..., 2:].float().clamp(max=max_exponent)], -1)
    boxes = decode_boxes(loc, anchors.float(), variances)
    boxes = boxes * torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes.device)
    return boxes, scores


def box_voting(
    boxes: Tensor, scores: Tensor, iou_threshold: float = VOTE_IOU_THRESHOLD, max_keep: int = MAX_KEEP
) -> Tuple[Tensor, Tensor]:
    """The released WIDER test code's box voting (``bbox_vote``), in pixels.

    IoU uses the released code's inclusive-pixel convention
    (``w = x2 - x1 + 1``).

    Repeatedly take the highest-scoring remaining box (ties: lower index);
    all remaining boxes with IoU ``>= iou_threshold`` to it (itself included)
    form a group and are removed. A group of one box is dropped; otherwise
    the output box is the score-weighted mean of the group's coordinates and
    its score the group's maximum. At most ``max_keep`` boxes are returned.
    """
    valid = ~torch.isnan(scores)  # NaN scores take part in nothing
    boxes, scores = boxes[valid], scores[valid]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 4), scores.new_zeros(0)
    order = torch.sort(_acc(scores), descending=True, stable=True).indices
    b, s = _acc(boxes)[order], _acc(scores)[order]
    iou = box_iou(torch.cat([b[:, :2], b[:, 2:] + 1], 1), torch.cat([b[:, :2], b[:, 2:] + 1], 1))
    alive = torch.ones(len(b), dtype=torch.bool)
    out_b, out_s = [], []
    for i in range(len(b)):
        if len(out_b) >= max_keep:
            break
        if not alive[i]:
            continue
        group = alive & (iou[i].cpu() >= iou_threshold)
        group[i] = True
        alive &= ~group
        idx = torch.nonzero(group).flatten()
        if idx.numel() <= 1:
            continue
        w = s[idx].double()
        out_b.append((b[idx].double() * w[:, None]).sum(0) / w.sum())
        out_s.append(w.max())
    if not out_b:
        return boxes.new_zeros(0, 4), scores.new_zeros(0)
    return torch.stack(out_b).to(boxes.dtype), torch.stack(out_s).to(scores.dtype)
