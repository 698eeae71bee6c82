"""Which anchors of a padded batch start inside the padding (their scores are zeroed).

An anchor whose cell origin lies at or beyond an image's width or height in
the canvas sees only padding, so no box may come from it. Level ``k``'s
cells start every ``steps[k]`` pixels (the test-time anchor generator's
strides) over that level's feature map. The map sizes come from the anchors
the network returned for the canvas
(:func:`dsfd.models.anchors.anchor_feature_sizes`: the sizes its forward
handed the generator, free); for anchors the shared cache did not produce
(a compiled network, ONNX Runtime) and for a size not run yet, from a
shape-only copy of the network
(:func:`dsfd.models.inference_prep.feature_map_sizes`: a forward on the
``meta`` device, no arithmetic, some milliseconds).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..models.anchors import anchor_feature_sizes, cached_anchors
from ..models.inference_prep import Sizes, feature_map_sizes
from ..models.interface import DetectionModel

__all__ = ["PaddingMask"]


class PaddingMask:
    """Feature-map sizes per canvas size and the anchors' cell origins (both cached, LRU).

    Args:
        shape_model: a :func:`~dsfd.models.inference_prep.shape_only_copy` of
            the network (or any network on the ``meta`` device).
        device: where the cell origins and anchors live.
    """

    def __init__(self, shape_model: DetectionModel, device: torch.device) -> None:
        self.shape_model = shape_model
        self.generator = shape_model.inference_anchors
        self.device = device
        self._sizes: "OrderedDict[Tuple[int, int], Sizes]" = OrderedDict()
        self._origins: "OrderedDict[Tuple[int, int], Tensor]" = OrderedDict()

    def feature_sizes(self, height: int, width: int, anchors: Optional[Tensor] = None) -> Sizes:
        """Each level's ``(h, w)`` for an ``height x width`` input (``anchors``: the network's for it, if at hand)."""
        key = (int(height), int(width))
        sizes = self._sizes.get(key)
        if sizes is None:
            known = None if anchors is None else anchor_feature_sizes(anchors)
            sizes = self._sizes[key] = known or feature_map_sizes(self.shape_model, *key)
            while len(self._sizes) > 64:
                self._sizes.popitem(last=False)
        self._sizes.move_to_end(key)
        return sizes

    def anchors(self, height: int, width: int) -> Tensor:
        """The network's (shared, cached) anchors for an ``height x width`` input."""
        gen = self.generator
        return cached_anchors((height, width), self.feature_sizes(height, width), gen.sizes, gen.steps,
                              gen.aspect_ratio, gen.clip, self.device, torch.float32)

    def cached_origins(self, height: int, width: int) -> Optional[Tensor]:
        return self._origins.get((height, width))

    def cell_origins(self, height: int, width: int, anchors: Tensor) -> Optional[Tensor]:
        """``[A, 2]`` pixel ``(x, y)`` of each anchor cell's top-left corner, for the network's ``anchors[A, 4]``
        of an ``height x width`` input (``None`` when the levels do not add up to ``A``: not this network's)."""
        key = (height, width)
        hit = self._origins.get(key)
        if hit is not None:
            return hit
        sizes, steps = self.feature_sizes(height, width, anchors), self.generator.steps
        if len(steps) != len(sizes) or sum(h * w for h, w in sizes) != anchors.shape[0]:
            return None
        parts = []
        for (fh, fw), step in zip(sizes, steps):
            ys = torch.arange(fh, dtype=torch.float32) * step
            xs = torch.arange(fw, dtype=torch.float32) * step
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            parts.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        origins = torch.cat(parts).to(self.device)
        self._origins[key] = origins
        while len(self._origins) > 16:
            self._origins.popitem(last=False)
        return origins

    def mask_scores(self, scores: Tensor, anchors: Tensor, meta: Tensor, height: int, width: int) -> Tensor:
        """``scores[B, A]`` with the anchors outside each image's valid ``meta[:, 0:2]`` (h, w) set to 0."""
        origins = self.cell_origins(height, width, anchors)
        if origins is None:
            return scores
        valid = (origins[None, :, 0] < meta[:, 1:2]) & (origins[None, :, 1] < meta[:, 0:1])
        return scores.masked_fill(~valid, 0.0)
