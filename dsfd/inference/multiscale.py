"""The released DSFD WIDER FACE test protocol ("accuracy mode").

Read from the authors' ``widerface_val.py`` (``detect_face``, ``flip_test``,
``multi_scale_test``, ``multi_scale_test_pyramid``, ``bbox_vote``); spec
section 6. For an ``H x W`` image:

* ``max_s = min(3, sqrt(0x7fffffff / 200 / (H * W)))`` (a Caffe input-size cap)
  and ``shrink = min(max_s, 1)``;
* the image at ``shrink`` and its horizontal flip, unfiltered;
* **shrink passes**: ``st = 0.5`` (``0.5 * max_s`` when ``max_s < 0.75``) and
  ``0.75`` when ``max_s > 0.75``; keep boxes whose longer side
  ``max(x2 - x1 + 1, y2 - y1 + 1) > 30``;
* **enlarge passes**: ``bt = min(2, max_s)`` if ``max_s > 1`` else
  ``(st + max_s) / 2``; ``1.5`` when ``max_s > 1.5``; when ``max_s > 2``,
  ``2 * bt, 4 * bt, ...`` while below ``max_s``, then ``max_s`` itself. If the
  final (doubled) ``bt > 1`` keep boxes whose shorter side
  ``min(x2 - x1 + 1, y2 - y1 + 1) < 100``, else the longer-side ``> 30`` rule;
* **pyramid**: ``0.25`` (longer side ``> 30``), then each of ``1.25, 1.75,
  2.25`` that is ``<= max_s`` (shorter side ``< 100``);
* everything merged by box voting (:func:`dsfd.ops.box_voting`: IoU ``>= 0.3``
  with the inclusive-pixel ``+ 1`` convention, score-weighted mean of the
  group, score = max, lone boxes dropped, at most ``max_keep`` kept).

For ``max_s = 3`` (images up to about 1890 x 1890) that is 11 forward passes
at scales 1, 1 (flip), 0.5, 0.75, 2, 1.5, 3, 0.25, 1.25, 1.75, 2.25.

Faithful details: images are resized with ``cv2.resize(fx=s, fy=s,
INTER_LINEAR)``; boxes are mapped back by dividing by the nominal scale ``s``
(not the rounded size ratio); a flipped box maps back as
``x1 = W - x2, x2 = W - x1``. Deliberate differences: a pass without
detections contributes nothing (the released code inserts a dummy
``[0, 0, 0, 0, 0.001]`` box, and its ``bbox_vote`` crashes when nothing at
all is left - here an empty ``[0, 5]`` result is returned).
"""

from __future__ import annotations

import math
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import ops
from ..constants import VOTE_IOU_THRESHOLD
from .canvas import resize_by

__all__ = [
    "ScalePass",
    "max_test_scale",
    "wider_test_passes",
    "size_filter_mask",
    "run_wider_test",
    "CAFFE_PIXEL_CAP",
]

#: ``infer(images, scales) -> (dets[B, K, 5], counts[B])`` on the device, boxes in original pixels, unclipped.
Infer = Callable[[Sequence[np.ndarray], Sequence[Tuple[float, float]]], Tuple[Tensor, Tensor]]

#: ``0x7fffffff / 200``: the released code's cap on ``H * W * scale**2``.
CAFFE_PIXEL_CAP: float = 0x7FFFFFFF / 200.0


class ScalePass(NamedTuple):
    """One forward pass of the protocol.

    Attributes:
        scale: resize factor of the original image.
        flip: run on the horizontally flipped image.
        keep: box filter in original pixels: ``None`` (all), ``"large"``
            (longer side + 1 > 30) or ``"small"`` (shorter side + 1 < 100).
    """

    scale: float
    flip: bool
    keep: Optional[str]


def max_test_scale(height: int, width: int) -> float:
    """``min(3, sqrt(0x7fffffff / 200 / (H * W)))``: the largest test scale of the protocol."""
    return min(3.0, math.sqrt(CAFFE_PIXEL_CAP / float(height * width)))


