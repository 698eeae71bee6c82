"""The automatic precision choice (dsfd.precision) and how Detector and the CLIs use it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torchvision

from dsfd.inference import Detector
from dsfd.models import build_model
from dsfd.precision import auto_dtype, cpu_bf16_support, cpu_has_bf16, resolve_dtype


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    from dsfd.models import calibrate_random_model

    return calibrate_random_model(build_model("paper", "tiny").eval())


def test_cpu_detection_follows_hardware_and_override(monkeypatch):
    monkeypatch.delenv("DSFD_CPU_BF16", raising=False)
    flags = cpu_bf16_support()
    assert set(flags) == {"avx512_bf16", "amx_bf16"}
    assert cpu_has_bf16() == (any(flags.values()) and torch.backends.mkldnn.is_available())
    monkeypatch.setenv("DSFD_CPU_BF16", "0")
    assert not cpu_has_bf16() and auto_dtype("cpu") == torch.float32
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    assert cpu_has_bf16() and auto_dtype("cpu") == torch.bfloat16


def test_resolve_dtype_rules(monkeypatch):
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    assert resolve_dtype(None, "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float32, "cpu") == torch.float32  # forced fp32 wins
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        resolve_dtype(torch.float16, "cpu")
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        resolve_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        resolve_dtype("int4", "cpu")
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16"):
        resolve_dtype(torch.int8, "cpu")


def test_detector_picks_bf16_where_supported_and_fp32_when_forced(tiny_model, monkeypatch):
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    auto = Detector(model=tiny_model, device="cpu")
    assert auto.dtype == torch.bfloat16 and auto.channels_last
    assert "dtype=torch.bfloat16" in repr(auto) and "channels_last=True" in repr(auto)
    monkeypatch.setenv("DSFD_CPU_BF16", "0")
    plain = Detector(model=tiny_model, device="cpu")
    assert plain.dtype == torch.float32 and not plain.channels_last
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    forced = Detector(model=tiny_model, device="cpu", dtype=torch.float32)
    assert forced.dtype == torch.float32 and not forced.channels_last and "dtype=torch.float32" in repr(forced)
    with pytest.raises(ValueError, match="float16 is not supported on the CPU"):
        Detector(model=tiny_model, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown dtype"):
        Detector(model=tiny_model, device="cpu", dtype="int3")


def test_bf16_keeps_the_top_boxes_of_fp32():
    """Released network (tiny trunk), fixed random weights, bf16 autocast + channels_last vs fp32.

    Network level: at the 50 anchors fp32 scores highest, the bf16 boxes
    overlap the fp32 boxes at IoU > 0.9 and the scores agree to 0.02.
    After NMS (where near-equal scores may swap which box of a cluster is
    kept) at least 45 of fp32's top 50 boxes have a bf16 box at IoU > 0.9.
    Random weights are a harsh case: nothing in them damps bf16's rounding
    (measured: min IoU 0.94 here; the full random ResNet152 network drifts
    much further, see docs/speed.md), so the trained default model is held to
    IoU > 0.95 in test_default_model_bf16_matches_fp32.
    """
    import copy

    from dsfd.models import calibrate_random_model, dead_leaves_image
    from dsfd.models.heads import decode_predictions

    torch.manual_seed(0)
    model = calibrate_random_model(build_model("released", "tiny").eval())
    img = dead_leaves_image(240, 320, seed=3)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    with torch.inference_mode():
        loc, conf, anchors = model.inference_shot(model(x))
        s32, b32 = decode_predictions(loc, conf, anchors)
        m16 = copy.deepcopy(model).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loc, conf, anchors = m16.inference_shot(m16(x.contiguous(memory_format=torch.channels_last)))
        s16, b16 = decode_predictions(loc, conf, anchors)
    top = s32[0].topk(50).indices
    iou = torchvision.ops.box_iou(b32[0, top], b16[0, top]).diagonal()
    assert (iou > 0.9).all(), iou.min()
    assert (s16[0, top] - s32[0, top]).abs().max() < 0.02

    fp32 = Detector(model=model, device="cpu", dtype=torch.float32).detect(img)
    bf16 = Detector(model=model, device="cpu", dtype=torch.bfloat16).detect(img)
    assert len(fp32) >= 50 and len(bf16) >= 50
    best = torchvision.ops.box_iou(torch.from_numpy(fp32[:50, :4]), torch.from_numpy(bf16[:, :4])).max(1).values
    assert int((best > 0.9).sum()) >= 45, best


def test_detect_cli_reports_the_choice(tmp_path, monkeypatch, capsys):
    import cv2

    from dsfd.cli import main
    from dsfd.models import dead_leaves_image

    img = tmp_path / "photo.jpg"
    cv2.imwrite(str(img), dead_leaves_image(96, 128, seed=1))
    monkeypatch.setenv("DSFD_CPU_BF16", "1")
    out = tmp_path / "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["detect", str(img), "--backbone", "tiny", "--random", "--out", str(out)])
        main(["detect", str(img), "--backbone", "tiny", "--random", "--dtype", "float32", "--out", str(tmp_path / "fp32")])
    assert json.loads((out / "summary.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["dtype"] == "float32"
    printed = capsys.readouterr().out
    assert "ran on cpu in bfloat16 (channels_last)" in printed and "ran on cpu in float32" in printed


def test_bf16_detector_stores_conv_weights_in_bf16_with_the_same_results(tiny_model):
    """Conv weights are cast once at construction instead of by autocast on every call; outputs are identical."""
    from torch import nn

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    precast = Detector(model=tiny_model, device="cpu", dtype=torch.bfloat16)
    convs = [m for m in precast.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    # the caller's network is untouched (the detector works on a copy)
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    per_call = Detector(model=tiny_model, device="cpu", dtype=torch.bfloat16)
    for m in per_call.model.modules():
        if isinstance(m, nn.Conv2d):
            m.float()  # autocast casts these on every call, as before
    a, b = precast.detect(img), per_call.detect(img)
    assert len(a) > 0 and np.array_equal(a, b)
    fp32 = Detector(model=tiny_model, device="cpu", dtype=torch.float32)
    assert all(m.weight.dtype == torch.float32 for m in fp32.model.modules() if isinstance(m, nn.Conv2d))
