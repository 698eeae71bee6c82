"""File formats shared by training, inference and evaluation (no torch needed).

* :mod:`.images` - reading and converting images: one strict rule set for
  every caller (:func:`read_image`, :func:`to_bgr_uint8`, :class:`ImageError`);
* :mod:`.wider_predictions` - WIDER FACE prediction files: the writer the
  detector uses and the reader the evaluation uses.
"""

from .images import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ImageError,
    is_image_path,
    is_video_path,
    read_image,
    to_bgr_uint8,
)
from .wider_predictions import (
    format_prediction_file,
    image_key,
    read_prediction_file,
    read_prediction_folder,
    wider_boxes_for_file,
    write_prediction_file,
    write_prediction_folder,
)

__all__ = [
    "ImageError",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "read_image",
    "to_bgr_uint8",
    "is_image_path",
    "is_video_path",
    "image_key",
    "format_prediction_file",
    "read_prediction_file",
    "read_prediction_folder",
    "write_prediction_file",
    "write_prediction_folder",
    "wider_boxes_for_file",
]
