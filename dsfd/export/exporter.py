"""ONNX export of every DSFD network this package builds.

:func:`export_onnx` wraps a paper (:class:`~dsfd.models.DSFD`) or released
(:class:`~dsfd.models.ReleasedDSFD`) network in :class:`OnnxDetector`, a
module written only with ONNX-exportable tensor ops, and writes it with
``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``:
it records the feature-map sizes as ``Shape`` ops, so anchors and decoding
follow the input size at run time). Batch, height and width are dynamic.

**Input** ``images`` (BGR, 0-255; the graph subtracts the mean ``(104, 117, 123)`` itself):

* ``input_format="uint8"`` (default): ``uint8 [B, H, W, 3]``, i.e. OpenCV
  images (``cv2.imread``) stacked along a new first axis;
* ``input_format="float"``: ``float32 [B, 3, H, W]``, i.e. what
  ``cv2.dnn.blobFromImage(image)`` returns (no scaling, no mean, no swapRB).

Any ``H, W >= 1`` work, as in PyTorch (tested from 1x1 to 1000x37); the
:class:`dsfd.Detector` pads inputs below 32 px, the graph does not.

**Outputs**, by ``outputs=``:

* ``"raw"``: ``loc float32 [B, A, 4]`` (encoded offsets, variances 0.1 / 0.2),
  ``conf float32 [B, A, 2]`` (logits: background, face) and ``anchors
  float32 [A, 4]`` (``cx, cy, w, h`` normalised by the input width / height;
  the released network clamps them to ``[0, 1]``), exactly what the PyTorch
  model returns (``model(x).second`` / ``.face``);
* ``"boxes"`` (default): ``boxes float32 [B, A, 4]`` (``x1, y1, x2, y2`` in
  input pixels, not clipped) and ``scores float32 [B, A]`` (softmax face
  probability), the decoding of the raw outputs with
  :func:`dsfd.ops.reference.decode_boxes`'s formula;
* ``"detections"``: the boxes after ONNX's own ``NonMaxSuppression``:
  ``detections float32 [K, 6]`` with rows ``batch_index, x1, y1, x2, y2,
  score``, grouped by image and sorted by decreasing score within an image,
  boxes clipped to the image. Per image the same steps as
  :class:`dsfd.Detector` (:class:`dsfd.postprocess.PostProcessConfig`): the
  ``pre_nms_top_k`` (5000) best scores enter NMS, a box needs
  ``score > score_threshold`` (0.01), a box is suppressed by a kept box with
  IoU ``> iou_threshold`` (0.3), at most ``max_keep`` (750) are kept.

``A = sum_k h_k * w_k`` anchors (34,125 at 640x640). Decoding clamps the size
exponent like the detector (boxes at most 1e4 times their anchor).

The compiled ops are switched off during export
(:func:`dsfd.ops.use_reference`): the graph holds only standard ONNX operators
(no ``dsfd::`` custom op), so ONNX Runtime, OpenCV's DNN module and other
runtimes need no plug-in.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..models.interface import DetectionModel
from ..postprocess import PostProcessConfig, max_size_exponent

__all__ = [
    "export_onnx",
    "onnx_metadata",
    "verify_onnx",
    "match_detections",
    "OnnxDetector",
    "traced_anchors",
    "INPUT_FORMATS",
    "OUTPUTS",
    "DEFAULT_OPSET",
]

INPUT_FORMATS: Tuple[str, ...] = ("uint8", "float")
OUTPUTS: Tuple[str, ...] = ("raw", "boxes", "detections")
#: ONNX opset of the exported graphs (ONNX Runtime runs opset 17 since 1.12).
DEFAULT_OPSET: int = 17

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- plain ops


def _as_f64(v: float) -> Tensor:
    """A constant as a float64 tensor of shape ``[1]``.

    Not a Python float or a 0-dim tensor: the TorchScript exporter types those
    as "scalars" and may compute them (and what they touch) in float32.
    """
    return torch.tensor([float(v)], dtype=torch.float64)


def _size_f64(n: Any) -> Tensor:
    """A (traced) size as a float64 tensor of shape ``[1]``: ``arange(n)[-1:] + 1``.

    Not ``Cast(Gather(Shape))``: OpenCV 5's DNN engine leaves a Cast of a
    shape value in int64 and then rejects the mixed-type arithmetic; a Cast
    of a ``Range`` output is fine everywhere. Exact for any size.
    """
    return torch.arange(n).to(torch.float64)[-1:] + 1.0


def traced_anchors(generator: nn.Module, image: Tensor, feats: Sequence[Tensor]) -> Tensor:
    """:func:`dsfd.models.generate_anchors` written with tensor ops on the traced shapes.

    ``image`` is the ``[B, 3, H, W]`` input and ``feats`` the level maps;
    under ``torch.onnx.export`` their sizes become ``Shape`` ops, so the
    anchors follow the input size at run time. Same float64 arithmetic and
    operation order as the cached generator, rounded once to float32: the
    values are bit-identical to ``model(x)``'s anchors.
    """
    H, W = _size_f64(image.shape[-2]), _size_f64(image.shape[-1])
    # every constant as a float64 tensor of shape [1]: a Python float (or a 0-dim tensor) would
    # enter the graph as a float32 constant
    sq = _as_f64(math.sqrt(generator.aspect_ratio))
    half = _as_f64(0.5)
    parts = []
    for f, size, step in zip(feats, generator.sizes, generator.steps):
        fh, fw = f.shape[-2], f.shape[-1]
        size, step = _as_f64(size), _as_f64(step)
        # integer Range, then Cast (OpenCV's DNN Range layer has no float64 kernel)
        cy = (torch.arange(fh).to(torch.float64) + half) / (H / step)
        cx = (torch.arange(fw).to(torch.float64) + half) / (W / step)
        # the grid by broadcasting (x + 0 is exact), not meshgrid / ones_like (Expand,
        # ConstantOfShape): plain element-wise ops that every runtime types the same way
        zero = cy.unsqueeze(1) * _as_f64(0.0) + cx.unsqueeze(0) * _as_f64(0.0)  # [fh, fw]
        gx = cx.unsqueeze(0) + zero
        gy = cy.unsqueeze(1) + zero
        w = zero + (size / W) / sq
        h = zero + (size / H) * sq
        parts.append(torch.stack([gx, gy, w, h], -1).reshape(-1, 4))
    out = torch.cat(parts, 0).to(torch.float32)
    if generator.clip:
        out = out.clamp(0.0, 1.0)
    return out


# --------------------------------------------------------------------------- NMS


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (center_point_box = 0) with an eager implementation for tracing.

    ``boxes [B, N, 4]`` corners, ``scores [B, 1, N]`` -> ``selected [K, 3]``
    int64 rows ``(batch, class, box)``. Eager semantics as in ONNX Runtime:
    ``score > score_threshold``, greedy by decreasing score, IoU
    ``> iou_threshold`` suppresses, at most ``max_output`` per image.
    """

    @staticmethod
    def forward(ctx: Any, boxes: Tensor, scores: Tensor, max_output: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            s = scores[b, 0]
            cand = torch.nonzero(s > score_threshold).flatten()
            keep = cand[ops.nms(boxes[b, cand].contiguous(), s[cand].contiguous(), iou_threshold)][:max_output]
            sel = torch.zeros(keep.numel(), 3, dtype=torch.int64)
            sel[:, 0] = b
            sel[:, 2] = keep
            rows.append(sel)
        return torch.cat(rows, 0) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_output: int, iou_threshold: float,
                 score_threshold: float) -> Any:
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([int(max_output)], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([float(iou_threshold)], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([float(score_threshold)], dtype=torch.float32)),
            center_point_box_i=0,
        )


