"""Deployment: ONNX export of every DSFD network (:func:`export_onnx`, ``dsfd export``).

See :mod:`dsfd.export.exporter` for the graph's inputs and outputs.
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

from .exporter import __all__  # noqa: E402,F401  (one list of the public names)
