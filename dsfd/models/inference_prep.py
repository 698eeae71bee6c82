"""A network made ready for inference, and its shape-only twin.

:func:`prepare_for_inference` returns the network a detector runs: a *copy*
(so a detector built during training never changes the network being
trained: its mode, gradients, BatchNorms and precision) in eval mode, with
its BatchNorms folded into the convolutions before them, its weights stored
in the autocast precision, on the device and in the memory format the
detector wants, optionally compiled.

:func:`shape_only_copy` returns a weightless copy on PyTorch's ``meta``
device, whose forward computes shapes and no numbers; :func:`feature_map_sizes`
reads from it each level's feature-map size for an input size - the sizes
the test-time anchor generator is called with - for any input size, without
running the real network (the padding mask of :mod:`dsfd.inference.padding`
needs them for every canvas size, compiled or ONNX Runtime networks included).
"""

from __future__ import annotations

import copy
from typing import Dict, Tuple, Union

import torch
from torch import nn

from .fusion import fold_batchnorm as fold_conv_batchnorms
from .interface import DetectionModel
from .onednn import use_onednn_convolutions

__all__ = ["prepare_for_inference", "shape_only_copy", "feature_map_sizes"]

Sizes = Tuple[Tuple[int, int], ...]


def prepare_for_inference(
    model: nn.Module,
    *,
    device: Union[str, torch.device],
    dtype: torch.dtype = torch.float32,
    fold_batchnorm: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    onednn: bool = True,
) -> nn.Module:
    """A copy of ``model`` ready to run under ``dtype`` autocast on ``device``; ``model`` itself is never changed.

    In this order (the order fixes the rounding, so results stay bit-identical):

    * a deep copy, in eval mode, without gradients;
    * ``fold_batchnorm``: a ``fem_norm`` network's FEM BatchNorms folded
      (``fold_fem_norm``), then every convolution-BatchNorm pair
      (:func:`dsfd.models.fusion.fold_batchnorm`): exact up to float
      rounding, one pass over each activation less;
    * bfloat16 / float16: convolution and linear weights stored in that
      precision once - autocast would cast them again on every call (its
      weight cache only keeps tensors that require grad); the same numbers;
    * moved to ``device``; ``channels_last`` memory format;
    * ``onednn`` on the CPU (not compiled): every convolution runs through
      oneDNN with a packed weight, with the ``ReLU`` / ``LeakyReLU`` that
      follows it inside a Sequential fused in
      (:func:`dsfd.models.onednn.use_onednn_convolutions`; bf16 outputs then
      differ by at most one bf16 rounding step);
    * ``compile``: wrapped in ``torch.compile`` (the prepared network is then
      the result's ``_orig_mod``).
    """
    prepared = copy.deepcopy(model).eval().requires_grad_(False)
    if fold_batchnorm:
        if hasattr(prepared, "fold_fem_norm"):
            prepared.fold_fem_norm()  # a --fem-norm training checkpoint's FEM BatchNorms (no-op otherwise)
        fold_conv_batchnorms(prepared)
    if dtype in (torch.bfloat16, torch.float16):
        for m in prepared.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.to(dtype)
    prepared.to(device)
    if channels_last:
        prepared.to(memory_format=torch.channels_last)
    if onednn and torch.device(device).type == "cpu" and not compile:
        use_onednn_convolutions(prepared)
    return torch.compile(prepared) if compile else prepared


def shape_only_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` on the ``meta`` device (float32, no storage): its forward gives shapes only.

    Parameters and buffers are replaced before copying, so no weight is
    ever duplicated; cached fused weights (:mod:`dsfd.models.fem`) are dropped.
    """
    memo: Dict[int, torch.Tensor] = {}

    def meta_like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty(t.shape, dtype=torch.float32 if t.is_floating_point() else t.dtype, device="meta")

    for p in model.parameters():
        memo[id(p)] = nn.Parameter(meta_like(p), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = meta_like(b)
    skeleton = copy.deepcopy(model, memo)
    return skeleton.train().eval()  # train() empties the fused-weight caches of the FEMs and heads


def feature_map_sizes(shape_model: DetectionModel, height: int, width: int) -> Sizes:
    """Each level's ``(h, w)`` for an ``height x width`` input, from a :func:`shape_only_copy`'s forward.

    The maps of :meth:`~dsfd.models.DetectionModel.inference_predictions` are
    the ones whose sizes the network hands its test-time anchor generator.
    """
    with torch.no_grad():
        _, _, maps = shape_model.inference_predictions(torch.empty(1, 3, int(height), int(width), device="meta"))
    return tuple((int(m.shape[-2]), int(m.shape[-1])) for m in maps)
