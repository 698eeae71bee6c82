"""Issue #33: the network prepared for inference (dsfd.models.inference_prep) and the padding geometry from it."""

import torch
from torch import nn

from dsfd.models import (DetectionModel, anchor_feature_sizes, build_model, cached_anchors, calibrate_random_model,
                         clear_anchor_cache)
from dsfd.models.inference_prep import feature_map_sizes, prepare_for_inference, shape_only_copy


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
