"""Tests of dsfd.models: shapes, fixtures, parity with the released code, anchors, loading.

Heavy networks (ResNet152, VGG16) are built on the ``meta`` device for key /
shape / parameter-count checks; real forwards use small inputs.
"""

from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F

import dsfd.models.fem as fem_mod
from dsfd.data_paths import fixtures_root
from dsfd.models import (
    CheckpointError,
    ContextFEM,
    DSFD,
    FEMBranches,
    FeatureEnhanceModule,
    ReleasedDSFD,
    anchor_cache_info,
    build_model,
    cached_anchors,
    clear_anchor_cache,
    convert_dualshot_reference_state_dict,
    dsfd_paper,
    dsfd_released,
    generate_anchors,
    identify_checkpoint,
    load_state_dict_checked,
    load_weights,
    preprocess,
    set_anchor_cache_size,
)
from dsfd.models.anchors import FIRST_SHOT_SIZES, SECOND_SHOT_SIZES, STEPS

FIXTURES = fixtures_root()


def read_tsv(name: str) -> Dict[str, Tuple[int, ...]]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {path} not found (set DSFD_FIXTURES_ROOT; default <repo>/../shared/fixtures)")
    out: Dict[str, Tuple[int, ...]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            out[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return out


def meta_model(network: str, backbone: str, **kw):
    with torch.device("meta"):
        return build_model(network, backbone, **kw)


def shapes(model) -> Dict[str, Tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def released152() -> ReleasedDSFD:
    torch.manual_seed(0)
    m = dsfd_released("resnet152")
    _randomise_bn(m)
    return m.eval()


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                # residual branches scaled down so that activations stay O(1) through 50 blocks
                scale = 0.2 if name.endswith("bn3") else 1.0
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=g) + 0.5) * scale)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)


# ----------------------------------------------------------------------------- fixtures (keys / shapes)


@pytest.mark.parametrize(
    "backbone, fixture, params",
    [("resnet152", "official_res152_state_dict.tsv", 120_058_406), ("vgg16", "official_vgg_state_dict.tsv", None)],
)
def test_released_state_dict_matches_official(backbone, fixture, params):
    ref = read_tsv(fixture)
    model = meta_model("released", backbone)
    own = shapes(model)
    assert list(own) == list(ref)  # same keys, same order
    assert own == ref  # same shapes
    if params is not None:
        assert n_params(model) == params
    # the released file has no num_batches_tracked: the rest equals the parameters + BN statistics
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(math.prod(s) for k, s in ref.items() if not k.endswith(stats)) == n_params(model)


@pytest.mark.parametrize(
    "backbone, fixture",
    [("vgg16", "vgg"), ("resnet50", "resnet50"), ("resnet101", "resnet101"), ("resnet152", "resnet152")],
)
def test_paper_state_dict_matches_dualshot_reference(backbone, fixture):
    ref = convert_dualshot_reference_state_dict(read_tsv(f"dualshot_reference_{fixture}_state_dict.tsv"))
    own = shapes(meta_model("paper", backbone))
    assert set(own) == set(ref)
    assert own == ref


def test_parameter_counts():
    counts = {
        (n, b): n_params(meta_model(n, b)) for n in ("paper", "released") for b in ("vgg16", "resnet50", "resnet152")
    }
    assert counts[("released", "resnet152")] == 120_058_406
    assert counts[("released", "vgg16")] == 70_730_278
    assert counts[("paper", "vgg16")] == 49_793_432
    assert counts[("paper", "resnet50")] == 106_744_984
    assert counts[("paper", "resnet152")] == 141_380_760
    assert n_params(build_model("paper", "tiny")) < 2_000_000


# ----------------------------------------------------------------------------- shapes


def _level_sizes_resnet(H: int, W: int) -> List[Tuple[int, int]]:
    sizes = [(math.ceil(H / s), math.ceil(W / s)) for s in (4, 8, 16, 32)]
    for _ in range(2):
        h, w = sizes[-1]
        sizes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))
    return sizes


