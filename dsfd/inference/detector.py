"""The face detector: images in host memory -> boxes in host memory.

:class:`Detector` wraps a DSFD network (any :class:`dsfd.models.DetectionModel`,
run by :mod:`.torch_backend` or :mod:`.onnx_backend`): images are read
(:mod:`dsfd.io`), resized and pasted into one ``uint8`` canvas (:mod:`.canvas`),
copied to the device once (:mod:`.transfer`); there the network runs, its
boxes are decoded, those of anchors in the padding dropped (:mod:`.padding`),
the batch goes through NMS at once (:mod:`dsfd.postprocess`) and is mapped
back to each photo - no loop over images, no host synchronisation, optionally
one CUDA graph per shape (:mod:`.cuda_graphs`) - and copied back once
(``docs/architecture.md``, "Image -> boxes").
"""

from __future__ import annotations

import os
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..constants import DEFAULT_MAX_SIZE, DISPLAY_SCORE
from ..cpu_memory import retain_freed_memory
from ..io import read_image, to_bgr_uint8
from ..models.inference_prep import shape_only_copy
from ..postprocess import PostProcessConfig, decode_detections, select_detections
from .canvas import MIN_INPUT_SIZE, as_hw, batch_meta, prepare
from .cuda_graphs import GraphCache
from .loading import load_network, resolve_device
from .multiscale import run_wider_test
from .onnx_backend import backend_device_and_dtype, load_ort_network
from .padding import PaddingMask
from .torch_backend import TorchNetwork
from .transfer import CanvasUploader, to_device, to_host

__all__ = ["Detector", "load_detector", "DISPLAY_SCORE", "DEFAULT_MAX_SIZE", "MIN_INPUT_SIZE"]


ImageInput = Union[np.ndarray, str, "os.PathLike[str]", Tensor]


