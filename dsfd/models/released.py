"""The network of the authors' released weights (``WIDERFace_DSFD_RES152.pth``).

This is a *single-shot* detector (spec sections 0 and 2b), unlike the paper's
dual-shot DSFD in :mod:`dsfd.models.dsfd`:

* 3-level top-down product fusion on levels 0-2, 1x1 convs with bias, no
  ReLU, bilinear upsampling with ``align_corners=True`` (old PyTorch);
* VGG only: L2Norm (10, 8, 5) on levels 0-2 after the fusion;
* a PyramidBox-style context module (:class:`~dsfd.models.fem.ContextFEM`)
  on every level, 512 output channels;
* 4-conv heads (:class:`~dsfd.models.heads.DeepHead`), one anchor per
  location; max-in-out on the class logits; extra head / body anchor sets on
  levels 1-5 / 2-5 used only in training.

The module and parameter names reproduce the released ``state_dict`` key
for key (``layer1.4.0.conv1.weight``, ``cpm3_3.cpm1.weight``,
``loc.0.conv4.weight``, ...; VGG: ``vgg.N``, ``extras.N``, ``L2Norm_3_3``),
so the released file loads strictly (it has no ``num_batches_tracked`` keys;
:func:`dsfd.models.load_weights` accepts that).

Input: BGR, 0-255, minus the mean ``(104, 117, 123)`` (see
:func:`dsfd.models.preprocess`); anchors are clamped to ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..constants import BOX_VARIANCES
from .anchors import ASPECT_RATIO, SECOND_SHOT_SIZES, STEPS, AnchorGenerator
from .backbones import (
    L2Norm,
    PathLike,
    ResNet,
    RESNET_LAYERS,
    TINY_WIDTH_MULT,
    VGG16Backbone,
    VGG_STAGES,
    load_imagenet_weights,
    scaled,
)
from .fem import ContextFEM
from .heads import DeepHead, ShotOutput, decode_predictions, max_in_out
from .interface import DetectionModel

__all__ = ["ReleasedDSFD", "ReleasedOutput", "dsfd_released", "RELEASED_BACKBONES"]

RELEASED_BACKBONES: Tuple[str, ...] = ("resnet152", "resnet101", "resnet50", "vgg16", "tiny")
_CPM_NAMES = ("cpm3_3", "cpm4_3", "cpm5_3", "cpm7", "cpm6_2", "cpm7_2")


class ReleasedOutput(NamedTuple):
    """Output of :class:`ReleasedDSFD`.

    Attributes:
        face: face predictions on all six levels, ``loc[B, A, 4]``,
            ``conf[B, A, 2]`` (max-in-out applied, logits), ``anchors[A, 4]``
            (sizes 16..512, clamped). ``A = 34,125`` at 640x640.
        head: head predictions on levels 1-5 (anchor sizes 16..256);
            ``None`` in eval mode.
        body: body predictions on levels 2-5 (anchor sizes 16..128);
            ``None`` in eval mode.
    """

    face: ShotOutput
    head: Optional[ShotOutput]
    body: Optional[ShotOutput]


class ReleasedDSFD(DetectionModel, nn.Module):
    """The authors' released single-shot DSFD (ResNet152 or VGG16 backbone).

    Paper: https://arxiv.org/abs/1810.10220 (the released code differs from
    the paper; see the module docstring).

    Args:
        backbone: ``"resnet152"`` (the released weights), ``"vgg16"``, or
            ``"resnet50"/"resnet101"/"tiny"`` (same structure, other trunks).
        width_mult: width multiplier (default 1; 1/8 for ``"tiny"``).
        fuse_branches: run ``cpm1``+``cpm2`` / ``cpm3``+``cpm4`` as single
            (5x5) convolutions in eval mode (exact but more multiply-adds;
            off by default, see :class:`~dsfd.models.fem.ContextFEM`).
        backbone_weights: optional local torchvision-format ImageNet
            ``state_dict`` for the trunk.

    ``forward(images[B, 3, H, W])`` (BGR minus mean) returns a
    :class:`ReleasedOutput`: in training mode face, head and body
    predictions; in eval mode only the face predictions (head / body ``None``).
    :meth:`predict` gives face probabilities and decoded boxes.
    """

    def __init__(
        self,
        backbone: str = "resnet152",
        width_mult: Optional[float] = None,
        fuse_branches: bool = False,
        backbone_weights: Optional[PathLike] = None,
    ) -> None:
        super().__init__()
        name = backbone.lower()
        if name not in RELEASED_BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r} for the released network; expected {RELEASED_BACKBONES}")
        wm = (TINY_WIDTH_MULT if name == "tiny" else 1.0) if width_mult is None else float(width_mult)
        self.backbone_name = name
        self.width_mult = wm
        self.is_vgg = name == "vgg16"
        self.variances = BOX_VARIANCES

        if self.is_vgg:
            bb = VGG16Backbone(conv6_dilation=1, width_mult=wm)
            if backbone_weights is not None:
                load_imagenet_weights(bb, backbone_weights)
            self.vgg = bb.features
            self.extras = bb.extras
            ch = list(bb.out_channels)
            self.L2Norm_3_3 = L2Norm(ch[0], 10.0)
            self.L2Norm_4_3 = L2Norm(ch[1], 8.0)
            self.L2Norm_5_3 = L2Norm(ch[2], 5.0)
        else:
            r = ResNet(RESNET_LAYERS[name], width_mult=wm)
            if backbone_weights is not None:
                load_imagenet_weights(r, backbone_weights)
            c4, c5 = scaled(512, wm), scaled(256, wm)
            c5a = scaled(128, wm)
            self.layer1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
            self.layer2 = nn.Sequential(r.layer2)
            self.layer3 = nn.Sequential(r.layer3)
            self.layer4 = nn.Sequential(r.layer4)
            c3 = r.stage_channels[3]
            self.layer5 = nn.Sequential(
                nn.Conv2d(c3, c4, kernel_size=1),
                nn.BatchNorm2d(c4),
                nn.ReLU(inplace=True),
                nn.Conv2d(c4, c4, kernel_size=3, padding=1, stride=2),
                nn.BatchNorm2d(c4),
                nn.ReLU(inplace=True),
            )
            self.layer6 = nn.Sequential(
                nn.Conv2d(c4, c5a, kernel_size=1),
                nn.BatchNorm2d(c5a),
                nn.ReLU(inplace=True),
                nn.Conv2d(c5a, c5, kernel_size=3, padding=1, stride=2),
                nn.BatchNorm2d(c5),
                nn.ReLU(inplace=True),
            )
            ch = list(r.stage_channels) + [c4, c5]
        self.out_channels: List[int] = ch

        # 3-level top-down product fusion
        self.latlayer3 = nn.Conv2d(ch[3], ch[2], kernel_size=1)
        self.latlayer2 = nn.Conv2d(ch[2], ch[1], kernel_size=1)
        self.latlayer1 = nn.Conv2d(ch[1], ch[0], kernel_size=1)
        self.smooth3 = nn.Conv2d(ch[2], ch[2], kernel_size=1)
        self.smooth2 = nn.Conv2d(ch[1], ch[1], kernel_size=1)
        self.smooth1 = nn.Conv2d(ch[0], ch[0], kernel_size=1)

        # context modules ("FEM")
        widths = (scaled(256, wm), scaled(128, wm))
        for cname, c in zip(_CPM_NAMES, ch):
            setattr(self, cname, ContextFEM(c, widths, fuse_branches))
        fem_out = widths[0] + 2 * widths[1]
        mid = min(fem_out, scaled(256, wm))

        # heads: face; face+head; face+head+body
        loc_out = (4, 8, 12, 12, 12, 12)
        conf_out = (4, 6, 8, 8, 8, 8)
        self.loc = nn.ModuleList([DeepHead(fem_out, o, mid) for o in loc_out])
        self.conf = nn.ModuleList([DeepHead(fem_out, o, mid) for o in conf_out])

        self.face_anchors = AnchorGenerator(SECOND_SHOT_SIZES, STEPS, ASPECT_RATIO, clip=True)
        self.head_anchors = AnchorGenerator(SECOND_SHOT_SIZES[:-1], STEPS[1:], ASPECT_RATIO, clip=True)
        self.body_anchors = AnchorGenerator(SECOND_SHOT_SIZES[:-2], STEPS[2:], ASPECT_RATIO, clip=True)

        new_layers = [self.latlayer1, self.latlayer2, self.latlayer3, self.smooth1, self.smooth2, self.smooth3]
        new_layers += [getattr(self, n) for n in _CPM_NAMES] + [self.loc, self.conf]
        if not self.is_vgg:
            new_layers += [self.layer5, self.layer6]
        for m in new_layers:
            for sub in m.modules():
                if isinstance(sub, nn.Conv2d):
                    nn.init.xavier_uniform_(sub.weight)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)

        self.config: Dict[str, Any] = {
            "network": "released",
            "backbone": name,
            "width_mult": wm,
            "fuse_branches": fuse_branches,
        }

    # ------------------------------------------------------------------ parts

    @property
    def fuse_branches(self) -> bool:
        return all(getattr(self, n).fuse_branches for n in _CPM_NAMES)

    @fuse_branches.setter
    def fuse_branches(self, value: bool) -> None:
        for n in _CPM_NAMES:
            getattr(self, n).fuse_branches = bool(value)

    def extract_features(self, x: Tensor) -> List[Tensor]:
        """The six raw source maps (conv3_3, conv4_3, conv5_3, fc7, conv6_2, conv7_2)."""
        if self.is_vgg:
            outs: List[Tensor] = []
            for start, end in VGG_STAGES:
                for k in range(start, end):
                    x = self.vgg[k](x)
                outs.append(x)
            for k, layer in enumerate(self.extras):
                x = F.relu(layer(x), inplace=True)
                if k in (1, 3):
                    outs.append(x)
            return outs
        c3 = self.layer1(x)
        c4 = self.layer2(c3)
        c5 = self.layer3(c4)
        fc7 = self.layer4(c5)
        c6 = self.layer5(fc7)
        c7 = self.layer6(c6)
        return [c3, c4, c5, fc7, c6, c7]

    def enhance(self, sources: List[Tensor]) -> List[Tensor]:
        """The whole released "FEM" block: 3-level fusion, (VGG) L2Norm, context modules."""
        c3, c4, c5, fc7, c6, c7 = sources
        lfpn3 = ops.upsample_mul(self.latlayer3(fc7), self.smooth3(c5), align_corners=True)
        lfpn2 = ops.upsample_mul(self.latlayer2(lfpn3), self.smooth2(c4), align_corners=True)
        lfpn1 = ops.upsample_mul(self.latlayer1(lfpn2), self.smooth1(c3), align_corners=True)
        c3, c4, c5 = lfpn1, lfpn2, lfpn3
        if self.is_vgg:
            c3, c4, c5 = self.L2Norm_3_3(c3), self.L2Norm_4_3(c4), self.L2Norm_5_3(c5)
        maps = [c3, c4, c5, fc7, c6, c7]
        return [getattr(self, n)(m) for n, m in zip(_CPM_NAMES, maps)]

    # ------------------------------------------------------------------ test-time interface

    network = "released"

    @property
    def inference_anchors(self) -> AnchorGenerator:
        return self.face_anchors

    def inference_shot(self, output: ReleasedOutput) -> ShotOutput:
        return output.face

    def inference_predictions(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        feats = self.enhance(self.extract_features(x))
        B = x.shape[0]
        loc = torch.cat([self.loc[k](f).permute(0, 2, 3, 1)[..., 0:4].reshape(B, -1, 4) for k, f in enumerate(feats)], 1)
        conf = torch.cat(
            [max_in_out(self.conf[k](f), k).permute(0, 2, 3, 1)[..., 0:2].reshape(B, -1, 2) for k, f in enumerate(feats)],
            1,
        )
        return loc, conf, list(feats)

    def inference_head_convs(self) -> Tuple[List[nn.Conv2d], List[nn.Conv2d]]:
        return [m.conv4 for m in self.loc], [m.conv4 for m in self.conf]

    def background_logit_mask(self, level: int) -> Tensor:
        mask = torch.zeros(self.conf[level].conv4.out_channels, dtype=torch.bool)
        if level == 0:
            mask[:3] = True  # max-in-out: background = max(c0, c1, c2), face = c3
        else:
            mask[3] = True  # background = c3, face = max(c0, c1, c2)
        return mask

    # ------------------------------------------------------------------ forward

    def forward(self, images: Tensor) -> ReleasedOutput:
        """Raw predictions.

        Args:
            images: ``Tensor[B, 3, H, W]``, BGR 0-255 minus ``(104, 117, 123)``; any ``H, W``.

        Returns:
            :class:`ReleasedOutput`; head / body only in training mode.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        feats = self.enhance(self.extract_features(images))
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        B = images.shape[0]
        locs = [self.loc[k](f).permute(0, 2, 3, 1) for k, f in enumerate(feats)]
        confs = [max_in_out(self.conf[k](f), k).permute(0, 2, 3, 1) for k, f in enumerate(feats)]
        dev = images.device

        def gather(levels: range, lo: int, co: int) -> Tuple[Tensor, Tensor]:
            loc = torch.cat([locs[k][..., lo : lo + 4].reshape(B, -1, 4) for k in levels], 1)
            conf = torch.cat([confs[k][..., co : co + 2].reshape(B, -1, 2) for k in levels], 1)
            return loc, conf

        loc, conf = gather(range(6), 0, 0)
        face = ShotOutput(loc, conf, self.face_anchors(image_size, sizes, dev))
        if not self.training:
            return ReleasedOutput(face, None, None)
        hl, hc = gather(range(1, 6), 4, 2)
        bl, bc = gather(range(2, 6), 8, 4)
        head = ShotOutput(hl, hc, self.head_anchors(image_size, sizes[1:], dev))
        body = ShotOutput(bl, bc, self.body_anchors(image_size, sizes[2:], dev))
        return ReleasedOutput(face, head, body)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Face probabilities and decoded boxes for every anchor (no NMS).

        Args:
            images: ``Tensor[B, 3, H, W]``, BGR minus mean.

        Returns:
            ``scores[B, A]`` (softmax face probability) and ``boxes[B, A, 4]``
            (``x1, y1, x2, y2`` normalised by the input width / height; multiply
            by ``(W, H, W, H)`` for pixels). Runs the face branch only,
            whatever the training mode.
        """
        was_training = self.training
        self.train(False)
        try:
            out = self.forward(images).face
        finally:
            self.train(was_training)
        return decode_predictions(out.loc, out.conf, out.anchors, self.variances)


def dsfd_released(backbone: str = "resnet152", **kwargs: Any) -> ReleasedDSFD:
    """The released single-shot DSFD (``"resnet152"`` for ``WIDERFace_DSFD_RES152.pth``, or ``"vgg16"``).

    Keyword arguments go to :class:`ReleasedDSFD`. Load the released weights
    with :func:`dsfd.models.load_weights`.
    """
    return ReleasedDSFD(backbone=backbone, **kwargs)
