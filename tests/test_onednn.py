"""dsfd.models.onednn: CPU inference convolutions with packed weights and fused activations."""

import copy
import pickle

import pytest
import torch
from torch import nn

from dsfd.models import build_model, calibrate_random_model
from dsfd.models.inference_prep import prepare_for_inference
from dsfd.models.onednn import OneDNNConv2d, conv_act, conv_from_weights, onednn_available, use_onednn_convolutions

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN (mkldnn)")

BF16_STEP = 2.0 ** -7  # one bf16 rounding step, relative


def _stack(act: nn.Module, dtype=torch.float32, channels_last=True) -> nn.Sequential:
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.Identity(), act,
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4), copy.deepcopy(act),
        nn.Conv2d(16, 6, 1),
    ).eval().to(dtype)
    return seq.to(memory_format=torch.channels_last) if channels_last else seq


def _input(shape=(2, 8, 23, 31), dtype=torch.float32, channels_last=True):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_stack_computes_the_unfused_one_float32(act, channels_last):
    seq = _stack(act, channels_last=channels_last)
    fused = copy.deepcopy(seq)
    assert use_onednn_convolutions(fused) == 3
    # the activations moved into the convolutions before them; the last conv has none
    kinds = [type(m).__name__ for m in fused]
    assert kinds == ["OneDNNConv2d", "Identity", "Identity", "OneDNNConv2d", "Identity", "OneDNNConv2d"]
    assert [fused[i].activation for i in (0, 3, 5)] == [type(act).__name__.replace("LeakyReLU", "leaky_relu").replace("ReLU", "relu")] * 2 + ["none"]
    for shape in [(2, 8, 23, 31), (1, 8, 1, 1), (3, 8, 64, 48)]:  # packed on the first shape, used on all
        x = _input(shape, channels_last=channels_last)
        with torch.inference_mode():
            torch.testing.assert_close(fused(x), seq(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.LeakyReLU(0.1)])
def test_fused_stack_bfloat16_within_one_rounding_step(act):
    seq = _stack(act, dtype=torch.bfloat16)
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    x = _input(dtype=torch.bfloat16)
    with torch.inference_mode():
        want, got = seq(x).float(), fused(x).float()
        first_want = act(seq[0](x)).float()  # one layer: the only difference is where the rounding happens
        first_got = fused[0](x).float()
    assert (first_got - first_want).abs().max() <= BF16_STEP * first_want.abs().max()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))


def test_under_autocast_the_input_is_cast_like_autocast_does():
    seq = _stack(nn.LeakyReLU(0.1), dtype=torch.bfloat16)
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    x = _input()  # float32 input, bf16 weights
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = seq(x), fused(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05 * float(want.abs().max()))


def test_autograd_tracing_and_other_paths_run_the_plain_ops_exactly():
    seq = _stack(nn.LeakyReLU(0.1))
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    x = _input()
    # with gradients: nn.Conv2d's forward then the activation, bit for bit the unfused stack
    assert torch.equal(fused(x), seq(x))
    out = fused(x.requires_grad_())
    out.sum().backward()
    assert x.grad is not None and fused[0].weight.grad is not None
    # tracing (the TorchScript ONNX exporter) records aten::_convolution + leaky_relu, never the oneDNN op
    with torch.no_grad():
        traced = torch.jit.trace(fused, x.detach())
    graph = str(traced.inlined_graph)
    assert "_convolution_pointwise" not in graph and "aten::_convolution" in graph and "leaky_relu" in graph
    with torch.no_grad():
        assert torch.equal(traced(x.detach()), seq(x.detach()))


def test_activation_outside_a_sequential_is_not_fused():
    class ConvThenRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU()  # applied by forward, not by a Sequential: the conv output could be read

        def forward(self, x):
            return self.relu(self.conv(x)), self.conv(x)

    m = ConvThenRelu().eval()
    use_onednn_convolutions(m)
    assert isinstance(m.conv, OneDNNConv2d) and m.conv.activation == "none" and isinstance(m.relu, nn.ReLU)
    x = torch.randn(1, 4, 9, 9)
    with torch.inference_mode():
        a, b = m(x)
    assert (b < 0).any() and torch.equal(a, torch.relu(b))


