"""int8 ONNX by ONNX Runtime's static quantization (QDQ), calibrated on real photos.

:func:`quantize_int8` takes the float32 ``"raw"`` graph (:func:`dsfd.export.export_onnx`,
``outputs="raw"``) and writes a QDQ graph: ``QuantizeLinear`` /
``DequantizeLinear`` pairs around the quantized operators, which ONNX
Runtime's CPU provider fuses into int8 kernels (VNNI / AMX where the CPU has
them). The result is still a ``"raw"`` graph (``loc``, ``conf``,
``anchors``), so :class:`dsfd.Detector` runs it with its own decoding and NMS
(``Detector(backend="onnxruntime", weights="dsfd_int8.onnx")``), and it
keeps the dynamic batch / height / width axes.

The recipe (:data:`DEFAULT_RECIPE`, chosen by ``benchmarks/ort_int8_choices.py``,
which compares the candidates with the float32 graph on held-out training
photos; the outcome is in docs/speed.md):

* **what is int8**: the convolutions (``op_types=("Conv",)``) except two
  groups kept float32 (``keep_float=("head", "/backbone/stage1")``): the last
  convolutions of the test-time head (the ``loc`` / ``conf`` outputs) and
  the first, full-resolution stage of the ``mobilenet0.25`` backbone (11
  convolutions, stride 2 to 8). In int8 that stage alone lost a quarter of
  the faces float32 draws on held-out photos; kept float, int8 draws the
  same faces. The element-wise steps (FEM's upsample-multiply, LeakyReLU,
  concatenations) stay float too. The ``/backbone/stage1`` prefix names the
  default model's layers; for other backbones it matches nothing (run the
  choices benchmark for them);
* **weights**: per output channel (``per_channel``), signed int8, symmetric;
* **activations**: unsigned int8, asymmetric; ranges from the calibration
  photos by ``calibration`` (``"minmax"``, ``"percentile"`` or ``"entropy"``).

**Calibration photos**: the ones given (paths or folders), else
:func:`default_calibration_photos`: :data:`DEFAULT_CALIBRATION_COUNT`
photos evenly spaced over the sorted WIDER FACE *training* images under
:func:`dsfd.data_paths.wider_root` (``WIDER_train/images``), never the
validation photos the AP is measured on. With ``"minmax"`` each photo runs
at its own size (longer side capped at :data:`CALIBRATION_MAX_SIDE`), as the
detector runs it; the histogram methods need one shape and take every photo
resized to :data:`FIXED_CALIBRATION_SIZE`.

Needs ``onnx`` and ``onnxruntime`` (``pip install 'dsfd[export]'``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

__all__ = ["quantize_int8", "default_calibration_photos", "calibration_photos", "DEFAULT_RECIPE",
           "DEFAULT_CALIBRATION_COUNT", "CALIBRATION_MAX_SIDE", "CALIBRATION_METHODS", "FLOAT_GROUPS", "float_nodes",
           "verify_int8"]

PathLike = Union[str, "os.PathLike[str]"]

#: Photos :func:`default_calibration_photos` takes from the WIDER FACE training images.
DEFAULT_CALIBRATION_COUNT: int = 32
#: Calibration photos with a longer side above this are downscaled to it (WIDER photos are 1024 wide).
CALIBRATION_MAX_SIDE: int = 1024
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
#: ``(H, W)`` every calibration photo is resized to for the histogram methods (percentile, entropy),
#: which need one activation shape for all photos; minmax takes each photo at its own size.
FIXED_CALIBRATION_SIZE = (768, 1024)
#: The recipe :func:`quantize_int8` uses by default (see the module docstring).
DEFAULT_RECIPE: Dict[str, Any] = {
    "op_types": ("Conv",),
    "per_channel": True,
    "calibration": "minmax",
    "keep_float": ("head", "/backbone/stage1"),
}

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def default_calibration_photos(count: int = DEFAULT_CALIBRATION_COUNT, root: Optional[PathLike] = None) -> List[Path]:
    """``count`` photos evenly spaced over the sorted ``<wider root>/WIDER_train/images/*/*.jpg`` (training only)."""
    from ..data_paths import wider_root

    folder = Path(root) if root is not None else wider_root() / "WIDER_train" / "images"
    photos = sorted(folder.glob("*/*.jpg"))
    if not photos:
        raise FileNotFoundError(
            f"no WIDER FACE training photos under {folder} for the int8 calibration; give your own photos "
            "(--calibration PHOTO_OR_FOLDER ...; a few dozen like the ones you will run on)")
    if len(photos) <= count:
        return photos
    step = len(photos) / count
    return [photos[int(i * step)] for i in range(count)]


