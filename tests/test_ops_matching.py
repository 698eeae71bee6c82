"""match_anchors and hard_negative_mask: kernels vs the plain-PyTorch references."""

import pytest
import torch

import dsfd.ops as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import random_anchors, random_gt


def check_match(anchors, gt, counts, **kw):
    labels, matched, targets = ops.match_anchors(anchors, gt, counts, **kw)
    rl, rm, rt = ref.match_anchors(anchors.cpu(), gt.cpu(), counts.cpu(), **kw)
    assert labels.dtype == torch.int64 and matched.dtype == torch.int64 and targets.dtype == gt.dtype
    assert torch.equal(labels.cpu(), rl)
    assert torch.equal(matched.cpu(), rm)
    torch.testing.assert_close(targets.cpu(), rt, rtol=1e-5, atol=1e-5)
    return labels, matched, targets


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B,G,A", [(1, 1, 1), (1, 5, 300), (4, 20, 5000), (32, 3, 700), (2, 500, 3000)])
def test_match_anchors_matches_reference(device, seed, B, G, A):
    g = torch.Generator().manual_seed(seed)
    anchors = random_anchors(A, generator=g).to(device)
    gt = random_gt(B, G, generator=g).to(device)
    counts = torch.randint(0, G + 1, (B,), generator=g).to(device)
    counts[0] = G
    labels, matched, targets = check_match(anchors, gt, counts)
    # every real ground truth with any overlap owns at least one anchor
    for b in range(B):
        owned = set(matched[b][labels[b] == 1].tolist())
        assert owned <= set(range(int(counts[b])))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_match_anchors_more_than_2_16_anchors(device):
    g = torch.Generator().manual_seed(0)
    anchors = random_anchors(70_001, generator=g).to(device)
    gt = random_gt(3, 6, generator=g).to(device)
    counts = torch.tensor([6, 0, 2], device=device)
    labels, _, _ = check_match(anchors, gt, counts)
    assert int((labels[1] != 0).sum()) == 0  # G = 0: all background
    assert int((labels[0] == 1).sum()) >= 6


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_match_anchors_forced_and_ignore(device):
    anchors = torch.tensor(
        [[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.05, 0.05]], device=device
    )
    # gt 0: tiny box inside anchor 0 (IoU << 0.4, forced onto anchor 0);
    # gt 1: equals anchor 1 exactly (IoU 1); gt 2: zero area (forces nothing);
    # gt 3: disjoint from every anchor (forces nothing)
    gt = torch.tensor(
        [[[0.49, 0.49, 0.51, 0.51], [0.3, 0.3, 0.7, 0.7], [0.2, 0.2, 0.2, 0.2], [0.6, 0.0, 0.7, 0.05]]], device=device
    )
    counts = torch.tensor([4], device=device, dtype=torch.int32)
    labels, matched, targets = check_match(anchors, gt, counts)
    assert labels[0].tolist() == [1, 1, 0, 0]
    assert matched[0].tolist() == [0, 1, -1, -1]
    # anchor 1 equals gt 1: zero offsets
    assert torch.allclose(targets[0, 1], torch.zeros(4, device=device), atol=1e-6)
    assert bool((targets[0, 2:] == 0).all())
    # ignore band: IoU of anchor 0 with gt 1 is 0.25
    labels, matched, _ = check_match(anchors, gt[:, 1:2], torch.tensor([1], device=device), iou_threshold=0.5, ignore_threshold=0.2)
    assert labels[0].tolist() == [-1, 1, 0, 0] and matched[0].tolist() == [-1, 0, -1, -1]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_match_anchors_two_gts_same_best_anchor(device):
    # both ground truths' best anchor is anchor 0: the later one wins it, as in SSD
    anchors = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.05, 0.05]], device=device)
    gt = torch.tensor([[[0.3, 0.3, 0.5, 0.5], [0.5, 0.5, 0.7, 0.7]]], device=device)
    labels, matched, _ = check_match(anchors, gt, torch.tensor([2], device=device))
    assert matched[0, 0].item() == 1 and labels[0].tolist() == [1, 0]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_match_anchors_dtypes(device, dtype):
    g = torch.Generator().manual_seed(3)
    anchors = random_anchors(2000, generator=g).to(device)
    gt = random_gt(2, 10, generator=g, dtype=dtype).to(device)
    counts = torch.tensor([10, 4], device=device)
    labels, matched, targets = ops.match_anchors(anchors, gt, counts)
    rl, rm, rt = ref.match_anchors(anchors.cpu(), gt.cpu(), counts.cpu())
    assert torch.equal(labels.cpu(), rl) and torch.equal(matched.cpu(), rm)
    tol = 1e-9 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(targets.cpu().double(), rt.double(), rtol=tol, atol=tol)


