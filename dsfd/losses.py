"""DSFD training losses: the SSD multibox loss per shot and the Progressive Anchor Loss.

Per shot (spec section 4): anchors are matched to the ground truth by
:func:`dsfd.ops.match_anchors` (IoU >= 0.4 positive, each face forces its
best anchor, optional ignore band labelled -1) for the whole batch on the
tensors' device; the per-anchor softmax cross-entropy is computed for every
anchor, and :func:`dsfd.ops.hard_negative_mask` keeps the positives plus the
``min(3 * num_pos, A - 1)`` hardest background anchors of each image (mined
on the detached loss; ignored anchors are never mined). Then

* ``loss_c`` = cross-entropy summed over positives and mined negatives,
* ``loss_l`` = smooth-L1 (beta 1) of the encoded offsets summed over positives,

both divided by ``N = max(1, number of positives in the batch)``. Images with
no faces contribute only mined negatives (none when the whole batch has no
positive: then both losses are exactly 0 and finite).

Progressive Anchor Loss: ``L = L_first(small anchors) + lambda * L_second``.

Everything is batched (no per-image Python loop with the kernels) and free
of host-device synchronisation: the positive count stays a tensor.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .ops import reference as ops_ref

__all__ = ["MultiBoxLoss", "ProgressiveAnchorLoss"]

Shot = Sequence[Tensor]  # (loc [B, A, 4], conf [B, A, C], anchors [A, 4]), e.g. a ShotOutput


class MultiBoxLoss(nn.Module):
    """SSD/DSFD loss of one shot.

    Args:
        iou_threshold: positive IoU threshold (0.4, IAM).
        neg_pos_ratio: mined negatives per positive (3).
        variances: box-encoding variances.
        ignore_threshold: lower edge of an ignore band ``[t, iou_threshold)``
            whose anchors are neither positives nor mined, or ``None``.
        use_reference_ops: match and mine with the plain-PyTorch
            :mod:`dsfd.ops.reference` instead of the compiled kernels (tests).
    """

    def __init__(
        self,
        iou_threshold: float = 0.4,
        neg_pos_ratio: int = 3,
        variances: Tuple[float, float] = (0.1, 0.2),
        ignore_threshold: Optional[float] = None,
        use_reference_ops: bool = False,
    ) -> None:
        super().__init__()
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.variances = (float(variances[0]), float(variances[1]))
        self.ignore_threshold = None if ignore_threshold is None else float(ignore_threshold)
        self.use_reference_ops = bool(use_reference_ops)

    def extra_repr(self) -> str:
        return (
            f"iou_threshold={self.iou_threshold}, neg_pos_ratio={self.neg_pos_ratio}, "
            f"variances={self.variances}, ignore_threshold={self.ignore_threshold}, "
            f"use_reference_ops={self.use_reference_ops}"
        )

    @torch.no_grad()
    def targets(self, anchors: Tensor, gt_boxes: Tensor, gt_counts: Tensor) -> Tuple[Tensor, Tensor]:
        """``labels[B, A]`` (1 / 0 / -1) and encoded ``loc_targets[B, A, 4]`` (float32)."""
        impl = ops_ref if self.use_reference_ops else ops
        labels, _, loc_t = impl.match_anchors(
            anchors, gt_boxes, gt_counts, self.iou_threshold, self.ignore_threshold, self.variances
        )
        return labels, loc_t

    def forward(
        self, loc: Tensor, conf: Tensor, anchors: Tensor, gt_boxes: Tensor, gt_counts: Tensor
    ) -> Dict[str, Tensor]:
        """Loss of one shot.

        Args:
            loc: ``[B, A, 4]`` predicted offsets.
            conf: ``[B, A, C]`` class logits (class 0 background, 1 face).
            anchors: ``[A, 4]`` ``cx, cy, w, h`` normalised.
            gt_boxes: ``[B, G, 4]`` normalised corner boxes, zero-padded.
            gt_counts: ``[B]`` number of real boxes per image.

        Returns:
            ``{"loss_l", "loss_c", "num_pos"}`` (scalars; ``num_pos`` int64).
        """
        if loc.dim() != 3 or loc.shape[-1] != 4 or conf.dim() != 3 or conf.shape[:2] != loc.shape[:2]:
            raise ValueError(f"expected loc [B, A, 4] and conf [B, A, C], got {tuple(loc.shape)}, {tuple(conf.shape)}")
        if anchors.shape != (loc.shape[1], 4):
            raise ValueError(f"anchors must be [{loc.shape[1]}, 4], got {tuple(anchors.shape)}")
        B, A, _ = loc.shape
        dev = loc.device
        anchors = anchors.detach().to(dev, torch.float32)
        gt_boxes = gt_boxes.detach().to(dev, torch.float32).reshape(B, -1, 4)
        gt_counts = gt_counts.detach().to(dev, torch.int64).reshape(B)
        labels, loc_t = self.targets(anchors, gt_boxes, gt_counts)
        pos = labels > 0

        ce = F.cross_entropy(
            conf.reshape(B * A, -1).float(), labels.clamp(min=0).reshape(-1), reduction="none"
        ).view(B, A)
        with torch.no_grad():
            mine = ops_ref.hard_negative_mask if self.use_reference_ops else ops.hard_negative_mask
            selected = mine(ce.detach(), labels, self.neg_pos_ratio)

        num_pos = pos.sum()
        denom = num_pos.clamp(min=1).to(torch.float32)
        loss_c = torch.where(selected, ce, 0.0).sum() / denom
        sl1 = F.smooth_l1_loss(loc.float(), loc_t.float(), reduction="none").sum(-1)
        loss_l = torch.where(pos, sl1, 0.0).sum() / denom
        return {"loss_l": loss_l, "loss_c": loss_c, "num_pos": num_pos}


class ProgressiveAnchorLoss(nn.Module):
    """PAL: ``L = L_first_shot + lambda_ * L_second_shot``, each a :class:`MultiBoxLoss`.

    Args:
        lambda_: weight of the second shot (1.0).
        iou_threshold, neg_pos_ratio, variances, ignore_threshold,
        use_reference_ops: passed to the :class:`MultiBoxLoss` of both shots.

    ``forward(first, second, gt_boxes, gt_counts)`` takes each shot as a
    ``(loc, conf, anchors)`` triple (a ``ShotOutput``, so
    ``criterion(*model(images), gt_boxes, gt_counts)`` works); either shot may
    be ``None`` (skipped). Returns ``(total, parts)`` with ``parts`` holding
    ``first_loss_l, first_loss_c, first_num_pos, second_loss_l,
    second_loss_c, second_num_pos`` for the computed shots (detached) and
    ``total`` (detached copy).
    """

    def __init__(
        self,
        lambda_: float = 1.0,
        iou_threshold: float = 0.4,
        neg_pos_ratio: int = 3,
        variances: Tuple[float, float] = (0.1, 0.2),
        ignore_threshold: Optional[float] = None,
        use_reference_ops: bool = False,
    ) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.shot_loss = MultiBoxLoss(iou_threshold, neg_pos_ratio, variances, ignore_threshold, use_reference_ops)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"

    def forward(
        self, first: Optional[Shot], second: Optional[Shot], gt_boxes: Tensor, gt_counts: Tensor
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        if first is None and second is None:
            raise ValueError("ProgressiveAnchorLoss needs at least one shot")
        total: Optional[Tensor] = None
        parts: Dict[str, Tensor] = {}
        for name, shot, weight in (("first", first, 1.0), ("second", second, self.lambda_)):
            if shot is None:
                continue
            loc, conf, anchors = shot[0], shot[1], shot[2]
            out = self.shot_loss(loc, conf, anchors, gt_boxes, gt_counts)
            term = out["loss_l"] + out["loss_c"]
            total = term * weight if total is None else total + term * weight
            for k, v in out.items():
                parts[f"{name}_{k}"] = v.detach()
        assert total is not None
        parts["total"] = total.detach()
        return total, parts
