"""The face detector: images in host memory -> boxes in host memory.

:class:`Detector` wraps a DSFD model (the paper's dual-shot network or the
released single-shot one) with pre- and post-processing that run on the
model's device:

1. images (BGR ``uint8`` ``[H, W, 3]``, see :mod:`dsfd.inference.io`) are
   resized on the host when needed (``max_size``, ``input_size``), pasted
   into one ``uint8`` canvas ``[B, H, W, 3]`` and copied to the device once;
2. on the device: ``float - (104, 117, 123)`` (the NHWC canvas viewed as NCHW
   is already ``channels_last``), the forward pass (second shot only) under
   ``torch.inference_mode`` and optional fp16/bf16 autocast;
3. post-processing in one batched call per step: softmax face scores,
   :func:`dsfd.ops.decode_boxes` with the model's cached anchors, one
   :func:`dsfd.ops.batched_nms` (score > ``score_threshold``, top
   ``top_k``, IoU ``nms_threshold``, keep ``keep_top_k``) for the whole
   batch, mapping back to original pixels and clipping - no Python loop over
   images and no host synchronisation;
4. one device-to-host copy at the end.

**Batches of different sizes** (:meth:`Detector.detect_batch`): every image
sits in the *top-left* corner of the canvas (the largest height x the
largest width of the batch), so its boxes map back by its own scale alone.
The padding holds the BGR mean, i.e. exactly zero after normalisation (like
the convolutions' own zero padding at the first layer), and anchors whose
cell starts inside the padding (cell origin ``>=`` the image's width or
height) are ignored, so no box comes from the padding. What "equal" means:

* images that need no padding (all of one size - the common video and
  data-set case - or an image that fills the canvas) get exactly the input
  tensor they get alone, hence the same detections up to floating-point
  summation order (tested to 2e-3 px);
* an image that needed padding is *close to*, not bit-equal to, its
  single-image result: deeper layers see the padding (receptive fields,
  the coarse levels' map sizes, and the FEM's top-down products spread the
  deepest maps), which moves scores slightly and can flip NMS decisions
  between near-equal boxes;
* with a fixed ``input_size`` every image is letterboxed (resized to fit,
  aspect ratio kept, top-left, mean padding) into the same canvas whether it
  is alone or in a batch, so single and batched results are equal for any
  mix of sizes (tested); this is also the mode for CUDA graphs and
  ``torch.compile``.

The single-image path (:meth:`Detector.detect`) runs at the image's own size
without padding (images smaller than :data:`MIN_INPUT_SIZE` are padded up),
like the released test code.

Thresholds: ``score_threshold`` (0.01, the evaluation setting) only decides
what enters NMS; pass ``min_score=DISPLAY_SCORE`` (0.5) to ``detect`` for a
display-quality set of faces.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .io import read_image, to_bgr_uint8

__all__ = [
    "Detector",
    "load_detector",
    "RandomWeightsWarning",
    "DISPLAY_SCORE",
    "DEFAULT_MAX_SIZE",
    "MIN_INPUT_SIZE",
    "default_weights_path",
    "calibrate_random_model",
]

#: A sensible ``min_score`` for showing detections (the raw output keeps
#: everything above ``score_threshold = 0.01`` for evaluation).
DISPLAY_SCORE: float = 0.5
#: Longer image side above which images are downscaled (with a warning).
DEFAULT_MAX_SIZE: int = 4096
#: Inputs smaller than this (per side) are padded up to it (not resized).
MIN_INPUT_SIZE: int = 32
#: IoU of the accuracy mode's box voting (the released protocol's 0.3).
VOTE_IOU: float = 0.3
#: Clamp of the decoded size exponent ``0.2 * t_wh``: boxes up to 1e4 x their anchor.
_MAX_LOG_SIZE: float = math.log(1e4) / 0.2
#: BGR mean as uint8 padding value: exactly zero after normalisation.
_MEAN_U8 = np.array([104, 117, 123], dtype=np.uint8)

ImageInput = Union[np.ndarray, str, "os.PathLike[str]", Tensor]


class RandomWeightsWarning(UserWarning):
    """The detector runs a randomly initialised network: its detections are meaningless."""


def default_weights_path() -> Optional[Path]:
    """The packaged default weights (``dsfd/weights/default.pth``), or ``None`` when absent."""
    root = Path(__file__).resolve().parents[1] / "weights"
    for name in ("default.pth", "default.pt"):
        p = root / name
        if p.is_file():
            return p
    return None


def _default_fits(path: Path, network: Optional[str], backbone: Optional[str]) -> bool:
    """Whether the default weights are of the requested ``network`` / ``backbone`` (``None``: any)."""
    if network is None and backbone is None:
        return True
    meta = path.with_suffix(".json")
    try:
        cfg = json.loads(meta.read_text())["config"]
    except (OSError, ValueError, KeyError):
        cfg = torch.load(path, map_location="cpu", weights_only=True).get("config", {})
    return (network is None or network.lower() == cfg.get("network")) and (
        backbone is None or backbone.lower() == cfg.get("backbone")
    )


def _head_convs(model: nn.Module) -> Tuple[List[nn.Conv2d], List[nn.Conv2d]]:
    """The last convolutions of the face loc / conf heads used at test time."""
    head = getattr(model, "second_shot_head", None)
    if head is not None:
        return list(head.loc), list(head.conf)
    loc, conf = getattr(model, "loc", None), getattr(model, "conf", None)
    if isinstance(loc, nn.ModuleList) and isinstance(conf, nn.ModuleList):
        return [m.conv4 for m in loc], [m.conv4 for m in conf]
    raise TypeError(f"cannot find the detection heads of a {type(model).__name__}")


def _dead_leaves(height: int, width: int, seed: int, disks: int = 500) -> np.ndarray:
    """A synthetic BGR image with natural-image statistics: occluding disks of power-law radii."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    r_min, r_max = 2.0, max(height, width) / 3
    u = rng.random(disks)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5  # density ~ r^-3
    for r in np.sort(radii)[::-1]:
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(r), colour, -1)
    return img


