"""normalize_images and decode_detections: kernels vs references, edge cases, bad input."""

import math

import pytest
import torch

import dsfd.ops.compiled as ops
from dsfd.ops import reference as ref
from dsfd.postprocess import max_size_exponent

from conftest import cpu_and_cuda
from helpers import random_anchors

MEAN = (104.0, 117.0, 123.0)
VARIANCES = (0.1, 0.2)


# ---------------------------------------------------------------- normalize_images

@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 480, 640, 3), (3, 7, 5, 3), (2, 1, 1, 3), (1, 33, 17, 3), (2, 9, 11, 1), (1, 5, 3, 4)])
def test_normalize_images_matches_reference(device, dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).to(device)
    mean = (MEAN + (99.5,))[: shape[3]] if shape[3] > 1 else (127.25,)  # integer and non-integer means
    out = ops.normalize_images(images, mean, dtype)
    expected = ref.normalize_images(images, mean, dtype)
    assert out.shape == (shape[0], shape[3], shape[1], shape[2]) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # one rounding of the same float: identical
    # the definition itself, on a few pixels
    b, y, x = shape[0] - 1, shape[1] // 2, shape[2] - 1
    for c in range(shape[3]):
        want = torch.tensor(float(images[b, y, x, c]) - mean[c]).to(dtype)
        assert out[b, c, y, x].cpu() == want


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_normalize_images_extremes_and_empty(device):
    images = torch.tensor([[[[0, 255, 128]]]], dtype=torch.uint8, device=device)
    out = ops.normalize_images(images, MEAN, torch.float32)
    assert out.flatten().tolist() == [0 - 104.0, 255 - 117.0, 128 - 123.0]
    empty = torch.zeros((0, 4, 5, 3), dtype=torch.uint8, device=device)
    assert ops.normalize_images(empty, MEAN, torch.bfloat16).shape == (0, 3, 4, 5)
    wide = torch.zeros((1, 0, 5, 3), dtype=torch.uint8, device=device)
    assert ops.normalize_images(wide, MEAN, torch.float32).shape == (1, 3, 0, 5)


def test_normalize_images_non_contiguous_input():
    base = torch.randint(0, 256, (2, 20, 30, 3), dtype=torch.uint8)
    crop = base[:, 3:17, 5:25]  # a view: rows are strided
    assert not crop.is_contiguous()
    torch.testing.assert_close(ops.normalize_images(crop, MEAN, torch.float32),
                               ref.normalize_images(crop, MEAN, torch.float32), rtol=0, atol=0)


def test_normalize_images_bad_input():
    good = torch.zeros((1, 4, 4, 3), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="images must be uint8"):
        ops.normalize_images(good.float(), MEAN, torch.float32)
    with pytest.raises(RuntimeError, match=r"images must be \[B, H, W, C\]"):
        ops.normalize_images(good[0], MEAN, torch.float32)
    with pytest.raises(RuntimeError, match="3 channels but mean has 2 values"):
        ops.normalize_images(good, MEAN[:2], torch.float32)
    with pytest.raises(RuntimeError, match="1 to 4 channels"):
        ops.normalize_images(torch.zeros((1, 2, 2, 5), dtype=torch.uint8), [0.0] * 5, torch.float32)
    with pytest.raises(RuntimeError, match="mean values must be finite"):
        ops.normalize_images(good, (104.0, float("nan"), 0.0), torch.float32)
    with pytest.raises(RuntimeError, match="dtype must be float32, bfloat16 or float16"):
        ops.normalize_images(good, MEAN, torch.float64)


# ---------------------------------------------------------------- decode_detections

