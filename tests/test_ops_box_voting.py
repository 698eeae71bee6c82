"""box_voting (the released WIDER test code's multi-scale merge): kernel vs reference."""

import numpy as np
import pytest
import torch

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import random_boxes


def released_bbox_vote(det: np.ndarray, thr: float = 0.3, keep: int = 750) -> np.ndarray:
    """The released code's numpy bbox_vote, re-derived from the spec (with its
    crash on an empty result replaced by an empty array). Ties are broken by
    index here (the released argsort order is unspecified for ties)."""
    order = np.argsort(-det[:, 4], kind="stable")
    det = det[order]
    out = []
    while det.shape[0] > 0:
        area = (det[:, 2] - det[:, 0] + 1) * (det[:, 3] - det[:, 1] + 1)
        xx1 = np.maximum(det[0, 0], det[:, 0])
        yy1 = np.maximum(det[0, 1], det[:, 1])
        xx2 = np.minimum(det[0, 2], det[:, 2])
        yy2 = np.minimum(det[0, 3], det[:, 3])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        o = inter / (area[0] + area - inter)
        merge = np.where(o >= thr)[0]
        acc = det[merge]
        det = np.delete(det, merge, 0)
        if merge.shape[0] <= 1:
            continue
        box = (acc[:, :4] * acc[:, 4:5]).sum(0) / acc[:, 4].sum()
        out.append(np.concatenate([box, [acc[:, 4].max()]]))
    return np.array(out[:keep]).reshape(-1, 5)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [2, 50, 2000])
def test_box_voting_matches_reference_and_released_code(device, seed, n):
    g = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, scale=300, max_size=60, generator=g, dtype=torch.float64)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    got_b, got_s = ops.box_voting(boxes.to(device), scores.to(device))
    want_b, want_s = ref.box_voting(boxes, scores)
    torch.testing.assert_close(got_b.cpu(), want_b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_s.cpu(), want_s)
    released = released_bbox_vote(torch.cat([boxes, scores[:, None]], 1).numpy())
    np.testing.assert_allclose(got_b.cpu().numpy(), released[:, :4], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got_s.cpu().numpy(), released[:, 4])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_box_voting_edge_cases(device):
    # empty input and a single box: no crash, nothing to vote
    for n in (0, 1):
        b, s = ops.box_voting(torch.rand(n, 4, device=device) * 10 + torch.tensor([0, 0, 10, 10], device=device), torch.rand(n, device=device))
        assert b.shape == (0, 4) and s.shape == (0,)
    # two identical boxes merge into themselves with the max score
    box = torch.tensor([[10.0, 10.0, 50.0, 60.0]] * 2, device=device)
    b, s = ops.box_voting(box, torch.tensor([0.9, 0.4], device=device))
    assert b.tolist() == [[10.0, 10.0, 50.0, 60.0]] and s.tolist() == pytest.approx([0.9])
    # float32, max_keep, NaN scores ignored
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(500, scale=200, generator=g).to(device)
    scores = torch.rand(500, generator=g).to(device)
    scores[::10] = float("nan")
    got_b, got_s = ops.box_voting(boxes, scores, 0.3, 5)
    want_b, want_s = ref.box_voting(boxes.cpu(), scores.cpu(), 0.3, 5)
    assert got_b.shape[0] <= 5
    torch.testing.assert_close(got_b.cpu(), want_b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_s.cpu(), want_s)


def test_box_voting_input_errors():
    with pytest.raises(RuntimeError, match=r"scores must be \[N\]"):
        ops.box_voting(torch.rand(5, 4), torch.rand(4))
    with pytest.raises(RuntimeError, match="max_keep"):
        ops.box_voting(torch.rand(5, 4), torch.rand(5), 0.3, -1)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_voting_iou_exactly_at_threshold_joins_the_group(device, dtype):
    """Inclusive-pixel IoU ``>= threshold`` groups: exactly 3/10 (the default 0.3) and 1/4 join, just above does not.

    Box 0 spans x 0..9 (10 px, +1 convention), box 1 x 0..2 (3 px), both one pixel high: IoU 3/10, the
    same float as 0.3 in float32 and float64. Boxes 2 and 3 (4x4 px and 4x1 px): IoU 4/16 = 1/4.
    """
    boxes = torch.tensor([[0.0, 0, 9, 0], [0, 0, 2, 0], [50, 50, 53, 53], [50, 50, 53, 50]], dtype=dtype)
    scores = torch.tensor([0.75, 0.25, 0.5, 0.5], dtype=dtype)
    # the weighted means, by hand: (0.75 * box0 + 0.25 * box1) / 1 and (box2 + box3) / 2
    first = [0.0, 0.0, 0.75 * 9 + 0.25 * 2, 0.0]
    second = [50.0, 50.0, 53.0, 51.5]
    cases = [
        (0.3, [first], [0.75]),  # 3/10 >= 0.3; 1/4 < 0.3: boxes 2 and 3 stay alone and are dropped
        (0.25, [first, second], [0.75, 0.5]),
        (float(np.nextafter(np.float32(0.3), np.float32(1))), [], []),  # just above 3/10 in float32 too
    ]
    for thr, want_b, want_s in cases:
        for impl in (ops, ref):
            b, s = impl.box_voting(boxes.to(device), scores.to(device), thr, 750)
            assert b.cpu().tolist() == want_b and s.cpu().tolist() == want_s, (impl.__name__, thr)
        rel = released_bbox_vote(torch.cat([boxes, scores[:, None]], 1).double().numpy(), thr)
        np.testing.assert_array_equal(rel[:, :4], np.array(want_b).reshape(-1, 4))
