"""nms and batched_nms: kernels vs torchvision vs the plain-PyTorch reference."""

import pytest
import torch
import torchvision

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import boxes_with_iou, random_boxes


# ---------------------------------------------------------------- nms

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("iou", [0.2, 0.5, 0.8])
def test_nms_matches_torchvision(device, seed, iou):
    g = torch.Generator().manual_seed(seed)
    boxes = boxes_with_iou(iou, n=1000, generator=g).to(device)
    scores = torch.rand(1000, generator=g).to(device)
    keep = ops.nms(boxes, scores, iou)
    assert keep.dtype == torch.int64
    assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), iou))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("n", [1, 2, 10, 5000])
def test_nms_sizes_and_order(device, n):
    g = torch.Generator().manual_seed(n)
    boxes = random_boxes(n, scale=300, generator=g).to(device)
    scores = torch.rand(n, generator=g).to(device)
    keep = ops.nms(boxes, scores, 0.3)
    assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.3))
    # decreasing score order, and no two kept boxes overlap above the threshold
    s = scores[keep]
    assert bool((s[:-1] >= s[1:]).all())
    iou = torchvision.ops.box_iou(boxes[keep].cpu(), boxes[keep].cpu()).fill_diagonal_(0)
    assert bool((iou <= 0.3).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nms_edge_cases(device):
    empty = ops.nms(torch.zeros(0, 4, device=device), torch.zeros(0, device=device), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    # all boxes identical: one survives, the first of the tied scores
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device).repeat(20, 1)
    scores = torch.ones(20, device=device)
    assert ops.nms(boxes, scores, 0.5).tolist() == [0]
    # score ties in general: lower index first (stable), same as the reference
    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(300, generator=g).to(device)
    scores = (torch.rand(300, generator=g) * 4).floor().to(device)
    assert torch.equal(ops.nms(boxes, scores, 0.4).cpu(), ref.nms(boxes.cpu(), scores.cpu(), 0.4))
    # zero-area boxes: IoU is 0/0, never above the threshold, so all stay (as in torchvision)
    pts = torch.tensor([[5.0, 5.0, 5.0, 5.0]] * 3 + [[1.0, 1.0, 1.0, 9.0]], device=device)
    s = torch.tensor([0.9, 0.8, 0.7, 0.6], device=device)
    assert ops.nms(pts, s, 0.5).tolist() == torchvision.ops.nms(pts.cpu(), s.cpu(), 0.5).tolist()
    # huge coordinates
    big = random_boxes(200, scale=1e7, max_size=1e6, generator=g).to(device)
    sc = torch.rand(200, generator=g).to(device)
    assert torch.equal(ops.nms(big, sc, 0.5).cpu(), torchvision.ops.nms(big.cpu(), sc.cpu(), 0.5))
    # negative and -inf scores are ordinary scores for nms
    s2 = torch.tensor([-1.0, float("-inf"), -0.5, 2.0], device=device)
    far = torch.tensor([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], device=device).float()
    assert ops.nms(far, s2, 0.5).tolist() == [3, 2, 0, 1]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes(device, dtype):
    g = torch.Generator().manual_seed(7)
    boxes = random_boxes(500, generator=g).to(device, dtype)
    scores = torch.rand(500, generator=g).to(device, dtype)
    keep = ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep.cpu(), ref.nms(boxes.cpu(), scores.cpu(), 0.5))
    if dtype == torch.float64:
        assert torch.equal(keep.cpu(), torchvision.ops.nms(boxes.cpu(), scores.cpu(), 0.5))


def test_nms_input_errors():
    b = torch.rand(5, 4)
    with pytest.raises(ValueError, match="NaN"):
        ops.nms(b, torch.tensor([0.1, float("nan"), 0.2, 0.3, 0.4]), 0.5)
    with pytest.raises(RuntimeError, match="NaN"):  # the op itself checks too
        torch.ops.dsfd.nms(b, torch.tensor([0.1, float("nan"), 0.2, 0.3, 0.4]), 0.5)
    with pytest.raises(RuntimeError, match="rows but scores has"):
        ops.nms(b, torch.rand(4), 0.5)
    with pytest.raises(RuntimeError, match=r"\[N, 4\]"):
        ops.nms(torch.rand(5, 5), torch.rand(5), 0.5)
    with pytest.raises(RuntimeError, match="boxes is Float but scores is Double"):
        ops.nms(b, torch.rand(5, dtype=torch.float64), 0.5)


