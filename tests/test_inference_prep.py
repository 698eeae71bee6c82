"""Issue #33: the network prepared for inference (dsfd.models.inference_prep) and the padding geometry from it."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dsfd import Detector
from dsfd.models import (DetectionModel, anchor_cache_info, anchor_feature_sizes, build_model, cached_anchors,
                         calibrate_random_model, clear_anchor_cache, default_weights_path, load_weights,
                         set_anchor_cache_size)
from dsfd.models.inference_prep import feature_map_sizes, prepare_for_inference, shape_only_copy

# odd canvas sizes: every level's map size is a rounded-up or rounded-down fraction of them
ODD_SIZES = [(33, 47), (97, 161), (127, 255), (201, 77), (75, 333)]


def _state(net: nn.Module):
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_prepare_for_inference_returns_a_new_network_and_never_changes_its_argument():
    net = build_model("paper", "tiny", fem_norm=True).train()
    before = _state(net)
    prepared = prepare_for_inference(net, device="cpu", dtype=torch.bfloat16, channels_last=True)
    assert prepared is not net and isinstance(prepared, DetectionModel)
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())  # backbone and FEM norms folded
    convs = [m for m in prepared.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.dtype == torch.bfloat16 for c in convs)
    assert any(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_contiguous()
               for c in convs)
    # the argument: still training, with gradients, its norms, float32 and the same numbers
    assert net.training and all(p.requires_grad and p.dtype == torch.float32 for p in net.parameters())
    assert net.fem.has_norm and any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_prepared_network_computes_what_the_original_does():
    torch.manual_seed(0)
    net = calibrate_random_model(build_model("paper", "tiny", fem_norm=True).eval())
    x = torch.randn(2, 3, 96, 128) * 50
    with torch.no_grad():
        want = net(x).second
        got = prepare_for_inference(net, device="cpu")(x).second  # folding: equal up to float rounding
    torch.testing.assert_close(got.loc, want.loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.conf, want.conf, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.anchors, want.anchors)


def test_prepare_for_inference_compiles_a_copy():
    net = build_model("paper", "tiny").train()
    compiled = prepare_for_inference(net, device="cpu", compile=True)  # wrapping only: compiled on first call
    assert compiled._orig_mod is not net and not compiled._orig_mod.training and net.training


def test_shape_only_copy_holds_no_weights_and_leaves_the_network_alone():
    net = prepare_for_inference(build_model("paper", "tiny"), device="cpu", dtype=torch.bfloat16)
    skeleton = shape_only_copy(net)
    assert all(t.device.type == "meta" for t in [*skeleton.parameters(), *skeleton.buffers()])
    assert all(p.device.type == "cpu" for p in net.parameters())
    assert feature_map_sizes(skeleton, 72, 88)[0] == (18, 22)  # stride 4


def test_anchor_feature_sizes_only_for_the_tensors_the_cache_holds():
    sizes = ((25, 20), (13, 10))
    anchors = cached_anchors((100, 80), sizes, (16.0, 32.0), (4.0, 8.0))
    assert anchor_feature_sizes(anchors) == sizes
    assert anchor_feature_sizes(anchors.clone()) is None
    clear_anchor_cache()
    assert anchor_feature_sizes(anchors) is None


def _architectures():
    """(name, network) for every architecture a test can build quickly, and the packaged default model."""
    torch.manual_seed(0)
    nets = [(f"{n}/{b}", lambda n=n, b=b: build_model(n, b)) for n, b in
            [("paper", "tiny"), ("paper", "lite"), ("paper", "mobilenet0.25"), ("paper", "mobilenetv2"),
             ("released", "tiny")]]
    nets.append(("default", lambda: load_weights(default_weights_path(), map_location="cpu")))
    return nets


def _probed_sizes(model: nn.Module, height: int, width: int):
    """What the padding mask used to record: the sizes a real forward hands the anchor generator (a hook)."""
    seen = []
    handle = model.inference_anchors.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width))
    finally:
        handle.remove()
    return tuple((int(h), int(w)) for h, w in seen[-1])


def _probed_padding_anchors(model: nn.Module, height: int, width: int, image_hw) -> torch.Tensor:
    """``[B, A]`` True for the anchors whose cell starts in an image's padding, the old way (hooked sizes)."""
    origins = []
    for (fh, fw), step in zip(_probed_sizes(model, height, width), model.inference_anchors.steps):
        gy, gx = torch.meshgrid(torch.arange(fh) * step, torch.arange(fw) * step, indexing="ij")
        origins.append(torch.stack([gx, gy], -1).reshape(-1, 2))
    o = torch.cat(origins).float()
    return torch.stack([(o[:, 0] >= w) | (o[:, 1] >= h) for h, w in image_hw])


