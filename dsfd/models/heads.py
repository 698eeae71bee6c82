"""Detection heads and output containers.

* :class:`DSFDHead` - SSD-style heads of the paper network: one 3x3 conv per
  level for box offsets (4 per anchor) and one for class logits.
* :class:`DeepHead` - the released network's 4-conv head
  (3x3, ReLU, 3x3, ReLU, 3x3, ReLU, 1x1).
* :func:`max_in_out` - the released network's max-in-out scores.
* :func:`decode_predictions` - face scores and decoded corner boxes.

Per-level outputs ``[B, K, H, W]`` are flattened NHWC-style
(``permute(0, 2, 3, 1)``) and concatenated over levels, so rows are ordered
level, row, column - the same order as the anchors.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..constants import BOX_VARIANCES

__all__ = [
    "ShotOutput",
    "DSFDHead",
    "DeepHead",
    "flatten_levels",
    "max_in_out",
    "decode_predictions",
]


class ShotOutput(NamedTuple):
    """Raw predictions of one shot (or one released anchor set).

    Attributes:
        loc: ``Tensor[B, A, 4]`` encoded box offsets (variances 0.1, 0.2).
        conf: ``Tensor[B, A, 2]`` class logits ``(background, face)``.
        anchors: ``Tensor[A, 4]`` ``cx, cy, w, h`` normalised (float32,
            shared via the anchor cache: read-only).
    """

    loc: Tensor
    conf: Tensor
    anchors: Tensor


def flatten_levels(maps: Sequence[Tensor], columns: int) -> Tensor:
    """``[B, k*columns, H, W]`` per level -> ``[B, sum(k*H*W), columns]`` (level, row, column)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, columns) for m in maps], 1)


class DSFDHead(nn.Module):
    """Paper-style prediction head of one shot: a 3x3 conv per level and task.

    Args:
        in_channels: channels of each level's input map.
        num_classes: classes including background (2).
        num_anchors: anchors per location (1).
        fuse: in eval mode run each level's two convs as one (same input, same
            3x3 kernel; the weights are concatenated once and cached).

    ``forward(features) -> (loc [B, A, 4], conf [B, A, num_classes])``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int = 2, num_anchors: int = 1,
                 fuse: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        #: eval mode: run each level's box and class convs as one convolution
        self.fuse_branches = bool(fuse)
        self.loc = nn.ModuleList([nn.Conv2d(c, num_anchors * 4, kernel_size=3, padding=1) for c in in_channels])
        self.conf = nn.ModuleList(
            [nn.Conv2d(c, num_anchors * num_classes, kernel_size=3, padding=1) for c in in_channels]
        )
        # Small prediction layers (std 0.01, as in Detectron-style heads): the
        # first losses are those of a constant prediction instead of random
        # logits of a few units, whose gradients otherwise push training
        # from scratch to shrink the head's input maps to zero first.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        from .fem import _FusedConvCache

        self._fused = [_FusedConvCache() for _ in in_channels]  # plain objects: never in the state_dict

    def num_anchors_per_location(self) -> List[int]:
        return [self.num_anchors] * len(self.loc)

    def train(self, mode: bool = True) -> "DSFDHead":
        if mode:
            for cache in self._fused:
                cache.clear()
        return super().train(mode)

    def forward(self, features: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        if len(features) != len(self.loc):
            raise ValueError(f"expected {len(self.loc)} feature maps, got {len(features)}")
        if self.fuse_branches and not self.training:
            # eval: each level's box and class convs read the same map with the same 3x3 kernel, so
            # they run as one convolution (weights concatenated once, cached; see dsfd.models.fem)
            n_loc = self.num_anchors * 4
            outs = []
            for cache, lc, cc, x in zip(self._fused, self.loc, self.conf, features):
                outs.append(cache.run([lc, cc], x))
            loc = flatten_levels([o[:, :n_loc] for o in outs], 4)
            conf = flatten_levels([o[:, n_loc:] for o in outs], self.num_classes)
            return loc, conf
        loc = flatten_levels([m(x) for m, x in zip(self.loc, features)], 4)
        conf = flatten_levels([m(x) for m, x in zip(self.conf, features)], self.num_classes)
        return loc, conf


class DeepHead(nn.Module):
    """The released network's head (``DeepHeadModule``): 3x3-3x3-3x3 convs with ReLU, then a 1x1.

    Args:
        in_channels: input channels (512).
        out_channels: outputs per location.
        mid_channels: width of the 3x3 convs (``min(in_channels, 256)``).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None) -> None:
        super().__init__()
        mid = min(in_channels, 256) if mid_channels is None else mid_channels
        self.conv1 = nn.Conv2d(in_channels, mid, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(mid, mid, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(mid, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        x = F.relu(self.conv3(x), inplace=True)
        return self.conv4(x)


def max_in_out(conf: Tensor, level: int) -> Tensor:
    """Max-in-out of the released network on one level's raw conf map.

    ``conf[B, 4 + 2n, H, W]``: face scores are ``[max(c0, c1, c2), c3]``
    (background, face) on level 0 and ``[c3, max(c0, c1, c2)]`` on the other
    levels; the remaining ``2n`` channels (head, body logits) pass through.
    Returns ``[B, 2 + 2n, H, W]``.
    """
    bmax = torch.maximum(torch.maximum(conf[:, 0:1], conf[:, 1:2]), conf[:, 2:3])
    c3 = conf[:, 3:4]
    face = torch.cat([bmax, c3], 1) if level == 0 else torch.cat([c3, bmax], 1)
    if conf.shape[1] > 4:
        return torch.cat([face, conf[:, 4:]], 1)
    return face


def decode_predictions(
    loc: Tensor, conf: Tensor, anchors: Tensor, variances: Tuple[float, float] = BOX_VARIANCES
) -> Tuple[Tensor, Tensor]:
    """Face probabilities and decoded boxes.

    Args:
        loc: ``Tensor[B, A, 4]`` offsets.
        conf: ``Tensor[B, A, 2]`` logits.
        anchors: ``Tensor[A, 4]`` ``cx, cy, w, h``.

    Returns:
        ``scores[B, A]`` (softmax face probability) and ``boxes[B, A, 4]``
        (``x1, y1, x2, y2`` normalised by the input width / height).
    """
    scores = torch.softmax(conf.float(), dim=-1)[..., 1]
    boxes = ops.decode_boxes(loc.float(), anchors.to(loc.device, torch.float32).contiguous(), variances)
    return scores, boxes