# ---------------------------------------------------------------- batched_nms

def torchvision_loop(boxes, scores, iou, score_thr, top_k, max_keep):
    """DSFD post-processing with torchvision, one image at a time."""
    out = []
    for b, s in zip(boxes, scores):
        idx = torch.nonzero(s > score_thr).flatten()
        order = torch.sort(s[idx], descending=True, stable=True).indices[:top_k]
        idx = idx[order]
        out.append(idx[torchvision.ops.nms(b[idx], s[idx], iou)][:max_keep])
    return out


def check_batched(boxes, scores, iou=0.3, score_thr=0.01, top_k=5000, max_keep=750):
    ob, os_, oc, oi = ops.batched_nms(boxes, scores, iou, score_thr, top_k, max_keep, return_indices=True)
    B = boxes.shape[0]
    assert ob.shape == (B, max_keep, 4) and os_.shape == (B, max_keep) and oc.shape == (B,) and oi.shape == (B, max_keep)
    rb, rs, rc, ri = ref.batched_nms(boxes.cpu(), scores.cpu(), iou, score_thr, top_k, max_keep, return_indices=True)
    assert torch.equal(oc.cpu(), rc)
    assert torch.equal(oi.cpu(), ri)
    assert torch.equal(ob.cpu(), rb) and torch.equal(os_.cpu(), rs)
    for b in range(B):
        k = int(oc[b])
        # padding is zero / -1; real rows are the input rows
        assert bool((oi[b, k:] == -1).all()) and bool((ob[b, k:] == 0).all()) and bool((os_[b, k:] == 0).all())
        assert torch.equal(ob[b, :k], boxes[b, oi[b, :k]])
    return oc, oi


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("B,N", [(1, 1), (1, 5000), (3, 2000), (16, 500), (32, 100)])
def test_batched_nms_matches_reference_and_torchvision(device, B, N):
    g = torch.Generator().manual_seed(B * 1000 + N)
    boxes = random_boxes(N, batch=B, scale=400, generator=g).to(device)
    scores = torch.rand(B, N, generator=g).to(device)
    oc, oi = check_batched(boxes, scores)
    tv = torchvision_loop(boxes.cpu(), scores.cpu(), 0.3, 0.01, 5000, 750)
    for b in range(B):
        assert torch.equal(oi[b, : oc[b]].cpu(), tv[b])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_batched_nms_limits(device):
    g = torch.Generator().manual_seed(11)
    boxes = random_boxes(3000, batch=4, scale=2000, max_size=20, generator=g).to(device)
    scores = torch.rand(4, 3000, generator=g).to(device)
    oc, _ = check_batched(boxes, scores, top_k=1000, max_keep=100)
    assert bool((oc == 100).all())  # sparse boxes: max_keep binds
    check_batched(boxes, scores, top_k=50, max_keep=750)  # top_k binds
    check_batched(boxes, scores, top_k=10000, max_keep=10000)  # top_k > N
    check_batched(boxes, scores, iou=1.0)  # nothing suppressed
    check_batched(boxes, scores, iou=0.0)  # any overlap suppresses


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_batched_nms_edge_cases(device):
    g = torch.Generator().manual_seed(5)
    boxes = random_boxes(100, batch=3, generator=g).to(device)
    # all scores below the threshold (and one image exactly at it)
    scores = torch.full((3, 100), 0.001, device=device)
    scores[1] = 0.01
    oc, _ = check_batched(boxes, scores)
    assert oc.tolist() == [0, 0, 0]
    # NaN scores never pass; ties keep the lower index
    scores = (torch.rand(3, 100, generator=g) * 3).floor().to(device) / 2
    scores[0, ::7] = float("nan")
    oc, oi = check_batched(boxes, scores)
    assert not bool(torch.isin(oi[0], torch.arange(0, 100, 7, device=device)).any())
    # empty batch and empty images
    for shape in [(0, 10), (2, 0)]:
        ob, os_, oc = ops.batched_nms(torch.zeros(*shape, 4, device=device), torch.zeros(*shape, device=device))
        assert ob.shape == (shape[0], 750, 4) and oc.shape == (shape[0],) and int(oc.sum()) == 0
    # identical boxes: one survives per image
    same = torch.tensor([1.0, 1.0, 5.0, 5.0], device=device).repeat(2, 50, 1)
    oc, oi = check_batched(same, torch.full((2, 50), 0.5, device=device))
    assert oc.tolist() == [1, 1] and oi[:, 0].tolist() == [0, 0]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_batched_nms_dtypes(device, dtype):
    g = torch.Generator().manual_seed(9)
    boxes = random_boxes(800, batch=2, generator=g).to(device, dtype)
    scores = torch.rand(2, 800, generator=g).to(device, dtype)
    ob, os_, oc = ops.batched_nms(boxes, scores)
    assert ob.dtype == dtype and os_.dtype == dtype
    check_batched(boxes, scores)