class Detector:
    """DSFD face detector with on-device batched post-processing (``docs/detection.md``).

    Args:
        weights: checkpoint path (:func:`dsfd.models.load_weights` recognises
            the network), weights name (``"default"``, ``"released-resnet152"``:
            :mod:`dsfd.hub`) or URL; ``None``: the packaged default model, or
            when it is not of the named ``network`` / ``backbone`` a random one
            (:func:`dsfd.models.default_or_random_model`: calibrated so its
            outputs are finite, and a :class:`RandomWeightsWarning` says its
            detections are meaningless).
        network, backbone: the architecture to use (with weights: forced
            instead of detected).
        device: ``"cuda"``, ``"cpu"``, a ``torch.device``, or ``None`` for CUDA
            when available.
        dtype: the network's autocast precision, in :attr:`dtype`
            (post-processing is always float32). ``None`` / ``"auto"``: the
            fastest exact-enough one (:func:`dsfd.precision.auto_dtype`: bf16
            on CUDA and on CPUs with bf16 in hardware, else float32); or
            ``torch.float32``, ``torch.bfloat16``, ``torch.float16`` (CUDA only).
        score_threshold, iou_threshold, pre_nms_top_k, max_keep: the
            post-processing (:class:`dsfd.postprocess.PostProcessConfig`:
            0.01, 0.3, 5000, 750), held in :attr:`postprocess`.
        channels_last: NHWC memory format (default: on for CUDA and for
            bf16 on CPU, where oneDNN's bf16 kernels want it; off for fp32 on CPU).
        compile: ``torch.compile`` the network (CUDA only; best with a fixed ``input_size``).
        cuda_graphs: replay the whole device pipeline as one CUDA graph per
            batch shape (CUDA only; :mod:`.cuda_graphs`: at most 4 shapes, each
            keeping its activations, so for a fixed ``input_size`` or video;
            accuracy mode and failed captures run eagerly). Experimental: on an
            H200 the bf16 graphs of real models gave boxes unlike the eager
            ones (docs/speed.md, "GPU"); it warns until that is resolved.
        max_size: longer image side above which images are downscaled (with a
            warning) and their boxes mapped back; not in accuracy mode, whose
            protocol caps the scales itself.
        input_size: ``None`` (native resolution, default) or ``(H, W)`` / an
            int: letterbox every image into this canvas (:mod:`.canvas`).
        clip: clip boxes to the image.
        accuracy_mode: default of ``detect(..., accuracy_mode=...)`` and of
            ``__call__``: the released multi-scale + flip WIDER protocol.
        model: an already built DSFD model instead of ``weights``; the
            detector runs its own copy
            (:func:`dsfd.models.inference_prep.prepare_for_inference`), so the
            caller's network keeps its mode, gradients, BatchNorms and precision.
        fold_batchnorm: fold every BatchNorm into the convolution before it
            (exact up to float rounding, one pass over each activation less). Default on.
        onednn: on the CPU, run every convolution through oneDNN with its
            weight packed once and the activation after it fused
            (:mod:`dsfd.models.onednn`). Default on; ``False`` runs PyTorch's
            own convolutions and activations.
        backend: ``"torch"`` (default) or ``"onnxruntime"``: the network in
            ONNX Runtime on the CPU (:mod:`.onnx_backend`), exported once from
            PyTorch weights, or ``weights`` is an ``.onnx`` file from ``dsfd
            export --outputs raw`` / ``--int8`` (its precision: :attr:`precision`);
            needs the optional ``onnxruntime`` (``pip install 'dsfd[export]'``).

    On the CPU the detector also keeps freed memory in the process for
    reuse (glibc's malloc thresholds, :mod:`dsfd.cpu_memory`; process-wide;
    ``DSFD_RETAIN_CPU_MEMORY=0`` turns it off): without it a forward can
    page-fault on every activation (measured: up to ~15% of the network's time).

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
        onednn: bool = True,
    ) -> None:
        from ..precision import resolve_dtype

        self.backend = str(backend).lower()
        device, dtype = backend_device_and_dtype(self.backend, weights, device, dtype)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.postprocess = PostProcessConfig(score_threshold, iou_threshold, pre_nms_top_k, max_keep)
        if int(max_size) < MIN_INPUT_SIZE:
            raise ValueError(f"max_size must be >= {MIN_INPUT_SIZE}, got {max_size}")
        if (compile or cuda_graphs) and self.device.type != "cuda":
            raise ValueError("compile=True and cuda_graphs=True are GPU-only options (device is "
                             f"{self.device}); leave them off on CPU")
        self.max_size = int(max_size)
        self.input_size = as_hw(input_size)
        self.clip = bool(clip)
        self.accuracy_mode = bool(accuracy_mode)
        default_cl = self.device.type == "cuda" or self.dtype == torch.bfloat16
        self.channels_last = default_cl if channels_last is None else bool(channels_last)
        if self.device.type == "cpu":
            retain_freed_memory()  # freed activations reused, not page-faulted in again (dsfd.cpu_memory)
        # the network: self._ort (ONNX Runtime) or self._torch (PyTorch); self.model describes it
        self._ort: Any = None
        self._torch: Optional[TorchNetwork] = None
        if self.backend == "onnxruntime":
            self.channels_last = False  # the graph takes the uint8 NHWC canvas itself
            self._ort, loaded = load_ort_network(weights, network, backbone, model, stacklevel=2)
        else:
            loaded = load_network(weights, network, backbone, model, stacklevel=2)
            self._torch = TorchNetwork(loaded.model, device=self.device, dtype=self.dtype, compile=compile,
                                       channels_last=self.channels_last, fold_batchnorm=fold_batchnorm,
                                       onednn=onednn)
        self.model = loaded.model if self._torch is None else self._torch.model
        self.weights, self.random_weights = loaded.weights, loaded.random_weights
        #: Score from which a face is drawn / saved by default: the model's own threshold
        #: (stored with its weights, chosen from its PR curve) or :data:`DISPLAY_SCORE`.
        self.display_score = float(getattr(self.model, "display_score", None) or DISPLAY_SCORE)
        # the model's hiding threshold (--anonymize: chosen for recall, stored with its weights); else display_score
        self.hide_score = float(getattr(self.model, "hide_score", None) or self.display_score)
        # the padding value: exactly zero after normalisation
        self._mean_u8 = np.array([round(v) for v in self.model.pixel_mean], dtype=np.uint8)
        self._padding = PaddingMask(shape_only_copy(self.model), self.device)
        self.compiled = bool(compile)
        self.cuda_graphs = bool(cuda_graphs)
        if self.cuda_graphs:
            warnings.warn("cuda_graphs=True is experimental: on an H200 its bf16 results differed from the eager "
                          "pipeline's for real models (docs/speed.md, 'GPU'); compare with cuda_graphs=False")
        self._graphs = GraphCache(self.device)
        self._canvases = CanvasUploader(self.device)

    @property
    def precision(self) -> str:
        """What the network computes in: ``"float32"``, ``"bfloat16"``, ``"float16"`` or (ONNX Runtime) ``"int8"``."""
        return self._ort.precision if self._ort is not None else str(self.dtype).replace("torch.", "")

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
        """Detect faces in one image, at its own size (below :data:`MIN_INPUT_SIZE`: padded up) like the released code.

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

        The images share one mean-padded canvas; what that changes in the
        results (nothing, for a fixed ``input_size``): :mod:`dsfd.inference.canvas`.
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
        # nothing below min_score is returned: filter before NMS (a CUDA graph keeps its captured threshold)
        postprocess = self.postprocess if self.cuda_graphs else self.postprocess.filtering_at(min_score)
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
        image = self._load(image, color, None)
        with torch.inference_mode():
            out = run_wider_test(lambda ims, scales: self._infer(ims, scales, None, use_graphs=False), image,
                                 self.postprocess.max_keep, self.clip)
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
        return to_device(array, self.device)

    def _to_host(self, dets: Tensor, counts: Tensor) -> List[np.ndarray]:
        return to_host(dets, counts)

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
        x, padded = self._canvases.upload(images, self.input_size, self._mean_u8)
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
        """A device ``uint8 [B, H, W, 3]`` BGR batch -> the network's input (minus the pixel mean; see
        :meth:`.TorchNetwork.input`). ONNX Runtime takes the canvas itself and subtracts the mean in its graph."""
        return images_u8 if self._torch is None else self._torch.input(images_u8)

    def run_network(self, x: Tensor, cache_enabled: bool = True) -> Any:
        """The (compiled) network's raw output for :meth:`network_input` under the detector's precision.

        With ``backend="onnxruntime"``: ONNX Runtime's ``ShotOutput(loc, conf, anchors)``.
        """
        return self._ort(x) if self._ort is not None else self._torch(x, cache_enabled)

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
            scores = self._padding.mask_scores(scores, shot.anchors, meta, H, W)
        kb, ks, counts = select_detections(boxes, scores, postprocess or self.postprocess)
        kb = kb / meta[:, None, 2:6]
        kb = torch.minimum(torch.maximum(kb, meta[:, None, 6:10]), meta[:, None, 10:14])
        # padding rows (beyond counts) stay exactly zero
        rows = torch.arange(kb.shape[1], device=kb.device)[None, :] < counts[:, None]
        kb = kb * rows[..., None]
        return torch.cat([kb, ks.float()[..., None]], -1), counts

    def _anchors_in_use(self, height: int, width: int) -> Tensor:
        """The cached anchors of an ``height x width`` input (a CUDA graph reads them: they must stay alive)."""
        return self._padding.anchors(height, width)


def load_detector(weights: Optional[Union[str, "os.PathLike[str]"]] = None, accuracy_mode: bool = False,
                  **kwargs: Any) -> Detector:
    """A :class:`Detector` for ``weights`` (the ``dsfd eval --weights`` entry point).

    The returned object is callable: ``detector(bgr_uint8_image) -> float32 [K, 5]``
    (``x1, y1, x2, y2, score`` in pixels), single scale or, with
    ``accuracy_mode=True``, the multi-scale + flip protocol.
    Other keyword arguments go to :class:`Detector`.
    """
    return Detector(weights, accuracy_mode=accuracy_mode, **kwargs)