def calibration_photos(paths: Sequence[PathLike], limit: Optional[int] = None) -> List[Path]:
    """Image files among ``paths`` (folders searched recursively, sorted), at most ``limit``."""
    out: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"calibration photo not found: {p}")
    if not out:
        raise FileNotFoundError(f"no photos in {[str(p) for p in paths]} for the int8 calibration")
    return out[:limit] if limit else out


def _read(path: Path, fixed: bool = False) -> np.ndarray:
    import cv2

    from ..io import read_image

    img = read_image(path)
    if fixed:  # the histogram calibrators stack every photo's activations: one shape for all
        return cv2.resize(img, FIXED_CALIBRATION_SIZE[::-1], interpolation=cv2.INTER_AREA)
    side = max(img.shape[:2])
    if side > CALIBRATION_MAX_SIDE:
        s = CALIBRATION_MAX_SIDE / side
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def _reader(photos: Sequence[Path], input_name: str, input_format: str, fixed: bool) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterable[Path] = iter(photos)

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            p = next(self._it, None)  # type: ignore[call-overload]
            if p is None:
                return None
            img = _read(p, fixed)[None]
            if input_format == "float":
                img = np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32)
            return {input_name: img}

        def rewind(self) -> None:
            self._it = iter(photos)

    return Reader()


