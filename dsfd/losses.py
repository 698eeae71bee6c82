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
A network built with ``pal=False`` has only the second shot, and its loss is
that shot's alone (the paper's single-shot ablation).

Matching presets (``MultiBoxLoss(matching=...)``, the ``--matching`` switch of
``dsfd train``): ``"iam"`` (DSFD, IoU >= 0.4), ``"s3fd"`` (IoU >= 0.35 plus
S3FD's scale compensation: a face with fewer than 6 positives takes its
best remaining background anchors with IoU >= 0.1 up to 6) and ``"ssd"``
(IoU >= 0.5).

Ignore regions (faces the augmentation dropped, invalid-flagged faces,
crowds; ``ignore_boxes`` / ``ignore_counts``): after matching,
:func:`dsfd.ops.ignore_anchors` labels background anchors with IoU
``>= ignore_iou`` (0.1) with a region -1, so they are neither learnt as
faces nor mined as background. ``min_negatives`` mines at least that many
negatives per image (photos without faces teach background too).

Everything is batched (no per-image Python loop with the kernels) and free
of host-device synchronisation: the positive count stays a tensor.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .constants import BOX_VARIANCES
from .ops import reference as ops_ref

__all__ = ["MultiBoxLoss", "ProgressiveAnchorLoss", "MATCHING_PRESETS", "compensate_matches"]

#: ``matching`` presets: positive IoU threshold, compensation target (0: off), compensation min IoU.
MATCHING_PRESETS: Dict[str, Tuple[float, int, float]] = {
    "iam": (0.4, 0, 0.1),
    "s3fd": (0.35, 6, 0.1),
    "ssd": (0.5, 0, 0.1),
}


@torch.no_grad()
def compensate_matches(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_counts: Tensor,
    labels: Tensor,
    matched_gt: Tensor,
    loc_targets: Tensor,
    min_matches: int = 6,
    min_iou: float = 0.1,
    variances: Tuple[float, float] = BOX_VARIANCES,
) -> Tuple[Tensor, Tensor, Tensor]:
    """S3FD's scale-compensation matching, applied after :func:`dsfd.ops.match_anchors`.

    A face with fewer than ``min_matches`` positive anchors takes further
    background anchors (label 0; ignored anchors and other faces' positives
    are never taken) in descending IoU, as long as IoU >= ``min_iou``, until
    it has ``min_matches``. An anchor wanted by two faces goes to the one it
    overlaps more (ties: the lower face index).

    Plain PyTorch, one image at a time and synchronising on the face counts:
    this is an ablation option (the paper's DSFD does not use it), not the
    batched training path of the kernels.

    Returns:
        new ``labels``, ``matched_gt`` and ``loc_targets`` (inputs are not modified).
    """
    if min_matches <= 0:
        return labels, matched_gt, loc_targets
    labels, matched_gt, loc_targets = labels.clone(), matched_gt.clone(), loc_targets.clone()
    corners = ops_ref.anchors_to_corners(anchors.float())
    A = anchors.shape[0]
    for b, g in enumerate(gt_counts.tolist()):
        if g <= 0 or A == 0:
            continue
        gts = gt_boxes[b, :g].float()
        iou = ops.box_iou(gts, corners)  # [g, A]
        pos = labels[b] > 0
        have = torch.bincount(matched_gt[b][pos], minlength=g)[:g]
        missing = (min_matches - have).clamp(min=0)
        if not bool((missing > 0).any()):
            continue
        k = min(A, int(min_matches) + int(have.max()))
        top_iou, top_idx = iou.topk(k, dim=1)  # sorted, best first
        cand = (missing[:, None] > 0) & (top_iou >= min_iou) & (labels[b][top_idx] == 0)
        take = cand & (cand.cumsum(1) <= missing[:, None])
        face = torch.arange(g, device=iou.device)[:, None].expand_as(top_idx)[take]
        anchor = top_idx[take]
        score = top_iou[take]
        if anchor.numel() == 0:
            continue
        # one owner per anchor: sort by (anchor, -IoU, face) and keep each anchor's first entry
        order = torch.argsort(face, stable=True)
        order = order[torch.argsort(-score[order], stable=True)]
        order = order[torch.argsort(anchor[order], stable=True)]
        anchor, face = anchor[order], face[order]
        first = torch.ones_like(anchor, dtype=torch.bool)
        first[1:] = anchor[1:] != anchor[:-1]
        anchor, face = anchor[first], face[first]
        labels[b, anchor] = 1
        matched_gt[b, anchor] = face
        loc_targets[b, anchor] = ops.encode_boxes(gts[face], anchors[anchor].float(), variances).to(
            loc_targets.dtype
        )
    return labels, matched_gt, loc_targets

