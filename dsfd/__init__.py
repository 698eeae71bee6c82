"""dsfd: the Dual Shot Face Detector (CVPR 2019) with fast C++/CUDA kernels."""

from . import extension  # noqa: F401  (loads dsfd._C if built)
from . import _meta_registrations  # noqa: F401  (fake kernels for torch.compile)
from . import ops  # noqa: F401

__version__ = "0.1.0"
