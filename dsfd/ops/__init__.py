"""dsfd.ops: the compiled kernels (``torch.ops.dsfd.*``) behind typed wrappers.

Every op has a plain-PyTorch reference with the same semantics in
:mod:`dsfd.ops.reference`.
"""

from . import reference
from .boxes import batched_nms, box_iou, box_voting, decode_boxes, encode_boxes, nms
from .fem import upsample_mul
from .matching import hard_negative_mask, match_anchors

__all__ = [
    "box_iou",
    "encode_boxes",
    "decode_boxes",
    "nms",
    "batched_nms",
    "box_voting",
    "match_anchors",
    "hard_negative_mask",
    "upsample_mul",
    "reference",
]
