"""Backbones that start from pretrained weights (dsfd.models.mobilenet): layout, strict loading, parity."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dsfd.data_paths import repo_root, wider_root
from dsfd.models import build_model
from dsfd.models.mobilenet import (
    MOBILE_WIDTHS,
    MobileNetV1Backbone,
    MobileNetV2Backbone,
    load_mobilenet_v2_features,
    load_retinaface_body,
    retinaface_body_keys,
)

RETINAFACE = repo_root().parent / "shared" / "weights" / "retinaface_mobilenet0.25" / "mobilenet0.25_Final.pth"
needs_retinaface = pytest.mark.skipif(not RETINAFACE.is_file(), reason=f"RetinaFace weights not found at {RETINAFACE}")


def _macs(model: nn.Module, H: int, W: int) -> int:
    total = [0]

    def hook(m, _inp, out):
        total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, H, W))
    for h in handles:
        h.remove()
    return total[0]


# --------------------------------------------------------------------------- the public layout, written from its description


def _ref_conv_bn(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.1, inplace=True))


def _ref_conv_dw(c_in, c_out, stride):
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1, inplace=True),
    )


class ReferenceRetinaFaceBody(nn.Module):
    """RetinaFace's MobileNetV1 x0.25 as its public models/net.py describes it (stage1/2/3, LeakyReLU 0.1)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_ref_conv_bn(3, 8, 2), _ref_conv_dw(8, 16, 1), _ref_conv_dw(16, 32, 2),
                                    _ref_conv_dw(32, 32, 1), _ref_conv_dw(32, 64, 2), _ref_conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_ref_conv_dw(64, 128, 2), *[_ref_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_ref_conv_dw(128, 256, 2), _ref_conv_dw(256, 256, 1))

    def forward(self, x):
        s1 = self.stage1(x)
        s2 = self.stage2(s1)
        return s1, s2, self.stage3(s2)


def _photo() -> torch.Tensor:
    import cv2

    files = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    path = files[0] if files else repo_root() / "dsfd" / "assets" / "grace_hopper.jpg"
    img = cv2.resize(cv2.imread(str(path)), (320, 240), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    return x - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)