@torch.no_grad()
def calibrate_random_model(
    model: nn.Module,
    images: Optional[Sequence[np.ndarray]] = None,
    loc_std: float = 0.5,
    conf_std: float = 2.0,
    background_bias: float = 3.0,
) -> nn.Module:
    """Make a randomly initialised DSFD give finite, spread-out outputs on ``images`` (in place).

    A random network in eval mode (BatchNorm running statistics 0 / 1, and the
    FEM's unnormalised products of feature maps) gives activations of
    1e3-1e14, hence infinite boxes and scores of exactly 0 or 1. This

    1. sets the BatchNorm statistics from train-mode passes over ``images``, and
    2. scales each level's final head convolution so that, on ``images``, box
       offsets have standard deviation ``loc_std`` and class logits
       ``conf_std``, with the face logit ``background_bias`` below the
       background logit on average.

    Detections stay meaningless, but on images like the calibration images
    their number and the post-processing workload look like a real
    detector's (tests and benchmarks calibrate on the images they use).
    The outputs grow steeply with input contrast (the FEM multiplies feature
    maps of six levels), so other images may still saturate the scores.

    Args:
        images: BGR ``uint8`` ``[H, W, 3]`` arrays (default: two synthetic
            "dead leaves" images of 256 x 320, with natural-image-like statistics).
    """
    if images is None:
        images = [_dead_leaves(256, 320, 0), _dead_leaves(256, 320, 1)]
    dev = next(model.parameters()).device
    mean = torch.tensor([104.0, 117.0, 123.0], device=dev).view(1, 3, 1, 1)
    xs = [torch.from_numpy(np.ascontiguousarray(im)).to(dev).permute(2, 0, 1)[None].float() - mean for im in images]

    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
        model.train()
        try:
            for x in xs:
                model(x)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    model.eval()

    locs, confs = _head_convs(model)
    for m in locs + confs:
        if m.bias is not None:
            m.bias.zero_()
    sums: Dict[nn.Module, float] = {}

    def hook(mod: nn.Module, _args: Any, out: Tensor) -> None:
        v = float(out.float().std()) if out.numel() > 1 else 1.0
        sums[mod] = sums.get(mod, 0.0) + (v if math.isfinite(v) else math.inf)

    handles = [m.register_forward_hook(hook) for m in locs + confs]
    try:
        for x in xs:
            model(x)
    finally:
        for hd in handles:
            hd.remove()
    loc_set = set(locs)
    for m in locs + confs:
        std = sums.get(m, 0.0) / len(xs)
        target = loc_std if m in loc_set else conf_std
        m.weight.mul_(target / std if 0 < std < math.inf else 0.0)

    released = getattr(model, "second_shot_head", None) is None
    for level, m in enumerate(confs):
        if m.bias is None:
            continue
        bias = torch.full_like(m.bias, -background_bias / 2)
        if not released:
            bias.view(-1, 2)[:, 0] = background_bias / 2  # (background, face) per anchor
        elif level == 0:
            bias[:3] = background_bias / 2  # max-in-out: background = max(c0, c1, c2), face = c3
        else:
            bias[3] = background_bias / 2  # background = c3, face = max(c0, c1, c2)
        m.bias.copy_(bias)
    model.train(was_training)
    return model


