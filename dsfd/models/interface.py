"""What inference, calibration and export use of a DSFD network, shared by both networks.

The paper's dual-shot :class:`~dsfd.models.DSFD` and the authors'
single-shot :class:`~dsfd.models.ReleasedDSFD` name their parts
differently (second shot vs face branch, ``second_shot_anchors`` vs
``face_anchors``, plain vs 4-conv heads). :class:`DetectionModel` is the one
vocabulary the layers above use, so that they never probe a model with
``getattr``:

* ``network`` (``"paper"`` / ``"released"``), ``pixel_mean`` (BGR, subtracted
  from 0-255 inputs) and ``variances`` (box encoding);
* ``inference_anchors``: the anchor generator of the shot used at test time;
* ``inference_shot(output)``: that shot's :class:`~dsfd.models.heads.ShotOutput`
  in ``forward``'s output;
* ``inference_predictions(x)``: the same ``loc`` / ``conf`` without Python-side
  anchors, plus the six feature maps (what a trace for ONNX needs);
* ``inference_head_convs()`` and ``background_logit_mask(level)``: the last
  convolutions of that shot's heads and which of their class channels feed
  the background logit (what :func:`~dsfd.models.calibration.calibrate_random_model`
  rescales).
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import Tensor, nn

from ..constants import BGR_MEAN, BOX_VARIANCES
from .anchors import AnchorGenerator
from .heads import ShotOutput

__all__ = ["DetectionModel", "PaperDSFDInterface"]


class DetectionModel:
    """Mixin of the test-time interface; each network implements the methods (see the module docstring)."""

    #: ``"paper"`` or ``"released"`` (also ``config["network"]``).
    network: str = ""
    #: Per-channel mean subtracted from BGR 0-255 images.
    pixel_mean: Tuple[float, float, float] = BGR_MEAN
    #: Box-encoding variances of the predictions.
    variances: Tuple[float, float] = BOX_VARIANCES

    @property
    def inference_anchors(self) -> AnchorGenerator:
        raise NotImplementedError

    def inference_shot(self, output: Any) -> ShotOutput:
        raise NotImplementedError

    def inference_predictions(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        raise NotImplementedError

    def inference_head_convs(self) -> Tuple[List[nn.Conv2d], List[nn.Conv2d]]:
        raise NotImplementedError

    def background_logit_mask(self, level: int) -> Tensor:
        raise NotImplementedError


class PaperDSFDInterface(DetectionModel):
    """:class:`DetectionModel` for the paper network: the second shot is the test-time shot.

    Reads the attributes :class:`~dsfd.models.DSFD` defines (``backbone``,
    ``fem``, ``enhanced_norms``, ``source_norms``, ``second_shot_head``,
    ``second_shot_anchors``).
    """

    network = "paper"

    @property
    def inference_anchors(self) -> AnchorGenerator:
        return self.second_shot_anchors

    def inference_shot(self, output: Any) -> ShotOutput:
        return output.second

    def inference_predictions(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        feats = self.backbone(x)
        if self.fem is not None:
            enhanced = self._norm(self.enhanced_norms, self.fem(feats))
        else:  # built without the FEM: the second shot reads the backbone maps
            enhanced = self._norm(self.source_norms, feats)
        loc, conf = self.second_shot_head(enhanced)
        return loc, conf, list(feats)

    def inference_head_convs(self) -> Tuple[List[nn.Conv2d], List[nn.Conv2d]]:
        return list(self.second_shot_head.loc), list(self.second_shot_head.conf)

    def background_logit_mask(self, level: int) -> Tensor:
        conv = self.second_shot_head.conf[level]
        mask = torch.zeros(conv.out_channels, dtype=torch.bool)
        mask.view(-1, self.num_classes)[:, 0] = True  # (background, face, ...) per anchor
        return mask
