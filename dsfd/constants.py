"""Numbers of the DSFD protocol that several layers share, each written once here.

Leaf module (imports nothing from the package), so that the ops, the models,
the data pipeline and the exporters can all take their defaults from it.
"""

from __future__ import annotations

from typing import Tuple

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MIN_INPUT_SIZE",
    "BGR_MEAN",
    "BOX_VARIANCES",
    "SCORE_THRESHOLD",
    "IOU_THRESHOLD",
    "PRE_NMS_TOP_K",
    "MAX_KEEP",
    "VOTE_IOU_THRESHOLD",
    "DISPLAY_SCORE",
    "BACKBONES",
    "MOBILE_BACKBONES",
]

#: Per-channel mean subtracted from BGR 0-255 images (the networks' input normalisation).
BGR_MEAN: Tuple[float, float, float] = (104.0, 117.0, 123.0)
#: SSD box-encoding variances ``(centre, size)`` of both networks.
BOX_VARIANCES: Tuple[float, float] = (0.1, 0.2)

# Test-time post-processing (the released evaluation settings), see dsfd.postprocess.
#: Face probability a box must exceed to enter NMS.
SCORE_THRESHOLD: float = 0.01
#: NMS IoU: a box overlapping a kept, higher-scoring box by more is suppressed.
IOU_THRESHOLD: float = 0.3
#: Boxes per image entering NMS (highest scores).
PRE_NMS_TOP_K: int = 5000
#: Boxes per image kept after NMS (and after box voting).
MAX_KEEP: int = 750
#: IoU at which accuracy mode's box voting merges boxes (the released protocol's 0.3).
VOTE_IOU_THRESHOLD: float = 0.3

#: Score above which a detection is worth showing (drawing, JSON output); the
#: raw output keeps everything above SCORE_THRESHOLD for evaluation.
DISPLAY_SCORE: float = 0.5

#: Backbone names of the paper network (:func:`dsfd.models.build_backbone`); here, in the leaf
#: module, so the command lines can offer them without importing torch.
BACKBONES: Tuple[str, ...] = (
    "vgg16", "resnet50", "resnet101", "resnet152", "tiny", "lite", "mobilenet0.25", "mobilenetv2"
)
#: Backbones that start from pretrained mobile bodies (:mod:`dsfd.models.mobilenet`).
MOBILE_BACKBONES: Tuple[str, ...] = ("mobilenet0.25", "mobilenetv2")

#: Longer image side above which images are downscaled before detection (``Detector(max_size=)``, ``--max-size``).
DEFAULT_MAX_SIZE: int = 4096
#: Smallest input side the networks take (smaller images and canvases are padded up to it).
MIN_INPUT_SIZE: int = 32
