"""Validation loss: the PAL loss of the val subset with the network in eval mode, normalised over the whole subset.

The model runs in **eval mode** (BatchNorm running statistics, no
augmentation: each val image resized to ``size x size``), both shots
requested explicitly, no gradients. The loss is accumulated as
dataset-level sums (summed per-anchor losses / summed positives over the
whole val subset, across ranks), so the number does not depend on the batch
size or the world size. Eval mode avoids updating the BatchNorm statistics
with val data and measures the network as it will be used.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..losses import ProgressiveAnchorLoss
from .data_setup import IndexSubset, fork_safe_iter
from .distributed import all_reduce_sum
from .model_setup import set_train_mode
from .runtime import Runtime

__all__ = ["validation_loss"]


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    frozen_bn: Sequence[nn.Module],
    criterion: ProgressiveAnchorLoss,
    dataset: Dataset,
    runtime: Runtime,
    make_loader: Callable[..., DataLoader],
    max_images: int = 0,
) -> Dict[str, Any]:
    """The loss parts, ``total`` and ``images`` over the first ``max_images`` (0: all) of ``dataset``.

    Collective under DDP: each rank takes every ``world_size``-th image and
    the sums are all-reduced. The model is back in train mode (``frozen_bn``
    in eval mode) afterwards.
    """
    info = runtime.info
    n = len(dataset)
    if max_images:
        n = min(n, int(max_images))
    shard = list(range(info.rank, n, info.world_size))
    sums = torch.zeros(6, dtype=torch.float64, device=runtime.device)  # S_l1, S_c1, S_l2, S_c2, N1, N2
    model.eval()
    try:
        if shard:
            loader = make_loader(IndexSubset(dataset, shard), batch_size=runtime.local_batch)
            for batch in fork_safe_iter(loader):
                images, gt_boxes, gt_counts = runtime.to_device(batch)
                with runtime.autocast():
                    out = model(images, shots=model.shots)
                for k, shot in enumerate((out.first, out.second)):
                    if shot is None:
                        continue
                    o = criterion.shot_loss(shot.loc, shot.conf, shot.anchors, gt_boxes, gt_counts)
                    d = o["num_pos"].clamp(min=1).double()
                    sums[2 * k] += o["loss_l"].double() * d
                    sums[2 * k + 1] += o["loss_c"].double() * d
                    sums[4 + k] += o["num_pos"].double()
    finally:
        set_train_mode(model, frozen_bn)
    all_reduce_sum(sums, info)
    s = sums.tolist()
    n1, n2 = max(1.0, s[4]), max(1.0, s[5])
    res: Dict[str, Any] = {
        "first_loss_l": s[0] / n1,
        "first_loss_c": s[1] / n1,
        "second_loss_l": s[2] / n2,
        "second_loss_c": s[3] / n2,
        "first_num_pos": s[4],
        "second_num_pos": s[5],
        "images": n,
    }
    w = criterion.shot_weights()
    res["total"] = sum(
        w[name] * (res[f"{name}_loss_l"] + res[f"{name}_loss_c"])
        for name, k in (("first", 1), ("second", 2))
        if k in model.shots
    )
    return res
