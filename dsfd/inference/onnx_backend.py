"""The ONNX Runtime backend of :class:`dsfd.Detector` (``backend="onnxruntime"``).

:class:`OrtNetwork` runs the network part only: the exported ``"raw"`` graph
(:func:`dsfd.export.export_onnx` with ``outputs="raw"``: ``uint8 [B, H, W, 3]``
BGR in, the mean subtracted in the graph; ``loc``, ``conf`` and ``anchors``
out, exactly what the PyTorch model's test-time shot returns). Everything
around it is the detector's own code, the same for both backends: the
canvas, padding, decoding (:func:`dsfd.postprocess.decode_detections`),
batched NMS and the mapping back to the photo. So for the same network
outputs both backends keep the same boxes; what differs is only the
network's arithmetic (ONNX Runtime's fp32 kernels, or an int8 QDQ graph
from :mod:`dsfd.export.quantize`).

* From PyTorch weights, the network is exported once when the detector is
  built (in memory, no file; a second or so for the default model), with
  dynamic batch / height / width axes, so **one session serves every input
  size** (ONNX Runtime re-plans its buffers when the shape changes).
* From an ``.onnx`` file (``Detector(backend="onnxruntime", weights="x.onnx")``):
  any ``dsfd export --outputs raw`` file, fp32 or int8 (``dsfd export
  --int8``). The network's description (config, display threshold) comes
  from the file's ``dsfd_*`` metadata; a shape-only copy of the network on
  PyTorch's ``meta`` device (no weights, no memory) gives the anchor
  generator's feature-map sizes, which the padding mask needs.
* Threads: ``intra_op_num_threads = torch.get_num_threads()`` (so
  ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` set both backends alike),
  one inter-op thread, sequential execution, every graph optimisation.

``onnxruntime`` is an optional dependency (the ``export`` extra:
``pip install 'dsfd[export]'``); without it :func:`import_onnxruntime`
raises a one-line ``ImportError`` that names it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..models.heads import ShotOutput
from .loading import LoadedNetwork, load_network

__all__ = ["BACKENDS", "OrtNetwork", "import_onnxruntime", "MISSING_ONNXRUNTIME", "export_raw_bytes",
           "is_onnx_file", "meta_skeleton", "backend_device_and_dtype", "load_ort_network"]

#: The values of ``Detector(backend=...)`` and of ``--backend``.
BACKENDS = ("torch", "onnxruntime")

#: The one-line error when onnxruntime is asked for but not installed.
MISSING_ONNXRUNTIME = ("backend='onnxruntime' needs the onnxruntime package, an optional extra of dsfd: "
                       "pip install 'dsfd[export]' (or: pip install onnxruntime)")


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or an ``ImportError`` naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(MISSING_ONNXRUNTIME) from None
    return onnxruntime


def is_onnx_file(weights: Any) -> bool:
    """Whether ``weights`` names an ``.onnx`` file (by its suffix)."""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights).lower().endswith(".onnx")


def backend_device_and_dtype(backend: str, weights: Any, device: Any, dtype: Any) -> Tuple[Any, Any]:
    """The detector's ``device`` and ``dtype`` arguments checked against ``backend`` (ONNX Runtime: CPU float32).

    Raises ``ValueError`` for an unknown backend, a GPU or a low precision
    asked of ONNX Runtime, and an ``.onnx`` file asked of PyTorch.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        if device is not None and str(device).lower() not in ("cpu", "auto"):
            raise ValueError(f"backend='onnxruntime' runs on the CPU here (device={device!r}); use device='cpu'")
        if dtype is not None and str(dtype).replace("torch.", "") not in ("auto", "float32"):
            raise ValueError(f"backend='onnxruntime' runs the graph's own precision (float32, or int8 for a "
                             f"dsfd export --int8 file), not dtype={dtype!r}")
        return "cpu", torch.float32
    if is_onnx_file(weights):
        raise ValueError(f"{os.fspath(weights)} is an ONNX file: run it with backend='onnxruntime' "
                         "(--backend onnxruntime)")
    return device, dtype


def load_ort_network(weights: Any, network: Optional[str], backbone: Optional[str], model: Optional[nn.Module],
                     stacklevel: int = 2) -> Tuple["OrtNetwork", LoadedNetwork]:
    """The ONNX Runtime network and the PyTorch model that describes it (mean, variances, anchors, thresholds).

    From an ``.onnx`` file the description is a weightless :func:`meta_skeleton`
    of the network named in its metadata; otherwise the PyTorch network of
    :func:`~dsfd.inference.loading.load_network`, prepared for the CPU (a copy
    in eval mode) and exported once into the session.
    """
    from ..models.inference_prep import prepare_for_inference

    import_onnxruntime()  # the missing-package error before any export
    if is_onnx_file(weights):
        if model is not None:
            raise ValueError("pass either weights or model, not both")
        ort = OrtNetwork(weights)
        described = meta_skeleton(ort.config)
        if ort.display_score is not None:
            described.display_score = float(ort.display_score)
        if ort.hide_score is not None:
            described.hide_score = float(ort.hide_score)
        return ort, LoadedNetwork(described, os.fspath(weights), False)
    loaded = load_network(weights, network, backbone, model, stacklevel + 1)
    # ONNX Runtime folds the BatchNorms in its own graph optimisation
    prepared = prepare_for_inference(loaded.model, device="cpu", fold_batchnorm=False)
    return OrtNetwork(export_raw_bytes(prepared)), loaded._replace(model=prepared)


