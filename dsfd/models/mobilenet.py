"""Mobile backbones that start from pretrained weights.

* ``"mobilenet0.25"``: the MobileNetV1 x0.25 body of RetinaFace (3x3 conv,
  then depthwise-separable blocks, BatchNorm after every conv, LeakyReLU
  0.1), as in the public ``biubug6/Pytorch_Retinaface`` ``models/net.py``.
  Its weights come from a RetinaFace checkpoint (``body.stage1/2/3.*``, a
  detector trained on the WIDER FACE training split):
  :func:`load_retinaface_body` copies them strictly.
* ``"mobilenetv2"``: torchvision's MobileNetV2 (``features[0..17]``),
  ImageNet weights through torchvision's own weights API
  (``MobileNet_V2_Weights.IMAGENET1K_V1``: the file a user with internet
  access gets, or finds offline in ``$TORCH_HOME/hub/checkpoints``).

Both give DSFD's six source levels at strides 4, 8, 16, 32, 64, 128: four
taps of the body, each brought to the level's width by a 1x1 conv + BatchNorm
+ activation where it differs (a "neck"), and two extra levels (1x1 reduce,
3x3 stride 2, BatchNorm and activation on both). The level widths default to
:data:`MOBILE_WIDTHS` = ``LITE_WIDTHS`` (32, 48, 96, 144, 96, 96): the
FEM and the heads then cost what the ``lite`` model's do, and every FEM
branch width is at most 16 or a multiple of 16 (safe under oneDNN's CPU bf16,
see :mod:`dsfd.models.backbones`). The deep 256 / 320-channel maps are
narrowed to 144, since the FEM and heads on them, not the body, set the cost.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = [
    "MOBILE_WIDTHS",
    "MobileNetV1Backbone",
    "MobileNetV2Backbone",
    "load_retinaface_body",
    "retinaface_body_keys",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Channels of the six levels of the mobile backbones (strides 4 ... 128); equal to ``LITE_WIDTHS``.
MOBILE_WIDTHS: Tuple[int, ...] = (32, 48, 96, 144, 96, 96)


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int, act: nn.Module, groups: int = 1) -> List[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        act,
    ]


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def _conv_dw(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + LeakyReLU, pointwise 1x1 + BN + LeakyReLU (indices 0-5, as in the source)."""
    return nn.Sequential(*_conv_bn_act(c_in, c_in, 3, stride, _leaky(), groups=c_in),
                         *_conv_bn_act(c_in, c_out, 1, 1, _leaky()))