def test_packed_weight_follows_in_place_changes_and_copies():
    seq = _stack(nn.ReLU())
    use_onednn_convolutions(seq)
    x = _input()
    with torch.inference_mode():
        before = seq(x)
        assert seq[0]._packed is None  # one call of a shape: the plain weight
        assert torch.equal(seq(x), before)  # the second packs; the packed weight gives the same numbers
    assert seq[0]._packed is not None
    with torch.no_grad():
        seq[0].weight.mul_(2)  # in place: the version changes, the packed copy must follow
    with torch.inference_mode():
        after = seq(x)
    assert not torch.allclose(before, after)
    reference = _stack(nn.ReLU())
    with torch.no_grad():
        reference[0].weight.mul_(2)
    with torch.inference_mode():
        torch.testing.assert_close(after, reference(x), rtol=1e-5, atol=1e-5)
    # copies and pickles carry the parameters, never the oneDNN tensor
    for clone in (copy.deepcopy(seq), pickle.loads(pickle.dumps(seq))):
        assert clone[0]._packed is None
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), after, rtol=0, atol=0)
    assert list(seq.state_dict()) == list(_stack(nn.ReLU()).state_dict())


def test_packing_follows_the_input_shape():
    seq = _stack(nn.LeakyReLU(0.1))
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    a, b = _input((1, 8, 40, 56)), _input((2, 8, 9, 13))
    with torch.inference_mode():
        for x in (a, a, a, b, a, b, b, b):  # packed for a, then b, then a again: always the right numbers
            torch.testing.assert_close(fused(x), seq(x), rtol=1e-5, atol=1e-5)
        assert fused[0]._packed[0][-1] == tuple(b.shape)  # the last repeated shape is the packed one


def test_conv_from_weights_and_conv_act():
    torch.manual_seed(3)
    w, b = torch.randn(12, 5, 3, 3), torch.randn(12)
    conv = conv_from_weights(w, b, padding=2, dilation=2)
    assert conv.weight.data_ptr() == w.data_ptr() and not conv.weight.requires_grad  # shared, not copied
    x = torch.randn(2, 5, 17, 13)
    with torch.inference_mode():
        want = torch.nn.functional.conv2d(x, w, b, padding=2, dilation=2)
        torch.testing.assert_close(conv.run(x, "none"), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv.run(x, "relu"), want.relu(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(conv_act(conv, x, "relu"), want.relu(), rtol=1e-5, atol=1e-5)
        plain = nn.Conv2d(5, 12, 3, padding=2, dilation=2)
        assert torch.equal(conv_act(plain, x, "relu"), plain(x).relu())


@pytest.mark.parametrize("backbone,network", [("mobilenet0.25", "paper"), ("tiny", "paper"), ("tiny", "released")])
def test_prepared_networks_with_and_without_onednn_agree(backbone, network):
    torch.manual_seed(0)
    net = calibrate_random_model(build_model(network, backbone).eval())
    x = torch.randn(1, 3, 97, 131) * 50
    with torch.inference_mode():
        shots = {}
        for onednn in (False, True):
            prepared = prepare_for_inference(net, device="cpu", onednn=onednn)
            shots[onednn] = prepared.inference_shot(prepared(x))
    assert any(isinstance(m, OneDNNConv2d) for m in prepare_for_inference(net, device="cpu").modules())
    assert not any(isinstance(m, OneDNNConv2d) for m in prepare_for_inference(net, device="cpu", onednn=False).modules())
    torch.testing.assert_close(shots[True].loc, shots[False].loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shots[True].conf, shots[False].conf, rtol=1e-4, atol=1e-4)


def test_identity_free_sequential_skips_identities_and_keeps_the_state_dict():
    seq = _stack(nn.ReLU())
    keys = list(seq.state_dict())
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    assert type(fused).__name__ == "IdentityFreeSequential" and len(fused) == len(seq)
    assert list(fused.state_dict()) == keys
    x = _input()
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), seq(x), rtol=1e-5, atol=1e-5)
        assert [type(m).__name__ for m in fused._running_for[1]] == ["OneDNNConv2d"] * 3  # what runs
        fused[5] = nn.Identity()  # editing the Sequential changes what runs
        seq[5] = nn.Identity()
        torch.testing.assert_close(fused(x), seq(x), rtol=1e-5, atol=1e-5)
        fused.append(nn.Tanh())
        assert torch.equal(fused(x), torch.tanh(fused[:6](x)))
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        with torch.inference_mode():
            assert torch.equal(clone(x), fused(x))
        assert all(a is b for a, b in zip(clone._running_for[1], [m for m in clone if type(m) is not nn.Identity]))