def test_match_anchors_input_errors():
    a = random_anchors(10)
    gt = random_gt(2, 3)
    with pytest.raises(RuntimeError, match="outside"):
        ops.match_anchors(a, gt, torch.tensor([4, 1]))
    with pytest.raises(RuntimeError, match="integer"):
        ops.match_anchors(a, gt, torch.tensor([1.0, 1.0]))
    with pytest.raises(RuntimeError, match=r"gt_counts must be \[B\]"):
        ops.match_anchors(a, gt, torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"\[B, N, 4\]"):
        ops.match_anchors(a, gt[0], torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="ignore_threshold"):
        ops.match_anchors(a, gt, torch.tensor([1, 1]), iou_threshold=0.4, ignore_threshold=0.5)


# ---------------------------------------------------------------- hard negatives

def check_hnm(loss, labels, ratio=3):
    out = ops.hard_negative_mask(loss, labels, ratio)
    expected = ref.hard_negative_mask(loss.cpu(), labels.cpu(), ratio)
    assert out.dtype == torch.bool
    assert torch.equal(out.cpu(), expected)
    # property: positives, plus exactly min(ratio * P, A - 1, #negatives) negatives
    A = loss.shape[1]
    for b in range(loss.shape[0]):
        pos = int((labels[b] > 0).sum())
        negs = int((labels[b] == 0).sum())
        assert int((out[b] & (labels[b] == 0)).sum()) == min(ratio * pos, A - 1, negs)
        assert bool(out[b][labels[b] > 0].all()) and not bool(out[b][labels[b] < 0].any())
    return out


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("B,A", [(1, 1), (1, 10), (4, 34125), (32, 1000)])
def test_hard_negative_mask_matches_reference(device, seed, B, A):
    g = torch.Generator().manual_seed(seed)
    loss = torch.rand(B, A, generator=g).to(device)
    labels = torch.randint(-1, 2, (B, A), generator=g)
    labels = torch.where(torch.rand(B, A, generator=g) < 0.9, torch.zeros_like(labels), labels).to(device)
    check_hnm(loss, labels)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_hard_negative_mask_edge_cases(device):
    g = torch.Generator().manual_seed(1)
    A = 500
    loss = torch.rand(6, A, generator=g)
    labels = torch.zeros(6, A, dtype=torch.long)
    labels[1, :3] = 1  # 3 positives -> 9 negatives
    labels[2, :] = 1  # all positive
    labels[3, :200] = 1  # 600 > A - 1 - ... -> every negative
    labels[4, :5] = 1
    labels[4, 5:400] = -1  # ignored anchors are never mined
    loss[5] = 0.5  # all ties: lowest indices win
    labels[5, 100] = 1
    out = check_hnm(loss.to(device), labels.to(device))
    assert int(out[0].sum()) == 0  # no positives -> no negatives
    assert torch.nonzero(out[5]).flatten().tolist() == [0, 1, 2, 100]
    # NaN losses rank hardest, as torch.sort orders them
    loss2 = torch.rand(1, 50, generator=g)
    loss2[0, 7] = float("nan")
    lab2 = torch.zeros(1, 50, dtype=torch.long)
    lab2[0, 0] = 1
    out = check_hnm(loss2.to(device), lab2.to(device), ratio=1)
    assert out[0, 7]
    # int32 labels, half losses, ratio 0
    check_hnm(loss.half().to(device), labels.int().to(device))
    assert torch.equal(ops.hard_negative_mask(loss.to(device), labels.to(device), 0).cpu(), labels > 0)
    # B = 0 and A = 0
    assert ops.hard_negative_mask(torch.zeros(0, 5, device=device), torch.zeros(0, 5, dtype=torch.long, device=device)).shape == (0, 5)


def test_hard_negative_mask_input_errors():
    with pytest.raises(RuntimeError, match="differ in shape"):
        ops.hard_negative_mask(torch.rand(2, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="integer"):
        ops.hard_negative_mask(torch.rand(2, 5), torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match=r"\[B, A\]"):
        ops.hard_negative_mask(torch.rand(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        ops.hard_negative_mask(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), -1)
