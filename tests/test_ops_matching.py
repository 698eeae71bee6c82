"""match_anchors and hard_negative_mask: kernels vs the plain-PyTorch references."""

import pytest
import torch

import dsfd.ops.compiled as ops
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


# ---------------------------------------------------------------- thresholds and ties, exactly
#
# Every box below (except far-away fillers at IoU 0) has coordinates that are
# multiples of 1/64, so corners (cx -+ w/2), areas, intersections and unions are exact in float32
# and each IoU is the correctly rounded quotient of two exact numbers: an IoU
# of 0.5 or 0.25 is exactly 0.5 or 0.25, and 0.125 / 0.3125 is float32(0.4),
# the same number the threshold 0.4 becomes in float32. The compiled op and
# the reference must both apply the documented rule to these exact values.

# One ground truth (area 1/4) and anchors with exact IoUs to it.
BAND_GT = [0.25, 0.25, 0.75, 0.75]
BAND_ANCHORS = [  # cx, cy, w, h -> IoU with BAND_GT
    [0.5, 0.5, 0.5, 0.5],  # 1: the ground truth itself (its forced best anchor)
    [0.5, 0.375, 0.5, 0.25],  # 0.5
    [0.375, 0.375, 0.25, 0.25],  # 0.25
    [0.5, 0.34375, 0.5, 0.1875],  # 0.375
    [0.5, 0.296875, 0.5, 0.09375],  # 0.1875
    [0.9, 0.9, 0.1, 0.1],  # 0
]
BAND_IOUS = [1.0, 0.5, 0.25, 0.375, 0.1875, 0.0]


def both_matches(anchors, gt, counts, **kw):
    """(labels, matched) of the compiled op and of the reference, as lists of image 0."""
    out = []
    for impl in (ops, ref):
        labels, matched, _ = impl.match_anchors(anchors, gt, counts, **kw)
        out.append((labels[0].tolist(), matched[0].tolist()))
    return out


