"""MultiBoxLoss / Progressive Anchor Loss: kernels vs reference, empty images, gradients."""

import math

import pytest
import torch

from dsfd.losses import MultiBoxLoss, ProgressiveAnchorLoss
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import random_gt


def grid_anchors(size=64, steps=(4, 8, 16, 32), base=2.0):
    """DSFD-like anchors (cx, cy, w, h normalised, 1.5:1 h:w) on a square input of ``size`` px."""
    out = []
    for step in steps:
        n = math.ceil(size / step)
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * step / size
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        s = base * step / size
        wh = torch.tensor([s / math.sqrt(1.5), s * math.sqrt(1.5)])
        out.append(torch.cat([cx.reshape(-1, 1), cy.reshape(-1, 1), wh.expand(n * n, 2)], 1))
    return torch.cat(out)


def make_batch(device, B=3, G=10, counts=(10, 4, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    anchors = grid_anchors()
    A = anchors.shape[0]
    gt = random_gt(B, G, generator=g)
    counts_t = torch.tensor(counts, dtype=torch.int64)
    for b, c in enumerate(counts):  # zero padding like collate_detection
        gt[b, c:] = 0
    loc = (torch.randn(B, A, 4, generator=g) * 0.5).to(device).requires_grad_()
    conf = torch.randn(B, A, 2, generator=g).to(device).requires_grad_()
    return loc, conf, anchors.to(device), gt.to(device), counts_t.to(device)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("ignore", [None, 0.3])
def test_kernel_loss_equals_reference(device, ignore):
    loc, conf, anchors, gt, counts = make_batch(device)
    results = []
    for use_ref in (False, True):
        crit = MultiBoxLoss(ignore_threshold=ignore, use_reference_ops=use_ref)
        out = crit(loc, conf, anchors, gt, counts)
        gl, gc = torch.autograd.grad(out["loss_l"] + out["loss_c"], (loc, conf))
        results.append((out, gl, gc))
    (k, kgl, kgc), (r, rgl, rgc) = results
    assert int(k["num_pos"]) == int(r["num_pos"]) > 0
    torch.testing.assert_close(k["loss_l"], r["loss_l"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(k["loss_c"], r["loss_c"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kgl, rgl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kgc, rgc, rtol=1e-5, atol=1e-7)


def test_loss_matches_hand_computation():
    """The loss is the documented formula over reference targets (independent re-derivation)."""
    loc, conf, anchors, gt, counts = make_batch("cpu", seed=1)
    out = MultiBoxLoss()(loc, conf, anchors, gt, counts)
    labels, _, loc_t = ref.match_anchors(anchors, gt, counts, 0.4)
    pos = labels > 0
    ce = -torch.log_softmax(conf, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    sel = ref.hard_negative_mask(ce.detach(), labels, 3)
    n = pos.sum().clamp(min=1)
    assert int(out["num_pos"]) == int(pos.sum())
    torch.testing.assert_close(out["loss_c"], ce[sel].sum() / n)
    torch.testing.assert_close(
        out["loss_l"], torch.nn.functional.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum") / n
    )
    # mining: per image positives + min(3 * pos, A - 1) negatives
    for b in range(3):
        npos = int(pos[b].sum())
        assert int(sel[b].sum()) == npos + min(3 * npos, anchors.shape[0] - 1)


def _hand_loss(loc, conf, labels, loc_t, ratio=3):
    """The documented loss in float64, with its own mining (a sort per image, no dsfd op).

    Returns ``(loss_l, loss_c, selected)``: ``selected`` marks the positives and the
    ``min(ratio * pos, A - 1)`` label-0 anchors of highest background cross-entropy
    (ties: lower index) of each image.
    """
    B, A, _ = conf.shape
    logp = torch.log_softmax(conf.detach().double().cpu(), -1)
    pos = labels == 1
    selected = pos.clone()
    for b in range(B):
        negatives = [a for a in range(A) if labels[b, a] == 0]
        ce0 = (-logp[b, :, 0]).tolist()
        negatives.sort(key=lambda a: (-ce0[a], a))
        k = min(ratio * int(pos[b].sum()), A - 1)
        selected[b, negatives[:k]] = True
    n = max(1, int(pos.sum()))
    ce = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    loss_c = ce[selected].sum() / n
    d = (loc.detach().double().cpu() - loc_t.double())[pos].abs()
    loss_l = torch.where(d < 1, 0.5 * d * d, d - 0.5).sum() / n
    return loss_l, loss_c, selected


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("use_ref", [False, True])
def test_ignored_anchors_are_never_mined_counted_or_trained(device, use_ref):
    """The hand-computed loss with an ignore band [0.25, 0.4): anchors labelled -1 take no part at all.

    The ignored anchors are given the largest background loss of all (logits strongly "face"), so
    any mining that treated them as negatives would pick them first.
    """
    loc, conf, anchors, gt, counts = make_batch(device, seed=1)
    labels, _, loc_t = ref.match_anchors(anchors.cpu(), gt.cpu(), counts.cpu(), 0.4, 0.25)
    ignored = labels == -1
    assert int(ignored[0].sum()) > 0 and int(ignored[1].sum()) > 0 and int((labels[2] != 0).sum()) == 0
    with torch.no_grad():
        conf[ignored.to(device)] = torch.tensor([-6.0, 6.0], device=device)
    crit = MultiBoxLoss(iou_threshold=0.4, ignore_threshold=0.25, use_reference_ops=use_ref)
    assert torch.equal(crit.targets(anchors, gt, counts)[0].cpu(), labels)
    out = crit(loc, conf, anchors, gt, counts)
    gl, gc = torch.autograd.grad(out["loss_l"] + out["loss_c"], (loc, conf))
    loss_l, loss_c, selected = _hand_loss(loc, conf, labels, loc_t)
    # counted: only label 1 is a positive, the normaliser ignores the band
    assert int(out["num_pos"]) == int((labels == 1).sum()) > 0
    torch.testing.assert_close(out["loss_c"].double().cpu(), loss_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_l"].double().cpu(), loss_l, rtol=1e-5, atol=1e-6)
    # trained: gradient exactly on the positives (loc) and the selected anchors (conf), nowhere else
    gl, gc = gl.cpu(), gc.cpu()
    assert bool((gl[ignored] == 0).all()) and bool((gc[ignored] == 0).all())
    assert torch.equal(gc.abs().sum(-1) > 0, selected)
    assert torch.equal(gl.abs().sum(-1) > 0, labels == 1)
    # mined: min(3 * pos, A - 1) label-0 anchors per image, and none without positives
    for b in range(3):
        npos = int((labels[b] == 1).sum())
        assert int((selected[b] & (labels[b] == 0)).sum()) == min(3 * npos, anchors.shape[0] - 1)
    assert not bool(selected[2].any())


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("use_ref", [False, True])
def test_no_faces(device, use_ref):
    crit = ProgressiveAnchorLoss(use_reference_ops=use_ref)
    # all images empty, padded G = 0 and G = 3
    for G in (0, 3):
        loc, conf, anchors, _, _ = make_batch(device)
        gt = torch.zeros(3, G, 4, device=device)
        counts = torch.zeros(3, dtype=torch.int64, device=device)
        total, parts = crit((loc, conf, anchors), (loc * 2, conf, anchors), gt, counts)
        assert torch.isfinite(total) and float(total.detach()) == 0.0
        assert float(parts["first_loss_l"]) == 0.0 and float(parts["second_loss_l"]) == 0.0
        assert int(parts["first_num_pos"]) == 0
        gl, gc = torch.autograd.grad(total, (loc, conf))
        assert torch.isfinite(gl).all() and torch.isfinite(gc).all()
    # some images empty
    loc, conf, anchors, gt, counts = make_batch(device, counts=(0, 3, 0))
    total, parts = crit((loc, conf, anchors), (loc, conf, anchors), gt, counts)
    assert torch.isfinite(total) and float(total.detach()) > 0
    assert not torch.isnan(torch.stack([v.float() for v in parts.values()])).any()
    gl, gc = torch.autograd.grad(total, (loc, conf))
    assert torch.isfinite(gl).all() and torch.isfinite(gc).all()
    assert (gl[0] == 0).all() and (gl[2] == 0).all()  # no positives there
    assert (gc[0] == 0).all() and (gc[2] == 0).all()  # per-image mining: nothing mined


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_gradients_finite_extreme_logits(device):
    loc, conf, anchors, gt, counts = make_batch(device)
    with torch.no_grad():
        conf.mul_(1e4)
        loc.mul_(1e3)
    out = MultiBoxLoss()(loc, conf, anchors, gt, counts)
    gl, gc = torch.autograd.grad(out["loss_l"] + out["loss_c"], (loc, conf))
    assert torch.isfinite(out["loss_l"]) and torch.isfinite(out["loss_c"])
    assert torch.isfinite(gl).all() and torch.isfinite(gc).all()


def test_pal_combines_shots():
    loc, conf, anchors, gt, counts = make_batch("cpu")
    loc2 = loc.detach().clone().requires_grad_()
    small = anchors.clone()
    small[:, 2:] /= 2
    single = MultiBoxLoss()
    pal = ProgressiveAnchorLoss(lambda_=0.5)
    total, parts = pal((loc, conf, small), (loc2, conf, anchors), gt, counts)
    f = single(loc, conf, small, gt, counts)
    s = single(loc2, conf, anchors, gt, counts)
    torch.testing.assert_close(total, f["loss_l"] + f["loss_c"] + 0.5 * (s["loss_l"] + s["loss_c"]))
    assert set(parts) == {
        "first_loss_l", "first_loss_c", "first_num_pos", "second_loss_l", "second_loss_c", "second_num_pos", "total"
    }
    torch.testing.assert_close(parts["second_loss_c"], s["loss_c"])
    only, parts2 = pal(None, (loc2, conf, anchors), gt, counts)
    torch.testing.assert_close(only, 0.5 * (s["loss_l"] + s["loss_c"]))
    assert "first_loss_l" not in parts2
    with pytest.raises(ValueError):
        pal(None, None, gt, counts)


def test_loss_decreases_when_optimising():
    loc, conf, anchors, gt, counts = make_batch("cpu", seed=2)
    loc = loc.detach().requires_grad_()
    conf = conf.detach().requires_grad_()
    crit = ProgressiveAnchorLoss()
    opt = torch.optim.SGD([loc, conf], lr=5.0)
    losses = []
    for _ in range(8):
        total, _ = crit((loc, conf, anchors), (loc, conf, anchors), gt, counts)
        losses.append(float(total.detach()))
        opt.zero_grad()
        total.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(math.isfinite(v) for v in losses)
