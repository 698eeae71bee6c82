"""Backbones of DSFD: VGG16 (with L2Norm scales) and ResNet50/101/152.

Every backbone returns the six source maps of the DSFD paper (spec section 1):

====== ========= ====== ============= ================
level  name      stride VGG16 channels ResNet channels
====== ========= ====== ============= ================
0      conv3_3   4      256           256 (layer1)
1      conv4_3   8      512           512 (layer2)
2      conv5_3   16     512           1024 (layer3)
3      fc7       32     1024          2048 (layer4)
4      conv6_2   64     512           512 (extra)
5      conv7_2   128    256           256 (extra)
====== ========= ====== ============= ================

and exposes them as ``out_channels``. The ResNet is written here (torchvision
layout and parameter names, so a torchvision-format ImageNet ``state_dict``
file maps onto it directly); VGG16 keeps torchvision's ``features.N``
numbering for its 13 convolutions and adds conv6/conv7 (fc6/fc7 as
convolutions) at ``features.31`` / ``features.33``.

``width_mult`` scales every width (for CPU smoke runs and tests);
``backbone="tiny"`` is a ResNet with one bottleneck per stage and 1/8 widths.

``backbone="lite"`` (:class:`LiteBackbone`) is made for training from
scratch on a few CPU cores and for fast CPU inference: plain 3x3 residual
blocks with BatchNorm after every convolution (extras included), levels of
32/48/96/144/96/96 channels at strides 4..128. It is the default model's
backbone.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint_reader import read_checkpoint
from ..constants import BACKBONES, MOBILE_BACKBONES

__all__ = [
    "L2Norm",
    "VGG16Backbone",
    "Bottleneck",
    "ResNet",
    "ResNetBackbone",
    "BasicBlock",
    "LiteBackbone",
    "LITE_WIDTHS",
    "LITE_BLOCKS",
    "RESNET_LAYERS",
    "BACKBONES",
    "MOBILE_BACKBONES",
    "vgg16_layers",
    "make_extras",
    "scaled",
    "build_backbone",
    "load_imagenet_weights",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Bottleneck counts per stage.
RESNET_LAYERS: Dict[str, Tuple[int, int, int, int]] = {
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "tiny": (1, 1, 1, 1),
}

#: ``backbone="lite"``: channels of the six levels (strides 4, 8, ..., 128).
#: Each is 32 or a multiple of 48, so the FEM's three branch widths
#: (``C // 3``...) are at most 16 or multiples of 16: oneDNN's bf16
#: channels_last weight gradient of a *dilated* conv returns NaN for other
#: widths above 16 (measured here with torch 2.14.1, e.g. 21, 24, 42).
LITE_WIDTHS: Tuple[int, ...] = (32, 48, 96, 144, 96, 96)
#: ``backbone="lite"``: residual blocks at strides 4, 8, 16, 32.
LITE_BLOCKS: Tuple[int, ...] = (1, 2, 3, 2)
#: Width multiplier used by ``backbone="tiny"`` unless one is given.
TINY_WIDTH_MULT = 0.125


def scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, at least 1."""
    return max(1, int(round(channels * width_mult)))


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learnable per-channel scale (ParseNet / SSD).

    ``y = x / (||x||_2 over channels + eps) * weight``; ``weight`` starts at ``scale``.
    """

    def __init__(self, channels: int, scale: float, eps: float = 1e-10) -> None:
        super().__init__()
        self.channels = channels
        self.scale = float(scale)
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, scale={self.scale}"


# --------------------------------------------------------------------------- VGG16


def vgg16_layers(conv6_dilation: int = 3, width_mult: float = 1.0) -> List[nn.Module]:
    """The 35 VGG16 layers DSFD uses, torchvision numbering for indices 0..29.

    ``64,64,M,128,128,M,256,256,256,M(ceil),512,512,512,M,512,512,512``,
    then pool5 (2x2/2, index 30), conv6 3x3 512->1024 (index 31; ``padding =
    dilation = conv6_dilation``: 3 in paper-style models, 1 in the released
    network), ReLU, conv7 1x1 1024->1024 (index 33), ReLU.
    Level outputs are taken after indices 15 (conv3_3), 22 (conv4_3),
    29 (conv5_3) and 34 (fc7).
    """
    cfg: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
    layers: List[nn.Module] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif v == "C":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            c_out = scaled(int(v), width_mult)
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
    c6 = scaled(1024, width_mult)
    layers += [
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(c_in, c6, kernel_size=3, padding=conv6_dilation, dilation=conv6_dilation),
        nn.ReLU(inplace=True),
        nn.Conv2d(c6, c6, kernel_size=1),
        nn.ReLU(inplace=True),
    ]
    return layers


#: ``(start, end)`` index ranges of ``vgg16_layers`` producing levels 0..3.
VGG_STAGES: Tuple[Tuple[int, int], ...] = ((0, 16), (16, 23), (23, 30), (30, 35))


def make_extras(in_channels: int, width_mult: float = 1.0) -> nn.ModuleList:
    """SSD extras on top of fc7 / layer4 (bias, no BatchNorm; ReLU applied in forward).

    1x1 in->256, 3x3/2 256->512 (= conv6_2), 1x1 512->128, 3x3/2 128->256 (= conv7_2).
    """
    c = [scaled(x, width_mult) for x in (256, 512, 128, 256)]
    return nn.ModuleList(
        [
            nn.Conv2d(in_channels, c[0], kernel_size=1),
            nn.Conv2d(c[0], c[1], kernel_size=3, stride=2, padding=1),
            nn.Conv2d(c[1], c[2], kernel_size=1),
            nn.Conv2d(c[2], c[3], kernel_size=3, stride=2, padding=1),
        ]
    )


def _run_extras(extras: nn.ModuleList, x: Tensor) -> Tuple[Tensor, Tensor]:
    x = F.relu(extras[0](x), inplace=True)
    x4 = F.relu(extras[1](x), inplace=True)
    x = F.relu(extras[2](x4), inplace=True)
    x5 = F.relu(extras[3](x), inplace=True)
    return x4, x5


def _xavier_init(modules: Sequence[nn.Module]) -> None:
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, nn.Conv2d):
                nn.init.xavier_uniform_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)


class VGG16Backbone(nn.Module):
    """VGG16 + SSD extras: six source maps (levels 0..5).

    Args:
        conv6_dilation: dilation (= padding) of conv6 (3 paper-style, 1 released).
        width_mult: width multiplier.

    ``forward(x: Tensor[B, 3, H, W]) -> List[Tensor]`` returns the raw maps
    (conv3_3 and conv4_3 / conv5_3 / fc7 after their ReLU). The L2Norm scales
    of levels 0-2 (``l2norm_scales``) are applied by the detector, which also
    needs the un-normalised maps.
    Map sizes: ``H/4`` (floor), then a ceil-mode pool, then floors; the extras
    use ``floor((h - 1) / 2) + 1``.
    """

    l2norm_scales: Tuple[float, ...] = (10.0, 8.0, 5.0)

    def __init__(self, conv6_dilation: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        self.width_mult = width_mult
        self.features = nn.ModuleList(vgg16_layers(conv6_dilation, width_mult))
        fc7 = self.features[33].out_channels
        self.extras = make_extras(fc7, width_mult)
        self.out_channels: List[int] = [
            self.features[14].out_channels,
            self.features[21].out_channels,
            self.features[28].out_channels,
            fc7,
            self.extras[1].out_channels,
            self.extras[3].out_channels,
        ]
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        _xavier_init([self.extras])

    def forward(self, x: Tensor) -> List[Tensor]:
        outs: List[Tensor] = []
        for start, end in VGG_STAGES:
            for k in range(start, end):
                x = self.features[k](x)
            outs.append(x)
        outs.extend(_run_extras(self.extras, x))
        return outs


# --------------------------------------------------------------------------- ResNet


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 conv)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _he_init_conv_bn(module: nn.Module) -> None:
    """He (fan-out) init for every conv, BatchNorm at scale 1 and shift 0 (torchvision's ResNet init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """The ResNet trunk (no pooling head, no ``fc``), torchvision parameter names.

    ``forward`` returns ``[layer1, layer2, layer3, layer4]`` outputs (strides 4..32).
    For an input of ``H x W`` the maps are ``ceil(H / stride) x ceil(W / stride)``.
    """

    def __init__(self, layers: Sequence[int], width_mult: float = 1.0) -> None:
        super().__init__()
        w = [scaled(c, width_mult) for c in (64, 128, 256, 512)]
        self.inplanes = w[0]
        self.conv1 = nn.Conv2d(3, w[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(w[0], layers[0])
        self.layer2 = self._make_layer(w[1], layers[1], stride=2)
        self.layer3 = self._make_layer(w[2], layers[2], stride=2)
        self.layer4 = self._make_layer(w[3], layers[3], stride=2)
        self.stage_channels: List[int] = [c * Bottleneck.expansion for c in w]
        _he_init_conv_bn(self)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> List[Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class ResNetBackbone(ResNet):
    """ResNet trunk + SSD extras (paper-style, no BatchNorm in the extras): six source maps.

    Args:
        layers: bottleneck counts, e.g. ``(3, 4, 6, 3)`` for ResNet50.
        width_mult: width multiplier.
    """

    l2norm_scales: Optional[Tuple[float, ...]] = None

    def __init__(self, layers: Sequence[int], width_mult: float = 1.0) -> None:
        super().__init__(layers, width_mult)
        self.width_mult = width_mult
        self.extras = make_extras(self.stage_channels[3], width_mult)
        _xavier_init([self.extras])
        self.out_channels: List[int] = self.stage_channels + [
            self.extras[1].out_channels,
            self.extras[3].out_channels,
        ]

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        outs = super().forward(x)
        outs.extend(_run_extras(self.extras, outs[-1]))
        return outs


# --------------------------------------------------------------------------- lite


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs with BatchNorm; 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class LiteBackbone(nn.Module):
    """A small all-BatchNorm backbone for DSFD trained from scratch (``backbone="lite"``).

    Stem: two stride-2 3x3 convs (3 -> ``w0/2`` -> ``w0``) reach stride 4;
    then residual basic-block stages at strides 4, 8, 16, 32
    (``LITE_BLOCKS`` blocks, the first of each later stage strided), and two
    extra levels (1x1 reduce, 3x3 stride 2; BatchNorm and ReLU on both) at
    strides 64 and 128. Every convolution is followed by BatchNorm, which is
    what makes training from scratch reliable (DSOD, ScratchDet); the last
    BatchNorm of each residual branch starts at zero so every block starts as
    the identity.

    Why this shape: on 2 CPU cores dense 3x3 convolutions are what oneDNN
    runs fastest (depthwise ones are memory-bound, and their backward is
    slow), and the stride-4 level that finds the smallest faces is kept
    narrow (32 channels), since it covers 16x more positions than stride 16.

    Args:
        widths: channels of the six levels (default :data:`LITE_WIDTHS`).
        blocks: basic blocks at strides 4, 8, 16, 32 (default :data:`LITE_BLOCKS`).
        width_mult: scales every width.

    ``forward(x) -> List[Tensor]``: six maps, ``ceil(H / stride)`` high.
    """

    l2norm_scales: Optional[Tuple[float, ...]] = None

    def __init__(
        self,
        widths: Sequence[int] = LITE_WIDTHS,
        blocks: Sequence[int] = LITE_BLOCKS,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if len(widths) != 6 or len(blocks) != 4:
            raise ValueError(f"expected 6 widths and 4 block counts, got {len(widths)} and {len(blocks)}")
        w = [scaled(c, width_mult) for c in widths]
        self.width_mult = width_mult
        half = max(1, w[0] // 2)
        self.stem = nn.Sequential(_conv_bn_relu(3, half, stride=2), _conv_bn_relu(half, w[0], stride=2))
        stages = []
        c_in = w[0]
        for i, n in enumerate(blocks):
            layers = [BasicBlock(c_in, w[i], stride=1 if i == 0 else 2)]
            layers += [BasicBlock(w[i], w[i]) for _ in range(1, n)]
            stages.append(nn.Sequential(*layers))
            c_in = w[i]
        self.stages = nn.ModuleList(stages)
        self.extras = nn.ModuleList()
        for i in (4, 5):
            mid = max(1, w[i] // 2)
            self.extras.append(nn.Sequential(_conv_bn_relu(c_in, mid, kernel=1), _conv_bn_relu(mid, w[i], stride=2)))
            c_in = w[i]
        self.out_channels: List[int] = list(w)
        _he_init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.stem(x)
        outs: List[Tensor] = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        return outs


def build_backbone(
    name: str,
    width_mult: Optional[float] = None,
    conv6_dilation: int = 3,
    weights: Optional[PathLike] = None,
) -> nn.Module:
    """Paper-style backbone by name (``vgg16``, ``resnet50/101/152``, ``tiny``, ``lite``,
    ``mobilenet0.25``, ``mobilenetv2``).

    Args:
        name: backbone name.
        width_mult: width multiplier (default 1, or 1/8 for ``tiny``; the
            mobile backbones have one width).
        conv6_dilation: VGG16 only.
        weights: pretrained weights to start from: a local torchvision-format
            ImageNet ``state_dict`` for ResNet / VGG16 (see
            :func:`load_imagenet_weights`); a RetinaFace MobileNet-0.25
            checkpoint for ``mobilenet0.25``; ``"imagenet"`` or a local
            torchvision ``mobilenet_v2`` file for ``mobilenetv2`` (see
            :mod:`dsfd.models.mobilenet`).
    """
    name = name.lower()
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    if name in MOBILE_BACKBONES:
        from .mobilenet import MobileNetV1Backbone, MobileNetV2Backbone

        if width_mult not in (None, 1, 1.0):
            raise ValueError(f"backbone {name!r} has one width (the pretrained body's); width_mult must be 1")
        cls = MobileNetV1Backbone if name == "mobilenet0.25" else MobileNetV2Backbone
        return cls(weights=weights)
    if width_mult is None:
        width_mult = TINY_WIDTH_MULT if name == "tiny" else 1.0
    if name == "vgg16":
        bb: nn.Module = VGG16Backbone(conv6_dilation=conv6_dilation, width_mult=width_mult)
    elif name == "lite":
        if weights is not None:
            raise ValueError("backbone 'lite' has no ImageNet weights (it is trained from scratch)")
        bb = LiteBackbone(width_mult=width_mult)
    else:
        bb = ResNetBackbone(RESNET_LAYERS[name], width_mult=width_mult)
    if weights is not None:
        load_imagenet_weights(bb, weights)
    return bb


# --------------------------------------------------------------------------- ImageNet weights


def load_imagenet_weights(backbone: nn.Module, path: PathLike) -> List[str]:
    """Copy a torchvision-format ImageNet ``state_dict`` file onto a backbone.

    * ResNet: ``conv1.*``, ``bn1.*``, ``layer1..4.*`` map one to one (``fc.*``
      is ignored); every trunk tensor must be present with the right shape.
    * VGG16: torchvision's ``features.N.*`` (N = 0..28) map one to one; if
      ``classifier.0`` / ``classifier.3`` (fc6 / fc7) are present they are
      decimated into conv6 / conv7 the SSD way (every 4th filter, every 3rd
      tap of the 7x7 fc6 kernel). SSD "reduced fc" files with bare ``N.weight``
      keys (including ``31`` and ``33``) are accepted too.

    The extras stay freshly initialised. No network access is ever made.
    Returns the list of backbone keys that were loaded.
    """
    sd, _ = read_checkpoint(path)
    own = backbone.state_dict()
    mapped: Dict[str, Tensor] = {}
    if isinstance(backbone, ResNet):
        for k in own:
            if k.startswith("extras.") or k.endswith("num_batches_tracked"):
                continue
            if k in sd:
                mapped[k] = sd[k]
        required = [k for k in own if not k.startswith("extras.") and not k.endswith("num_batches_tracked")]
    elif isinstance(backbone, VGG16Backbone):
        for k, v in sd.items():
            if k.startswith("features."):
                mapped[k] = v
            elif k.split(".")[0].isdigit():
                mapped["features." + k] = v
        if "classifier.0.weight" in sd and "features.31.weight" not in mapped:
            w6, b6 = sd["classifier.0.weight"], sd["classifier.0.bias"]
            w7, b7 = sd["classifier.3.weight"], sd["classifier.3.bias"]
            if w6.shape == (4096, 512 * 7 * 7) and w7.shape == (4096, 4096):
                mapped["features.31.weight"] = w6.view(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous()
                mapped["features.31.bias"] = b6[::4].contiguous()
                mapped["features.33.weight"] = w7.view(4096, 4096, 1, 1)[::4, ::4].contiguous()
                mapped["features.33.bias"] = b7[::4].contiguous()
        required = [k for k in own if k.startswith("features.") and int(k.split(".")[1]) <= 28]
    else:
        raise TypeError(f"no ImageNet mapping for {type(backbone).__name__}")
    missing = [k for k in required if k not in mapped]
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} is not a torchvision-format ImageNet state_dict for this backbone: "
            f"missing {len(missing)} keys, e.g. {missing[:5]}"
        )
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch loading ImageNet weights from {os.fspath(path)!r}: {bad[:5]}")
    unknown = [k for k in mapped if k not in own]
    for k in unknown:
        mapped.pop(k)
    backbone.load_state_dict(mapped, strict=False)
    return sorted(mapped)