class _Prepared(NamedTuple):
    image: np.ndarray  # resized BGR uint8 [h, w, 3]
    orig_hw: Tuple[int, int]
    scale_xy: Tuple[float, float]  # resized / original, per axis


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def _resize_by(image: np.ndarray, scale: float) -> np.ndarray:
    """``cv2.resize(fx=scale, fy=scale, INTER_LINEAR)`` like the released test code (at least 1 px)."""
    import cv2

    if scale == 1:
        return image
    h, w = image.shape[:2]
    if round(w * scale) >= 1 and round(h * scale) >= 1:
        return cv2.resize(image, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def _face_outputs(out: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """``(loc, conf, anchors)`` of the face predictions of a paper or released model's output."""
    shot = getattr(out, "second", None)
    if shot is None:
        shot = getattr(out, "face", None)
    if shot is None:
        raise TypeError(f"cannot find face predictions in a {type(out).__name__} (expected .second or .face)")
    return shot.loc, shot.conf, shot.anchors


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and compiler.is_compiling())


def _anchor_generator(model: nn.Module) -> Optional[nn.Module]:
    for name in ("second_shot_anchors", "face_anchors"):
        gen = getattr(model, name, None)
        if isinstance(gen, nn.Module):
            return gen
    return None


def _as_hw(size: Union[None, int, Sequence[int]]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
        raise ValueError(f"input_size must be at least {MIN_INPUT_SIZE} px per side, got {size!r}")
    return h, w


def check_postprocess_args(score_threshold: float, nms_threshold: float, top_k: int, keep_top_k: int) -> None:
    """``ValueError`` naming the first post-processing setting out of range (Detector and ONNX export)."""
    if not 0.0 <= float(score_threshold) <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 < float(nms_threshold) <= 1.0:
        raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
    if int(top_k) < 1 or int(keep_top_k) < 1:
        raise ValueError(f"top_k and keep_top_k must be >= 1, got {top_k}, {keep_top_k}")


class Detector:
    """DSFD face detector with on-device batched post-processing.

    Args:
        weights: checkpoint path (read by :func:`dsfd.models.load_weights`,
            which recognises the network), a weights name (``"default"``,
            ``"released-resnet152"``: downloaded once into torch's hub cache,
            see :mod:`dsfd.hub`) or URL, or ``None`` for the packaged default
            ``dsfd/weights/default.pth``; without one a randomly initialised
            ``network`` / ``backbone`` model is built (and passed through
            :func:`calibrate_random_model` so its outputs are finite) and a
            :class:`RandomWeightsWarning` says its detections are meaningless.
        network, backbone: with ``weights=None``, the default model is used
            when it is of this architecture (or none is named); otherwise a
            random ``network`` / ``backbone`` model is built (default
            ``"paper"``, ``"resnet50"``). With a weights file they force the
            architecture instead of detecting it.
        device: ``"cuda"``, ``"cpu"``, a ``torch.device``, or ``None`` for CUDA
            when available.
        dtype: ``None`` / ``"auto"`` (default): the fastest exact-enough
            precision for the device (:func:`dsfd.precision.auto_dtype`:
            bfloat16 autocast on CUDA and on CPUs with bf16 in hardware,
            AVX-512 BF16 or AMX; float32 on other CPUs); or
            ``torch.float32`` (forces fp32), ``torch.float16`` (CUDA only),
            ``torch.bfloat16``. The autocast precision of the network;
            post-processing is always float32. :attr:`dtype` holds the choice.
        score_threshold: face probability a box must exceed to enter NMS (0.01).
        nms_threshold: NMS IoU (0.3).
        top_k: boxes per image entering NMS (5000).
        keep_top_k: boxes per image kept after NMS (750).
        channels_last: NHWC memory format (default: on for CUDA and for
            bf16 on CPU, where oneDNN's bf16 kernels want it; off for fp32 on CPU).
        compile: ``torch.compile`` the network (CUDA only; best with a fixed
            ``input_size``).
        cuda_graphs: capture the whole pipeline (normalisation, network,
            post-processing) in a CUDA graph per batch shape ``(B, H, W)`` and
            replay it (CUDA only). Each new shape costs a capture and keeps
            its activations' memory (at most ``max_graphs = 4`` shapes, LRU),
            so use it with a fixed ``input_size`` or constant video frame
            sizes. Accuracy mode always runs eagerly. If capture fails the
            detector warns and runs eagerly.
        max_size: images whose longer side exceeds it are downscaled (with a
            warning) and their boxes mapped back; not applied in accuracy mode,
            whose protocol caps the scales itself.
        input_size: ``None`` (native resolution, default) or ``(H, W)`` / an
            int: letterbox every image into this canvas (see the module
            docstring).
        clip: clip boxes to the image.
        accuracy_mode: default of ``detect(..., accuracy_mode=...)`` and of
            ``__call__``: the released multi-scale + flip WIDER protocol.
        model: an already built DSFD model to use instead of ``weights``.

    Example::

        det = Detector("dsfd.pth")
        faces = det.detect("group.jpg", min_score=DISPLAY_SCORE)  # [K, 5] x1, y1, x2, y2, score
        per_image = det.detect_batch([img1, img2])                  # different sizes are fine
    """

    def __init__(
        self,
        weights: Optional[Union[str, "os.PathLike[str]"]] = None,
        network: Optional[str] = None,
        backbone: Optional[str] = None,
        device: Union[None, str, torch.device] = None,
        dtype: Union[None, str, torch.dtype] = None,
        score_threshold: float = 0.01,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        keep_top_k: int = 750,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        input_size: Union[None, int, Sequence[int]] = None,
        clip: bool = True,
        accuracy_mode: bool = False,
        model: Optional[nn.Module] = None,
    ) -> None:
        self.device = self._resolve_device(device)
        from ..precision import resolve_dtype

        dtype = resolve_dtype(dtype, self.device)
        check_postprocess_args(score_threshold, nms_threshold, top_k, keep_top_k)
        if int(max_size) < MIN_INPUT_SIZE:
            raise ValueError(f"max_size must be >= {MIN_INPUT_SIZE}, got {max_size}")
        if (compile or cuda_graphs) and self.device.type != "cuda":
            raise ValueError(
                "compile=True and cuda_graphs=True are GPU-only options (device is "
                f"{self.device}); leave them off on CPU"
            )
        self.dtype = dtype
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        self.keep_top_k = int(keep_top_k)
        self.max_size = int(max_size)
        self.input_size = _as_hw(input_size)
        self.clip = bool(clip)
        self.accuracy_mode = bool(accuracy_mode)
        default_cl = self.device.type == "cuda" or dtype == torch.bfloat16
        self.channels_last = default_cl if channels_last is None else bool(channels_last)
        self.random_weights = False
        self.weights: Optional[str] = None

        self.model = self._build_model(weights, network, backbone, model)
        self.model.eval().requires_grad_(False).to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor([104.0, 117.0, 123.0], device=self.device).view(1, 3, 1, 1)

        # feature-map sizes per network input size, recorded by a hook on the anchor generator
        self._levels: "OrderedDict[Tuple[int, int], Tuple[Tuple[Tuple[int, int], ...], Tuple[float, ...]]]" = (
            OrderedDict()
        )
        self._cell_origins: "OrderedDict[Tuple[int, int], Tensor]" = OrderedDict()
        gen = _anchor_generator(self.model)
        if gen is not None:
            this = weakref.ref(self)

            def hook(module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> None:
                det = this()
                if det is not None and not _compiling():
                    det._record_levels(module, args, output)

            handle = gen.register_forward_hook(hook)
            weakref.finalize(self, handle.remove)  # a model shared by several detectors keeps no dead hooks

        self._network = self.model
        self.compiled = bool(compile)
        if compile:
            self._network = torch.compile(self.model)
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs: "OrderedDict[Tuple[int, int, int], Dict[str, Any]]" = OrderedDict()
        self.max_graphs = 4

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _resolve_device(device: Union[None, str, torch.device]) -> torch.device:
        if device is None or (isinstance(device, str) and device.lower() == "auto"):
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} requested but CUDA is not available; use device='cpu'")
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {str(dev)!r}; use 'cpu' or 'cuda'")
        return dev

    def _build_model(
        self,
        weights: Optional[Union[str, "os.PathLike[str]"]],
        network: Optional[str],
        backbone: Optional[str],
        model: Optional[nn.Module],
    ) -> nn.Module:
        from ..models import build_model, load_weights

        if model is not None:
            if weights is not None:
                raise ValueError("pass either weights or model, not both")
            return model
        if weights is None:
            weights = default_weights_path()
            if weights is not None and not _default_fits(weights, network, backbone):
                weights = None  # an explicitly requested other architecture: no weights for it
        if weights is not None:
            self.weights = os.fspath(weights)
            return load_weights(weights, map_location="cpu", network=network, backbone=backbone)
        self.random_weights = True
        warnings.warn(
            f"no weights given and no default weights file (dsfd/weights/default.pth): using a RANDOMLY "
            f"INITIALISED {network or 'paper'} / {backbone or 'resnet50'} network - its detections are "
            "meaningless. Pass weights='path/to/checkpoint.pth'.",
            RandomWeightsWarning,
            stacklevel=3,
        )
        return calibrate_random_model(build_model(network or "paper", backbone or "resnet50"))

    def __repr__(self) -> str:
        cfg = getattr(self.model, "config", {})
        src = "random weights" if self.random_weights else (self.weights or "given model")
        return (
            f"Detector({cfg.get('network', '?')}/{cfg.get('backbone', '?')}, {src}, device={self.device}, "
            f"dtype={self.dtype}, channels_last={self.channels_last}, score_threshold={self.score_threshold}, "
            f"nms_threshold={self.nms_threshold}, "
            f"input_size={self.input_size}, accuracy_mode={self.accuracy_mode})"
        )

    # ------------------------------------------------------------------ public API

    def __call__(self, image: ImageInput, color: str = "bgr") -> np.ndarray:
        """``detect(image)`` with the detector's default mode (the ``dsfd eval`` contract)."""
        return self.detect(image, color=color)

    def detect(
        self,
        image: ImageInput,
        color: str = "bgr",
        min_score: Optional[float] = None,
        accuracy_mode: Optional[bool] = None,
    ) -> np.ndarray:
        """Detect faces in one image.

        Args:
            image: ``[H, W, 3]`` ``uint8`` array (BGR unless ``color="rgb"``;
                gray, RGBA, 16-bit and float in ``[0, 1]`` are converted, see
                :mod:`dsfd.inference.io`), or an image file path.
            color: ``"bgr"`` or ``"rgb"`` channel order of an array input.
            min_score: drop detections scoring below (e.g. :data:`DISPLAY_SCORE`);
                default: keep everything above ``score_threshold``.
            accuracy_mode: run the multi-scale + flip protocol
                (:meth:`detect_multiscale`); default: the detector's setting.

        Returns:
            ``float32 [K, 5]``: ``x1, y1, x2, y2, score`` in original-image
            pixels, highest score first.

        Raises:
            ImageError (a ``ValueError``): unreadable file or unsupported image.
        """
        if self.accuracy_mode if accuracy_mode is None else accuracy_mode:
            return self.detect_multiscale(image, color=color, min_score=min_score)
        return self.detect_batch([image], color=color, min_score=min_score, accuracy_mode=False)[0]

    def detect_batch(
        self,
        images: Sequence[ImageInput],
        color: str = "bgr",
        min_score: Optional[float] = None,
        accuracy_mode: Optional[bool] = None,
    ) -> List[np.ndarray]:
        """Detect faces in several images (of any sizes) with one forward pass.

        See the module docstring for how different sizes are batched.
        In accuracy mode the images are processed one after another.

        Returns:
            One ``float32 [K_i, 5]`` array per image (see :meth:`detect`).
        """
        if isinstance(images, (np.ndarray, Tensor)) and getattr(images, "ndim", 0) == 4:
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError("detect_batch expects a list of images or paths; use detect() for one image")
        if self.accuracy_mode if accuracy_mode is None else accuracy_mode:
            return [self.detect_multiscale(im, color=color, min_score=min_score) for im in images]
        if len(images) == 0:
            return []
        arrays = [self._load(im, color, i) for i, im in enumerate(images)]
        prepared = [self._prepare(a) for a in arrays]
        with torch.inference_mode():
            dets, counts = self._infer(
                [p.image for p in prepared],
                [p.scale_xy for p in prepared],
                [p.orig_hw for p in prepared] if self.clip else None,
            )
            out = self._to_host(dets, counts)
        return [self._filter(d, min_score) for d in out]

    def detect_multiscale(self, image: ImageInput, color: str = "bgr", min_score: Optional[float] = None) -> np.ndarray:
        """Accuracy mode: the released WIDER FACE multi-scale + flip test, merged by box voting.

        See :mod:`dsfd.inference.multiscale` for the exact passes (about 11
        forward passes; the scales depend on the image size). Every pass uses
        the same batched post-processing as :meth:`detect` (the original and
        flipped passes share one forward). An image without detections gives
        an empty ``[0, 5]`` array.
        """
        from .multiscale import box_voting, size_filter_mask, wider_test_passes

        img = self._load(image, color, None)
        H, W = img.shape[:2]
        passes = wider_test_passes(H, W)
        flipped = np.ascontiguousarray(img[:, ::-1])
        all_boxes: List[Tensor] = []
        all_scores: List[Tensor] = []
        all_keep: List[Tensor] = []
        with torch.inference_mode():
            i = 0
            while i < len(passes):
                group = [passes[i]]
                while i + len(group) < len(passes) and passes[i + len(group)].scale == passes[i].scale:
                    group.append(passes[i + len(group)])
                i += len(group)
                s = group[0].scale
                ims = [_resize_by(flipped if p.flip else img, s) for p in group]
                dets, counts = self._infer(ims, [(s, s)] * len(ims), None, use_graphs=False)
                boxes, scores = dets[..., :4], dets[..., 4]
                for j, p in enumerate(group):
                    b = boxes[j]
                    if p.flip:
                        b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], -1)
                    valid = torch.arange(b.shape[0], device=b.device) < counts[j]
                    all_keep.append(valid & size_filter_mask(b, p.keep))
                    all_boxes.append(b)
                    all_scores.append(scores[j])
            keep = torch.cat(all_keep)
            boxes = torch.cat(all_boxes)[keep]
            scores = torch.cat(all_scores)[keep]
            vb, vs = box_voting(boxes, scores, iou_threshold=VOTE_IOU, max_keep=self.keep_top_k)
            if self.clip and vb.shape[0]:
                vb = torch.stack(
                    [vb[:, 0].clamp(0, W), vb[:, 1].clamp(0, H), vb[:, 2].clamp(0, W), vb[:, 3].clamp(0, H)], -1
                )
            out = torch.cat([vb.float(), vs.float()[:, None]], 1).cpu().numpy()
        return self._filter(out, min_score)

    # ------------------------------------------------------------------ steps

    def _load(self, image: ImageInput, color: str, index: Optional[int]) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            return read_image(image)
        name = None if index is None else f"#{index}"
        return to_bgr_uint8(image, color, name=name)

    def _prepare(self, img: np.ndarray) -> _Prepared:
        h, w = img.shape[:2]
        if self.input_size is not None:
            H, W = self.input_size
            s = min(H / h, W / w)
            rh, rw = min(H, max(1, round(h * s))), min(W, max(1, round(w * s)))
        elif max(h, w) > self.max_size:
            s = self.max_size / max(h, w)
            rh, rw = max(1, round(h * s)), max(1, round(w * s))
            warnings.warn(
                f"image of {w}x{h} px downscaled to {rw}x{rh} (longer side > max_size={self.max_size}); "
                "boxes are mapped back to the original",
                stacklevel=4,
            )
        else:
            rh, rw = h, w
        out = _resize(img, rw, rh)
        return _Prepared(out, (h, w), (rw / w, rh / h))

    def _filter(self, dets: np.ndarray, min_score: Optional[float]) -> np.ndarray:
        keep = np.ones(len(dets), dtype=bool)
        if min_score is not None:
            keep &= dets[:, 4] >= float(min_score)
        if self.clip:  # boxes lying entirely outside the image clip to zero width or height
            keep &= (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
        return np.ascontiguousarray(dets[keep], dtype=np.float32)

    def _canvas(self, images: Sequence[np.ndarray]) -> Tuple[np.ndarray, bool]:
        """Paste images top-left into a mean-padded uint8 ``[B, H, W, 3]`` canvas; returns ``(canvas, padded)``."""
        if self.input_size is not None:
            H, W = self.input_size
        else:
            H = max(MIN_INPUT_SIZE, max(im.shape[0] for im in images))
            W = max(MIN_INPUT_SIZE, max(im.shape[1] for im in images))
        padded = any(im.shape[0] != H or im.shape[1] != W for im in images)
        if not padded:
            if len(images) == 1:
                return np.ascontiguousarray(images[0])[None], False
            return np.stack(images), False
        canvas = np.empty((len(images), H, W, 3), dtype=np.uint8)
        canvas[...] = _MEAN_U8
        for b, im in enumerate(images):
            canvas[b, : im.shape[0], : im.shape[1]] = im
        return canvas, True

    def _to_device(self, array: np.ndarray) -> Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _meta(
        self,
        images: Sequence[np.ndarray],
        scales: Sequence[Tuple[float, float]],
        orig_hw: Optional[Sequence[Tuple[int, int]]],
    ) -> Tensor:
        """Per image ``[h, w, sx, sy, sx, sy, lo x4, hi x4]`` (valid input size, scales, clip bounds)."""
        rows = []
        for b, im in enumerate(images):
            sx, sy = scales[b]
            if orig_hw is None:
                lo, hi = [-math.inf] * 4, [math.inf] * 4
            else:
                h0, w0 = orig_hw[b]
                lo, hi = [0.0] * 4, [float(w0), float(h0), float(w0), float(h0)]
            rows.append([float(im.shape[0]), float(im.shape[1]), sx, sy, sx, sy, *lo, *hi])
        return self._to_device(np.asarray(rows, dtype=np.float32))

    def _infer(
        self,
        images: Sequence[np.ndarray],
        scales: Sequence[Tuple[float, float]],
        orig_hw: Optional[Sequence[Tuple[int, int]]],
        use_graphs: bool = True,
    ) -> Tuple[Tensor, Tensor]:
        """Forward + batched post-processing of resized images; device ``(dets[B, K, 5], counts[B])``.

        With CUDA graphs the returned tensors are the graph's static outputs:
        copy them (``_to_host``) before the next call.
        """
        canvas, padded = self._canvas(images)
        x = self._to_device(canvas)
        meta = self._meta(images, scales, orig_hw)
        if self.cuda_graphs and use_graphs:
            out = self._run_graph(x, meta)
            if out is not None:
                return out
        return self._pipeline(x, meta, padded)

    def _autocast(self, cache_enabled: bool = True) -> Any:
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache_enabled)

    def _pipeline(
        self, x_u8: Tensor, meta: Tensor, mask_padding: bool, graph_safe: bool = False
    ) -> Tuple[Tensor, Tensor]:
        """The device part: normalise, forward, scores, decode, batched NMS, map back, clip."""
        from .. import ops
        from ..extension import _has_ops

        B, H, W, _ = x_u8.shape
        x = x_u8.permute(0, 3, 1, 2).float() - self._mean  # NHWC storage: channels_last already
        if not self.channels_last:
            x = x.contiguous()
        with self._autocast(cache_enabled=not graph_safe):
            out = self._network(x)
        loc, conf, anchors = _face_outputs(out)
        scores = torch.softmax(conf.float(), dim=-1)[..., 1]
        compiled_ops = _has_ops()
        decode = ops.decode_boxes if compiled_ops else ops.reference.decode_boxes
        # size exponents beyond 1e4 x the anchor only come from broken / random weights: keep them finite
        loc = torch.cat([loc[..., :2].float(), loc[..., 2:].float().clamp(max=_MAX_LOG_SIZE)], -1)
        boxes = decode(loc, anchors.float().contiguous(), (0.1, 0.2))
        boxes[..., 0::2] *= W
        boxes[..., 1::2] *= H
        if mask_padding:
            origins = self._cell_origin(H, W, anchors.shape[0])
            if origins is not None:
                valid = (origins[None, :, 0] < meta[:, 1:2]) & (origins[None, :, 1] < meta[:, 0:1])
                scores = scores.masked_fill(~valid, 0.0)
        if compiled_ops:
            kb, ks, counts = ops.batched_nms(
                boxes, scores, self.nms_threshold, self.score_threshold, self.top_k, self.keep_top_k
            )
        else:
            kb, ks, _, counts = ops.reference.batched_nms(
                boxes, scores, self.nms_threshold, self.score_threshold, self.top_k, self.keep_top_k
            )
        kb = kb / meta[:, None, 2:6]
        kb = torch.minimum(torch.maximum(kb, meta[:, None, 6:10]), meta[:, None, 10:14])
        # padding rows (beyond counts) stay exactly zero
        rows = torch.arange(kb.shape[1], device=kb.device)[None, :] < counts[:, None]
        kb = kb * rows[..., None]
        return torch.cat([kb, ks.float()[..., None]], -1), counts

    # ------------------------------------------------------------------ padding mask

    def _record_levels(self, module: nn.Module, args: Tuple[Any, ...], output: Tensor) -> None:
        if len(args) < 2:
            return
        try:
            key = (int(args[0][0]), int(args[0][1]))
            sizes = tuple((int(s[0]), int(s[1])) for s in args[1])
        except (TypeError, IndexError, ValueError):
            return
        self._levels[key] = (sizes, tuple(float(s) for s in getattr(module, "steps", ())))
        self._levels.move_to_end(key)
        while len(self._levels) > 64:
            self._levels.popitem(last=False)

    def _cell_origin(self, H: int, W: int, num_anchors: int) -> Optional[Tensor]:
        """``[A, 2]`` pixel ``(x, y)`` of each anchor cell's top-left corner for a ``H x W`` input (cached)."""
        key = (H, W)
        hit = self._cell_origins.get(key)
        if hit is not None:
            return hit
        if key not in self._levels and self.compiled:
            # the compiled network does not run Python hooks: probe once with the eager model
            self.model(torch.zeros(1, 3, H, W, device=self.device))
        info = self._levels.get(key)
        if info is None:
            return None
        sizes, steps = info
        if len(steps) != len(sizes) or sum(h * w for h, w in sizes) != num_anchors:
            return None
        parts = []
        for (fh, fw), step in zip(sizes, steps):
            ys = torch.arange(fh, dtype=torch.float32) * step
            xs = torch.arange(fw, dtype=torch.float32) * step
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            parts.append(torch.stack([gx, gy], -1).reshape(-1, 2))
        origins = torch.cat(parts).to(self.device)
        self._cell_origins[key] = origins
        while len(self._cell_origins) > 16:
            self._cell_origins.popitem(last=False)
        return origins

    # ------------------------------------------------------------------ host copy

    def _to_host(self, dets: Tensor, counts: Tensor) -> List[np.ndarray]:
        if dets.device.type == "cuda":
            d = torch.empty(dets.shape, dtype=dets.dtype, pin_memory=True)
            c = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
            d.copy_(dets, non_blocking=True)
            c.copy_(counts, non_blocking=True)
            torch.cuda.current_stream(dets.device).synchronize()
        else:
            d, c = dets, counts
        d_np = d.numpy()
        return [d_np[b, :n].copy() for b, n in enumerate(c.tolist())]

    # ------------------------------------------------------------------ CUDA graphs

    def _run_graph(self, x: Tensor, meta: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """Replay (capturing first if needed) the pipeline's CUDA graph for this batch shape."""
        key = (int(x.shape[0]), int(x.shape[1]), int(x.shape[2]))
        rec = self._graphs.get(key)
        if rec is None:
            try:
                rec = self._capture(x, meta)
            except Exception as e:  # noqa: BLE001 - fall back to eager, loudly
                warnings.warn(f"CUDA graph capture failed ({type(e).__name__}: {e}); running eagerly instead")
                self.cuda_graphs = False
                return None
            self._graphs[key] = rec
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        rec["x"].copy_(x, non_blocking=True)
        rec["meta"].copy_(meta, non_blocking=True)
        rec["graph"].replay()
        return rec["dets"], rec["counts"]

    def _capture(self, x: Tensor, meta: Tensor) -> Dict[str, Any]:
        static_x = x.clone()
        static_meta = meta.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: anchors cached, fused weights built, kernels chosen
                self._pipeline(static_x, static_meta, True, graph_safe=True)
        torch.cuda.current_stream(self.device).wait_stream(side)
        anchors_ref = self._anchor_ref(static_x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            dets, counts = self._pipeline(static_x, static_meta, True, graph_safe=True)
        # keep every tensor the graph reads alive (the anchors live in an LRU cache)
        return {"graph": graph, "x": static_x, "meta": static_meta, "dets": dets, "counts": counts,
                "keep": (anchors_ref, self._cell_origins.get((int(x.shape[1]), int(x.shape[2]))))}

    def _anchor_ref(self, x: Tensor) -> Optional[Tensor]:
        from ..models.anchors import cached_anchors

        gen = _anchor_generator(self.model)
        info = self._levels.get((int(x.shape[1]), int(x.shape[2])))
        if gen is None or info is None:
            return None
        return cached_anchors((int(x.shape[1]), int(x.shape[2])), info[0], gen.sizes, gen.steps,
                              gen.aspect_ratio, gen.clip, self.device, torch.float32)


def load_detector(weights: Optional[Union[str, "os.PathLike[str]"]] = None, accuracy_mode: bool = False,
                  **kwargs: Any) -> Detector:
    """A :class:`Detector` for ``weights`` (the ``dsfd eval --weights`` entry point).

    The returned object is callable: ``detector(bgr_uint8_image) -> float32 [K, 5]``
    (``x1, y1, x2, y2, score`` in pixels), single scale or, with
    ``accuracy_mode=True``, the multi-scale + flip protocol.
    Other keyword arguments go to :class:`Detector`.
    """
    return Detector(weights, accuracy_mode=accuracy_mode, **kwargs)