@pytest.mark.parametrize("name,make", _architectures(), ids=[n for n, _ in _architectures()])
def test_padding_geometry_equals_the_probed_one(name, make):
    """The zeroed anchors of a padded canvas, from the network's anchors or from the shape-only copy, are
    exactly those of the sizes a hooked real forward saw (the old way)."""
    if name == "default" and default_weights_path() is None:
        pytest.skip("no packaged default weights in this install")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's pretrained-weights notices
        det = Detector(model=make(), device="cpu", dtype=torch.float32)
    for H, W in ODD_SIZES:
        probed = _probed_sizes(det.model, H, W)
        assert det._padding.feature_sizes(H, W) == probed, (name, H, W)  # the shape-only copy (not run yet)
        with torch.inference_mode():
            anchors = det.model.inference_shot(det.model(torch.zeros(1, 3, H, W))).anchors
        assert anchor_feature_sizes(anchors) == probed, (name, H, W)  # what the network's own anchors say
        assert det._anchors_in_use(H, W) is anchors
        image_hw = [(H, W), (H - 1, W), (H, W - 5), (H // 2 + 1, W // 3 + 1), (17, 9)]
        meta = torch.zeros(len(image_hw), 14)
        meta[:, :2] = torch.tensor(image_hw, dtype=torch.float32)
        zeroed = det._padding.mask_scores(torch.ones(len(image_hw), anchors.shape[0]), anchors, meta, H, W) == 0
        assert torch.equal(zeroed, _probed_padding_anchors(det.model, H, W, image_hw)), (name, H, W)
        assert zeroed[0].sum() == 0 and zeroed[-1].any()  # an image filling the canvas loses nothing


def test_padded_batches_detect_the_same_from_the_anchors_and_from_the_shapes():
    """Sizes from the network's cached anchors (eager) or from the shape-only copy (no anchor cache: what a
    compiled network or ONNX Runtime gets): identical detections."""
    torch.manual_seed(0)
    net = calibrate_random_model(build_model("paper", "tiny").eval())
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(97, 161), (75, 120), (40, 161)]]
    from_anchors = Detector(model=net, device="cpu", dtype=torch.float32).detect_batch(images, min_score=None)
    size = anchor_cache_info().maxsize
    set_anchor_cache_size(0)
    try:
        det = Detector(model=net, device="cpu", dtype=torch.float32)
        from_shapes = det.detect_batch(images, min_score=None)
    finally:
        set_anchor_cache_size(size)
    assert (97, 161) in det._padding._sizes  # learnt from the shapes: no cached anchors to read
    assert all(np.array_equal(a, b) for a, b in zip(from_anchors, from_shapes))
    assert all(len(a) for a in from_anchors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_geometry_needs_no_forward_in_any_precision(dtype):
    """Issue #34 had the old probe forward feed float32 zeros to bf16 weights: the sizes now come from shapes."""
    torch.manual_seed(0)
    det = Detector(model=calibrate_random_model(build_model("paper", "tiny").eval()), device="cpu", dtype=dtype)
    assert det._padding.feature_sizes(72, 88)[0] == (18, 22)  # a size the network never saw; stride 4
    images = [np.full((72, 88, 3), 90, np.uint8), np.full((40, 50, 3), 90, np.uint8)]
    assert len(det.detect_batch(images, min_score=None)) == 2
