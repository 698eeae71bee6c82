"""The compiled kernels only (``torch.ops.dsfd.*`` behind typed wrappers).

Each function raises a ``RuntimeError`` explaining how to build the
extension when ``dsfd._C`` is missing. Code outside ``dsfd.ops`` calls the
dispatching functions of :mod:`dsfd.ops` instead; this namespace is for the
kernel tests and benchmarks, which must measure the kernels themselves.
"""

from .boxes import batched_nms, box_iou, box_voting, decode_boxes, encode_boxes, nms
from .fem import upsample_mul
from .inference import decode_detections, normalize_images
from .matching import hard_negative_mask, ignore_anchors, match_anchors

__all__ = [
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "box_voting",
    "match_anchors",
    "hard_negative_mask",
    "ignore_anchors",
    "upsample_mul",
    "normalize_images",
    "decode_detections",
]