Shot = Sequence[Tensor]  # (loc [B, A, 4], conf [B, A, C], anchors [A, 4]), e.g. a ShotOutput


class MultiBoxLoss(nn.Module):
    """SSD/DSFD loss of one shot.

    Args:
        iou_threshold: positive IoU threshold (0.4, IAM; ``None``: the
            ``matching`` preset's).
        neg_pos_ratio: mined negatives per positive (3).
        variances: box-encoding variances.
        ignore_threshold: lower edge of an ignore band ``[t, iou_threshold)``
            whose anchors are neither positives nor mined, or ``None``.
        matching: ``"iam"`` (default), ``"s3fd"`` or ``"ssd"``, see
            :data:`MATCHING_PRESETS`; sets the threshold (unless
            ``iou_threshold`` is given) and S3FD's compensation.
        compensation: override the preset's compensation target (faces with
            fewer positives get more, see :func:`compensate_matches`; 0: off).
        use_reference_ops: match and mine inside :func:`dsfd.ops.use_reference`
            (the plain-PyTorch references instead of the compiled kernels; tests).
        ignore_iou: background anchors with IoU ``>=`` this with an ignore
            region passed to ``forward`` become ignored (``None``: regions
            are not used).
        min_negatives: negatives mined per image at least (0: SSD's rule).
    """

    def __init__(
        self,
        iou_threshold: Optional[float] = None,
        neg_pos_ratio: int = 3,
        variances: Tuple[float, float] = BOX_VARIANCES,
        ignore_threshold: Optional[float] = None,
        use_reference_ops: bool = False,
        matching: str = "iam",
        compensation: Optional[int] = None,
        ignore_iou: Optional[float] = 0.1,
        min_negatives: int = 0,
    ) -> None:
        super().__init__()
        if matching not in MATCHING_PRESETS:
            raise ValueError(f"matching must be one of {sorted(MATCHING_PRESETS)}, got {matching!r}")
        preset_iou, preset_comp, comp_iou = MATCHING_PRESETS[matching]
        self.matching = matching
        self.iou_threshold = float(preset_iou if iou_threshold is None else iou_threshold)
        self.compensation = int(preset_comp if compensation is None else compensation)
        if self.compensation < 0:
            raise ValueError(f"compensation must be >= 0, got {self.compensation}")
        self.compensation_iou = float(comp_iou)
        self.neg_pos_ratio = int(neg_pos_ratio)
        self.variances = (float(variances[0]), float(variances[1]))
        self.ignore_threshold = None if ignore_threshold is None else float(ignore_threshold)
        self.use_reference_ops = bool(use_reference_ops)
        if ignore_iou is not None and not 0.0 < ignore_iou <= 1.0:
            raise ValueError(f"ignore_iou must be in (0, 1] or None, got {ignore_iou}")
        self.ignore_iou = None if ignore_iou is None else float(ignore_iou)
        if min_negatives < 0:
            raise ValueError(f"min_negatives must be >= 0, got {min_negatives}")
        self.min_negatives = int(min_negatives)

    def extra_repr(self) -> str:
        return (
            f"matching={self.matching!r}, iou_threshold={self.iou_threshold}, compensation={self.compensation}, "
            f"neg_pos_ratio={self.neg_pos_ratio}, variances={self.variances}, "
            f"ignore_threshold={self.ignore_threshold}, ignore_iou={self.ignore_iou}, "
            f"min_negatives={self.min_negatives}, use_reference_ops={self.use_reference_ops}"
        )

    @torch.no_grad()
    def match(self, anchors: Tensor, gt_boxes: Tensor, gt_counts: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``labels[B, A]`` (1 / 0 / -1), ``matched_gt[B, A]`` and encoded ``loc_targets[B, A, 4]``."""
        # dsfd.ops decides compiled vs reference; the flag only forces the reference (tests)
        with ops.use_reference(self.use_reference_ops):
            labels, matched, loc_t = ops.match_anchors(
                anchors, gt_boxes, gt_counts, self.iou_threshold, self.ignore_threshold, self.variances
            )
        if self.compensation > 0:
            labels, matched, loc_t = compensate_matches(
                anchors, gt_boxes, gt_counts, labels, matched, loc_t,
                self.compensation, self.compensation_iou, self.variances,
            )
        return labels, matched, loc_t

    @torch.no_grad()
    def targets(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_counts: Tensor,
        ignore_boxes: Optional[Tensor] = None,
        ignore_counts: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """``labels[B, A]`` (1 / 0 / -1) and encoded ``loc_targets[B, A, 4]`` (float32).

        With ignore regions (and ``ignore_iou`` set), background anchors on them are -1.
        """
        labels, _, loc_t = self.match(anchors, gt_boxes, gt_counts)
        if self.ignore_iou is not None and ignore_boxes is not None and ignore_boxes.shape[1] > 0:
            if ignore_counts is None:
                raise ValueError("ignore_boxes need ignore_counts")
            with ops.use_reference(self.use_reference_ops):
                labels = ops.ignore_anchors(anchors, labels, ignore_boxes, ignore_counts, self.ignore_iou)
        return labels, loc_t

    def forward(
        self,
        loc: Tensor,
        conf: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_counts: Tensor,
        ignore_boxes: Optional[Tensor] = None,
        ignore_counts: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """Loss of one shot.

        Args:
            loc: ``[B, A, 4]`` predicted offsets.
            conf: ``[B, A, C]`` class logits (class 0 background, 1 face).
            anchors: ``[A, 4]`` ``cx, cy, w, h`` normalised.
            gt_boxes: ``[B, G, 4]`` normalised corner boxes, zero-padded.
            gt_counts: ``[B]`` number of real boxes per image.
            ignore_boxes: ``[B, M, 4]`` normalised ignore regions, zero-padded
                (optional; used when ``ignore_iou`` is set).
            ignore_counts: ``[B]`` number of real regions per image.

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
        if ignore_boxes is not None:
            ignore_boxes = ignore_boxes.detach().to(dev, torch.float32).reshape(B, -1, 4)
            ignore_counts = (torch.zeros(B, dtype=torch.int64, device=dev) if ignore_counts is None
                             else ignore_counts.detach().to(dev, torch.int64).reshape(B))
        labels, loc_t = self.targets(anchors, gt_boxes, gt_counts, ignore_boxes, ignore_counts)
        pos = labels > 0

        ce = F.cross_entropy(
            conf.reshape(B * A, -1).float(), labels.clamp(min=0).reshape(-1), reduction="none"
        ).view(B, A)
        with torch.no_grad():
            with ops.use_reference(self.use_reference_ops):
                selected = ops.hard_negative_mask(ce.detach(), labels, self.neg_pos_ratio, self.min_negatives)

        num_pos = pos.sum()
        denom = num_pos.clamp(min=1).to(torch.float32)
        loss_c = torch.where(selected, ce, 0.0).sum() / denom
        sl1 = F.smooth_l1_loss(loc.float(), loc_t.float(), reduction="none").sum(-1)
        loss_l = torch.where(pos, sl1, 0.0).sum() / denom
        return {"loss_l": loss_l, "loss_c": loss_c, "num_pos": num_pos}


#: ``all_reduce`` hook of :meth:`ProgressiveAnchorLoss.forward`: sums a tensor over ranks in place.
AllReduce = Callable[[Tensor], None]


class ProgressiveAnchorLoss(nn.Module):
    """PAL: ``L = L_first_shot + lambda_ * L_second_shot``, each a :class:`MultiBoxLoss`.

    Args:
        lambda_: weight of the second shot (1.0).
        iou_threshold, neg_pos_ratio, variances, ignore_threshold,
        use_reference_ops, matching, compensation, ignore_iou, min_negatives:
        passed to the :class:`MultiBoxLoss` of both shots.

    ``forward(first, second, gt_boxes, gt_counts, ignore_boxes=None,
    ignore_counts=None)`` takes each shot as a
    ``(loc, conf, anchors)`` triple (a ``ShotOutput``, so
    ``criterion(*model(images), gt_boxes, gt_counts)`` works); either shot may
    be ``None`` (skipped: a ``pal=False`` network has no first shot). Returns
    ``(total, parts)`` with ``parts`` holding ``first_loss_l, first_loss_c,
    first_num_pos, second_loss_l, second_loss_c, second_num_pos`` for the
    computed shots (detached) and ``total`` (detached copy).

    Data-parallel training passes ``world_size`` and ``all_reduce`` (which
    sums a tensor over the ranks): each shot is then normalised by the
    positives of the *global* batch, so that averaging the ranks' gradients
    (as DDP does) gives exactly the one-process gradient, and ``parts`` hold
    this rank's *contributions*: summed over ranks, the ``loss`` entries and
    ``total`` give the one-process values and the ``num_pos`` entries the
    global counts.
    """

    def __init__(
        self,
        lambda_: float = 1.0,
        iou_threshold: Optional[float] = None,
        neg_pos_ratio: int = 3,
        variances: Tuple[float, float] = BOX_VARIANCES,
        ignore_threshold: Optional[float] = None,
        use_reference_ops: bool = False,
        matching: str = "iam",
        compensation: Optional[int] = None,
        ignore_iou: Optional[float] = 0.1,
        min_negatives: int = 0,
    ) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)
        self.shot_loss = MultiBoxLoss(
            iou_threshold, neg_pos_ratio, variances, ignore_threshold, use_reference_ops, matching, compensation,
            ignore_iou, min_negatives,
        )

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"

    def shot_weights(self) -> Dict[str, float]:
        """Weight of each shot's term in the total."""
        return {"first": 1.0, "second": self.lambda_}

    def forward(
        self,
        first: Optional[Shot],
        second: Optional[Shot],
        gt_boxes: Tensor,
        gt_counts: Tensor,
        world_size: int = 1,
        all_reduce: Optional[AllReduce] = None,
        ignore_boxes: Optional[Tensor] = None,
        ignore_counts: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        weights = self.shot_weights()
        shots: List[Tuple[str, Shot]] = [(n, s) for n, s in (("first", first), ("second", second)) if s is not None]
        if not shots:
            raise ValueError("ProgressiveAnchorLoss needs at least one shot")
        outs = [self.shot_loss(s[0], s[1], s[2], gt_boxes, gt_counts, ignore_boxes, ignore_counts) for _, s in shots]
        scales: Optional[Tensor] = None
        if world_size > 1:
            if all_reduce is None:
                raise ValueError("world_size > 1 needs an all_reduce function")
            n_local = torch.stack([o["num_pos"] for o in outs])
            n_global = n_local.clone()
            all_reduce(n_global)
            # W * S_r / max(1, N) = W * (S_r / max(1, N_r)) * max(1, N_r) / max(1, N)
            scales = world_size * n_local.clamp(min=1).float() / n_global.clamp(min=1).float()
        total: Optional[Tensor] = None
        parts: Dict[str, Tensor] = {}
        for k, ((name, _), out) in enumerate(zip(shots, outs)):
            loss_l, loss_c = out["loss_l"], out["loss_c"]
            if scales is not None:
                loss_l, loss_c = loss_l * scales[k], loss_c * scales[k]
            term = (loss_l + loss_c) * weights[name]
            total = term if total is None else total + term
            parts[f"{name}_loss_l"] = loss_l.detach() / world_size
            parts[f"{name}_loss_c"] = loss_c.detach() / world_size
            parts[f"{name}_num_pos"] = out["num_pos"].detach()
        assert total is not None
        parts["total"] = total.detach() / world_size
        return total, parts