def _level_sizes_vgg(H: int, W: int) -> List[Tuple[int, int]]:
    h, w = H // 2 // 2, W // 2 // 2
    sizes = [(h, w)]
    h, w = math.ceil(h / 2), math.ceil(w / 2)
    sizes.append((h, w))
    for _ in range(2):
        h, w = h // 2, w // 2
        sizes.append((h, w))
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("network", ["paper", "released"])
@pytest.mark.parametrize("backbone", ["vgg16", "resnet152"])
@pytest.mark.parametrize("size", [(640, 640), (481, 353)])
def test_output_shapes_full_size_on_meta(network, backbone, size):
    H, W = size
    model = meta_model(network, backbone).train()
    feats = model.backbone(torch.empty(1, 3, H, W, device="meta")) if network == "paper" else model.extract_features(
        torch.empty(1, 3, H, W, device="meta")
    )
    expect = _level_sizes_vgg(H, W) if backbone == "vgg16" else _level_sizes_resnet(H, W)
    assert [tuple(f.shape[-2:]) for f in feats] == expect
    assert [f.shape[1] for f in feats] == model.out_channels
    out = model(torch.empty(2, 3, H, W, device="meta"))
    A = sum(h * w for h, w in expect)
    if (H, W) == (640, 640):
        assert A == 34_125
    if network == "paper":
        for shot in out:
            assert shot.loc.shape == (2, A, 4) and shot.conf.shape == (2, A, 2) and shot.anchors.shape == (A, 4)
    else:
        assert out.face.loc.shape == (2, A, 4) and out.face.conf.shape == (2, A, 2)
        assert out.head.loc.shape[1] == A - expect[0][0] * expect[0][1] == out.head.anchors.shape[0]
        assert out.body.conf.shape[1] == sum(h * w for h, w in expect[2:]) == out.body.anchors.shape[0]
        if (H, W) == (640, 640):
            assert out.head.loc.shape[1] == 8525 and out.body.loc.shape[1] == 2125


@pytest.mark.parametrize("network", ["paper", "released"])
def test_tiny_real_forward_odd_size(network):
    torch.manual_seed(0)
    model = build_model(network, backbone="tiny").train()
    H, W = 97, 71
    out = model(torch.randn(2, 3, H, W))
    A = sum(h * w for h, w in _level_sizes_resnet(H, W))
    shots = [out.first, out.second] if network == "paper" else [out.face]
    for s in shots:
        assert s.loc.shape == (2, A, 4) and s.conf.shape == (2, A, 2) and s.anchors.shape == (A, 4)
        assert torch.isfinite(s.loc).all() and torch.isfinite(s.conf).all()
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    if network == "paper":
        assert out.first is None and out.second.loc.shape == (1, A, 4)
    else:
        assert out.head is None and out.body is None and out.face.loc.shape == (1, A, 4)


def test_paper_anchor_sizes_per_shot():
    model = build_model("paper", "tiny").train()
    out = model(torch.zeros(1, 3, 256, 256))
    w1 = out.first.anchors[:, 2] * 256 * math.sqrt(1.5)
    w2 = out.second.anchors[:, 2] * 256 * math.sqrt(1.5)
    levels = torch.repeat_interleave(torch.arange(6), torch.tensor([h * w for h, w in _level_sizes_resnet(256, 256)]))
    assert torch.allclose(w1, torch.tensor(FIRST_SHOT_SIZES)[levels], atol=1e-3)
    assert torch.allclose(w2, torch.tensor(SECOND_SHOT_SIZES)[levels], atol=1e-3)


def test_eval_skips_first_shot_heads_and_shots_argument():
    model = build_model("paper", "tiny").eval()
    calls = {"first": 0, "second": 0}
    model.first_shot_head.register_forward_hook(lambda *a: calls.__setitem__("first", calls["first"] + 1))
    model.second_shot_head.register_forward_hook(lambda *a: calls.__setitem__("second", calls["second"] + 1))
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        out = model(x)
        assert out.first is None and calls == {"first": 0, "second": 1}
        out = model(x, shots=(1, 2))
        assert out.first is not None and out.second is not None
        out = model(x, shots="first")
        assert out.second is None
    assert calls == {"first": 2, "second": 2}
    with pytest.raises(ValueError):
        model(x, shots=3)


def test_paper_forward_backward_finite_gradients():
    torch.manual_seed(0)
    model = build_model("paper", "tiny").train()
    out = model(torch.randn(2, 3, 72, 56))
    loss = sum(
        s.loc.square().mean() + F.cross_entropy(s.conf.reshape(-1, 2), torch.randint(0, 2, (s.conf[..., 0].numel(),)))
        for s in out
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.fem.parameters())


def test_vgg_paper_tiny_width_forward():
    model = dsfd_paper("vgg16", width_mult=0.0625).train()
    out = model(torch.randn(1, 3, 67, 45))
    A = sum(h * w for h, w in _level_sizes_vgg(67, 45))
    assert out.second.loc.shape == (1, A, 4) and len(model.source_norms) == 3


# ----------------------------------------------------------------------------- branch fusion


