"""Face detection with DSFD: the :class:`Detector` API, accuracy mode, image I/O and the ``dsfd detect`` CLI.

* :class:`Detector` / :func:`load_detector` - images (arrays or paths) in,
  ``[K, 5]`` ``x1, y1, x2, y2, score`` arrays out; batched, on-device
  post-processing (:mod:`.detector`);
* :mod:`.multiscale` - the released WIDER FACE multi-scale + flip protocol;
* :mod:`.io` - reading / validating / converting images, drawing boxes;
* :mod:`.cli` - ``dsfd detect``.
"""

from .detector import (
    DEFAULT_MAX_SIZE,
    DISPLAY_SCORE,
    MIN_INPUT_SIZE,
    Detector,
    RandomWeightsWarning,
    calibrate_random_model,
    default_weights_path,
    load_detector,
)
from .io import ImageError, draw_detections, read_image, to_bgr_uint8
from .multiscale import max_test_scale, wider_test_passes

__all__ = [
    "Detector",
    "load_detector",
    "RandomWeightsWarning",
    "DISPLAY_SCORE",
    "DEFAULT_MAX_SIZE",
    "MIN_INPUT_SIZE",
    "default_weights_path",
    "calibrate_random_model",
    "ImageError",
    "read_image",
    "to_bgr_uint8",
    "draw_detections",
    "wider_test_passes",
    "max_test_scale",
]