def test_band_fixture_ious_are_exact():
    a = torch.tensor(BAND_ANCHORS)
    iou = ops.box_iou(torch.tensor([BAND_GT]), ref.anchors_to_corners(a))[0]
    assert iou.tolist() == BAND_IOUS
    assert ref.box_iou(torch.tensor([BAND_GT]), ref.anchors_to_corners(a))[0].tolist() == BAND_IOUS


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize(
    "iou_threshold, ignore_threshold, expected",
    [
        # positive at IoU >= threshold: 0.5 is positive at 0.5, 0.375 is not
        (0.5, None, [1, 1, 0, 0, 0, 0]),
        # the ignore band [0.25, 0.5): both ends exactly hit (0.25 ignored, 0.5 positive)
        (0.5, 0.25, [1, 1, -1, -1, 0, 0]),
        # the band's lower end at 0.375 exactly: 0.375 ignored, 0.25 background
        (0.5, 0.375, [1, 1, 0, -1, 0, 0]),
        # a band of width zero ([0.5, 0.5)) is empty: nothing ignored
        (0.5, 0.5, [1, 1, 0, 0, 0, 0]),
        # threshold exactly at 0.25 and 0.1875
        (0.25, None, [1, 1, 1, 1, 0, 0]),
        (0.375, 0.1875, [1, 1, -1, 1, -1, 0]),
        # a band starting at 0 takes every anchor of an image with faces, even those overlapping nothing
        (0.5, 0.0, [1, 1, -1, -1, -1, -1]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_match_anchors_thresholds_are_inclusive(device, dtype, iou_threshold, ignore_threshold, expected):
    anchors = torch.tensor(BAND_ANCHORS, device=device)
    gt = torch.tensor([[BAND_GT]], device=device, dtype=dtype)  # exact in every dtype; half math is float32
    counts = torch.tensor([1], device=device)
    kw = dict(iou_threshold=iou_threshold, ignore_threshold=ignore_threshold)
    for labels, matched in both_matches(anchors, gt, counts, **kw):
        assert labels == expected
        assert matched == [0 if v == 1 else -1 for v in expected]
    if dtype in (torch.float32, torch.float64):
        check_match(anchors, gt, counts, **kw)  # and the targets agree


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_match_anchors_default_threshold_0_4_exactly(device, dtype):
    # ground truth 0..0.625 x 0..0.5 (area 5/16); anchor 0 inside it with area 2/16: IoU = 2/5, which rounds
    # to the same float as the threshold 0.4 (float32 math for float32 and half inputs, float64 for float64)
    gt = torch.tensor([[[0.0, 0.0, 0.625, 0.5], [0.0, 0.0, 0.625, 0.5]]], device=device, dtype=dtype)
    anchors = torch.tensor([[0.125, 0.25, 0.25, 0.5], [0.3125, 0.25, 0.625, 0.5], [0.9, 0.9, 0.05, 0.05]], device=device)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    iou = ref.box_iou(gt[0, :1].cpu().to(math), ref.anchors_to_corners(anchors.cpu().to(math)))[0]
    assert iou[0] == torch.tensor(0.4, dtype=math) and iou[1] == 1.0
    for labels, matched in both_matches(anchors, gt[:, :1], torch.tensor([1], device=device)):
        assert labels == [1, 1, 0] and matched == [0, 0, -1]
    # the same anchor at IoU 0.4 lies at the top end of a band [0.2, 0.4): positive, not ignored
    for labels, _ in both_matches(anchors, gt[:, :1], torch.tensor([1], device=device), ignore_threshold=0.2):
        assert labels == [1, 1, 0]
    # at the band's lower end with the default positive threshold: ignored
    for labels, _ in both_matches(anchors, gt[:, :1], torch.tensor([1], device=device), iou_threshold=0.5,
                                  ignore_threshold=0.4):
        assert labels == [-1, 1, 0]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("first, second", [(3, 7), (5, 3000)])  # same anchor block, and two blocks (2048 each)
def test_match_anchors_forced_match_ties_go_to_the_lower_anchor(device, first, second):
    """A ground truth whose best IoU (below every threshold) is shared by two anchors forces the lower index."""
    A = max(first, second) + 10
    # filler anchors far away from the ground truth (IoU 0)
    anchors = torch.tensor([[0.95, 0.95, 0.02, 0.02]]).repeat(A, 1)
    # ground truth 0.25..0.5 square (area 1/16); two equal anchors 0.125..0.625 (area 1/4) around it: IoU 1/4 each
    anchors[first] = torch.tensor([0.375, 0.375, 0.5, 0.5])
    anchors[second] = torch.tensor([0.375, 0.375, 0.5, 0.5])
    gt = torch.tensor([[[0.25, 0.25, 0.5, 0.5]]])
    expected = torch.zeros(A, dtype=torch.long)
    expected[first] = 1
    for impl in (ops, ref):
        labels, matched, _ = impl.match_anchors(
            anchors.to(device), gt.to(device), torch.tensor([1], device=device), iou_threshold=0.5
        )
        assert torch.equal(labels[0].cpu(), expected), impl.__name__
        assert matched[0, first].item() == 0 and int((matched[0] >= 0).sum()) == 1
    # two different anchors at the same IoU 1/4: 0.125..0.625 square, and 0.25..0.5 x -0.125..0.875
    anchors[second] = torch.tensor([0.375, 0.375, 0.25, 1.0])
    iou = ref.box_iou(gt[0], ref.anchors_to_corners(anchors[[first, second]]))[0]
    assert iou.tolist() == [0.25, 0.25]
    for impl in (ops, ref):
        labels, _, _ = impl.match_anchors(anchors.to(device), gt.to(device), torch.tensor([1], device=device),
                                          iou_threshold=0.5, ignore_threshold=0.3)
        assert torch.equal(labels[0].cpu(), expected), impl.__name__


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_match_anchors_equal_iou_to_two_ground_truths_takes_the_lower_index(device):
    """An anchor with the same IoU to two ground truths (neither forcing it) takes the lower ground-truth index."""
    # anchor 0: 0.25..0.75 square; gt 0 = its left half, gt 1 = its right half: IoU 0.5 each.
    # anchors 1 and 2 equal the ground truths (their forced best anchors).
    anchors = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.375, 0.5, 0.25, 0.5], [0.625, 0.5, 0.25, 0.5]], device=device)
    gt = torch.tensor([[[0.25, 0.25, 0.5, 0.75], [0.5, 0.25, 0.75, 0.75]]], device=device)
    for order, expected in (([0, 1], [0, 0, 1]), ([1, 0], [0, 1, 0])):  # anchor 0: ground truth 0 either way
        g = gt[:, order]
        for labels, matched in both_matches(anchors, g, torch.tensor([2], device=device), iou_threshold=0.5):
            assert labels == [1, 1, 1] and matched == expected
        check_match(anchors, g, torch.tensor([2], device=device), iou_threshold=0.5)