def test_repeated_calls_take_the_packed_path_only_while_it_is_valid():
    """The shortcut for a repeated call must give way to autograd, another dtype, autocast off and new weights."""
    seq = _stack(nn.LeakyReLU(0.1), dtype=torch.bfloat16)
    fused = copy.deepcopy(seq)
    use_onednn_convolutions(fused)
    x32 = _input()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [fused(x32) for _ in range(4)]  # float32 input, cast to the bf16 weights as autocast would
        want = seq(x32)
    assert fused[0]._hit is not None and fused[0]._hit[6] == torch.bfloat16
    assert all(torch.equal(o, outs[1]) for o in outs[1:])
    assert (outs[-1].float() - want.float()).abs().max() <= 4 * BF16_STEP * want.float().abs().max()
    with torch.inference_mode():  # autocast off: a float32 input no longer matches the bf16 weights
        with pytest.raises(RuntimeError):
            fused(x32)
    xg = x32.to(torch.bfloat16).requires_grad_(True)
    y = fused(xg)  # grad mode: the plain ops, so autograd sees them
    assert y.requires_grad and y.grad_fn is not None
    y.float().sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with torch.no_grad():
        fused[0].weight.mul_(-1)
        seq[0].weight.mul_(-1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = [fused(x32) for _ in range(3)]
        want = seq(x32)
    assert not torch.equal(after[-1], outs[-1])
    assert (after[-1].float() - want.float()).abs().max() <= 4 * BF16_STEP * want.float().abs().max()


def test_version_of_inference_tensors_does_not_raise():
    from dsfd.models.onednn import version_of

    with torch.inference_mode():
        t = torch.ones(3)
    assert version_of(t) == -1
    u = torch.ones(3)
    v = version_of(u)
    u.add_(1)
    assert version_of(u) == v + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels,size", [(48, (13, 17)), (96, (4, 5)), (32, (9, 11))])
def test_fem_branch_tail_as_two_grouped_convs_is_exact(dtype, channels, size):
    """The grouped tail (equal branch widths) gives the sliced convolutions' numbers; unequal widths keep them."""
    from dsfd.models.fem import FEMBranches

    torch.manual_seed(5)
    block = FEMBranches(channels).eval()
    for p in block.parameters():  # biases too: an identity group must add nothing
        p.data.normal_(0, 0.2)
    fused = copy.deepcopy(block).to(dtype).to(memory_format=torch.channels_last)
    use_onednn_convolutions(fused)
    x = torch.randn(1, channels, *size).relu().to(dtype).contiguous(memory_format=torch.channels_last)
    grouped_expected = channels % 3 == 0
    with torch.inference_mode():
        got = [fused(x) for _ in range(3)]  # the third call runs packed weights
        assert (fused._tail_cache.convs is not None) == grouped_expected
        fused._grouped_tail_applies = lambda y: False  # the sliced path of the same module
        sliced = fused(x)
        del fused._grouped_tail_applies
        want = block.to(dtype)(x)
    scale = want.float().abs().max()
    tol = (2 * BF16_STEP if dtype == torch.bfloat16 else 1e-5) * scale  # another kernel, another summation order
    for g in got:
        assert (g.float() - sliced.float()).abs().max() <= tol
    assert (got[-1].float() - want.float()).abs().max() <= 2 * tol
    c1 = channels // 3  # branch 1 passes through the identity group exactly
    assert torch.equal(got[-1][:, :c1], sliced[:, :c1])
    # new weights (in place) reach the cached grouped convolutions
    with torch.no_grad():
        fused.branch3[4].weight.mul_(-1)
    with torch.inference_mode():
        after = [fused(x) for _ in range(3)]
        fused._grouped_tail_applies = lambda y: False
        sliced_after = fused(x)
    assert (after[-1].float() - sliced_after.float()).abs().max() <= tol
    assert (after[-1].float() - got[-1].float()).abs().max() > 10 * tol
