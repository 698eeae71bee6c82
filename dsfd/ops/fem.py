"""The fused Feature Enhance Module top-down step, with autograd."""

from __future__ import annotations

import torch
from torch import Tensor

from ..extension import _assert_has_ops

__all__ = ["upsample_mul"]


def upsample_mul(upper: Tensor, lateral: Tensor, align_corners: bool = False, relu: bool = False) -> Tensor:
    """``bilinear_upsample(upper, to lateral's H x W) * lateral`` (then ReLU), in one kernel.

    The upsampled map is never materialised. Differentiable in both inputs.

    Args:
        upper: ``Tensor[B, C, h, w]``, the coarser map (already projected to C channels).
        lateral: ``Tensor[B, C, H, W]``, the finer map.
        align_corners: bilinear convention (the released DSFD weights need ``True``;
            the paper network uses ``False``, PyTorch's default).
        relu: apply ReLU to the product.

    Returns:
        ``Tensor[B, C, H, W]`` equal to
        :func:`dsfd.ops.reference.upsample_mul`.
    """
    _assert_has_ops()
    return torch.ops.dsfd.upsample_mul(upper, lateral, bool(align_corners), bool(relu))