class _Neck(nn.Module):
    """Per-tap 1x1 conv + BN + activation to the level width (identity where the widths agree), plus the extras."""

    def __init__(self, tap_channels: Sequence[int], widths: Sequence[int], act) -> None:
        super().__init__()
        self.proj = nn.ModuleList(
            [nn.Identity() if c == w else nn.Sequential(*_conv_bn_act(c, w, 1, 1, act()))
             for c, w in zip(tap_channels, widths[:4])]
        )
        self.extras = nn.ModuleList()
        c_in = widths[3]
        for w in widths[4:]:
            mid = max(1, w // 2)
            self.extras.append(nn.Sequential(*_conv_bn_act(c_in, mid, 1, 1, act()), *_conv_bn_act(mid, w, 3, 2, act())))
            c_in = w

    def forward(self, taps: List[Tensor]) -> List[Tensor]:
        outs = [p(t) for p, t in zip(self.proj, taps)]
        x = outs[-1]
        for extra in self.extras:
            x = extra(x)
            outs.append(x)
        return outs


def _check_widths(widths: Sequence[int]) -> List[int]:
    w = [int(c) for c in widths]
    if len(w) != 6 or min(w) < 3:
        raise ValueError(f"expected six level widths of at least 3 channels, got {widths!r}")
    return w


class MobileNetV1Backbone(nn.Module):
    """RetinaFace's MobileNetV1 x0.25 body + neck + two extras (``backbone="mobilenet0.25"``).

    Taps: after ``stage1[3]`` (32 channels, stride 4), ``stage1`` (64, stride
    8), ``stage2`` (128, stride 16), ``stage3`` (256, stride 32). Parameter
    names of the body (``stage1.0.0.weight`` ...) are the RetinaFace
    checkpoint's without its ``body.`` prefix.

    Args:
        widths: channels of the six levels (default :data:`MOBILE_WIDTHS`).
        weights: a RetinaFace checkpoint to start the body from
            (:func:`load_retinaface_body`), or ``None``.
    """

    l2norm_scales: Optional[Tuple[float, ...]] = None
    width_mult = 1.0
    tap_channels: Tuple[int, ...] = (32, 64, 128, 256)

    def __init__(self, widths: Sequence[int] = MOBILE_WIDTHS, weights: Optional[PathLike] = None) -> None:
        super().__init__()
        w = _check_widths(widths)
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn_act(3, 8, 3, 2, _leaky())),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))
        self.neck = _Neck(self.tap_channels, w, _leaky)
        self.out_channels: List[int] = w
        _init(self)
        if weights is not None:
            load_retinaface_body(self, weights)

    def forward(self, x: Tensor) -> List[Tensor]:
        c0 = self.stage1[:4](x)
        c1 = self.stage1[4:](c0)
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        return self.neck([c0, c1, c2, c3])


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 ``features[0..17]`` + neck + two extras (``backbone="mobilenetv2"``).

    Taps: after ``features[3]`` (24 channels, stride 4), ``[6]`` (32, stride
    8), ``[13]`` (96, stride 16), ``[17]`` (320, stride 32); the 1280-channel
    ``features[18]`` and the classifier are not used.

    Args:
        widths: channels of the six levels (default :data:`MOBILE_WIDTHS`).
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` through its
            weights API), a local torchvision ``mobilenet_v2`` ``state_dict``
            file, or ``None``.
    """

    l2norm_scales: Optional[Tuple[float, ...]] = None
    width_mult = 1.0
    tap_channels: Tuple[int, ...] = (24, 32, 96, 320)
    taps: Tuple[int, ...] = (3, 6, 13, 17)

    def __init__(self, widths: Sequence[int] = MOBILE_WIDTHS, weights: Optional[PathLike] = None) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        w = _check_widths(widths)
        net = mobilenet_v2(weights=None)
        self.features = net.features[: self.taps[-1] + 1]
        self.neck = _Neck(self.tap_channels, w, lambda: nn.ReLU6(inplace=True))
        self.out_channels: List[int] = w
        _init(self.neck)
        if weights is not None:
            load_mobilenet_v2_features(self, weights)

    def forward(self, x: Tensor) -> List[Tensor]:
        taps = []
        start = 0
        for t in self.taps:
            x = self.features[start : t + 1](x)
            taps.append(x)
            start = t + 1
        return self.neck(taps)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- weights


def retinaface_body_keys(backbone: MobileNetV1Backbone) -> List[str]:
    """The backbone's keys that come from a RetinaFace body (``stage1/2/3.*``, BatchNorm counters included)."""
    return [k for k in backbone.state_dict() if k.split(".")[0] in ("stage1", "stage2", "stage3")]


def _read_state_dict(path: PathLike) -> Dict[str, Tensor]:
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{os.fspath(path)!r} is not a state_dict file")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_retinaface_body(backbone: MobileNetV1Backbone, path: PathLike) -> List[str]:
    """Copy a RetinaFace MobileNet-0.25 checkpoint's ``body.*`` tensors onto ``backbone``, strictly.

    Every ``body.*`` tensor of the file must be used exactly once and every
    body tensor of the backbone must be loaded, with equal shapes; the file's
    other tensors (RetinaFace's FPN, SSH and heads) are not used. The neck and
    the extras keep their fresh initialisation. Returns the loaded keys.

    Raises:
        ValueError: not a RetinaFace MobileNet-0.25 file (missing, unused or
            mis-shaped body tensors are listed).
    """
    sd = _read_state_dict(path)
    source = {k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}
    own = backbone.state_dict()
    wanted = retinaface_body_keys(backbone)
    missing = [k for k in wanted if k not in source]
    unused = [f"body.{k}" for k in source if k not in own or k not in wanted]
    bad = [(k, tuple(source[k].shape), tuple(own[k].shape)) for k in wanted
           if k in source and source[k].shape != own[k].shape]
    if missing or unused or bad:
        raise ValueError(
            f"{os.fspath(path)!r} does not fit the RetinaFace MobileNet-0.25 body: "
            f"{len(missing)} missing (e.g. {['body.' + k for k in missing[:3]]}), "
            f"{len(unused)} unused (e.g. {unused[:3]}), {len(bad)} shape mismatches (e.g. {bad[:3]})"
        )
    backbone.load_state_dict({k: source[k] for k in wanted}, strict=False)
    return wanted


def load_mobilenet_v2_features(backbone: MobileNetV2Backbone, weights: PathLike) -> List[str]:
    """ImageNet weights for ``features[0..17]``: ``"imagenet"`` (torchvision's weights API) or a local file.

    The whole torchvision ``mobilenet_v2`` is loaded strictly (torchvision
    checks the download's hash; a local file must hold every key of that
    network with its shape), then ``features[0..17]`` are copied. Returns the
    loaded keys.
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    if str(weights).lower() in ("imagenet", "imagenet1k_v1"):
        net = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
    else:
        net = mobilenet_v2(weights=None)
        sd = _read_state_dict(weights)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{os.fspath(weights)!r} is not a torchvision mobilenet_v2 state_dict: {e}") from None
    src = net.features[: backbone.taps[-1] + 1].state_dict()
    backbone.features.load_state_dict(src, strict=True)
    return [f"features.{k}" for k in src]

