"""ignore_anchors and hard_negative_mask's min_negatives: kernels vs the plain-PyTorch references."""

import pytest
import torch

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import random_anchors, random_gt


def check_ignore(anchors, labels, regions, counts, thr=0.1):
    out = ops.ignore_anchors(anchors, labels, regions, counts, thr)
    expected = ref.ignore_anchors(anchors.cpu(), labels.cpu(), regions.cpu(), counts.cpu(), thr)
    assert out.dtype == torch.int64 and out.shape == labels.shape
    assert torch.equal(out.cpu(), expected)
    # properties: positives and -1 keep their label; only background changes, and only to -1
    lab = labels.cpu().long()
    assert torch.equal(out.cpu()[lab != 0], lab[lab != 0])
    assert bool(((out.cpu() == lab) | ((lab == 0) & (out.cpu() == -1))).all())
    return out


def random_labels(B, A, g):
    labels = torch.randint(-1, 2, (B, A), generator=g)
    return torch.where(torch.rand(B, A, generator=g) < 0.8, torch.zeros_like(labels), labels)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("B,M,A", [(1, 1, 1), (1, 4, 300), (4, 30, 5000), (16, 3, 700), (2, 300, 4500)])
def test_ignore_anchors_matches_reference(device, seed, B, M, A):
    g = torch.Generator().manual_seed(seed)
    anchors = random_anchors(A, generator=g).to(device)
    regions = random_gt(B, M, generator=g).to(device)
    counts = torch.randint(0, M + 1, (B,), generator=g)
    counts[0] = M
    labels = random_labels(B, A, g).to(device)
    out = check_ignore(anchors, labels, regions, counts.to(device))
    if B > 1 and int(counts[1]) == 0:  # an image without regions is untouched
        assert torch.equal(out[1].cpu(), labels[1].cpu())
    # IoU 1 is never reached by random boxes: nothing changes; a lower threshold ignores at least as much
    assert torch.equal(check_ignore(anchors, labels, regions, counts.to(device), 1.0).cpu(), labels.cpu())
    loose = check_ignore(anchors, labels, regions, counts.to(device), 0.01)
    assert int((loose == -1).sum()) >= int((out == -1).sum())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_ignore_anchors_exact_cases(device):
    # anchors (cx, cy, w, h); the region [0.25, 0.25, 0.75, 0.75] has exact IoUs with them
    anchors = torch.tensor([
        [0.5, 0.5, 0.5, 0.5],  # IoU 1
        [0.375, 0.375, 0.25, 0.25],  # 0.25
        [0.5, 0.296875, 0.5, 0.09375],  # 0.1875
        [0.9, 0.9, 0.1, 0.1],  # 0
        [0.5, 0.5, 0.5, 0.5],  # IoU 1 but a positive: kept
        [0.375, 0.375, 0.25, 0.25],  # 0.25 but already ignored: stays -1
    ], device=device)
    labels = torch.tensor([[0, 0, 0, 0, 1, -1]], device=device)
    region = torch.tensor([[[0.25, 0.25, 0.75, 0.75]]], device=device)
    one = torch.tensor([1], device=device)
    assert check_ignore(anchors, labels, region, one, 0.25)[0].tolist() == [-1, -1, 0, 0, 1, -1]  # inclusive
    assert check_ignore(anchors, labels, region, one, 0.1875)[0].tolist() == [-1, -1, -1, 0, 1, -1]
    assert check_ignore(anchors, labels, region, one, 0.26)[0].tolist() == [-1, 0, 0, 0, 1, -1]
    # padding rows beyond the count are not regions
    padded = torch.cat([torch.tensor([[[0.8, 0.8, 1.0, 1.0]]], device=device), region], 1)
    assert check_ignore(anchors, labels, padded, one, 0.1)[0].tolist() == [0, 0, 0, -1, 1, -1]
    # degenerate regions (zero or negative size) and NaN overlap nothing
    bad = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.7, 0.7, 0.3, 0.3], [float("nan"), 0.0, 1.0, 1.0]]], device=device)
    assert check_ignore(anchors, labels, bad, torch.tensor([3], device=device))[0].tolist() == labels[0].tolist()
    # a huge region covering everything: IoU = anchor area / region area
    huge = torch.tensor([[[-10.0, -10.0, 10.0, 10.0]]], device=device)
    assert check_ignore(anchors, labels, huge, one, 0.1)[0].tolist() == labels[0].tolist()
    # int32 labels and counts, half and double regions
    check_ignore(anchors, labels.int(), region.half(), one.int(), 0.2)
    check_ignore(anchors.double(), labels, region.double(), one, 0.2)
    check_ignore(anchors, labels, region.bfloat16(), one, 0.2)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_ignore_anchors_empty_inputs(device):
    anchors = random_anchors(10).to(device)
    labels = torch.zeros(2, 10, dtype=torch.long, device=device)
    # M = 0, B = 0, A = 0
    assert torch.equal(ops.ignore_anchors(anchors, labels, torch.zeros(2, 0, 4, device=device),
                                          torch.zeros(2, dtype=torch.long, device=device)), labels)
    assert ops.ignore_anchors(anchors, labels[:0], torch.zeros(0, 3, 4, device=device),
                              torch.zeros(0, dtype=torch.long, device=device)).shape == (0, 10)
    assert ops.ignore_anchors(anchors[:0], labels[:, :0], torch.rand(2, 3, 4, device=device),
                              torch.tensor([3, 1], device=device)).shape == (2, 0)
    # the input is not modified
    regions = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]], device=device)
    big = torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 10, device=device)
    out = ops.ignore_anchors(big, labels, regions, torch.tensor([1, 0], device=device))
    assert bool((out[0] == -1).all()) and bool((out[1] == 0).all()) and bool((labels == 0).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_ignore_anchors_many_images_and_blocks(device):
    # more anchors than one CPU block (2048) and one region per image at a different place
    g = torch.Generator().manual_seed(5)
    anchors = random_anchors(9000, generator=g).to(device)
    regions = random_gt(40, 1, generator=g).to(device)
    labels = random_labels(40, 9000, g).to(device)
    check_ignore(anchors, labels, regions, torch.ones(40, dtype=torch.long, device=device))


def test_ignore_anchors_input_errors():
    anchors, labels = random_anchors(5), torch.zeros(2, 5, dtype=torch.long)
    regions, counts = torch.rand(2, 3, 4), torch.tensor([3, 1])
    with pytest.raises(RuntimeError, match=r"labels must be \[B, A\]"):
        ops.ignore_anchors(anchors, labels[:, :4], regions, counts)
    with pytest.raises(RuntimeError, match="integer"):
        ops.ignore_anchors(anchors, labels.float(), regions, counts)
    with pytest.raises(RuntimeError, match="ignore_counts must be \\[B\\]"):
        ops.ignore_anchors(anchors, labels, regions, counts[:1])
    with pytest.raises(RuntimeError, match="ignore_counts must be an integer"):
        ops.ignore_anchors(anchors, labels, regions, counts.float())
    with pytest.raises(RuntimeError, match="outside"):
        ops.ignore_anchors(anchors, labels, regions, torch.tensor([4, 0]))
    with pytest.raises(RuntimeError, match="iou_threshold"):
        ops.ignore_anchors(anchors, labels, regions, counts, 0.0)
    with pytest.raises(RuntimeError, match="iou_threshold"):
        ops.ignore_anchors(anchors, labels, regions, counts, float("nan"))
    with pytest.raises(RuntimeError, match="ignore_boxes must have shape"):
        ops.ignore_anchors(anchors, labels, regions[0], counts)


# ---------------------------------------------------------------- min_negatives

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("min_negatives", [0, 1, 50, 10_000])
def test_hard_negative_mask_min_negatives(device, min_negatives):
    g = torch.Generator().manual_seed(min_negatives)
    B, A = 5, 3000
    loss = torch.rand(B, A, generator=g)
    labels = torch.zeros(B, A, dtype=torch.long)
    labels[1, :4] = 1  # 12 negatives by the ratio
    labels[2, :40] = 1  # 120
    labels[3, 10:2995] = -1  # only 5 negatives exist
    labels[4, :] = -1
    out = ops.hard_negative_mask(loss.to(device), labels.to(device), 3, min_negatives)
    expected = ref.hard_negative_mask(loss, labels, 3, min_negatives)
    assert torch.equal(out.cpu(), expected)
    for b in range(B):
        pos = int((labels[b] > 0).sum())
        negs = int((labels[b] == 0).sum())
        want = min(max(3 * pos, min_negatives), A - 1, negs)
        assert int((out[b].cpu() & (labels[b] == 0)).sum()) == want
        # the chosen negatives are the hardest ones
        if 0 < want < negs:
            chosen = loss[b][out[b].cpu() & (labels[b] == 0)]
            rest = loss[b][~out[b].cpu() & (labels[b] == 0)]
            assert float(chosen.min()) >= float(rest.max())
    # an image without faces (b = 0) now teaches background
    assert int(out[0].sum()) == min(min_negatives, A - 1)


def test_hard_negative_mask_min_negatives_error():
    with pytest.raises(ValueError, match="min_negatives"):
        ops.hard_negative_mask(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), 3, -1)
    with pytest.raises(RuntimeError, match="min_negatives"):
        torch.ops.dsfd.hard_negative_mask(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long), 3, -1)
