"""Random inputs shared by the op tests."""

import torch


def random_boxes(n, batch=None, scale=100.0, max_size=50.0, dtype=torch.float32, device="cpu", generator=None):
    shape = (n,) if batch is None else (batch, n)
    xy = torch.rand(*shape, 2, generator=generator) * scale
    wh = torch.rand(*shape, 2, generator=generator) * max_size
    return torch.cat([xy, xy + wh], -1).to(dtype=dtype, device=device)


def random_anchors(a, generator=None):
    """cx, cy, w, h anchors in [0, 1] like DSFD's (normalised)."""
    c = torch.rand(a, 2, generator=generator)
    wh = torch.rand(a, 2, generator=generator) * 0.3 + 0.01
    return torch.cat([c, wh], 1)


def random_gt(batch, g, generator=None, dtype=torch.float32):
    """Normalised corner boxes [B, G, 4], widths/heights in (0.01, 0.41)."""
    xy = torch.rand(batch, g, 2, generator=generator) * 0.8
    wh = torch.rand(batch, g, 2, generator=generator) * 0.4 + 0.01
    return torch.cat([xy, xy + wh], -1).to(dtype)


def boxes_with_iou(iou_thresh, n=1000, generator=None):
    """Random boxes where box 1 has IoU just above the threshold with box 0 (torchvision's trick)."""
    boxes = random_boxes(n, generator=generator)
    x0, y0, x1, y1 = boxes[0].tolist()
    w = x1 - x0
    # shift box 1 horizontally so that IoU = iou_thresh + 0.01
    target = iou_thresh + 0.01
    inter_w = 2 * target * w / (1 + target)
    boxes[1] = torch.tensor([x0 + (w - inter_w), y0, x1 + (w - inter_w), y1])
    return boxes