def _head_convs(model: Any) -> List[str]:
    """Names of the Conv nodes whose outputs reach ``loc`` / ``conf`` through shape ops only (the last head convs)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    passthrough = {"Transpose", "Reshape", "Flatten", "Identity", "Cast", "Squeeze", "Unsqueeze", "Slice"}
    found: List[str] = []
    seen = set()
    stack = [o.name for o in model.graph.output if o.name in ("loc", "conf")]
    while stack:
        t = stack.pop()
        n = producers.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type == "Conv":
            found.append(n.name)
        elif n.op_type == "Concat":
            stack.extend(i for i in n.input if i)
        elif n.op_type in passthrough:
            stack.append(n.input[0])  # the data input (not shapes / starts / axes)
    return sorted(found)


#: Groups of convolutions ``keep_float`` may name.
FLOAT_GROUPS = ("head", "stem", "fem", "backbone", "depthwise")


def float_nodes(model: Any, keep_float: Sequence[str]) -> List[str]:
    """Conv node names of the ``keep_float`` groups (:data:`FLOAT_GROUPS`) or given node names.

    ``"head"``: the last convolutions of the test-time head (``loc`` / ``conf``);
    ``"stem"``: the first convolution (it sees the image); ``"fem"`` /
    ``"backbone"``: every convolution of that part (by the exported node names);
    ``"depthwise"``: the grouped (depthwise) convolutions; a name starting with
    ``/``: the convolutions whose node names start with it.
    """
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    out: List[str] = []
    for g in keep_float:
        if g == "head":
            out += _head_convs(model)
        elif g == "stem":
            out += convs[:1]
        elif g in ("fem", "backbone"):
            out += [c for c in convs if c.startswith(f"/{g}/")]
        elif g == "depthwise":
            out += [n.name for n in model.graph.node if n.op_type == "Conv"
                    and any(a.name == "group" and a.i > 1 for a in n.attribute)]
        elif g.startswith("/"):  # a prefix that matches nothing (another backbone's names) keeps nothing
            out += [c for c in convs if c.startswith(g)]
        else:
            raise ValueError(f"keep_float: {g!r} is neither a group {FLOAT_GROUPS} nor a Conv node of the graph")
    return sorted(set(out))


def quantize_int8(
    fp32_path: PathLike,
    out: PathLike,
    photos: Optional[Sequence[PathLike]] = None,
    *,
    calibration: str = DEFAULT_RECIPE["calibration"],
    per_channel: bool = DEFAULT_RECIPE["per_channel"],
    op_types: Sequence[str] = DEFAULT_RECIPE["op_types"],
    keep_float: Sequence[str] = DEFAULT_RECIPE["keep_float"],
    count: int = DEFAULT_CALIBRATION_COUNT,
) -> Path:
    """Write the int8 QDQ version of a float32 ``"raw"`` DSFD graph, calibrated on ``photos``.

    Args:
        fp32_path: the float32 raw graph (``dsfd export OUT --outputs raw``).
        out: the int8 ``.onnx`` to write.
        photos: calibration photos or folders (default :func:`default_calibration_photos`);
            at most ``count`` are used.
        calibration: ``"minmax"``, ``"percentile"`` (99.999th) or ``"entropy"``.
        per_channel: per-output-channel weight scales (else one per tensor).
        op_types: the ONNX operator types quantized.
        keep_float: convolutions left in float: groups of :data:`FLOAT_GROUPS` or node names.
        count: most calibration photos used.

    Returns:
        ``out``; its metadata keep the source's ``dsfd_*`` entries and add
        ``dsfd_quantization`` (the recipe and the calibration photos' names).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..inference.onnx_backend import import_onnxruntime

    import_onnxruntime()
    if calibration not in CALIBRATION_METHODS:
        raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, got {calibration!r}")
    files = calibration_photos(photos, count) if photos else default_calibration_photos(count)
    src = onnx.load(os.fspath(fp32_path))
    meta = {p.key: p.value for p in src.metadata_props}
    kind = json.loads(meta.get("dsfd_outputs", "{}")).get("kind")
    outputs = {o.name for o in src.graph.output}
    if not {"loc", "conf", "anchors"} <= outputs:
        raise ValueError(f"{fp32_path} is not a raw DSFD graph (outputs {sorted(outputs)}, kind {kind!r}); "
                         "quantize the file of dsfd export OUT --outputs raw")
    if any(init.data_type == onnx.TensorProto.INT8 for init in src.graph.initializer):
        raise ValueError(f"{fp32_path} is already quantized")
    inp = src.graph.input[0]
    input_format = "uint8" if inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8 else "float"
    exclude = float_nodes(src, keep_float)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    extra: Dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.999
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs: Dict[str, Any] = dict(
        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=per_channel,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
        calibrate_method=method, extra_options=extra,
    )
    if _accepts_calibration_providers():
        kwargs["calibration_providers"] = ["CPUExecutionProvider"]
    import contextlib
    import io
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ONNX Runtime logs advice (graph pre-processing) and progress
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(os.fspath(fp32_path), os.fspath(out),
                            _reader(files, inp.name, input_format, calibration != "minmax"), **kwargs)
    finally:
        root.setLevel(level)
    q = onnx.load(os.fspath(out))
    del q.metadata_props[:]
    recipe = {"format": "QDQ", "weights": "int8 symmetric, " + ("per channel" if per_channel else "per tensor"),
              "activations": "uint8 asymmetric", "op_types": list(op_types), "calibration": calibration,
              "keep_float": list(keep_float), "float_nodes": exclude, "calibration_photos": [p.name for p in files]}
    meta["dsfd_quantization"] = json.dumps(recipe)
    for k, v in meta.items():
        entry = q.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(q, os.fspath(out))
    return out


def _accepts_calibration_providers() -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_providers" in inspect.signature(quantize_static).parameters


def verify_int8(path: PathLike, model: Any, image: Optional[PathLike] = None) -> Dict[str, Any]:
    """Run an int8 file through ``Detector(backend="onnxruntime")`` on a photo and compare with PyTorch float32.

    ``ok`` when every face PyTorch float32 draws (at the model's drawing
    threshold) has an int8 box at IoU >= 0.5.
    """
    import torch

    from ..inference import Detector
    from ..ops import box_iou

    img = Path(image) if image is not None else Path(__file__).resolve().parents[1] / "assets" / "grace_hopper.jpg"
    ref_det = Detector(model=model, device="cpu", dtype=torch.float32)
    int8_det = Detector(backend="onnxruntime", weights=path)
    ref, got = ref_det.detect(img), int8_det.detect(img, min_score=ref_det.display_score)
    matched = 0
    if len(ref) and len(got):
        matched = int((box_iou(torch.from_numpy(ref[:, :4]), torch.from_numpy(got[:, :4])).max(1).values >= 0.5).sum())
    return {"image": str(img), "display_score": ref_det.display_score, "faces_float32": int(len(ref)),
            "faces_int8": int(len(got)), "float32_faces_matched": matched, "ok": matched == len(ref)}