def export_raw_bytes(model: nn.Module, display_score: Optional[float] = None) -> bytes:
    """The ``"raw"`` ONNX graph of ``model`` (uint8 NHWC in; loc, conf, anchors out), as bytes.

    :func:`dsfd.export.export_onnx` into a temporary file (the TorchScript
    exporter writes files), read back and deleted.
    """
    import tempfile

    from ..export.exporter import export_onnx

    with tempfile.TemporaryDirectory(prefix="dsfd_ort_") as tmp:
        path = export_onnx(Path(tmp) / "raw.onnx", model=model, outputs="raw", input_format="uint8",
                           check=False, display_score=display_score)
        return path.read_bytes()


def meta_skeleton(config: Dict[str, Any]) -> nn.Module:
    """The network of ``config`` (a checkpoint's / ONNX file's ``dsfd_config``) on the ``meta`` device.

    No weights and no memory: it gives the architecture's constants (mean,
    variances, anchor generator) and, run on a ``meta`` tensor, the
    feature-map sizes of any input size in a fraction of a millisecond per layer.
    """
    from ..models.dsfd import build_model
    from ..models.weights import _model_kwargs

    kwargs = _model_kwargs(config)
    if "network" not in kwargs:
        raise ValueError(f"the ONNX file's dsfd_config names no network ({config!r}); export it with dsfd export")
    with torch.device("meta"):
        model = build_model(**kwargs)
    return model.eval().requires_grad_(False)


class OrtNetwork:
    """An ONNX Runtime session of a ``"raw"`` DSFD graph, run like the PyTorch network's test-time shot.

    Args:
        source: an ``.onnx`` path or the graph's bytes (:func:`export_raw_bytes`).
        threads: intra-op threads (default ``torch.get_num_threads()``).
        spinning: whether idle intra-op threads spin-wait (``None``: ONNX
            Runtime's default, on). Off frees the cores sooner for the
            PyTorch post-processing that follows each run, on answers the next
            run sooner; ``benchmarks/yunet_compare.py --ort-spinning`` compares.

    Attributes:
        config: the network config from the file's metadata (``{}`` when absent).
        display_score: the model's drawing threshold from the metadata, or ``None``.
        hide_score: its anonymisation threshold from the metadata, or ``None``.
        quantization: the int8 recipe from the metadata (``None`` for fp32).
        input_format: ``"uint8"`` (``[B, H, W, 3]``) or ``"float"`` (``[B, 3, H, W]``).
    """

    def __init__(self, source: Union[str, "os.PathLike[str]", bytes], threads: Optional[int] = None,
                 spinning: Optional[bool] = None) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        if spinning is not None:  # ONNX Runtime's default: worker threads spin a while after each run
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = spinning
        self._source = source  # to rebuild the session with other options (rebuilt())
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # no warnings about shape inference of the dynamic axes
        self.source = "<exported in memory>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
        if not isinstance(source, (bytes, bytearray)) and not Path(self.source).is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.source}")
        try:
            self.session = ort.InferenceSession(source if isinstance(source, (bytes, bytearray)) else self.source,
                                                sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"ONNX Runtime cannot load {self.source}: {e}") from None
        self.threads = opts.intra_op_num_threads
        meta = self._metadata()
        self.config: Dict[str, Any] = meta.get("config") or {}
        self.display_score: Optional[float] = meta.get("display_score")
        self.hide_score: Optional[float] = meta.get("hide_score")
        self.quantization: Optional[Dict[str, Any]] = meta.get("quantization")
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if len(inputs) != 1 or not {"loc", "conf", "anchors"} <= set(outputs):
            kind = (meta.get("outputs") or {}).get("kind", "?")
            raise ValueError(
                f"{self.source} is not a raw DSFD graph (outputs {outputs}, kind {kind!r}): the onnxruntime backend "
                "runs the network only and does its own decoding and NMS; export one with "
                "dsfd export OUT.onnx --outputs raw (or --int8)")
        self.input_name = inputs[0].name
        self.input_format = "uint8" if inputs[0].type == "tensor(uint8)" else "float"

    def _metadata(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in self.session.get_modelmeta().custom_metadata_map.items():
            if k.startswith("dsfd_"):
                try:
                    out[k[5:]] = json.loads(v)
                except ValueError:
                    out[k[5:]] = v
        return out

    def rebuilt(self, threads: Optional[int] = None, spinning: Optional[bool] = None) -> "OrtNetwork":
        """The same graph in a new session with other thread options."""
        return OrtNetwork(self._source, threads=threads or self.threads, spinning=spinning)

    @property
    def precision(self) -> str:
        """``"int8"`` for a quantized graph, else ``"float32"``."""
        return "int8" if self.quantization else "float32"

    def __call__(self, images_u8: Tensor) -> ShotOutput:
        """A CPU ``uint8 [B, H, W, 3]`` BGR canvas -> ``ShotOutput(loc, conf, anchors)`` (CPU float32 tensors)."""
        x = images_u8.numpy() if isinstance(images_u8, Tensor) else np.asarray(images_u8)
        if self.input_format == "float":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        loc, conf, anchors = self.session.run(["loc", "conf", "anchors"], {self.input_name: x})
        return ShotOutput(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(anchors))

    def __repr__(self) -> str:
        return f"OrtNetwork({self.source}, {self.precision}, threads={self.threads})"