# --------------------------------------------------------------------------- the exported module


class OnnxDetector(nn.Module):
    """A DSFD network plus pre- and post-processing in ONNX-exportable ops (see the module docstring).

    Args:
        model: a paper or released DSFD (put in eval mode; a float32 CPU model for export).
        input_format: ``"uint8"`` (``[B, H, W, 3]``) or ``"float"`` (``[B, 3, H, W]``), BGR 0-255.
        outputs: ``"raw"``, ``"boxes"`` or ``"detections"``.
        postprocess: the NMS settings of ``"detections"``.

    ``forward(images)`` returns a tuple of tensors (names in :attr:`output_names`).
    It also runs eagerly, so it can be compared with the exported graph.
    """

    def __init__(
        self,
        model: nn.Module,
        input_format: str = "uint8",
        outputs: str = "boxes",
        postprocess: PostProcessConfig = PostProcessConfig(),
    ) -> None:
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        if outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
        if not isinstance(model, DetectionModel):
            raise TypeError(f"cannot export a {type(model).__name__}: expected a DSFD network (dsfd.models.DetectionModel)")
        self.network = model.network
        self.model = model.eval()
        self.input_format = input_format
        self.outputs = outputs
        self.postprocess = postprocess
        self.variances = tuple(model.variances)
        self.register_buffer("mean", torch.tensor(model.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    @property
    def input_names(self) -> List[str]:
        return ["images"]

    @property
    def output_names(self) -> List[str]:
        return {"raw": ["loc", "conf", "anchors"], "boxes": ["boxes", "scores"], "detections": ["detections"]}[
            self.outputs
        ]

    def dynamic_axes(self) -> Dict[str, Dict[int, str]]:
        ax: Dict[str, Dict[int, str]] = {
            "images": {0: "batch", 1: "height", 2: "width"} if self.input_format == "uint8"
            else {0: "batch", 2: "height", 3: "width"}
        }
        if self.outputs == "raw":
            ax.update(loc={0: "batch", 1: "anchors"}, conf={0: "batch", 1: "anchors"}, anchors={0: "anchors"})
        elif self.outputs == "boxes":
            ax.update(boxes={0: "batch", 1: "anchors"}, scores={0: "batch", 1: "anchors"})
        else:
            ax.update(detections={0: "detections"})
        return ax

    def normalise(self, images: Tensor) -> Tensor:
        """Raw BGR images in the input layout -> ``float32 [B, 3, H, W]`` minus the mean."""
        x = images.permute(0, 3, 1, 2) if self.input_format == "uint8" else images
        return x.to(torch.float32) - self.mean

    def decode(self, loc: Tensor, conf: Tensor, anchors: Tensor, size: Tensor) -> Tuple[Tensor, Tensor]:
        """``boxes [B, A, 4]`` in input pixels and face ``scores [B, A]`` (plain tensor ops).

        ``size`` is ``float32 [4]`` = ``(W, H, W, H)`` of the input.
        """
        v0, v1 = self.variances
        scores = torch.softmax(conf, dim=-1)[..., 1]
        a = anchors.unsqueeze(0)
        c = a[..., :2] + loc[..., :2] * v0 * a[..., 2:]
        wh = a[..., 2:] * torch.exp(loc[..., 2:].clamp(max=max_size_exponent(self.variances)) * v1)
        xy1 = c - wh / 2
        boxes = torch.cat([xy1, xy1 + wh], -1)
        return boxes * size, scores

    def detections(self, boxes: Tensor, scores: Tensor, size: Tensor) -> Tensor:
        """Top-k, ``NonMaxSuppression``, clip to ``[0, size]``: ``[K, 6]`` rows ``batch, x1, y1, x2, y2, score``."""
        k, pp = self.postprocess.pre_nms_top_k, self.postprocess
        # k padding entries below any threshold: TopK always gets at least k candidates (any A)
        scores = torch.cat([scores, torch.full_like(scores[:, :1], -1.0).expand(-1, k)], 1)
        boxes = torch.cat([boxes, torch.zeros_like(boxes[:, :1]).expand(-1, k, -1)], 1)
        top_scores, top_idx = scores.topk(k, dim=1)
        top_boxes = boxes.gather(1, top_idx.unsqueeze(-1).expand(-1, -1, 4))
        sel = _NonMaxSuppression.apply(
            top_boxes, top_scores.unsqueeze(1), pp.max_keep, pp.iou_threshold, pp.score_threshold
        )
        flat = sel[:, 0] * k + sel[:, 2]
        det_boxes = top_boxes.reshape(-1, 4).index_select(0, flat)
        det_scores = top_scores.reshape(-1).index_select(0, flat)
        batch = sel[:, 0].to(torch.float32)
        det_boxes = torch.minimum(torch.maximum(det_boxes, torch.zeros_like(size)), size)
        out = torch.cat([batch.unsqueeze(1), det_boxes, det_scores.unsqueeze(1)], 1)
        # grouped by image, decreasing score within an image (whatever order the runtime's NMS returns)
        order = torch.argsort(batch * 4.0 - det_scores)
        return out.index_select(0, order)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        x = self.normalise(images)
        loc, conf, feats = self.model.inference_predictions(x)
        anchors = traced_anchors(self.model.inference_anchors, x, feats)
        loc, conf = loc.to(torch.float32), conf.to(torch.float32)
        if self.outputs == "raw":
            return loc, conf, anchors
        h, w = _size_f64(x.shape[-2]), _size_f64(x.shape[-1])
        size = torch.cat([w, h, w, h]).to(torch.float32)
        boxes, scores = self.decode(loc, conf, anchors, size)
        if self.outputs == "boxes":
            return boxes, scores
        return (self.detections(boxes, scores, size),)


# --------------------------------------------------------------------------- export


def _resolve_model(weights: Any, model: Optional[nn.Module]) -> Tuple[nn.Module, str]:
    if model is not None:
        if weights is not None:
            raise ValueError("pass either weights or model, not both")
        inner = getattr(model, "model", None)  # a dsfd.Detector
        if not isinstance(model, nn.Module) and isinstance(inner, nn.Module):
            return inner, getattr(model, "weights", None) or "given model"
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a DSFD network or a dsfd.Detector, got {type(model).__name__}")
        return model, "given model"
    from ..models.weights import load_weights

    spec = "default" if weights is None else weights
    return load_weights(spec, map_location="cpu"), os.fspath(spec) if not isinstance(spec, str) else spec


def export_onnx(
    path: PathLike,
    weights: Optional[PathLike] = None,
    *,
    model: Optional[Any] = None,
    input_format: str = "uint8",
    outputs: str = "boxes",
    score_threshold: float = PostProcessConfig.score_threshold,
    iou_threshold: float = PostProcessConfig.iou_threshold,
    pre_nms_top_k: int = PostProcessConfig.pre_nms_top_k,
    max_keep: int = PostProcessConfig.max_keep,
    opset: int = DEFAULT_OPSET,
    sample_size: Sequence[int] = (320, 416),
    check: bool = True,
    display_score: Optional[float] = None,
) -> Path:
    """Write a DSFD network as an ONNX file with dynamic batch, height and width.

    Args:
        path: the ``.onnx`` file to write (parent folders are created).
        weights: a weights name (``"default"``, ``"released-resnet152"``, see
            :mod:`dsfd.hub`), a checkpoint path or a URL; default: the
            packaged default model. Loaded with :func:`dsfd.models.load_weights`.
        model: instead of ``weights``, a built paper / released network (any
            weights) or a :class:`dsfd.Detector` (its network is exported).
        input_format: ``"uint8"`` (``[B, H, W, 3]``, default) or ``"float"``
            (``[B, 3, H, W]``), BGR 0-255 either way.
        outputs: ``"raw"``, ``"boxes"`` (default) or ``"detections"`` (with
            ONNX ``NonMaxSuppression``), see the module docstring.
        score_threshold, iou_threshold, pre_nms_top_k, max_keep: NMS settings of
            ``"detections"`` (the detector's defaults 0.01, 0.3, 5000, 750).
        opset: ONNX opset (17).
        sample_size: ``(H, W)`` of the tracing sample; the graph works for
            other sizes too.
        check: run ``onnx.checker`` on the result (needs the ``onnx`` package)
            and refuse a graph holding a non-standard (``dsfd::``) operator.
        display_score: the model's drawing threshold recorded in the metadata
            (``dsfd_display_score``; default: the network's own, when it has one),
            which ``dsfd.Detector(backend="onnxruntime", weights=...)`` uses.

    Returns:
        The path written. Its ``metadata_props`` (with ``onnx``) record the
        network config, input layout, outputs and NMS settings as JSON.
    """
    net, source = _resolve_model(weights, model)
    param = next(net.parameters(), None)
    if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
        net = copy.deepcopy(net).to("cpu", torch.float32)  # the file is float32 whatever the model's device
    was_training = net.training
    wrapper = OnnxDetector(net, input_format, outputs,
                           PostProcessConfig(score_threshold, iou_threshold, pre_nms_top_k, max_keep))
    h, w = (int(v) for v in sample_size)
    if input_format == "uint8":
        sample = torch.full((1, h, w, 3), 128, dtype=torch.uint8)
    else:
        sample = torch.full((1, 3, h, w), 128.0, dtype=torch.float32)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ops.use_reference(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*The feature will be removed.*")
            # expected: the float64 constants of the anchors (torch.tensor), static channel counts
            # (max_in_out) and the eager NMS that the NonMaxSuppression symbolic replaces
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper,
                (sample,),
                str(out),
                dynamo=False,
                opset_version=int(opset),
                input_names=wrapper.input_names,
                output_names=wrapper.output_names,
                dynamic_axes=wrapper.dynamic_axes(),
                do_constant_folding=True,
            )
    finally:
        net.train(was_training)
    meta = {
        "dsfd_config": json.dumps(getattr(net, "config", {})),
        "dsfd_weights": str(source),
        "dsfd_input": json.dumps(
            {"name": "images", "format": input_format, "layout": "BHWC" if input_format == "uint8" else "BCHW",
             "dtype": "uint8" if input_format == "uint8" else "float32", "channels": "BGR", "range": "0-255",
             "mean_subtracted_in_graph": list(net.pixel_mean)}
        ),
        "dsfd_outputs": json.dumps(
            {"kind": outputs, "names": wrapper.output_names, **wrapper.postprocess.as_dict()}
        ),
    }
    if display_score is None:
        display_score = getattr(net, "display_score", None)
    if display_score is not None:
        meta["dsfd_display_score"] = json.dumps(float(display_score))
    if getattr(net, "hide_score", None) is not None:  # the anonymisation threshold, stored with the weights
        meta["dsfd_hide_score"] = json.dumps(float(net.hide_score))
    _finish(out, meta, check)
    return out


def _finish(path: Path, meta: Dict[str, str], check: bool) -> None:
    try:
        import onnx
    except ImportError:
        if check:
            raise ImportError(
                "checking the exported file needs the onnx package: pip install onnx (or pass check=False)"
            ) from None
        return
    m = onnx.load(str(path))
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    from .. import __version__

    m.producer_name, m.producer_version = "dsfd", __version__
    if check:
        custom = sorted({n.op_type for n in m.graph.node if n.domain not in ("", "ai.onnx")})
        if custom:
            raise RuntimeError(f"the exported graph holds non-standard operators {custom}")
        onnx.checker.check_model(m)
    onnx.save(m, str(path))


def onnx_metadata(path: PathLike) -> Dict[str, Any]:
    """The ``dsfd_*`` metadata of an exported file, JSON-decoded (needs ``onnx``)."""
    import onnx

    m = onnx.load(os.fspath(path), load_external_data=False)
    out: Dict[str, Any] = {}
    for p in m.metadata_props:
        if p.key.startswith("dsfd_"):
            try:
                out[p.key[5:]] = json.loads(p.value)
            except ValueError:
                out[p.key[5:]] = p.value
    return out


# --------------------------------------------------------------------------- checking


def match_detections(a: Any, b: Any) -> Dict[str, Any]:
    """Compare two ``[K, 6]`` detection sets (``batch, x1, y1, x2, y2, score``) as sets.

    Rows are paired per image by an optimal assignment on the largest
    coordinate difference, so near-equal scores listed in a different order
    do not count as differences. Returns the counts and the largest box /
    score difference of the pairs.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    box = score = 0.0
    for img in sorted(set(a[:, 0].tolist()) | set(b[:, 0].tolist())):
        x, y = a[a[:, 0] == img], b[b[:, 0] == img]
        if len(x) and len(y):
            cost = np.abs(x[:, None, 1:5] - y[None, :, 1:5]).max(-1)
            r, c = linear_sum_assignment(cost)
            box = max(box, float(cost[r, c].max()))
            score = max(score, float(np.abs(x[r, 5] - y[c, 5]).max()))
    return {"count": [int(len(a)), int(len(b))], "max_box_diff_px": box, "max_score_diff": score}


def verify_onnx(
    path: PathLike,
    model: nn.Module,
    image: Optional[PathLike] = None,
    rtol: float = 1e-4,
    box_atol: float = 1e-2,
) -> Dict[str, Any]:
    """Run an exported file in ONNX Runtime (CPU) on a photo and compare it with PyTorch.

    Args:
        path: the ``.onnx`` file (written by :func:`export_onnx`, whose
            metadata give the input format, outputs and NMS settings).
        model: the network that was exported.
        image: a photo (default: the packaged ``dsfd/assets/grace_hopper.jpg``).
        rtol: bound on ``max |ort - torch| / max |torch|`` per raw / boxes output.
        box_atol: bound in pixels on paired detections (``"detections"``).

    Returns:
        A JSON-able report with ``ok`` and the differences.
    """
    import numpy as np
    import onnxruntime as ort

    from ..io import read_image

    meta = onnx_metadata(path)
    inp, outs = meta["input"], meta["outputs"]
    img_path = Path(image) if image is not None else Path(__file__).resolve().parents[1] / "assets" / "grace_hopper.jpg"
    img = read_image(img_path)
    x = img[None] if inp["format"] == "uint8" else np.ascontiguousarray(img.transpose(2, 0, 1)[None], np.float32)
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x})
    param = next(model.parameters(), None)
    if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
        model = copy.deepcopy(model).to("cpu", torch.float32)
    was_training = model.training
    postprocess = PostProcessConfig(outs["score_threshold"], outs["iou_threshold"], outs["pre_nms_top_k"],
                                    outs["max_keep"])
    wrapper = OnnxDetector(model, inp["format"], outs["kind"], postprocess)
    try:
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(torch.from_numpy(x))]
    finally:
        model.train(was_training)
    report: Dict[str, Any] = {"image": str(img_path), "size": [int(img.shape[0]), int(img.shape[1])]}
    ok = True
    if outs["kind"] == "detections":
        m = match_detections(got[0], ref[0])
        report.update(m)
        ok = m["count"][0] == m["count"][1] and m["max_box_diff_px"] <= box_atol
    else:
        for name, g, r in zip(outs["names"], got, ref):
            diff = float(np.abs(g.astype(np.float64) - r).max()) if g.shape == r.shape else float("inf")
            rel = diff / max(float(np.abs(r).max()), 1e-12) if r.size else 0.0
            report[name] = {"shape": list(g.shape), "max_abs_diff": diff, "max_rel_diff": rel}
            ok = ok and rel <= rtol
    report["ok"] = bool(ok)
    return report