def _raw_outputs(batch, anchors, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    A = anchors.shape[0]
    loc = (torch.randn(batch, A, 4, generator=g) * 2).to(dtype).to(device)
    conf = (torch.randn(batch, A, 2, generator=g) * 4).to(dtype).to(device)
    return loc, conf


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("batch,num_anchors", [(1, 1), (1, 37), (3, 1000), (8, 257)])
def test_decode_detections_matches_reference(device, dtype, batch, num_anchors):
    g = torch.Generator().manual_seed(num_anchors)
    anchors = random_anchors(num_anchors, generator=g).to(device)
    loc, conf = _raw_outputs(batch, anchors, dtype, device, seed=batch)
    m = max_size_exponent(VARIANCES)
    boxes, scores = ops.decode_detections(loc, conf, anchors, VARIANCES, m, 640.0, 480.0)
    rb, rs = ref.decode_detections(loc, conf, anchors, VARIANCES, m, 640.0, 480.0)
    assert boxes.shape == (batch, num_anchors, 4) and scores.shape == (batch, num_anchors)
    assert boxes.dtype == scores.dtype == torch.float32
    torch.testing.assert_close(boxes, rb, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(scores, rs, rtol=1e-6, atol=1e-7)
    # the score is the face class's softmax probability
    torch.testing.assert_close(scores, torch.softmax(conf.double(), -1)[..., 1].float(), rtol=1e-5, atol=1e-7)


def test_decode_detections_equals_the_two_step_path():
    # the op replaces decode_boxes + scaling: the boxes must be those, bit for bit
    anchors = random_anchors(500, generator=torch.Generator().manual_seed(0))
    loc, conf = _raw_outputs(2, anchors, torch.float32, "cpu", seed=1)
    m = max_size_exponent(VARIANCES)
    boxes, _ = ops.decode_detections(loc, conf, anchors, VARIANCES, m, 321.0, 123.0)
    clamped = torch.cat([loc[..., :2], loc[..., 2:].clamp(max=m)], -1)
    two_step = ops.decode_boxes(clamped, anchors, VARIANCES)
    two_step[..., 0::2] *= 321.0
    two_step[..., 1::2] *= 123.0
    torch.testing.assert_close(boxes, two_step, rtol=0, atol=0)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_decode_detections_huge_offsets_nan_and_empty(device):
    anchors = torch.tensor([[0.5, 0.5, 0.1, 0.1]] * 4, device=device)
    loc = torch.tensor([[[0, 0, 1e6, 1e6], [0, 0, -1e6, -1e6], [float("nan"), 0, 0, 0], [0, 0, 0, 0]]], device=device)
    conf = torch.tensor([[[0.0, 200.0], [200.0, 0.0], [float("nan"), 0.0], [0.0, 0.0]]], device=device)
    m = max_size_exponent(VARIANCES)
    boxes, scores = ops.decode_detections(loc, conf, anchors, VARIANCES, m, 100.0, 100.0)
    rb, rs = ref.decode_detections(loc, conf, anchors, VARIANCES, m, 100.0, 100.0)
    # the size offset is clamped: the box grows at most MAX_BOX_GROWTH times, never to inf
    assert torch.isfinite(boxes[0, 0]).all() and torch.isfinite(boxes[0, 1]).all()
    assert math.isclose(float(boxes[0, 0, 2] - boxes[0, 0, 0]), 10.0 * 1e4, rel_tol=1e-4)
    assert float(boxes[0, 1, 2] - boxes[0, 1, 0]) == 0.0  # exp(-huge) underflows to a point box
    assert scores[0, 0] == 1.0 and scores[0, 1] == 0.0 and scores[0, 3] == 0.5
    assert torch.isnan(boxes[0, 2, 0]) and torch.isnan(scores[0, 2])
    torch.testing.assert_close(boxes, rb, equal_nan=True)
    torch.testing.assert_close(scores, rs, equal_nan=True)
    empty_b, empty_s = ops.decode_detections(loc[:0], conf[:0], anchors, VARIANCES, m, 10.0, 10.0)
    assert empty_b.shape == (0, 4, 4) and empty_s.shape == (0, 4)


def test_decode_detections_non_contiguous_inputs():
    anchors = random_anchors(50, generator=torch.Generator().manual_seed(3))
    both = torch.randn(2, 50, 6)
    loc, conf = both[..., :4], both[..., 4:]  # column slices of one tensor, as a fused head gives
    m = max_size_exponent(VARIANCES)
    got = ops.decode_detections(loc, conf, anchors, VARIANCES, m, 64.0, 48.0)
    want = ops.decode_detections(loc.contiguous(), conf.contiguous(), anchors, VARIANCES, m, 64.0, 48.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_decode_detections_bad_input():
    anchors = torch.rand(5, 4)
    loc, conf = torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    with pytest.raises(RuntimeError, match=r"conf must be \[B, A, 2\]"):
        ops.decode_detections(loc, torch.randn(1, 5, 3), anchors, VARIANCES, 5.0, 10.0, 10.0)
    with pytest.raises(RuntimeError, match="must agree on B and A"):
        ops.decode_detections(loc, conf, torch.rand(6, 4), VARIANCES, 5.0, 10.0, 10.0)
    with pytest.raises(RuntimeError, match="loc is Float but conf is BFloat16"):
        ops.decode_detections(loc, conf.bfloat16(), anchors, VARIANCES, 5.0, 10.0, 10.0)
    with pytest.raises(RuntimeError, match="width and height must be positive"):
        ops.decode_detections(loc, conf, anchors, VARIANCES, 5.0, 0.0, 10.0)
    with pytest.raises(ValueError, match="variances must be two positive numbers"):
        ops.decode_detections(loc, conf, anchors, (0.1, -0.2), 5.0, 10.0, 10.0)
    with pytest.raises(RuntimeError, match="must be a floating point tensor"):
        ops.decode_detections(loc.long(), conf.long(), anchors, VARIANCES, 5.0, 10.0, 10.0)


def test_new_ops_trace_under_torch_compile():
    images = torch.randint(0, 256, (1, 8, 10, 3), dtype=torch.uint8)
    anchors = random_anchors(80, generator=torch.Generator().manual_seed(0))
    loc, conf = torch.randn(1, 80, 4), torch.randn(1, 80, 2)

    def f(images, loc, conf):
        x = ops.normalize_images(images, MEAN, torch.float32)
        boxes, scores = ops.decode_detections(loc, conf, anchors, VARIANCES, 5.0, 10.0, 8.0)
        return x.sum() + boxes.sum() + scores.sum()

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(images, loc, conf), f(images, loc, conf))
