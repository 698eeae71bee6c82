"""Deployment: ONNX export of every DSFD network (:func:`export_onnx`, ``dsfd export``).

See :mod:`dsfd.export.exporter` for the graph's inputs and outputs.
"""

from .exporter import (
    DEFAULT_OPSET,
    INPUT_FORMATS,
    OUTPUTS,
    OnnxDetector,
    export_onnx,
    face_predictions,
    match_detections,
    onnx_metadata,
    plain_pytorch_ops,
    traced_anchors,
    verify_onnx,
)

__all__ = [
    "export_onnx",
    "onnx_metadata",
    "verify_onnx",
    "match_detections",
    "OnnxDetector",
    "plain_pytorch_ops",
    "face_predictions",
    "traced_anchors",
    "INPUT_FORMATS",
    "OUTPUTS",
    "DEFAULT_OPSET",
]