def test_batched_nms_input_errors():
    with pytest.raises(RuntimeError, match=r"\[B, N, 4\]"):
        ops.batched_nms(torch.rand(10, 4), torch.rand(10))
    with pytest.raises(RuntimeError, match="disagree"):
        ops.batched_nms(torch.rand(2, 10, 4), torch.rand(2, 9))
    with pytest.raises(ValueError, match="max_keep"):
        ops.batched_nms(torch.rand(2, 10, 4), torch.rand(2, 10), max_keep=0)
    with pytest.raises(RuntimeError, match="floating point"):
        ops.batched_nms(torch.rand(2, 10, 4), torch.ones(2, 10, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_nms_cuda_graph_capture():
    """No host sync: the whole call can be captured and replayed in a CUDA graph."""
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(5000, batch=4, generator=g).cuda()
    scores = torch.rand(4, 5000, generator=g).cuda()
    ops.batched_nms(boxes, scores)  # warm-up (CUB temp sizes, allocator)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.batched_nms(boxes, scores, return_indices=True)
    new_scores = torch.rand(4, 5000, generator=g).cuda()
    scores.copy_(new_scores)
    graph.replay()
    torch.cuda.synchronize()
    rb, rs, rc, ri = ref.batched_nms(boxes.cpu(), new_scores.cpu(), 0.3, 0.01, 5000, 750, return_indices=True)
    assert torch.equal(out[2].cpu(), rc) and torch.equal(out[3].cpu(), ri)


# ---------------------------------------------------------------- thresholds and ties, exactly
#
# Integer and quarter-pixel boxes: areas, intersections and unions are exact,
# so these IoUs are exactly 0.5, 0.5625 and 0.25 in every dtype.

EXACT_BOXES = torch.tensor([
    [0.0, 0.0, 4.0, 4.0],  # 0
    [0.0, 0.0, 4.0, 2.0],  # 1: IoU 8/16 = 0.5 with box 0
    [100.0, 0.0, 104.0, 4.0],  # 2
    [100.0, 0.0, 104.0, 2.25],  # 3: IoU 9/16 = 0.5625 with box 2
    [200.0, 0.0, 204.0, 4.0],  # 4
    [200.0, 0.0, 201.0, 4.0],  # 5: IoU 4/16 = 0.25 with box 4
])
EXACT_SCORES = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "iou, expected",
    [
        (0.5, [0, 1, 2, 4, 5]),  # IoU exactly at the threshold is not "> threshold": kept
        (0.4999999, [0, 2, 4, 5]),  # just below 0.5 (also in float32): box 1 suppressed
        (0.5625, [0, 1, 2, 3, 4, 5]),
        (0.25, [0, 2, 4, 5]),  # box 5 at exactly 0.25 stays
        (0.0, [0, 2, 4]),
    ],
)
def test_nms_iou_exactly_at_threshold_is_kept(device, dtype, iou, expected):
    boxes, scores = EXACT_BOXES.to(device, dtype), EXACT_SCORES.to(device, dtype)
    assert ops.nms(boxes, scores, iou).tolist() == expected
    assert ref.nms(boxes.cpu(), scores.cpu(), iou).tolist() == expected
    assert torchvision.ops.nms(boxes.cpu(), scores.cpu(), iou).tolist() == expected
    # batched_nms applies the same rule (score threshold 0 lets every box in)
    _, _, counts, idx = ops.batched_nms(boxes[None], scores[None], iou, 0.0, return_indices=True)
    assert idx[0, : counts[0]].tolist() == expected
    _, _, rcounts, ridx = ref.batched_nms(boxes[None].cpu(), scores[None].cpu(), iou, 0.0, return_indices=True)
    assert ridx[0, : rcounts[0]].tolist() == expected


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_nms_equal_scores_lower_index_wins(device):
    a, b = [10.0, 10.0, 14.0, 14.0], [10.0, 10.0, 14.0, 12.0]  # IoU 0.5
    far = [50.0, 50.0, 54.0, 54.0]
    for boxes in ([a, b, far], [b, a, far]):
        t = torch.tensor(boxes, device=device)
        s = torch.tensor([0.5, 0.5, 0.5], device=device)
        for keep in (ops.nms(t, s, 0.3), ref.nms(t.cpu(), s.cpu(), 0.3), torchvision.ops.nms(t.cpu(), s.cpu(), 0.3)):
            assert keep.tolist() == [0, 2]  # index 0 is kept and suppresses index 1, whichever box it is
        _, _, counts, idx = ops.batched_nms(t[None], s[None], 0.3, 0.0, return_indices=True)
        assert idx[0, : counts[0]].tolist() == [0, 2]
    # a tie between a kept box and a later, higher-index box with the same score: order by index
    t = torch.tensor([far, a, [30.0, 30.0, 34.0, 34.0]], device=device)
    s = torch.tensor([0.5, 0.7, 0.5], device=device)
    assert ops.nms(t, s, 0.3).tolist() == ref.nms(t.cpu(), s.cpu(), 0.3).tolist() == [1, 0, 2]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_batched_nms_score_exactly_at_threshold_is_dropped(device, dtype):
    """``score > score_threshold``: a score equal to the threshold (0.25, exact in every dtype) never passes."""
    boxes = torch.tensor([[[0.0, 0, 1, 1], [10, 0, 11, 1], [20, 0, 21, 1], [30, 0, 31, 1]]], device=device, dtype=dtype)
    above = torch.nextafter(torch.tensor(0.25, dtype=dtype), torch.tensor(1.0, dtype=dtype)).item()
    scores = torch.tensor([[0.25, above, 0.5, 0.125]], device=device, dtype=dtype)
    _, out_scores, counts, idx = ops.batched_nms(boxes, scores, 0.3, 0.25, return_indices=True)
    assert idx[0, : counts[0]].tolist() == [2, 1]
    _, _, rcounts, ridx = ref.batched_nms(boxes.cpu(), scores.cpu(), 0.3, 0.25, return_indices=True)
    assert ridx[0, : rcounts[0]].tolist() == [2, 1]
    # equal scores above the threshold keep index order, also across the top-k cut
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5]], device=device, dtype=dtype)
    _, _, counts, idx = ops.batched_nms(boxes, scores, 0.3, 0.25, pre_nms_top_k=3, return_indices=True)
    assert idx[0, : counts[0]].tolist() == [0, 1, 2]
    _, _, rcounts, ridx = ref.batched_nms(boxes.cpu(), scores.cpu(), 0.3, 0.25, pre_nms_top_k=3, return_indices=True)
    assert ridx[0, : rcounts[0]].tolist() == [0, 1, 2]