def _body_state_dict(backbone: MobileNetV1Backbone, seed: int = 0):
    """A RetinaFace-style file's content for this body (``body.`` prefix) plus unrelated RetinaFace keys."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"body.{k}": (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone())
          for k, v in backbone.state_dict().items() if k in retinaface_body_keys(backbone)}
    for k, v in list(sd.items()):
        if k.endswith("running_var"):
            sd[k] = v.abs() + 0.5
    sd["fpn.output1.0.weight"] = torch.zeros(64, 64, 1, 1)
    sd["ClassHead.0.conv1x1.weight"] = torch.zeros(4, 64, 1, 1)
    return sd


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["mobilenet0.25", "mobilenetv2"])
def test_mobile_backbones_architecture(name):
    model = build_model("paper", name).eval()
    assert model.out_channels == list(MOBILE_WIDTHS)
    # six levels at strides 4 .. 128 with ResNet-style ceil sizes, so anchors line up with the cells
    H, W = 97, 71
    feats = model.backbone(torch.zeros(1, 3, H, W))
    expected = []  # each stride-2 layer gives ceil(size / 2)
    h, w = H, W
    for i in range(7):
        h, w = -(-h // 2), -(-w // 2)
        if i >= 1:
            expected.append((h, w))
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert [f.shape[1] for f in feats] == list(MOBILE_WIDTHS)
    # BatchNorm after every backbone conv; FEM branch widths safe under oneDNN's CPU bf16 (<= 16 or k * 16)
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) and all(c.bias is None for c in convs)
    for level in model.fem.enhance:
        assert all(c <= 16 or c % 16 == 0 for c in level.split), level.split
    with pytest.raises(ValueError, match="one width"):
        build_model("paper", name, width_mult=0.5)


def test_mobile_backbones_documented_size():
    # the numbers docs/models.md documents (parameters; GMAC of the test-time network at 640x480)
    m1 = build_model("paper", "mobilenet0.25", fuse_branches=False).eval()  # every conv a module, counted
    m2 = build_model("paper", "mobilenetv2", fuse_branches=False).eval()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(m1.backbone) == 360_912 and n(m2.backbone) == 1_955_584
    assert n(m1) == 1_133_918 and n(m2) == 2_728_590
    assert round(_macs(m1, 480, 640) / 1e9, 3) == 1.014
    assert round(_macs(m2, 480, 640) / 1e9, 3) == 2.470


def test_retinaface_body_loading_is_strict(tmp_path):
    bb = MobileNetV1Backbone()
    sd = _body_state_dict(bb)
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    loaded = load_retinaface_body(bb, good)
    assert len(loaded) == 162 and set(loaded) == set(retinaface_body_keys(bb))
    own = bb.state_dict()
    assert all(torch.equal(own[k], sd[f"body.{k}"]) for k in loaded)
    # every body tensor of the file used exactly once; each defect is named
    cases = {
        "missing": lambda d: d.pop("body.stage3.1.4.running_var"),
        "unused": lambda d: d.__setitem__("body.stage4.0.0.weight", torch.zeros(1)),
        "shape": lambda d: d.__setitem__("body.stage2.0.3.weight", torch.zeros(128, 32, 1, 1)),
    }
    for what, edit in cases.items():
        bad = dict(sd)
        edit(bad)
        path = tmp_path / f"{what}.pth"
        torch.save(bad, path)
        with pytest.raises(ValueError, match="1 missing" if what == "missing" else
                           ("1 unused" if what == "unused" else "1 shape mismatches")):
            load_retinaface_body(MobileNetV1Backbone(), path)
    # a module. prefix (DataParallel) is accepted; a non-state_dict file is refused
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pth")
    load_retinaface_body(MobileNetV1Backbone(), tmp_path / "dp.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        load_retinaface_body(MobileNetV1Backbone(), tmp_path / "list.pth")


@needs_retinaface
def test_retinaface_body_reproduces_the_source_feature_maps():
    """The loaded body gives the RetinaFace network's own stage outputs on a real photo."""
    ref = ReferenceRetinaFaceBody().eval()
    sd = torch.load(RETINAFACE, map_location="cpu", weights_only=True)
    ref.load_state_dict({k[len("body."):]: v for k, v in sd.items() if k.startswith("body.")}, strict=True)
    model = build_model("paper", "mobilenet0.25", backbone_weights=str(RETINAFACE)).eval()
    bb = model.backbone
    x = _photo()
    with torch.no_grad():
        want = ref(x)
        c0 = bb.stage1[:4](x)
        c1 = bb.stage1[4:](c0)
        c2 = bb.stage2(c1)
        got = (c1, c2, bb.stage3(c2))
    for g, w in zip(got, want):
        assert g.shape == w.shape and torch.equal(g, w)
    assert float(want[2].abs().mean()) > 0.01  # a real, non-trivial map
    # the full DSFD network runs on top of it
    with torch.no_grad():
        out = model(x).second
    assert torch.isfinite(out.conf).all() and out.loc.shape[1] == out.anchors.shape[0]


def test_mobilenet_v2_loads_a_torchvision_file_strictly(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    net = mobilenet_v2(weights=None)
    path = tmp_path / "mbv2.pth"
    torch.save(net.state_dict(), path)
    bb = MobileNetV2Backbone(weights=path)
    for k, v in net.features[:18].state_dict().items():
        assert torch.equal(bb.features.state_dict()[k], v), k
    x = torch.randn(1, 3, 64, 64)
    net.eval(), bb.eval()
    with torch.no_grad():
        assert torch.allclose(bb.features(x), net.features[:18](x))
    sd = net.state_dict()
    sd.pop("classifier.1.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v2 state_dict"):
        MobileNetV2Backbone(weights=tmp_path / "partial.pth")


def _imagenet_file() -> Path:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"


@pytest.mark.skipif(not _imagenet_file().is_file(),
                    reason="torchvision's MobileNetV2 ImageNet file is not in the torch hub cache (no download here)")
def test_mobilenet_v2_imagenet_through_torchvision_weights_api():
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    bb = MobileNetV2Backbone(weights="imagenet")
    ref = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).eval()
    bb.eval()
    x = _photo()
    with torch.no_grad():
        assert torch.equal(bb.features(x), ref.features[:18](x))
