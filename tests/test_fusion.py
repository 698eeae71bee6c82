"""BatchNorm folding (dsfd.models.fusion): same outputs, no BatchNorm left where a conv feeds it."""

import copy

import pytest
import torch
from torch import nn

from dsfd.models import build_model
from dsfd.models.fusion import fold_batchnorm


def _randomise_batchnorms(model: nn.Module, seed: int = 0) -> int:
    """Non-trivial running statistics and affine parameters (fresh ones would fold to the identity)."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
            n += 1
    return n


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.flatten()
    if isinstance(out, (list, tuple)):
        return torch.cat([_flat(o) for o in out if isinstance(o, (torch.Tensor, list, tuple))])
    return torch.cat([_flat(v) for v in vars(out).values() if isinstance(v, (torch.Tensor, list, tuple))])


@pytest.mark.parametrize("network,backbone,kw", [
    ("paper", "tiny", {}),
    ("paper", "lite", {}),
    ("paper", "resnet50", {"width_mult": 0.125}),
    ("released", "resnet50", {"width_mult": 0.125}),
])
def test_fold_batchnorm_keeps_outputs(network, backbone, kw):
    torch.manual_seed(0)
    model = build_model(network, backbone, **kw).eval()
    n_bn = _randomise_batchnorms(model)
    assert n_bn > 0
    folded = copy.deepcopy(model)
    count = fold_batchnorm(folded)
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # every BatchNorm of these networks follows a convolution (FEM norms are folded by the FEM itself)
    fem_norms = sum(isinstance(m, nn.BatchNorm2d) for n, m in model.named_modules() if n.startswith("fem"))
    assert count == n_bn - fem_norms and remaining == fem_norms
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        want, got = _flat(model(x)), _flat(folded(x))
    assert want.shape == got.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_fold_batchnorm_refuses_training_mode_and_leaves_unpaired_norms():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))  # BN not right after the conv
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batchnorm(m)
    m.eval()
    assert fold_batchnorm(m) == 0 and isinstance(m[2], nn.BatchNorm2d)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.conv2, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # names do not pair

    b = Block().eval()
    assert fold_batchnorm(b) == 1
    assert isinstance(b.bn1, nn.Identity) and isinstance(b.bn3, nn.BatchNorm2d)
    assert b.conv1.bias is not None
