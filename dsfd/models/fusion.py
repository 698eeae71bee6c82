"""Inference-time folding of BatchNorm into the convolution before it.

In eval mode a BatchNorm is an affine map per channel, so ``bn(conv(x))``
equals one convolution with rescaled weights and a bias. Folding removes one
full read and write of every activation it touched (on a GPU in bf16 these
elementwise passes cost a large share of a ResNet's forward; on the CPU they
are separate oneDNN primitives).

Pairs are found by structure, never guessed from the data flow:

* inside an ``nn.Sequential``: a ``Conv2d`` directly followed by a
  ``BatchNorm2d`` (torchvision's ``downsample``, ``conv-bn-relu`` stacks);
* in any other module: children named ``conv<k>`` and ``bn<k>`` (also
  ``conv`` / ``bn``), torchvision's convention for blocks whose forward
  applies ``bn<k>`` to ``conv<k>``'s output and nothing else.

Every network of this package follows one of the two patterns; the tests
compare folded and unfolded outputs for each backbone. The folded BatchNorm
becomes ``nn.Identity`` and the convolution gains a bias. Uses PyTorch's own
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`.
"""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]

_CONV_NAME = re.compile(r"^conv(\w*)$")


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every ``Conv2d -> BatchNorm2d`` pair of ``module`` (in place, eval mode only); returns how many.

    Raises:
        RuntimeError: ``module`` is in training mode (BatchNorm then uses the batch statistics).
    """
    if module.training:
        raise RuntimeError("fold_batchnorm needs a module in eval mode (call .eval() first)")
    count = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                conv, bn = children[a], children[b]
                if _foldable(conv, bn):
                    setattr(parent, a, fuse_conv_bn_eval(conv, bn))
                    setattr(parent, b, nn.Identity())
                    count += 1
            continue
        for name, conv in children.items():
            m = _CONV_NAME.match(name)
            if m is None:
                continue
            bn_name = f"bn{m.group(1)}"
            bn = children.get(bn_name)
            if bn is not None and _foldable(conv, bn):
                setattr(parent, name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                count += 1
    return count