def test_paper_fem_fused_stem_equals_separate_convs():
    torch.manual_seed(0)
    m = FEMBranches(31).double().eval()
    x = torch.randn(2, 31, 13, 11, dtype=torch.float64)
    m.fuse_branches = False
    ref = m(x)
    m.fuse_branches = True
    calls = []
    orig = F.conv2d

    def spy(inp, w, *a, **k):
        if inp is x:  # convolutions reading the FEM input
            calls.append(tuple(w.shape))
        return orig(inp, w, *a, **k)

    with torch.no_grad():
        fem_mod.F.conv2d = spy
        try:
            fused = m(x)
        finally:
            fem_mod.F.conv2d = orig
    assert calls == [(31, 31, 3, 3)]  # one conv for the three branch stems
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-12)
    assert sorted(m.state_dict()) == sorted(
        f"{b}.{p}"
        for b in ("branch1", "branch2.0", "branch2.2", "branch3.0", "branch3.2", "branch3.4")
        for p in ("weight", "bias")
    )
    # cache follows in-place parameter updates
    with torch.no_grad():
        m.branch2[0].weight.add_(0.5)
        m.fuse_branches = False
        ref2 = m(x)
        m.fuse_branches = True
        torch.testing.assert_close(m(x), ref2, rtol=0, atol=1e-12)
    # gradients still reach the separate parameters in eval mode
    m(x).sum().backward()
    assert m.branch3[0].weight.grad is not None and m.branch1.weight.grad.abs().sum() > 0


def test_released_context_fem_fused_equals_separate():
    torch.manual_seed(0)
    m = ContextFEM(24, width=(16, 8), fuse_branches=True).double().eval()
    x = torch.randn(1, 24, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        fused = m(x)
        m.fuse_branches = False
        ref = m(x)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-12)
    assert fused.shape == (1, 32, 9, 12)


def test_whole_paper_model_fused_equals_unfused():
    torch.manual_seed(0)
    model = build_model("paper", "tiny").double().eval()
    x = torch.randn(1, 3, 80, 64, dtype=torch.float64)
    with torch.no_grad():
        model.fem.fuse_branches = True
        a = model(x).second
        model.fem.fuse_branches = False
        b = model(x).second
    torch.testing.assert_close(a.loc, b.loc, rtol=0, atol=1e-10)
    torch.testing.assert_close(a.conf, b.conf, rtol=0, atol=1e-10)


def test_paper_head_fused_equals_separate_convs():
    """Eval: each level's box and class convs run as one convolution; same outputs, same state_dict."""
    from dsfd.models.heads import DSFDHead

    torch.manual_seed(0)
    ch = [7, 12, 5]
    head = DSFDHead(ch, num_classes=2).double().eval()
    for p in head.parameters():  # not the near-zero init: every output channel must matter
        torch.nn.init.normal_(p)
    feats = [torch.randn(2, c, 9 - i, 6 + i, dtype=torch.float64) for i, c in enumerate(ch)]
    keys = sorted(head.state_dict())
    with torch.no_grad():
        fused = head(feats)
        head.fuse_branches = False
        ref = head(feats)
        head.fuse_branches = True
        # the cached fused weights follow an in-place parameter update
        head.conf[1].weight.add_(0.25)
        head.loc[2].bias.sub_(1.0)
        fused2 = head(feats)
        head.fuse_branches = False
        ref2 = head(feats)
    for a, b in zip(fused + fused2, ref + ref2):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert not torch.allclose(fused[1], fused2[1]) and not torch.allclose(fused[0], fused2[0])
    assert sorted(head.state_dict()) == keys  # the cache never enters the state_dict
    # training mode runs the separate convs (gradients reach both)
    head.fuse_branches = True
    head.train()
    loc, conf = head(feats)
    (loc.sum() + conf.sum()).backward()
    assert head.loc[0].weight.grad is not None and head.conf[0].weight.grad is not None


# ----------------------------------------------------------------------------- FEM norm (training from scratch)


def test_fem_norm_fold_is_exact_and_gives_the_paper_architecture():
    torch.manual_seed(0)
    model = build_model("paper", "tiny", fem_norm=True).double()
    assert model.config["fem_norm"] is True and model.fem.has_norm
    x = torch.randn(3, 3, 96, 72, dtype=torch.float64) * 40
    with torch.no_grad():
        model.train()
        for _ in range(4):  # move the running statistics away from (0, 1)
            model(x)
        norms = [m for m in model.fem.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert len(norms) == 6 + 5 + 6 * 6  # top-down, lateral, six per level's branches
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 1.5)
    before = model.predict(x)
    model.fold_fem_norm()
    after = model.predict(x)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=1e-10)
    assert "fem_norm" not in model.config and not model.fem.has_norm
    plain = build_model(**model.config).double()
    assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }
    plain.load_state_dict(model.state_dict(), strict=True)
    again = plain.predict(x)
    torch.testing.assert_close(again[1], before[1], rtol=0, atol=1e-10)
    model.fold_fem_norm()  # a second fold is a no-op
    torch.testing.assert_close(model.predict(x)[1], before[1], rtol=0, atol=1e-10)


