"""Face detection with DSFD: the :class:`Detector` API, accuracy mode, drawing and the ``dsfd detect`` CLI.

* :class:`Detector` / :func:`load_detector` - images (arrays or paths) in,
  ``[K, 5]`` ``x1, y1, x2, y2, score`` arrays out; batched, on-device
  post-processing (:mod:`.detector`, with :mod:`.loading`, :mod:`.canvas`,
  :mod:`.transfer`, :mod:`.padding`, :mod:`.cuda_graphs`, the network in
  :mod:`.torch_backend` or :mod:`.onnx_backend`, and :mod:`dsfd.postprocess`);
* :mod:`.multiscale` - the released WIDER FACE multi-scale + flip protocol;
* :mod:`.drawing` - boxes drawn on images, JSON records;
* :mod:`.cli` - ``dsfd detect``.

Images are read by :mod:`dsfd.io`; models come from :mod:`dsfd.models`.
"""

from .canvas import MIN_INPUT_SIZE
from .detector import DEFAULT_MAX_SIZE, DISPLAY_SCORE, Detector, load_detector
from .drawing import detections_to_records, draw_detections
from .multiscale import max_test_scale, wider_test_passes

__all__ = [
    "Detector",
    "load_detector",
    "DISPLAY_SCORE",
    "DEFAULT_MAX_SIZE",
    "MIN_INPUT_SIZE",
    "draw_detections",
    "detections_to_records",
    "wider_test_passes",
    "max_test_scale",
]
