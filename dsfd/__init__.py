"""dsfd: the Dual Shot Face Detector (CVPR 2019) with fast C++/CUDA kernels."""

from . import extension  # noqa: F401  (loads dsfd._C if built)
from . import _meta_registrations  # noqa: F401  (fake kernels for torch.compile)
from . import ops  # noqa: F401

__version__ = "0.1.0"


_LAZY = {
    "Detector": "inference",
    "load_detector": "inference",
    "build_model": "models",
    "load_weights": "models",
    "export_onnx": "export",
}


def __getattr__(name: str):
    # ``dsfd.Detector``, ``dsfd.load_weights``, ... without importing the model
    # and inference stacks (and cv2) on ``import dsfd``.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dsfd' has no attribute {name!r}")