def wider_test_passes(height: int, width: int) -> List[ScalePass]:
    """The forward passes of the released WIDER test protocol for an ``H x W`` image, in its order."""
    max_s = max_test_scale(height, width)
    shrink = min(max_s, 1.0)
    passes = [ScalePass(shrink, False, None), ScalePass(shrink, True, None)]

    # multi_scale_test: shrink passes detect only large faces
    st = 0.5 if max_s >= 0.75 else 0.5 * max_s
    passes.append(ScalePass(st, False, "large"))
    if max_s > 0.75:
        passes.append(ScalePass(0.75, False, "large"))
    # enlarge passes detect only small faces
    bt = min(2.0, max_s) if max_s > 1 else (st + max_s) / 2
    enlarge = [bt]
    if max_s > 1.5:
        enlarge.append(1.5)
    if max_s > 2:
        bt *= 2
        while bt < max_s:
            enlarge.append(bt)
            bt *= 2
        enlarge.append(max_s)
    keep_b = "small" if bt > 1 else "large"
    passes.extend(ScalePass(s, False, keep_b) for s in enlarge)

    # multi_scale_test_pyramid
    passes.append(ScalePass(0.25, False, "large"))
    for s in (1.25, 1.75, 2.25):
        if s <= max_s:
            passes.append(ScalePass(s, False, "small" if s > 1 else "large"))
    return passes


def size_filter_mask(boxes: Tensor, keep: Optional[str]) -> Tensor:
    """The protocol's per-pass box filter on ``boxes[..., 4]`` (original pixels, inclusive ``+ 1`` sizes).

    Returns a bool tensor of ``boxes.shape[:-1]``.
    """
    w = boxes[..., 2] - boxes[..., 0] + 1
    h = boxes[..., 3] - boxes[..., 1] + 1
    if keep is None:
        return torch.ones(boxes.shape[:-1], dtype=torch.bool, device=boxes.device)
    if keep == "large":
        return torch.maximum(w, h) > 30
    if keep == "small":
        return torch.minimum(w, h) < 100
    raise ValueError(f"keep must be None, 'large' or 'small', got {keep!r}")


def run_wider_test(infer: Infer, image: np.ndarray, max_keep: int, clip: bool) -> np.ndarray:
    """The whole protocol on a BGR ``uint8`` image: ``float32 [K, 5]`` voted boxes and scores, in its pixels.

    Passes of one scale (the original and the flipped image) share one
    ``infer`` call; at most ``max_keep`` boxes are kept; ``clip`` clips them to the image.
    """
    H, W = image.shape[:2]
    passes = wider_test_passes(H, W)
    flipped = np.ascontiguousarray(image[:, ::-1])
    all_boxes: List[Tensor] = []
    all_scores: List[Tensor] = []
    all_keep: List[Tensor] = []
    i = 0
    while i < len(passes):
        group = [passes[i]]
        while i + len(group) < len(passes) and passes[i + len(group)].scale == passes[i].scale:
            group.append(passes[i + len(group)])
        i += len(group)
        s = group[0].scale
        dets, counts = infer([resize_by(flipped if p.flip else image, s) for p in group], [(s, s)] * len(group))
        boxes, scores = dets[..., :4], dets[..., 4]
        for j, p in enumerate(group):
            b = boxes[j]
            if p.flip:
                b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], -1)
            valid = torch.arange(b.shape[0], device=b.device) < counts[j]
            all_keep.append(valid & size_filter_mask(b, p.keep))
            all_boxes.append(b)
            all_scores.append(scores[j])
    keep = torch.cat(all_keep)
    boxes = torch.cat(all_boxes)[keep]
    scores = torch.cat(all_scores)[keep]
    vb, vs = ops.box_voting(boxes, scores, VOTE_IOU_THRESHOLD, max_keep)
    if clip and vb.shape[0]:
        vb = torch.stack([vb[:, 0].clamp(0, W), vb[:, 1].clamp(0, H), vb[:, 2].clamp(0, W), vb[:, 3].clamp(0, H)], -1)
    return torch.cat([vb.float(), vs.float()[:, None]], 1).cpu().numpy()
