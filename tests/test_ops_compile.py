"""Schema / fake-kernel checks (torch.library.opcheck) and torch.compile tracing."""

import pytest
import torch

import dsfd.ops.compiled as ops

from conftest import cpu_and_cuda
from helpers import random_anchors, random_boxes, random_gt


def samples():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(40, batch=2, generator=g)
    scores = torch.rand(2, 40, generator=g)
    anchors = random_anchors(64, generator=g)
    gt = random_gt(2, 3, generator=g)
    loss = torch.rand(2, 64, generator=g)
    labels = torch.randint(-1, 2, (2, 64), generator=g)
    upper = torch.randn(1, 2, 3, 3, generator=g, requires_grad=True)
    lateral = torch.randn(1, 2, 5, 6, generator=g, requires_grad=True)
    return [
        (torch.ops.dsfd.box_iou.default, (boxes[0], boxes[1])),
        (torch.ops.dsfd.box_iou.default, (boxes, boxes)),
        (torch.ops.dsfd.encode_boxes.default, (gt[0], anchors[:3], 0.1, 0.2)),
        (torch.ops.dsfd.decode_boxes.default, (torch.randn(2, 64, 4, generator=g), anchors, 0.1, 0.2)),
        (torch.ops.dsfd.batched_nms.default, (boxes, scores, 0.3, 0.01, 30, 10)),
        (torch.ops.dsfd.match_anchors.default, (anchors, gt, torch.tensor([3, 1]), 0.4, None, 0.1, 0.2)),
        (torch.ops.dsfd.match_anchors.default, (anchors, gt, torch.tensor([3, 1]), 0.4, 0.3, 0.1, 0.2)),
        (torch.ops.dsfd.hard_negative_mask.default, (loss, labels, 3)),
        (torch.ops.dsfd.hard_negative_mask.default, (loss, labels, 3, 20)),
        (torch.ops.dsfd.ignore_anchors.default, (anchors, labels, gt, torch.tensor([3, 1]), 0.1)),
        (torch.ops.dsfd.upsample_mul.default, (upper, lateral, False, True)),
        (torch.ops.dsfd.upsample_mul.default, (upper, lateral, True, False)),
        (torch.ops.dsfd.normalize_images.default,
         (torch.randint(0, 256, (2, 5, 7, 3), generator=g, dtype=torch.uint8), [104.0, 117.0, 123.0], torch.bfloat16)),
        (torch.ops.dsfd.decode_detections.default,
         (torch.randn(2, 64, 4, generator=g), torch.randn(2, 64, 2, generator=g), anchors, 0.1, 0.2, 46.0, 64.0, 48.0)),
    ]


def _to(args, device):
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            t = a.detach().to(device)
            out.append(t.requires_grad_(a.requires_grad))
        else:
            out.append(a)
    return tuple(out)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("op,args", samples(), ids=lambda x: str(x) if not isinstance(x, tuple) else "")
def test_opcheck(op, args, device):
    # schema, fake kernel, dispatch registrations (and autograd registration where present);
    # on CUDA this checks the fake kernels against the CUDA kernels' real outputs
    torch.library.opcheck(op, _to(args, device))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck_dynamic_shapes(device):
    g = torch.Generator().manual_seed(1)
    boxes, scores = random_boxes(30, generator=g).to(device), torch.rand(30, generator=g).to(device)
    torch.library.opcheck(torch.ops.dsfd.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(torch.ops.dsfd.box_voting.default, (boxes, scores, 0.3, 750))


@pytest.mark.slow
@pytest.mark.parametrize("device", cpu_and_cuda())
def test_torch_compile_fullgraph_postprocess(device):
    """DSFD's post-processing traced whole by torch.compile (needs the fake kernels)."""

    def postprocess(loc, conf, anchors):
        scores = conf.softmax(-1)[..., 1]
        boxes = ops.decode_boxes(loc, anchors)
        return ops.batched_nms(boxes, scores, 0.3, 0.05, 200, 50)

    g = torch.Generator().manual_seed(2)
    anchors = random_anchors(500, generator=g).to(device)
    loc = (torch.randn(2, 500, 4, generator=g) * 0.1).to(device)
    conf = torch.randn(2, 500, 2, generator=g).to(device)
    compiled = torch.compile(postprocess, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(loc, conf, anchors), postprocess(loc, conf, anchors)):
        assert torch.equal(got, want)