def test_fem_starts_as_a_local_stack_with_the_top_down_factor_at_one():
    # Training from scratch starts from t[l] = relu(lateral[l](x[l])) below the
    # deepest level (a random top-down gate destroys the localisation signal).
    torch.manual_seed(0)
    feats = [torch.randn(2, c, s, s + 1) for c, s in zip([6, 9, 12, 12, 6, 6], [20, 10, 5, 3, 2, 1])]
    for norm in (False, True):
        fem = FeatureEnhanceModule([f.shape[1] for f in feats], norm=norm).train()
        with torch.no_grad():
            t = fem.top_down_path(feats)
            for l in range(5):
                lat = fem.lateral[l](feats[l])
                if norm:
                    lat = fem.lateral_norm[l](lat)
                torch.testing.assert_close(t[l], torch.relu(lat), rtol=0, atol=1e-6)
            assert float((t[5] > 0).float().mean()) > 0.2  # the deepest level reads its own map
        # the top-down weights still learn
        sum((x * torch.randn_like(x)).sum() for x in fem(feats)).backward()
        learner = fem.top_down_norm[0].weight if norm else fem.top_down[0].weight
        assert learner.grad is not None and float(learner.grad.abs().sum()) > 0


def test_fem_norm_keeps_the_top_down_path_alive():
    # A top-down ReLU that is dead everywhere zeroes every finer level of the
    # plain FEM (the product chain); with the norms each channel stays centred.
    torch.manual_seed(0)
    feats = [torch.randn(4, c, s, s) for c, s in zip([8, 16, 32, 32, 16, 16], [24, 12, 6, 3, 2, 1])]
    for norm in (False, True):
        fem = FeatureEnhanceModule([f.shape[1] for f in feats], norm=norm).train()
        with torch.no_grad():
            for conv in fem.top_down:  # kill every top-down ReLU
                conv.bias.fill_(-1e3)
            t = fem.top_down_path(feats)
        alive = [float((ti > 0).float().mean()) for ti in t]
        if norm:
            assert min(alive) > 0.1, alive
        else:
            assert max(alive) == 0.0, alive


def test_upsample_mul_dispatch(monkeypatch):
    """Both networks' top-down steps go through dsfd.ops, which use_reference() switches to plain PyTorch."""
    import dsfd.extension
    import dsfd.ops

    seen = []

    def fake_fused(upper, lateral, align_corners=False, relu=False):
        seen.append((align_corners, relu))
        return dsfd.ops.reference.upsample_mul(upper, lateral, align_corners, relu)

    monkeypatch.setattr(dsfd.ops.compiled, "upsample_mul", fake_fused)
    monkeypatch.setattr(dsfd.extension, "_has_ops", lambda: True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        build_model("paper", "tiny").eval()(x)
        assert seen == [(False, True)] * 5
        seen.clear()
        build_model("released", "tiny").eval()(x)
        assert seen == [(True, False)] * 3
        seen.clear()
        with dsfd.ops.use_reference():
            build_model("paper", "tiny").eval()(x)
        assert seen == []


# ----------------------------------------------------------------------------- parity with the released code


def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"], False, 0.0, 1e-5
    )


def _conv(x, sd, p, **kw):
    return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), **kw)


