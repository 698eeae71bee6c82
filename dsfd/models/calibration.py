"""Finite, detector-like outputs from a randomly initialised network (tests, benchmarks, no-weights runs).

A random DSFD in eval mode (BatchNorm running statistics 0 / 1, and the
FEM's unnormalised products of feature maps) gives activations of
1e3-1e14, hence infinite boxes and scores of exactly 0 or 1.
:func:`calibrate_random_model` rescales it so that the number of detections
and the post-processing workload look like a real detector's.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .interface import DetectionModel

__all__ = ["calibrate_random_model", "dead_leaves_image"]


def dead_leaves_image(height: int, width: int, seed: int, disks: int = 500) -> np.ndarray:
    """A synthetic BGR ``uint8`` image with natural-image statistics: occluding disks of power-law radii."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    r_min, r_max = 2.0, max(height, width) / 3
    u = rng.random(disks)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # density ~ r^-3
    for r in np.sort(radii)[::-1]:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(r), colour, -1)
    return img


@torch.no_grad()
def calibrate_random_model(
    model: DetectionModel,
    images: Optional[Sequence[np.ndarray]] = None,
    loc_std: float = 0.5,
    conf_std: float = 2.0,
    background_bias: float = 3.0,
) -> nn.Module:
    """Make a randomly initialised DSFD give finite, spread-out outputs on ``images`` (in place).

    1. sets the BatchNorm statistics from train-mode passes over ``images``, and
    2. scales each level's final head convolution of the test-time shot so
       that, on ``images``, box offsets have standard deviation ``loc_std``
       and class logits ``conf_std``, with the face logit
       ``background_bias`` below the background logit on average.

    Detections stay meaningless, but on images like the calibration images
    their number and the post-processing workload look like a real
    detector's (tests and benchmarks calibrate on the images they use).
    The outputs grow steeply with input contrast (the FEM multiplies feature
    maps of six levels), so other images may still saturate the scores.

    Args:
        images: BGR ``uint8`` ``[H, W, 3]`` arrays (default: two synthetic
            "dead leaves" images of 256 x 320, with natural-image-like statistics).
    """
    if images is None:
        images = [dead_leaves_image(256, 320, 0), dead_leaves_image(256, 320, 1)]
    dev = next(model.parameters()).device
    mean = torch.tensor(model.pixel_mean, device=dev).view(1, 3, 1, 1)
    xs = [torch.from_numpy(np.ascontiguousarray(im)).to(dev).permute(2, 0, 1)[None].float() - mean for im in images]

    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
        model.train()
        try:
            for x in xs:
                model(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    model.eval()

    locs, confs = model.inference_head_convs()
    for m in locs + confs:
        if m.bias is not None:
            m.bias.zero_()
    sums: Dict[nn.Module, float] = {}

    def hook(mod: nn.Module, _args: Any, out: Tensor) -> None:
        v = float(out.float().std()) if out.numel() > 1 else 1.0
        sums[mod] = sums.get(mod, 0.0) + (v if math.isfinite(v) else math.inf)

    handles = [m.register_forward_hook(hook) for m in locs + confs]
    # the hooks need the head convs called as modules, not fused into one convolution
    fused = [m for m in model.modules() if getattr(m, "fuse_branches", None) is True]
    for m in fused:
        m.fuse_branches = False
    try:
        for x in xs:
            model(x)
    finally:
        for hd in handles:
            hd.remove()
        for m in fused:
            m.fuse_branches = True
    loc_set = set(locs)
    for m in locs + confs:
        std = sums.get(m, 0.0) / len(xs)
        target = loc_std if m in loc_set else conf_std
        m.weight.mul_(target / std if 0 < std < math.inf else 0.0)

    for level, m in enumerate(confs):
        if m.bias is not None:
            bias = torch.full_like(m.bias, -background_bias / 2)
            bias[model.background_logit_mask(level).to(bias.device)] = background_bias / 2
            m.bias.copy_(bias)
    model.train(was_training)
    return model
