"""The face detector: images in host memory -> boxes in host memory.

:class:`Detector` wraps a DSFD network (anything implementing
:class:`dsfd.models.DetectionModel`: the paper's dual-shot network or the
released single-shot one) with pre- and post-processing on its device:

1. images (BGR ``uint8`` ``[H, W, 3]``, read and converted by :mod:`dsfd.io`)
   are resized on the host when needed (``max_size``, ``input_size``) and
   pasted into one ``uint8`` canvas ``[B, H, W, 3]`` (:mod:`.canvas`), copied
   to the device once;
2. on the device: ``float - model.pixel_mean`` (the NHWC canvas viewed as
   NCHW is already ``channels_last``), the forward pass (the test-time shot
   only) under ``torch.inference_mode`` and optional fp16/bf16 autocast;
3. :mod:`dsfd.postprocess` in one batched call per step (decode with the
   model's anchors and ``variances``, then score threshold, top-k, NMS,
   keep-k for the whole batch), mapping back to original pixels and clipping
   - no Python loop over images and no host synchronisation;
4. one device-to-host copy at the end.

**Batches of different sizes** (:meth:`Detector.detect_batch`): each image
sits top-left in the canvas, the padding is the pixel mean (zero after
normalisation) and anchors whose cell starts inside the padding are ignored
(:mod:`.padding`), so no box comes from the padding. Images that need no
padding (all of one size, or an image that fills the canvas) get exactly
their single-image result up to floating-point summation order; an image
that needed padding is *close to* it (deeper layers see the padding);
with a fixed ``input_size`` every image is letterboxed into the same canvas
alone or batched, so single and batched results are equal for any mix of
sizes - also the mode for CUDA graphs and ``torch.compile``.

:meth:`Detector.detect` runs at the image's own size (smaller than
:data:`MIN_INPUT_SIZE`: padded up), like the released test code, and by
default returns the faces at or above the model's own drawing threshold
(:attr:`Detector.display_score`, stored with its weights), filtering before
NMS (exact: a box only suppresses lower-scoring ones, and far fewer boxes
are sorted). ``min_score=None`` returns everything above ``score_threshold``
(0.01), which is what an evaluation wants (``detector(image)``, the
``dsfd eval`` contract, does that).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..constants import DISPLAY_SCORE, VOTE_IOU_THRESHOLD
from ..io import read_image, to_bgr_uint8
from ..models.interface import DetectionModel
from ..postprocess import PostProcessConfig, decode_detections, select_detections
from .canvas import MIN_INPUT_SIZE, as_hw, batch_meta, canvas_size, paste, prepare, resize_by
from .cuda_graphs import GraphCache
from .multiscale import size_filter_mask, wider_test_passes
from .padding import PaddingMask

__all__ = ["Detector", "load_detector", "DISPLAY_SCORE", "DEFAULT_MAX_SIZE", "MIN_INPUT_SIZE"]

#: Longer image side above which images are downscaled (with a warning).
DEFAULT_MAX_SIZE: int = 4096

ImageInput = Union[np.ndarray, str, "os.PathLike[str]", Tensor]


class Detector:
    """DSFD face detector with on-device batched post-processing.

    Args:
        weights: checkpoint path (read by :func:`dsfd.models.load_weights`,
            which recognises the network), a weights name (``"default"``,
            ``"released-resnet152"``: downloaded once into torch's hub cache,
            see :mod:`dsfd.hub`) or URL, or ``None`` for the packaged default
            ``dsfd/weights/default.pth``; without one a randomly initialised
            ``network`` / ``backbone`` model is built (and passed through
            :func:`dsfd.models.calibrate_random_model` so its outputs are finite) and a
            :class:`RandomWeightsWarning` says its detections are meaningless.
        network, backbone: with ``weights=None``, the default model is used
            when it is of this architecture (or none is named); otherwise a
            random ``network`` / ``backbone`` model is built
            (:func:`dsfd.models.default_or_random_model`). With a weights file they force the
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
        score_threshold, iou_threshold, pre_nms_top_k, max_keep: the
            post-processing (:class:`dsfd.postprocess.PostProcessConfig`:
            face probability a box must exceed to enter NMS, 0.01; NMS IoU,
            0.3; boxes per image entering NMS, 5000; kept after NMS, 750),
            held in :attr:`postprocess`.
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
            detector warns and runs eagerly. Experimental: on an H200 the
            bf16 graphs of real models gave boxes unlike the eager ones
            (docs/speed.md, "GPU"); it warns until that is resolved.
        max_size: images whose longer side exceeds it are downscaled (with a
            warning) and their boxes mapped back; not applied in accuracy mode,
            whose protocol caps the scales itself.
        input_size: ``None`` (native resolution, default) or ``(H, W)`` / an
            int: letterbox every image into this canvas (see the module
            docstring).
        clip: clip boxes to the image.
        accuracy_mode: default of ``detect(..., accuracy_mode=...)`` and of
            ``__call__``: the released multi-scale + flip WIDER protocol.
        model: an already built DSFD model to use instead of ``weights``
            (the detector works on its own copy: the caller's network keeps
            its mode, gradients, BatchNorms and precision).
        fold_batchnorm: fold every BatchNorm into the convolution before it
            (:func:`dsfd.models.fusion.fold_batchnorm`; exact up to float
            rounding, one pass over each activation less). Default on.
        backend: ``"torch"`` (default) runs the network in PyTorch;
            ``"onnxruntime"`` runs it in ONNX Runtime on the CPU
            (:mod:`dsfd.inference.onnx_backend`): PyTorch weights are
            exported once (the ``"raw"`` graph, dynamic sizes, one cached
            session), or ``weights`` is an ``.onnx`` file written by ``dsfd
            export --outputs raw`` or ``dsfd export --int8``. Everything
            else (canvas, padding, decoding, NMS, mapping back) is the same
            code for both; ``dtype`` is the file's (float32 or int8:
            :attr:`precision`), ``compile`` / ``cuda_graphs`` do not apply.
            Needs the optional ``onnxruntime`` package (``pip install 'dsfd[export]'``).

    Example::

        det = Detector("dsfd.pth")
        faces = det.detect("group.jpg")              # [K, 5] x1, y1, x2, y2, score >= det.display_score
        every = det.detect("group.jpg", min_score=None)  # everything above score_threshold (evaluation)
        per_image = det.detect_batch([img1, img2])   # different sizes are fine
    """


    def __init__(
        self,
        weights: Optional[Union[str, "os.PathLike[str]"]] = None,
        network: Optional[str] = None,
        backbone: Optional[str] = None,
        device: Union[None, str, torch.device] = None,
        dtype: Union[None, str, torch.dtype] = None,
        score_threshold: float = PostProcessConfig.score_threshold,
        iou_threshold: float = PostProcessConfig.iou_threshold,
        pre_nms_top_k: int = PostProcessConfig.pre_nms_top_k,
        max_keep: int = PostProcessConfig.max_keep,
        channels_last: Optional[bool] = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
        input_size: Union[None, int, Sequence[int]] = None,
        clip: bool = True,
        accuracy_mode: bool = False,
        model: Optional[nn.Module] = None,
        fold_batchnorm: bool = True,
        backend: str = "torch",
    ) -> None:
        from ..precision import resolve_dtype
        from .onnx_backend import BACKENDS, is_onnx_file

        self.backend = str(backend).lower()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._ort: Any = None  # the ONNX Runtime network (backend="onnxruntime")
        if self.backend == "onnxruntime":
            if device is not None and str(device).lower() not in ("cpu", "auto"):
                raise ValueError(f"backend='onnxruntime' runs on the CPU here (device={device!r}); use device='cpu'")
            if dtype is not None and str(dtype).replace("torch.", "") not in ("auto", "float32"):
                raise ValueError(f"backend='onnxruntime' runs the graph's own precision (float32, or int8 for a "
                                 f"dsfd export --int8 file), not dtype={dtype!r}")
            device, dtype = "cpu", torch.float32
        elif is_onnx_file(weights):
            raise ValueError(f"{os.fspath(weights)} is an ONNX file: run it with backend='onnxruntime' "
                             "(--backend onnxruntime)")
        self.device = self._resolve_device(device)
        dtype = resolve_dtype(dtype, self.device)
        self.postprocess = PostProcessConfig(score_threshold, iou_threshold, pre_nms_top_k, max_keep)
        if int(max_size) < MIN_INPUT_SIZE:
            raise ValueError(f"max_size must be >= {MIN_INPUT_SIZE}, got {max_size}")
        if (compile or cuda_graphs) and self.device.type != "cuda":
            raise ValueError(
                "compile=True and cuda_graphs=True are GPU-only options (device is "
                f"{self.device}); leave them off on CPU"
            )
        self.dtype = dtype
        self.max_size = int(max_size)
        self.input_size = as_hw(input_size)
        self.clip = bool(clip)
        self.accuracy_mode = bool(accuracy_mode)
        default_cl = self.device.type == "cuda" or dtype == torch.bfloat16
        self.channels_last = default_cl if channels_last is None else bool(channels_last)
        if self.backend == "onnxruntime":
            self.channels_last = False  # the graph takes the uint8 NHWC canvas itself
        self.random_weights = False
        self.weights: Optional[str] = None

        if self.backend == "onnxruntime":
            self.model = self._build_ort(weights, network, backbone, model)
        else:
            self.model = self._build_model(weights, network, backbone, model)
        if not isinstance(self.model, DetectionModel):
            raise TypeError(f"a {type(self.model).__name__} is not a DSFD network (dsfd.models.DetectionModel)")
        self.model.eval().requires_grad_(False)
        #: Score from which a face is drawn / saved by default: the model's own threshold
        #: (stored with its weights, chosen from its PR curve) or :data:`DISPLAY_SCORE`.
        self.display_score = float(getattr(self.model, "display_score", None) or DISPLAY_SCORE)
        # the model's hiding threshold (--anonymize: chosen for recall, stored with its weights); else display_score
        self.hide_score = float(getattr(self.model, "hide_score", None) or self.display_score)
        self.folded_batchnorms = 0
        if self._ort is not None:
            fold_batchnorm = False  # ONNX Runtime folds them in its graph optimisation
        if fold_batchnorm:
            from ..models.fusion import fold_batchnorm as fold

            if hasattr(self.model, "fold_fem_norm"):
                self.model.fold_fem_norm()  # a --fem-norm training checkpoint's FEM BatchNorms (no-op otherwise)
            self.folded_batchnorms = fold(self.model)
        if self.dtype in (torch.bfloat16, torch.float16) and self._ort is None:
            # autocast would cast every conv weight again on every call (its weight cache only keeps
            # tensors that require grad): store them in the autocast precision once - same numbers
            for m in self.model.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.to(self.dtype)
        if self._ort is None:
            self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._mean_hwc = torch.tensor(self.model.pixel_mean, device=self.device)  # BGR, for NHWC input
        self._low_precision_input = self.dtype in (torch.bfloat16, torch.float16) and all(
            float(v).is_integer() and abs(v) <= 256 for v in self.model.pixel_mean)
        # the padding value: exactly zero after normalisation
        self._mean_u8 = np.array([round(v) for v in self.model.pixel_mean], dtype=np.uint8)
        if self._ort is None:
            self._padding = PaddingMask(self.model.inference_anchors, self.device, self._probe_eager)
        else:  # the feature-map sizes from a weightless copy of the network on the meta device
            self._padding = PaddingMask(self._shapes.inference_anchors, self.device,
                                        lambda h, w: self._shapes(torch.zeros(1, 3, h, w, device="meta")))
        self._network = torch.compile(self.model) if compile else self.model
        self.compiled = bool(compile)
        self.cuda_graphs = bool(cuda_graphs)
        if self.cuda_graphs:
            warnings.warn("cuda_graphs=True is experimental: on an H200 its bf16 results differed from the eager "
                          "pipeline's for real models (docs/speed.md, 'GPU'); compare with cuda_graphs=False")
        self._graphs = GraphCache(self.device)
        self._staging: Dict[Tuple[int, int, int], List[Any]] = {}  # pinned canvases for the GPU, see _upload_canvas

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

    def _build_ort(self, weights: Any, network: Optional[str], backbone: Optional[str],
                   model: Optional[nn.Module]) -> nn.Module:
        """The ONNX Runtime network (``self._ort``) and the model that describes it (returned).

        From an ``.onnx`` file the description is a weightless ``meta``-device
        copy of the network named in its metadata; otherwise the PyTorch model,
        exported once into the session.
        """
        from .onnx_backend import OrtNetwork, export_raw_bytes, import_onnxruntime, is_onnx_file, meta_skeleton

        import_onnxruntime()  # the missing-package error before any export
        if is_onnx_file(weights):
            if model is not None:
                raise ValueError("pass either weights or model, not both")
            self.weights = os.fspath(weights)
            self._ort = OrtNetwork(weights)
            described = meta_skeleton(self._ort.config)
            if self._ort.display_score is not None:
                described.display_score = float(self._ort.display_score)
            if self._ort.hide_score is not None:
                described.hide_score = float(self._ort.hide_score)
            self._shapes = described
            return described
        built = self._build_model(weights, network, backbone, model)
        self._ort = OrtNetwork(export_raw_bytes(built))
        self._shapes = meta_skeleton(getattr(built, "config", {}))
        return built

    def _probe_eager(self, height: int, width: int) -> None:
        """One eager forward on a zero ``height x width`` input in the network's own precision (the padding
        mask's feature sizes, when a compiled network saw a size first): zeros in float32 outside autocast
        would meet weights already stored in bf16 / fp16."""
        with torch.inference_mode():
            x = torch.zeros(1, height, width, 3, dtype=torch.uint8, device=self.device)
            x = self.network_input(x + torch.as_tensor(self._mean_u8, device=self.device))
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                self.model(x)

    @property
    def precision(self) -> str:
        """What the network computes in: ``"float32"``, ``"bfloat16"``, ``"float16"`` or (ONNX Runtime) ``"int8"``."""
        if self._ort is not None:
            return self._ort.precision
        return str(self.dtype).replace("torch.", "")

    def _build_model(self, weights: Any, network: Optional[str], backbone: Optional[str],
                     model: Optional[nn.Module]) -> nn.Module:
        from ..models import default_or_random_model, load_weights

        if model is not None:
            if weights is not None:
                raise ValueError("pass either weights or model, not both")
            import copy

            # the detector's own copy: eval mode, no gradients, folding and casting never reach the
            # caller's network (which may be training on)
            return copy.deepcopy(model)
        if weights is not None:
            self.weights = os.fspath(weights)
            return load_weights(weights, map_location="cpu", network=network, backbone=backbone)
        built, path = default_or_random_model(network, backbone, stacklevel=3)
        self.random_weights = path is None
        self.weights = None if path is None else os.fspath(path)
        return built

    def __repr__(self) -> str:
        cfg = getattr(self.model, "config", {})
        src = "random weights" if self.random_weights else (self.weights or "given model")
        pp = self.postprocess
        return (
            f"Detector({cfg.get('network', '?')}/{cfg.get('backbone', '?')}, {src}, backend={self.backend}, "
            f"device={self.device}, dtype={self.dtype}, "
            f"{f'precision={self.precision}, ' if self._ort is not None else ''}channels_last={self.channels_last}, score_threshold={pp.score_threshold}, "
            f"iou_threshold={pp.iou_threshold}, input_size={self.input_size}, accuracy_mode={self.accuracy_mode})"
        )

    # ------------------------------------------------------------------ public API

    def __call__(self, image: ImageInput, color: str = "bgr") -> np.ndarray:
        """Every box above ``score_threshold`` in the detector's default mode (the ``dsfd eval`` contract):
        ``detect(image, min_score=None)``."""
        return self.detect(image, color=color, min_score=None)

    def detect(
        self,
        image: ImageInput,
        color: str = "bgr",
        min_score: Union[float, None, str] = "display",
        accuracy_mode: Optional[bool] = None,
    ) -> np.ndarray:
        """Detect faces in one image.

        Args:
            image: ``[H, W, 3]`` ``uint8`` array (BGR unless ``color="rgb"``;
                gray, RGBA, 16-bit and float in ``[0, 1]`` are converted, see
                :mod:`dsfd.io.images`), or an image file path.
            color: ``"bgr"`` or ``"rgb"`` channel order of an array input.
            min_score: drop detections scoring below; ``"display"`` (default):
                :attr:`display_score`, the model's drawing threshold; ``None``:
                keep everything above ``score_threshold`` (what an evaluation
                wants). Outside accuracy mode it is applied before NMS.
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
        min_score: Union[float, None, str] = "display",
        accuracy_mode: Optional[bool] = None,
    ) -> List[np.ndarray]:
        """Detect faces in several images (of any sizes) with one forward pass.

        See the module docstring for how different sizes are batched.
        In accuracy mode the images are processed one after another.

        Returns:
            One ``float32 [K_i, 5]`` array per image (see :meth:`detect`; the
            same ``min_score`` rule).
        """
        min_score = self._min_score(min_score)
        if isinstance(images, (np.ndarray, Tensor)) and getattr(images, "ndim", 0) == 4:
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise TypeError("detect_batch expects a list of images or paths; use detect() for one image")
        if self.accuracy_mode if accuracy_mode is None else accuracy_mode:
            return [self.detect_multiscale(im, color=color, min_score=min_score) for im in images]
        if len(images) == 0:
            return []
        arrays = [self._load(im, color, i) for i, im in enumerate(images)]
        prepared = [prepare(a, self.input_size, self.max_size) for a in arrays]
        postprocess = self.postprocess
        if min_score is not None and min_score > postprocess.score_threshold and not self.cuda_graphs:
            # nothing below min_score is returned, and in NMS a box only suppresses lower-scoring ones:
            # filtering before NMS keeps exactly the same boxes (a CUDA graph keeps its captured threshold)
            postprocess = dataclasses.replace(postprocess, score_threshold=math.nextafter(float(min_score), 0.0))
        with torch.inference_mode():
            dets, counts = self._infer(
                [p.image for p in prepared],
                [p.scale_xy for p in prepared],
                [p.orig_hw for p in prepared] if self.clip else None,
                postprocess=postprocess,
            )
            out = self._to_host(dets, counts)
        return [self._filter(d, min_score) for d in out]

    def detect_multiscale(
        self, image: ImageInput, color: str = "bgr", min_score: Union[float, None, str] = None
    ) -> np.ndarray:
        """Accuracy mode: the released WIDER FACE multi-scale + flip test, merged by box voting.

        See :mod:`dsfd.inference.multiscale` for the exact passes (about 11
        forward passes; the scales depend on the image size). Every pass uses
        the same batched post-processing as :meth:`detect` (the original and
        flipped passes share one forward). An image without detections gives
        an empty ``[0, 5]`` array.
        """
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
                ims = [resize_by(flipped if p.flip else img, s) for p in group]
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
            vb, vs = ops.box_voting(boxes, scores, VOTE_IOU_THRESHOLD, self.postprocess.max_keep)
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
        return to_bgr_uint8(image, color, name=None if index is None else f"#{index}")

    def _min_score(self, min_score: Union[float, None, str]) -> Optional[float]:
        if isinstance(min_score, str):
            if min_score != "display":
                raise ValueError(f"min_score must be a number, None or 'display', got {min_score!r}")
            return self.display_score
        return None if min_score is None else float(min_score)

    def _filter(self, dets: np.ndarray, min_score: Union[float, None, str]) -> np.ndarray:
        min_score = self._min_score(min_score)
        keep = np.ones(len(dets), dtype=bool)
        if min_score is not None:
            keep &= dets[:, 4] >= float(min_score)
        if self.clip:  # boxes lying entirely outside the image clip to zero width or height
            keep &= (dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])
        return np.ascontiguousarray(dets[keep], dtype=np.float32)

    def _to_device(self, array: np.ndarray) -> Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def _upload_canvas(self, images: Sequence[np.ndarray]) -> Tuple[Tensor, bool]:
        """Paste into a reused pinned host canvas (torch's threads copy) and copy it to the GPU asynchronously.

        The buffer is written again only after its last copy to the GPU has
        finished (an event per buffer), so back-to-back calls never race.
        """
        B = len(images)
        H, W = canvas_size(images, self.input_size)
        key = (B, H, W)
        entry = self._staging.pop(key, None)
        if entry is None:
            entry = [torch.empty((B, H, W, 3), dtype=torch.uint8, pin_memory=True), None]
        elif entry[1] is not None:
            entry[1].synchronize()
        self._staging[key] = entry  # most recent last
        while len(self._staging) > 2:
            self._staging.pop(next(iter(self._staging)))
        _, padded = paste(images, self.input_size, self._mean_u8, out=entry[0])
        x = entry[0].to(self.device, non_blocking=True)
        entry[1] = torch.cuda.Event()
        entry[1].record(torch.cuda.current_stream(self.device))
        return x, padded

    def _infer(
        self,
        images: Sequence[np.ndarray],
        scales: Sequence[Tuple[float, float]],
        orig_hw: Optional[Sequence[Tuple[int, int]]],
        use_graphs: bool = True,
        postprocess: Optional[PostProcessConfig] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Forward + batched post-processing of resized images; device ``(dets[B, K, 5], counts[B])``.

        With CUDA graphs the returned tensors are the graph's static outputs:
        copy them (``_to_host``) before the next call.
        """
        if self.device.type == "cuda":
            x, padded = self._upload_canvas(images)
        else:
            canvas, padded = paste(images, self.input_size, self._mean_u8)
            x = self._to_device(canvas)
        meta = self._to_device(batch_meta(images, scales, orig_hw))
        if self.cuda_graphs and use_graphs:
            B, H, W = (int(v) for v in x.shape[:3])
            out = self._graphs.replay(
                (B, H, W), (x, meta), lambda xs, ms: self._pipeline(xs, ms, True, graph_safe=True),
                lambda: (self._anchors_in_use(H, W), self._padding.cached_origins(H, W)),
            )
            if out is not None:
                return out
            self.cuda_graphs = self._graphs.enabled
        return self._pipeline(x, meta, padded, postprocess=postprocess)

    def network_input(self, images_u8: Tensor) -> Tensor:
        """A device ``uint8 [B, H, W, 3]`` BGR batch -> the network's input (minus the pixel mean).

        float32; or, under bf16 / fp16 autocast with an integer mean, already in
        that precision: ``0..255`` minus an integer mean is an integer in
        ``-255..255``, exact in both, so this is what the first convolution's
        autocast cast would give, one full-size conversion pass earlier.
        """
        if self._ort is not None:
            return images_u8  # the ONNX graph takes the uint8 canvas and subtracts the mean itself
        # on the NHWC storage (the permuted result is channels_last already), in float32: measured 4x
        # faster than the same subtraction in bf16 or on the permuted view (0.48 vs 1.95 ms at 640x480)
        x = images_u8.float() - self._mean_hwc
        if self._low_precision_input:
            x = x.to(self.dtype)
        x = x.permute(0, 3, 1, 2)
        return x if self.channels_last else x.contiguous()

    def run_network(self, x: Tensor, cache_enabled: bool = True) -> Any:
        """The (compiled) network's raw output for :meth:`network_input` under the detector's precision.

        With ``backend="onnxruntime"``: ONNX Runtime's ``ShotOutput(loc, conf, anchors)``.
        """
        if self._ort is not None:
            return self._ort(x)
        if self.dtype == torch.float32:
            autocast = torch.autocast(self.device.type, enabled=False)
        else:
            autocast = torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache_enabled)
        with autocast:
            return self._network(x)

    def _pipeline(
        self, x_u8: Tensor, meta: Tensor, mask_padding: bool, graph_safe: bool = False,
        postprocess: Optional[PostProcessConfig] = None,
    ) -> Tuple[Tensor, Tensor]:
        """The device part: normalise, forward, decode, batched NMS, map back, clip."""
        _, H, W, _ = x_u8.shape
        out = self.run_network(self.network_input(x_u8), cache_enabled=not graph_safe)
        shot = out if self._ort is not None else self.model.inference_shot(out)
        boxes, scores = decode_detections(shot.loc, shot.conf, shot.anchors, self.model.variances, H, W)
        if mask_padding:
            scores = self._padding.mask_scores(scores, meta, H, W, self.compiled or self._ort is not None)
        kb, ks, counts = select_detections(boxes, scores, postprocess or self.postprocess)
        kb = kb / meta[:, None, 2:6]
        kb = torch.minimum(torch.maximum(kb, meta[:, None, 6:10]), meta[:, None, 10:14])
        # padding rows (beyond counts) stay exactly zero
        rows = torch.arange(kb.shape[1], device=kb.device)[None, :] < counts[:, None]
        kb = kb * rows[..., None]
        return torch.cat([kb, ks.float()[..., None]], -1), counts

    def _anchors_in_use(self, height: int, width: int) -> Optional[Tensor]:
        """The cached anchors of an ``height x width`` input (a CUDA graph reads them: they must stay alive)."""
        from ..models.anchors import cached_anchors

        gen, sizes = self.model.inference_anchors, self._padding.feature_sizes(height, width)
        if sizes is None:
            return None
        return cached_anchors((height, width), sizes, gen.sizes, gen.steps, gen.aspect_ratio, gen.clip,
                              self.device, torch.float32)

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


def load_detector(weights: Optional[Union[str, "os.PathLike[str]"]] = None, accuracy_mode: bool = False,
                  **kwargs: Any) -> Detector:
    """A :class:`Detector` for ``weights`` (the ``dsfd eval --weights`` entry point).

    The returned object is callable: ``detector(bgr_uint8_image) -> float32 [K, 5]``
    (``x1, y1, x2, y2, score`` in pixels), single scale or, with
    ``accuracy_mode=True``, the multi-scale + flip protocol.
    Other keyword arguments go to :class:`Detector`.
    """
    return Detector(weights, accuracy_mode=accuracy_mode, **kwargs)
