"""Batching detection samples into padded ground-truth tensors."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["collate_detection", "collate_ignore_regions"]


def collate_detection(batch: Sequence[Tuple[Any, Any, Dict[str, Any]]]) -> Tuple[Tensor, Tensor, Tensor, List[Dict[str, Any]]]:
    """``[(image[3, H, W], boxes[K_i, 4], meta), ...]`` -> padded batch.

    Returns:
        ``images`` ``float32 [B, 3, H, W]`` (all samples must have the same
        size, as the training transform guarantees), ``gt_boxes``
        ``float32 [B, G_max, 4]`` zero-padded (``G_max`` is the largest
        ``K_i``, possibly 0), ``gt_counts`` ``int64 [B]`` and the list of
        ``meta`` dicts. The format :class:`dsfd.losses.ProgressiveAnchorLoss`
        takes.
    """
    if len(batch) == 0:
        raise ValueError("empty batch")
    images = [torch.as_tensor(s[0]) for s in batch]
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1 or images[0].dim() != 3:
        raise ValueError(
            f"collate_detection needs CHW images of one size (use a transform); got shapes {sorted(shapes)}"
        )
    boxes = [torch.as_tensor(np.asarray(s[1], dtype=np.float32) if not torch.is_tensor(s[1]) else s[1]) for s in batch]
    boxes = [b.to(torch.float32).reshape(-1, 4) for b in boxes]
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)
    gmax = int(counts.max()) if len(counts) else 0
    gt = torch.zeros(len(batch), gmax, 4, dtype=torch.float32)
    for i, b in enumerate(boxes):
        gt[i, : len(b)] = b
    return torch.stack(images).to(torch.float32), gt, counts, [s[2] for s in batch]


def collate_ignore_regions(metas: Sequence[Dict[str, Any]]) -> Tuple[Tensor, Tensor]:
    """The ``meta["ignore"]`` regions of a batch (normalised ``[M_i, 4]``; missing: none), padded.

    Returns ``ignore_boxes`` ``float32 [B, M_max, 4]`` (zero-padded) and
    ``ignore_counts`` ``int64 [B]``, the format of
    :func:`dsfd.ops.ignore_anchors` and of the loss's ``ignore_boxes`` /
    ``ignore_counts``.
    """
    regions = []
    for m in metas:
        r = m.get("ignore") if isinstance(m, dict) else None
        if r is None:
            r = torch.zeros(0, 4)
        regions.append(torch.as_tensor(r, dtype=torch.float32).reshape(-1, 4))
    counts = torch.tensor([len(r) for r in regions], dtype=torch.int64)
    mmax = int(counts.max()) if len(counts) else 0
    out = torch.zeros(len(regions), mmax, 4, dtype=torch.float32)
    for i, r in enumerate(regions):
        out[i, : len(r)] = r
    return out, counts