def _authors_resnet(sd, x):
    x = F.relu(_bn(_conv(x, sd, "layer1.0", stride=2, padding=3), sd, "layer1.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    outs = []
    for stage, prefix in enumerate(["layer1.4", "layer2.0", "layer3.0", "layer4.0"]):
        i = 0
        while f"{prefix}.{i}.conv1.weight" in sd:
            b = f"{prefix}.{i}"
            stride = 2 if (i == 0 and stage > 0) else 1
            y = F.relu(_bn(_conv(x, sd, b + ".conv1"), sd, b + ".bn1"))
            y = F.relu(_bn(_conv(y, sd, b + ".conv2", stride=stride, padding=1), sd, b + ".bn2"))
            y = _bn(_conv(y, sd, b + ".conv3"), sd, b + ".bn3")
            idn = x
            if f"{b}.downsample.0.weight" in sd:
                idn = _bn(_conv(x, sd, b + ".downsample.0", stride=stride), sd, b + ".downsample.1")
            x = F.relu(y + idn)
            i += 1
        outs.append(x)
    for layer in ("layer5", "layer6"):
        x = F.relu(_bn(_conv(x, sd, layer + ".0"), sd, layer + ".1"))
        x = F.relu(_bn(_conv(x, sd, layer + ".3", stride=2, padding=1), sd, layer + ".4"))
        outs.append(x)
    return outs


def _authors_vgg(sd, x):
    outs = []
    for i in range(35):
        if i in (4, 9, 23, 30):
            x = F.max_pool2d(x, 2, 2)
        elif i == 16:
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        elif f"vgg.{i}.weight" in sd:
            x = F.relu(_conv(x, sd, f"vgg.{i}", padding=sd[f"vgg.{i}.weight"].shape[-1] // 2))
        if i in (15, 22, 29, 34):
            outs.append(x)
    for k in range(4):
        x = F.relu(_conv(x, sd, f"extras.{k}", stride=1 + k % 2, padding=k % 2))
        if k in (1, 3):
            outs.append(x)
    return outs


def authors_face_outputs(sd, x, vgg: bool):
    """The released network's test-time forward written from the spec (functional, from the state_dict)."""
    c3, c4, c5, fc7, c6, c7 = (_authors_vgg if vgg else _authors_resnet)(sd, x)

    def up_prod(a, b):
        return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) * b

    c5 = up_prod(_conv(fc7, sd, "latlayer3"), _conv(c5, sd, "smooth3"))
    c4 = up_prod(_conv(c5, sd, "latlayer2"), _conv(c4, sd, "smooth2"))
    c3 = up_prod(_conv(c4, sd, "latlayer1"), _conv(c3, sd, "smooth1"))
    if vgg:
        def l2(t, p):
            return t / (t.pow(2).sum(1, keepdim=True).sqrt() + 1e-10) * sd[p + ".weight"].view(1, -1, 1, 1)

        c3, c4, c5 = l2(c3, "L2Norm_3_3"), l2(c4, "L2Norm_4_3"), l2(c5, "L2Norm_5_3")
    locs, confs, sizes = [], [], []
    names = ["cpm3_3", "cpm4_3", "cpm5_3", "cpm7", "cpm6_2", "cpm7_2"]
    for k, (name, s) in enumerate(zip(names, [c3, c4, c5, fc7, c6, c7])):
        a = F.relu(_conv(s, sd, name + ".cpm1", padding=1))
        t = F.relu(_conv(s, sd, name + ".cpm2", padding=2, dilation=2))
        b = F.relu(_conv(t, sd, name + ".cpm3", padding=1))
        u = F.relu(_conv(t, sd, name + ".cpm4", padding=2, dilation=2))
        c = F.relu(_conv(u, sd, name + ".cpm5", padding=1))
        f = torch.cat([a, b, c], 1)
        sizes.append(tuple(f.shape[-2:]))

        def head(p):
            h = F.relu(_conv(f, sd, p + ".conv1", padding=1))
            h = F.relu(_conv(h, sd, p + ".conv2", padding=1))
            h = F.relu(_conv(h, sd, p + ".conv3", padding=1))
            return _conv(h, sd, p + ".conv4")

        loc = head(f"loc.{k}").permute(0, 2, 3, 1)[..., :4]
        raw = head(f"conf.{k}").permute(0, 2, 3, 1)
        bmax = torch.max(torch.max(raw[..., 0], raw[..., 1]), raw[..., 2])  # max-in-out by hand
        face = torch.stack([bmax, raw[..., 3]], -1) if k == 0 else torch.stack([raw[..., 3], bmax], -1)
        locs.append(loc.reshape(x.shape[0], -1, 4))
        confs.append(face.reshape(x.shape[0], -1, 2))
    return torch.cat(locs, 1), torch.cat(confs, 1), sizes


def spec_loop_anchors(H, W, feature_sizes, sizes, steps, clip, released_form=False):
    """Anchors by the spec's explicit loop (cx = (j + 0.5) * step / W, ...)."""
    vals = []
    for (fh, fw), size, step in zip(feature_sizes, sizes, steps):
        for i in range(fh):
            for j in range(fw):
                if released_form:  # the authors' PriorBox: (j + 0.5) / (W / step)
                    cx, cy = (j + 0.5) / (W / step), (i + 0.5) / (H / step)
                else:
                    cx, cy = (j + 0.5) * step / W, (i + 0.5) * step / H
                vals.append([cx, cy, size / W / math.sqrt(1.5), size / H * math.sqrt(1.5)])
    out = torch.tensor(vals, dtype=torch.float32)
    return out.clamp(0, 1) if clip else out


def _tame_heads(model, x) -> None:
    """Rescale the last head convs so that random-weight logits / offsets are O(1)."""
    with torch.no_grad():
        out = model(x).face
        for heads, t in ((model.loc, out.loc), (model.conf, out.conf)):
            f = 2.0 / max(float(t.abs().max()), 1e-6)
            for h in heads:
                h.conv4.weight.mul_(f)
                h.conv4.bias.mul_(f)


def _check_parity(model, x, vgg):
    _tame_heads(model, x)
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    with torch.no_grad():
        loc_ref, conf_ref, sizes = authors_face_outputs(sd, x, vgg)
        out = model(x)
        scores, boxes = model.predict(x)
    torch.testing.assert_close(out.face.loc, loc_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.face.conf, conf_ref, rtol=1e-4, atol=1e-4)
    H, W = x.shape[-2:]
    anchors = spec_loop_anchors(H, W, sizes, SECOND_SHOT_SIZES, STEPS, clip=True, released_form=True)
    assert torch.equal(out.face.anchors, anchors)
    # softmax and decoding by the formulas
    score_ref = torch.softmax(conf_ref, -1)[..., 1]
    cxcy = anchors[:, :2] + loc_ref[..., :2] * 0.1 * anchors[:, 2:]
    wh = anchors[:, 2:] * torch.exp(loc_ref[..., 2:] * 0.2)
    boxes_ref = torch.cat([cxcy - wh / 2, cxcy + wh / 2], -1)
    torch.testing.assert_close(scores, score_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(boxes, boxes_ref, rtol=1e-4, atol=1e-4)
    assert (anchors[:, 2:] == 1.0).any()  # large anchors clamp at this small size


def test_released_resnet152_parity_with_authors_forward(released152):
    torch.manual_seed(2)
    img = torch.randint(0, 256, (1, 3, 48, 40), dtype=torch.uint8)
    _check_parity(released152, preprocess(img), vgg=False)


def test_released_vgg_parity_with_authors_forward():
    torch.manual_seed(3)
    model = dsfd_released("vgg16").eval()
    img = torch.randint(0, 256, (2, 3, 40, 36), dtype=torch.uint8)
    _check_parity(model, preprocess(img), vgg=True)


def test_released_max_in_out_and_training_outputs():
    torch.manual_seed(0)
    model = build_model("released", "tiny").train()
    raw = {}
    for k, head in enumerate(model.conf):
        head.register_forward_hook(lambda mod, inp, out, k=k: raw.__setitem__(k, out[:1].detach()))
    x = torch.randn(2, 3, 64, 48)
    out = model(x)
    conf0 = raw[0].permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(out.face.conf[0, : conf0.shape[0], 0], conf0[:, :3].max(1).values)
    assert torch.equal(out.face.conf[0, : conf0.shape[0], 1], conf0[:, 3])
    conf1 = raw[1].permute(0, 2, 3, 1).reshape(-1, 6)
    n0 = conf0.shape[0]
    assert torch.equal(out.face.conf[0, n0 : n0 + conf1.shape[0], 0], conf1[:, 3])
    assert torch.equal(out.face.conf[0, n0 : n0 + conf1.shape[0], 1], conf1[:, :3].max(1).values)
    assert torch.equal(out.head.conf[0, : conf1.shape[0]], conf1[:, 4:6])
    conf2 = raw[2].permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(out.body.conf[0, : conf2.shape[0]], conf2[:, 6:8])
    # head anchors: sizes 16..256 on levels 1-5, body 16..128 on levels 2-5
    assert math.isclose(out.head.anchors[0, 2].item() * 48 * math.sqrt(1.5), 16, rel_tol=1e-5)
    assert math.isclose(out.body.anchors[0, 2].item() * 48 * math.sqrt(1.5), 16, rel_tol=1e-5)


def test_predict_keeps_mode():
    model = build_model("paper", "tiny").train()
    scores, boxes = model.predict(torch.randn(1, 3, 40, 40))
    assert model.training and scores.shape == boxes.shape[:2] and ((scores >= 0) & (scores <= 1)).all()


# ----------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("size", [(640, 640), (481, 353), (37, 101)])
@pytest.mark.parametrize("clip", [False, True])
def test_anchors_equal_literal_loop(size, clip):
    H, W = size
    fs = _level_sizes_resnet(H, W)
    got = generate_anchors((H, W), fs, SECOND_SHOT_SIZES, STEPS, 1.5, clip)
    assert got.dtype == torch.float32 and got.shape == (sum(h * w for h, w in fs), 4)
    assert torch.equal(got, spec_loop_anchors(H, W, fs, SECOND_SHOT_SIZES, STEPS, clip, released_form=True))
    torch.testing.assert_close(got, spec_loop_anchors(H, W, fs, SECOND_SHOT_SIZES, STEPS, clip), rtol=0, atol=1e-7)
    if clip:
        assert got.min() >= 0 and got.max() <= 1


def test_anchor_cache_is_bounded_lru():
    clear_anchor_cache()
    info = anchor_cache_info()
    assert info.maxsize == 64
    fs = [(2, 2)]
    a = cached_anchors((10, 10), fs, [16.0], [4.0])
    assert cached_anchors((10, 10), fs, [16.0], [4.0]) is a
    for h in range(2000):
        cached_anchors((8 + h, 9), fs, [16.0], [4.0])
        assert anchor_cache_info().currsize <= 64
    assert anchor_cache_info().currsize == 64
    assert cached_anchors((10, 10), fs, [16.0], [4.0]) is not a  # evicted long ago
    b = cached_anchors((8 + 1999, 9), fs, [16.0], [4.0])
    assert cached_anchors((8 + 1999, 9), fs, [16.0], [4.0]) is b
    set_anchor_cache_size(8)
    assert anchor_cache_info().currsize == 8
    set_anchor_cache_size(64)
    # the models' generators share the bound
    model = build_model("paper", "tiny").eval()
    for h in range(100, 1100):
        model.second_shot_anchors((h, 20), _level_sizes_resnet(h, 20))
        model.first_shot_anchors((h, 20), _level_sizes_resnet(h, 20))
    assert anchor_cache_info().currsize == 64


# ----------------------------------------------------------------------------- loading


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_load_weights_round_trip_without_num_batches_tracked(tmp_path):
    torch.manual_seed(0)
    model = build_model("paper", "tiny").eval()
    _randomise_bn(model)
    sd = {"module." + k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = _save(sd, tmp_path / "paper_tiny.pth", legacy=True)
    loaded = load_weights(path)
    assert isinstance(loaded, DSFD) and not loaded.training
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).second.conf, model(x).second.conf)
    assert all(v.item() == 0 for k, v in loaded.state_dict().items() if k.endswith("num_batches_tracked"))


def test_load_weights_wrapped_config_and_released(tmp_path):
    torch.manual_seed(0)
    model = build_model("released", "tiny").eval()
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = load_weights(_save(sd, tmp_path / "rel.pth"))
    assert isinstance(loaded, ReleasedDSFD) and loaded.backbone_name == "tiny"
    paper = dsfd_paper("resnet50", width_mult=0.0625).eval()
    path = _save({"model": paper.state_dict(), "config": paper.config, "epoch": 3}, tmp_path / "ckpt.pth")
    loaded = load_weights(path)
    assert loaded.config["backbone"] == "resnet50" and loaded.config["width_mult"] == 0.0625
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).second.loc, paper(x).second.loc)


def test_load_weights_dualshot_reference_keys(tmp_path):
    torch.manual_seed(0)
    model = build_model("paper", "tiny").eval()
    inverse = [
        (r"^backbone\.extras\.", "extras."),
        (r"^backbone\.", "resnet."),
        (r"^fem\.enhance\.", "fpn_fem."),
        (r"^first_shot_head\.loc\.", "loc_pal1."),
        (r"^first_shot_head\.conf\.", "conf_pal1."),
        (r"^second_shot_head\.loc\.", "loc_pal2."),
        (r"^second_shot_head\.conf\.", "conf_pal2."),
    ]
    ref_sd = {}
    for k, v in model.state_dict().items():
        m = re.match(r"^fem\.(top_down|lateral)\.(\d+)\.(.*)$", k)
        if m:
            k = f"fpn_topdown.{5 - int(m[2])}.{m[3]}" if m[1] == "top_down" else f"fpn_latlayer.{4 - int(m[2])}.{m[3]}"
        else:
            for pat, rep in inverse:
                if re.match(pat, k):
                    k = re.sub(pat, rep, k)
                    break
        ref_sd[k] = v
    loaded = load_weights(_save(ref_sd, tmp_path / "ref.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
@pytest.mark.parametrize(
    "fixture, expect",
    [
        ("official_res152_state_dict.tsv", ("released", "resnet152")),
        ("official_vgg_state_dict.tsv", ("released", "vgg16")),
        ("dualshot_reference_vgg_state_dict.tsv", ("paper", "vgg16")),
        ("dualshot_reference_resnet101_state_dict.tsv", ("paper", "resnet101")),
    ],
)
def test_identify_and_strict_load_of_fixture_key_sets(fixture, expect):
    """The real files' key sets (without num_batches_tracked) are recognised and load strictly."""
    sd = {
        k: torch.empty(s, device="meta") for k, s in read_tsv(fixture).items() if not k.endswith("num_batches_tracked")
    }
    if fixture.startswith("dualshot"):
        sd = convert_dualshot_reference_state_dict(sd)
    info = identify_checkpoint(sd)
    assert (info["network"], info["backbone"], info["width_mult"]) == (*expect, 1.0)
    model = meta_model(*expect)
    load_state_dict_checked(model, sd, source=fixture)
    sd.pop(next(iter(sd)))
    with pytest.raises(CheckpointError, match="missing keys 1"):
        load_state_dict_checked(model, sd, source=fixture)


def test_load_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_weights(tmp_path)
    model = build_model("paper", "tiny")
    good = _save(model.state_dict(), tmp_path / "good.pth")
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(trunc)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError):
        load_weights(junk)
    # another model's keys: torchvision-like classifier state_dict
    other = _save(
        {"features.0.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(10, 4)}, tmp_path / "other.pth"
    )
    with pytest.raises(CheckpointError) as e:
        load_weights(other)
    msg = str(e.value)
    assert "missing keys" in msg and "unexpected keys" in msg and "more)" in msg and "fc.weight" in msg
    # a DSFD checkpoint with some keys renamed / removed / reshaped
    sd = dict(model.state_dict())
    sd["extra.thing"] = sd.pop("second_shot_head.conf.0.bias")
    with pytest.raises(CheckpointError) as e:
        load_weights(_save(sd, tmp_path / "renamed.pth"))
    assert "second_shot_head.conf.0.bias" in str(e.value) and "extra.thing" in str(e.value)
    sd = dict(model.state_dict())
    sd["fem.lateral.0.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(_save(sd, tmp_path / "shape.pth"))
    with pytest.raises(CheckpointError):
        load_weights(_save({"weights": [1, 2, 3]}, tmp_path / "notsd.pth"))


def test_backbone_imagenet_weights(tmp_path):
    from dsfd.models.backbones import ResNet

    torch.manual_seed(0)
    src = ResNet((1, 1, 1, 1), width_mult=0.125)
    sd = dict(src.state_dict())
    sd["fc.weight"] = torch.zeros(10, 256)
    sd["fc.bias"] = torch.zeros(10)
    model = build_model("paper", "tiny", backbone_weights=_save(sd, tmp_path / "imagenet.pth"))
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    rel = build_model("released", "tiny", backbone_weights=tmp_path / "imagenet.pth")
    assert torch.equal(rel.layer1[0].weight, src.conv1.weight)
    bad = _save({"conv1.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        build_model("paper", "tiny", backbone_weights=bad)


def test_build_model_api_and_config_round_trip():
    for network in ("paper", "released"):
        model = build_model(network, tiny=True)
        again = build_model(**model.config)
        assert shapes(again) == shapes(model)
    assert isinstance(dsfd_paper("tiny"), DSFD) and isinstance(dsfd_released("tiny"), ReleasedDSFD)
    with pytest.raises(ValueError):
        build_model("nope", "tiny")
    with pytest.raises(ValueError):
        build_model("paper", "resnet18")
    with pytest.raises(TypeError):
        build_model("released", "tiny", clip_anchors=True)


# ----------------------------------------------------------------------------- lite backbone


def _conv_macs(model: torch.nn.Module, H: int, W: int) -> int:
    """Multiply-adds of every Conv2d module in one forward (run unfused, so every conv is a module)."""
    total = [0]

    def hook(m, _inp, out):
        total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, H, W))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def test_lite_backbone_architecture():
    from dsfd.models.backbones import LITE_WIDTHS, BasicBlock, LiteBackbone

    model = build_model("paper", "lite", fuse_branches=False).eval()
    bb = model.backbone
    assert isinstance(bb, LiteBackbone) and model.out_channels == list(LITE_WIDTHS)
    # the numbers docs/models.md documents: 2.13 M parameters, 2.33 GMAC at 640x480 (second shot, as at test time)
    assert n_params(model) == 2_131_486
    assert _conv_macs(model, 480, 640) == 2_333_930_880
    # BatchNorm after every backbone conv (none has a bias), residual branches start as the identity
    convs = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == len(norms) and all(c.bias is None for c in convs)
    blocks = [m for m in bb.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(torch.all(b.bn2.weight == 0) for b in blocks)
    # ResNet-style level sizes at odd sizes, so the anchors line up with the cells
    H, W = 97, 71
    feats = bb(torch.zeros(1, 3, H, W))
    assert [tuple(f.shape[-2:]) for f in feats] == _level_sizes_resnet(H, W)
    # every FEM branch width is <= 16 or a multiple of 16 (the oneDNN bf16 hazard, see dsfd.models.fem)
    for fem_level in model.fem.enhance:
        assert all(c <= 16 or c % 16 == 0 for c in fem_level.split), fem_level.split
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_model("paper", "lite", backbone_weights="x.pth")


def test_lite_trains_on_a_fixed_batch():
    """A few SGD steps on one batch lower both shots' losses (the from-scratch setup: fem_norm)."""
    from dsfd.losses import ProgressiveAnchorLoss

    torch.manual_seed(0)
    model = build_model("paper", "lite", fem_norm=True).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 160, 160, generator=g) * 50
    gt = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.6, 0.5, 0.8, 0.8]], [[0.3, 0.2, 0.7, 0.7], [0, 0, 0, 0]]])
    counts = torch.tensor([2, 1])
    crit = ProgressiveAnchorLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        out = model(x)
        loss, parts = crit(out.first, out.second, gt, counts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((float(parts["first_loss_c"]), float(parts["second_loss_c"])))
    assert losses[-1][0] < losses[0][0] and losses[-1][1] < losses[0][1], losses
