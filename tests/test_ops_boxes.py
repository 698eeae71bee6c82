"""box_iou, encode_boxes and decode_boxes: kernels vs references vs torchvision."""

import math

import pytest
import torch
import torchvision

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda
from helpers import random_anchors, random_boxes

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ---------------------------------------------------------------- box_iou

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (13, 1), (100, 37), (257, 300)])
def test_box_iou_matches_torchvision(device, seed, n, m):
    g = torch.Generator().manual_seed(seed)
    a = random_boxes(n, generator=g, device=device)
    b = random_boxes(m, generator=g, device=device)
    out = ops.box_iou(a, b)
    assert out.shape == (n, m) and out.dtype == a.dtype
    torch.testing.assert_close(out, torchvision.ops.box_iou(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_box_iou_batched_equals_per_image(device, batch):
    g = torch.Generator().manual_seed(batch)
    a = random_boxes(17, batch=batch, generator=g, device=device)
    b = random_boxes(9, batch=batch, generator=g, device=device)
    out = ops.box_iou(a, b)
    assert out.shape == (batch, 17, 9)
    for i in range(batch):
        torch.testing.assert_close(out[i], torchvision.ops.box_iou(a[i], b[i]), rtol=0, atol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", FLOATS)
def test_box_iou_dtypes_match_reference(device, dtype):
    g = torch.Generator().manual_seed(0)
    a = random_boxes(50, generator=g, dtype=dtype, device=device)
    b = random_boxes(40, generator=g, dtype=dtype, device=device)
    out = ops.box_iou(a, b)
    assert out.dtype == dtype
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(dtype, 1e-6)
    torch.testing.assert_close(out.float(), ref.box_iou(a, b).float(), rtol=0, atol=tol)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_box_iou_edge_cases(device):
    # empty inputs
    e = torch.zeros(0, 4, device=device)
    one = torch.tensor([[0.0, 0.0, 10.0, 10.0]], device=device)
    assert ops.box_iou(e, one).shape == (0, 1)
    assert ops.box_iou(one, e).shape == (1, 0)
    assert ops.box_iou(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 5, 4, device=device)).shape == (2, 0, 5)
    # identical boxes -> 1, disjoint -> 0, degenerate and inverted boxes as torchvision
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [20.0, 20.0, 30.0, 30.0],
            [5.0, 5.0, 5.0, 5.0],  # zero area
            [10.0, 10.0, 0.0, 0.0],  # inverted
            [0.0, 0.0, 1e6, 1e6],  # huge
            [1e6, 1e6, 1e6 + 1, 1e6 + 1],
        ],
        device=device,
    )
    out = ops.box_iou(boxes, boxes)
    expected = torchvision.ops.box_iou(boxes, boxes)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert out[0, 1] == 1 and out[0, 2] == 0
    # NaN coordinates propagate
    nan_box = torch.tensor([[float("nan"), 0.0, 1.0, 1.0]], device=device)
    assert torch.isnan(ops.box_iou(nan_box, one)).all()


def test_box_iou_input_errors():
    a = torch.rand(3, 4)
    with pytest.raises(RuntimeError, match="boxes1 must have shape"):
        ops.box_iou(torch.rand(3, 3), a)
    with pytest.raises(RuntimeError, match="floating point"):
        ops.box_iou(a.long(), a.long())
    with pytest.raises(RuntimeError, match="Float but boxes2 is Double"):
        ops.box_iou(a, a.double())
    with pytest.raises(RuntimeError, match="batch sizes differ"):
        ops.box_iou(torch.rand(2, 3, 4), torch.rand(3, 3, 4))
    with pytest.raises(RuntimeError, match=r"\[N,4\]/\[M,4\]"):
        ops.box_iou(torch.rand(2, 3, 4), torch.rand(3, 4))


# ---------------------------------------------------------------- encode / decode

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(3))
def test_encode_decode_match_reference(device, seed):
    g = torch.Generator().manual_seed(seed)
    anchors = random_anchors(1000, generator=g).to(device)
    gt = ref.anchors_to_corners(random_anchors(1000, generator=g)).to(device)
    enc = ops.encode_boxes(gt, anchors)
    torch.testing.assert_close(enc, ref.encode_boxes(gt, anchors), rtol=1e-6, atol=1e-5)
    deltas = torch.randn(4, 1000, 4, generator=g).to(device)
    dec = ops.decode_boxes(deltas, anchors)
    assert dec.shape == (4, 1000, 4)
    torch.testing.assert_close(dec, ref.decode_boxes(deltas, anchors), rtol=1e-6, atol=1e-6)
    # decode(encode(g)) == g
    torch.testing.assert_close(ops.decode_boxes(enc, anchors), gt, rtol=1e-5, atol=1e-5)
    # other variances
    torch.testing.assert_close(
        ops.decode_boxes(deltas[0], anchors, (0.2, 0.5)), ref.decode_boxes(deltas[0], anchors, (0.2, 0.5)), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_encode_broadcasting_and_batches(device):
    g = torch.Generator().manual_seed(1)
    anchors = random_anchors(50, generator=g).to(device)
    gt = ref.anchors_to_corners(random_anchors(50, generator=g)).expand(3, 2, 50, 4).contiguous().to(device)
    enc = ops.encode_boxes(gt, anchors)
    assert enc.shape == gt.shape
    torch.testing.assert_close(enc[1, 1], ops.encode_boxes(gt[0, 0], anchors))
    # anchors shaped like gt
    full = anchors.expand(3, 2, 50, 4).contiguous()
    torch.testing.assert_close(ops.encode_boxes(gt, full), enc)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_decode_dtypes(device, dtype):
    g = torch.Generator().manual_seed(2)
    anchors = random_anchors(300, generator=g).to(device)
    deltas = torch.randn(2, 300, 4, generator=g).to(device, dtype)
    out = ops.decode_boxes(deltas, anchors)
    assert out.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-12)
    torch.testing.assert_close(out.double(), ref.decode_boxes(deltas, anchors).double(), rtol=tol, atol=tol)


def test_encode_decode_edge_cases():
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.3]])
    assert ops.decode_boxes(torch.zeros(0, 1, 4), anchors).shape == (0, 1, 4)
    # zero deltas decode to the anchor itself
    torch.testing.assert_close(ops.decode_boxes(torch.zeros(1, 4), anchors), ref.anchors_to_corners(anchors))
    # a zero-size ground truth encodes to -inf sizes, like the reference
    enc = ops.encode_boxes(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), anchors)
    assert math.isinf(enc[0, 2].item()) and enc[0, 2] < 0
    with pytest.raises(RuntimeError, match="anchors must be"):
        ops.encode_boxes(torch.rand(5, 4), torch.rand(4, 4))
    with pytest.raises(RuntimeError, match="deltas must be"):
        ops.decode_boxes(torch.rand(2, 5, 4), torch.rand(4, 4))
    with pytest.raises(ValueError, match="variances"):
        ops.decode_boxes(torch.rand(4, 4), torch.rand(4, 4), (0.1, -0.2))
    with pytest.raises(RuntimeError, match="variances must be positive"):
        torch.ops.dsfd.decode_boxes(torch.rand(4, 4), torch.rand(4, 4), 0.0, 0.2)