def test_dispatch_and_reference_give_the_kernels_shapes():
    """dsfd.ops picks one implementation; kernel and reference batched_nms return the same tuple shapes."""
    import dsfd.ops

    g = torch.Generator().manual_seed(3)
    boxes, scores = random_boxes(60, batch=2, generator=g), torch.rand(2, 60, generator=g)
    expected = "compiled" if dsfd.ops.compiled_available() else "reference"
    assert dsfd.ops.backend() == expected
    with dsfd.ops.use_reference():
        assert dsfd.ops.backend() == "reference"
        with dsfd.ops.use_reference(False):  # nested "no change" keeps the outer choice
            assert dsfd.ops.backend() == "reference"
        via_dispatch = dsfd.ops.batched_nms(boxes, scores, 0.3, 0.05, 40, 10, return_indices=True)
    assert dsfd.ops.backend() == expected
    for return_indices in (False, True):
        out_k = ops.batched_nms(boxes, scores, 0.3, 0.05, 40, 10, return_indices=return_indices)
        out_r = ref.batched_nms(boxes, scores, 0.3, 0.05, 40, 10, return_indices=return_indices)
        assert len(out_k) == len(out_r) == (4 if return_indices else 3)
        for a, b in zip(out_k, out_r):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b)
    for a, b in zip(via_dispatch, ref.batched_nms(boxes, scores, 0.3, 0.05, 40, 10, return_indices=True)):
        torch.testing.assert_close(a, b)
