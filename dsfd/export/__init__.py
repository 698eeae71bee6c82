"""Deployment: ONNX export of every DSFD network (:func:`export_onnx`, ``dsfd export``).

See :mod:`dsfd.export.exporter` for the graph's inputs and outputs and
:mod:`dsfd.export.quantize` for the int8 graph (:func:`quantize_int8`, ``dsfd export --int8``).
"""

from .exporter import (
    DEFAULT_OPSET,
    INPUT_FORMATS,
    OUTPUTS,
    OnnxDetector,
    export_onnx,
    match_detections,
    onnx_metadata,
    traced_anchors,
    verify_onnx,
)

from .quantize import default_calibration_photos, quantize_int8  # noqa: E402

from .exporter import __all__ as _exporter_all  # noqa: E402  (one list of the public names)

__all__ = [*_exporter_all, "quantize_int8", "default_calibration_photos"]
