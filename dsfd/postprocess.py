"""Test-time post-processing: raw predictions of a batch -> at most ``max_keep`` boxes per image.

One config object, :class:`PostProcessConfig`, with the names the kernel
uses (``score_threshold``, ``iou_threshold``, ``pre_nms_top_k``,
``max_keep``); the :class:`~dsfd.Detector` keywords, the ``dsfd detect`` /
``dsfd export`` flags (``--score-threshold``, ``--iou-threshold``,
``--pre-nms-top-k``, ``--max-keep``) and the ONNX exporter use the same
names. Two steps, both batched and free of host synchronisation:

1. :func:`decode_detections` - softmax face scores and boxes in input
   pixels (size exponents clamped, see :data:`MAX_BOX_GROWTH`);
2. :func:`select_detections` - per image ``score > score_threshold``, the
   best ``pre_nms_top_k``, greedy NMS at ``iou_threshold``, at most
   ``max_keep`` (:func:`dsfd.ops.batched_nms`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from . import ops
from .constants import IOU_THRESHOLD, MAX_KEEP, PRE_NMS_TOP_K, SCORE_THRESHOLD

__all__ = ["PostProcessConfig", "MAX_BOX_GROWTH", "max_size_exponent", "decode_detections", "select_detections"]

#: Decoded boxes are at most this many times their anchor per side: larger
#: size exponents only come from broken or random weights, and keep the boxes finite.
MAX_BOX_GROWTH: float = 1e4


@dataclass(frozen=True)
class PostProcessConfig:
    """Settings of :func:`select_detections` (defaults: the released evaluation's 0.01, 0.3, 5000, 750).

    Raises ``ValueError`` naming the first setting out of range.
    """

    score_threshold: float = SCORE_THRESHOLD
    iou_threshold: float = IOU_THRESHOLD
    pre_nms_top_k: int = PRE_NMS_TOP_K
    max_keep: int = MAX_KEEP

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < float(self.iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if int(self.pre_nms_top_k) < 1 or int(self.max_keep) < 1:
            raise ValueError(f"pre_nms_top_k and max_keep must be >= 1, got {self.pre_nms_top_k}, {self.max_keep}")
        # normalise the types once (numpy scalars, ints given as thresholds, ...)
        object.__setattr__(self, "score_threshold", float(self.score_threshold))
        object.__setattr__(self, "iou_threshold", float(self.iou_threshold))
        object.__setattr__(self, "pre_nms_top_k", int(self.pre_nms_top_k))
        object.__setattr__(self, "max_keep", int(self.max_keep))

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)

    def filtering_at(self, min_score: Optional[float]) -> "PostProcessConfig":
        """This config letting only scores ``>= min_score`` into NMS (when above ``score_threshold``).

        The boxes at or above ``min_score`` stay exactly the same (in NMS a
        box only suppresses lower-scoring ones), with far fewer boxes to sort.
        """
        if min_score is None or min_score <= self.score_threshold:
            return self
        return replace(self, score_threshold=math.nextafter(float(min_score), 0.0))

    @classmethod
    def add_arguments(cls, group: Any) -> None:
        """The same settings as command-line flags (``dsfd detect``, ``dsfd export``): ``--score-threshold`` ..."""
        d = cls()
        group.add_argument("--score-threshold", type=float, default=d.score_threshold,
                           help=f"face probability a box must exceed to enter NMS ({d.score_threshold})")
        group.add_argument("--iou-threshold", type=float, default=d.iou_threshold,
                           help=f"NMS IoU threshold ({d.iou_threshold})")
        group.add_argument("--pre-nms-top-k", type=int, default=d.pre_nms_top_k,
                           help=f"best boxes per image entering NMS ({d.pre_nms_top_k})")
        group.add_argument("--max-keep", type=int, default=d.max_keep,
                           help=f"boxes kept per image after NMS ({d.max_keep})")

    @classmethod
    def from_args(cls, args: Any) -> "PostProcessConfig":
        """The config of parsed :meth:`add_arguments` flags."""
        return cls(args.score_threshold, args.iou_threshold, args.pre_nms_top_k, args.max_keep)


def max_size_exponent(variances: Tuple[float, float]) -> float:
    """The largest size offset ``t_wh`` decoded as is: ``exp(variances[1] * t_wh) <= MAX_BOX_GROWTH``."""
    return math.log(MAX_BOX_GROWTH) / float(variances[1])


def decode_detections(
    loc: Tensor, conf: Tensor, anchors: Tensor, variances: Tuple[float, float], height: int, width: int
) -> Tuple[Tensor, Tensor]:
    """``boxes[B, A, 4]`` (float32 input pixels) and face ``scores[B, A]`` from one shot's raw outputs.

    ``loc[B, A, 4]`` offsets, ``conf[B, A, 2]`` logits, ``anchors[A, 4]``
    normalised ``cx, cy, w, h``; ``height`` x ``width`` is the network input.
    """
    if conf.shape[-1] == 2:
        # one pass over the anchors (dsfd.ops.decode_detections) instead of about ten elementwise ones
        return ops.decode_detections(loc, conf, anchors, variances, max_size_exponent(variances), width, height)
    scores = torch.softmax(conf.float(), dim=-1)[..., 1]
    loc = torch.cat([loc[..., :2].float(), loc[..., 2:].float().clamp(max=max_size_exponent(variances))], -1)
    boxes = ops.decode_boxes(loc, anchors.float().contiguous(), variances)
    boxes[..., 0::2] *= width
    boxes[..., 1::2] *= height
    return boxes, scores


def select_detections(boxes: Tensor, scores: Tensor, config: PostProcessConfig) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-image score filter, top-k, NMS, keep-k: ``(boxes[B, K, 4], scores[B, K], counts[B])``, ``K = max_keep``.

    Rows beyond ``counts[b]`` are zero padding.
    """
    return ops.batched_nms(
        boxes, scores, config.iou_threshold, config.score_threshold, config.pre_nms_top_k, config.max_keep
    )
