"""Training configuration and the learning-rate schedule.

The defaults are the paper's schedule (spec section 4): SGD with momentum 0.9,
weight decay 5e-4, a global batch of 16, lr 1e-3 for 40k iterations, then
1e-4 and 1e-5 for 10k iterations each. Here the two x0.1 steps are placed at
4/6 and 5/6 of ``iters`` (the paper's 40k / 50k of 60k), so any ``iters``
keeps the paper's proportions; ``lr_steps`` overrides them with explicit
iteration numbers. A linear warm-up (not in the paper; it keeps the first
iterations of a from-scratch or ImageNet-initialised network stable) ramps
the factor from ``warmup_factor`` to 1 over ``warmup_iters`` iterations
(default ``min(500, iters // 10)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["TrainConfig", "WarmupMultiStep", "default_lr_steps", "default_warmup_iters"]


def default_lr_steps(iters: int) -> Tuple[int, int]:
    """The paper's decay points scaled to ``iters``: ``round(4/6 iters)``, ``round(5/6 iters)``."""
    return (int(round(iters * 4 / 6)), int(round(iters * 5 / 6)))


def default_warmup_iters(iters: int) -> int:
    """``min(500, iters // 10)``: 500 for the paper's 60k iterations, a tenth for short runs."""
    return int(min(500, iters // 10))


@dataclass
class TrainConfig:
    """Everything that defines a training run (also stored in checkpoints as ``args``).

    Attributes:
        data: a data root (``None``: :func:`dsfd.data_paths.wider_root`) or
            a list of roots whose training images are mixed, each a WIDER
            FACE folder, a COCO ``.json`` file or a YOLO folder (see
            :func:`dsfd.data.build_dataset`; validation uses the first root
            that has a val split: WIDER's, or a YOLO ``val`` folder).
        data_format: ``"auto"`` (detected per root) or ``"wider"`` /
            ``"coco"`` / ``"yolo"`` for every root.
        images: image folder of a COCO root (default: found next to the file).
        category: COCO categories / YOLO classes read as faces (names or
            ids; default: the only one, or the one named ``face``).
        strict: stop at the first bad annotation instead of skipping and
            counting it (COCO / YOLO).
        out: output folder (checkpoints, ``log.jsonl``).
        network, backbone, width_mult, backbone_weights: model (see
            :func:`dsfd.models.build_model`); ``backbone="tiny"`` is the
            narrow ResNet for tests and CPU smoke runs. ``backbone=None``:
            ``resnet50`` from scratch, the checkpoint's with ``init_weights``.
        fem_norm: BatchNorm after every FEM conv (``fem_norm`` of
            :class:`dsfd.models.DSFD`), for training from scratch; folded
            away by ``scripts/export_default_model.py``.
        init_weights: start from these DSFD weights (any file, name or URL
            :func:`dsfd.models.load_weights` reads, e.g. ``"default"``)
            instead of a fresh initialisation - fine-tuning, not a resume
            (optimizer, schedule and data start from scratch). The whole
            network is loaded and its architecture comes from the
            checkpoint (:func:`dsfd.models.checkpoint_architecture`);
            architecture options that contradict it are an error.
        freeze_backbone: keep the backbone fixed (parameters and BatchNorm
            statistics); for fine-tuning on a few hundred images or fewer.
        init_backbone: start only the backbone from the backbone of these
            DSFD weights (any architecture variant with the same backbone:
            the ablations' stand-in for an ImageNet start); FEM and heads
            start fresh.
        batch_size: **global** batch (all ranks together); each of the
            ``world_size`` ranks gets ``batch_size // world_size`` images, so
            the schedule does not depend on the number of GPUs.
        iters: total optimizer steps.
        lr, momentum, weight_decay: SGD (weight decay on every parameter, as
            in the reference implementations).
        lr_steps: iterations at which the lr is multiplied by ``lr_gamma``
            (default 4/6 and 5/6 of ``iters``).
        warmup_iters, warmup_factor: linear warm-up from
            ``warmup_factor * lr`` (default ``min(500, iters // 10)`` iterations).
        size: square training input side (640).
        augment: ``"full"`` (:class:`dsfd.data.TrainTransform`) or ``"none"``
            (:class:`dsfd.data.EvalTransform`: the whole image resized to
            ``size x size``; for overfitting tests).
        train_images: use only the first N training images (0: all) or an
            explicit list of indices (tests, smoke runs).
        min_face: annotation filter (pixels in the original image).
        workers: DataLoader worker processes per rank.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: ``"auto"`` (bf16 on CUDA and on CPUs with bf16 in hardware,
            see :mod:`dsfd.precision`; none elsewhere), ``"bf16"``, ``"fp16"``
            (with a GradScaler, CUDA only) or ``"none"``.
        channels_last: ``None``: on for CUDA and for CPU bf16, off otherwise.
        bn: BatchNorm handling: ``"train"`` (batch statistics per rank),
            ``"frozen"`` (running statistics and affine parameters fixed, the
            usual choice with ImageNet weights and small per-GPU batches) or
            ``"sync"`` (SyncBatchNorm across ranks, CUDA only).
        lambda_: PAL weight of the second shot.
        fem, pal: ablation switches of the network (see
            :class:`dsfd.models.DSFD`): ``fem=False`` runs the second shot on
            the backbone maps, ``pal=False`` trains one shot (the second)
            with a single shot's loss; both off is the paper's FSSD baseline.
        anchor_aspect: anchor height : width (DSFD 1.5; S3FD's square anchors 1.0).
        das_prob: probability of data-anchor-sampling crops (IAM: 2/5; 0 turns
            it off, leaving only SSD-style crops).
        matching: anchor matching preset of the loss (see
            :data:`dsfd.losses.MATCHING_PRESETS`): ``"iam"`` (IoU 0.4),
            ``"s3fd"`` (0.35 + scale compensation) or ``"ssd"`` (0.5).
        match_iou: override the preset's positive IoU threshold.
        ignore_iou: background anchors with IoU ``>=`` this with an ignore
            region (invalid-flagged or too-small faces, faces the crop
            dropped, COCO crowds) are neither positives nor mined negatives
            (:func:`dsfd.ops.ignore_anchors`); 0 turns ignore regions off
            (they are then background, as before 2026-12-07).
        min_negatives: hard negatives mined per image at least, whatever its
            faces (0: SSD's ``3 x positives`` only, so a photo without faces
            teaches nothing).
        crop_scale: ``(lo, hi)`` side range of the SSD-style crops as a
            fraction of the image's short side (``hi > 1`` adds zoom-out
            crops, see :class:`dsfd.data.TrainTransform`).
        val_every: validate every N iterations (0: never); ``val_images``
            limits the validation images (0: the whole val split).
        ckpt_every: write ``last.pt`` every N iterations (0: only at the end
            and on interruption); ``keep_every`` also keeps
            ``iter_XXXXXXX.pt`` every N iterations.
        log_every: log / progress-bar update interval (iterations).
        seed: model initialisation, data order and augmentation.
        deterministic: deterministic algorithms, no cuDNN benchmark.
        clip_grad: max gradient norm (0: off).
        ema: decay of an exponential moving average of the weights kept
            during training (:mod:`dsfd.training.ema`; e.g. 0.999; 0: off;
            its decay warms up unless ``init_weights`` are given).
            Validation, ``final.pt`` and the ``"ema"`` entry of checkpoints
            use the average.
        resume: checkpoint path, ``"auto"`` (``<out>/last.pt`` if present) or ``None``.
        stop_at: stop (saving a checkpoint, as if interrupted) once this
            iteration is reached; for time-limited jobs and tests.
        progress: show a tqdm progress bar (rank 0).
    """

    data: Union[None, str, List[str]] = None
    data_format: str = "auto"
    images: Optional[str] = None
    category: Optional[List[str]] = None
    strict: bool = False
    out: str = "runs/dsfd"
    network: str = "paper"
    backbone: Optional[str] = None
    width_mult: Optional[float] = None
    backbone_weights: Optional[str] = None
    fem_norm: bool = False
    init_weights: Optional[str] = None
    init_backbone: Optional[str] = None
    freeze_backbone: bool = False
    batch_size: int = 16
    iters: int = 60_000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_steps: Optional[List[int]] = None
    lr_gamma: float = 0.1
    warmup_iters: Optional[int] = None
    warmup_factor: float = 0.1
    size: int = 640
    augment: str = "full"
    train_images: Any = 0
    min_face: float = 1.0
    workers: int = 4
    device: str = "auto"
    amp: str = "auto"
    channels_last: Optional[bool] = None
    bn: str = "train"
    lambda_: float = 1.0
    fem: bool = True
    pal: bool = True
    anchor_aspect: float = 1.5
    das_prob: float = 0.4
    matching: str = "iam"
    match_iou: Optional[float] = None
    ignore_iou: float = 0.1
    min_negatives: int = 0
    crop_scale: Tuple[float, float] = (0.3, 1.0)
    val_every: int = 2000
    val_images: int = 0
    ckpt_every: int = 1000
    keep_every: int = 0
    log_every: int = 10
    seed: int = 0
    deterministic: bool = False
    clip_grad: float = 0.0
    ema: float = 0.0
    resume: Optional[str] = None
    stop_at: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1, got {self.iters}")
        if self.augment not in ("full", "none"):
            raise ValueError(f"augment must be 'full' or 'none', got {self.augment!r}")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if not 0.0 <= self.das_prob <= 1.0:
            raise ValueError(f"das_prob must be in [0, 1], got {self.das_prob}")
        if self.matching not in ("iam", "s3fd", "ssd"):
            raise ValueError(f"matching must be iam, s3fd or ssd, got {self.matching!r}")
        if self.match_iou is not None and not 0.0 < self.match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {self.match_iou}")
        if not 0.0 <= self.ignore_iou <= 1.0:
            raise ValueError(f"ignore_iou must be in [0, 1] (0: off), got {self.ignore_iou}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if self.min_negatives < 0:
            raise ValueError(f"min_negatives must be >= 0, got {self.min_negatives}")
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi, got {self.crop_scale}")
        if self.anchor_aspect <= 0:
            raise ValueError(f"anchor_aspect must be > 0, got {self.anchor_aspect}")
        if self.bn not in ("train", "frozen", "sync"):
            raise ValueError(f"bn must be train, frozen or sync, got {self.bn!r}")
        if self.data_format not in ("auto", "wider", "coco", "yolo"):
            raise ValueError(f"data_format must be auto, wider, coco or yolo, got {self.data_format!r}")
        if isinstance(self.category, (str, int)):
            self.category = [str(self.category)]

    # ------------------------------------------------------------------ derived
    def data_roots(self) -> List[str]:
        """``data`` as a list (empty: the default root)."""
        if self.data is None:
            return []
        if isinstance(self.data, (list, tuple)):
            return [str(d) for d in self.data]
        return [str(self.data)]

    def model_switches(self) -> Dict[str, Any]:
        """Ablation options of :func:`dsfd.models.build_model` that differ from the full DSFD."""
        kw: Dict[str, Any] = {}
        if not self.fem:
            kw["fem"] = False
        if not self.pal:
            kw["pal"] = False
        if self.anchor_aspect != 1.5:
            kw["aspect_ratio"] = float(self.anchor_aspect)
        return kw

    def resolved_lr_steps(self) -> Tuple[int, ...]:
        return tuple(int(s) for s in self.lr_steps) if self.lr_steps else default_lr_steps(self.iters)

    def resolved_warmup_iters(self) -> int:
        return default_warmup_iters(self.iters) if self.warmup_iters is None else int(self.warmup_iters)

    def to_dict(self) -> Dict[str, Any]:
        """Plain (``torch.load(weights_only=True)``-safe) dict."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
            elif isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class WarmupMultiStep:
    """lr multiplier: linear warm-up, then ``gamma ** (number of steps passed)``.

    ``factor(i)`` is the multiplier used for optimizer step ``i`` (0-based):
    ``warmup_factor + (1 - warmup_factor) * i / warmup_iters`` while
    ``i < warmup_iters`` (times the step decay, which is 1 there unless a
    step falls inside the warm-up). A picklable object (not a lambda), so
    ``LambdaLR.state_dict()`` stores its fields.
    """

    def __init__(self, steps: Sequence[int], gamma: float = 0.1, warmup_iters: int = 0, warmup_factor: float = 0.1):
        self.steps = sorted(int(s) for s in steps)
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, i: int) -> float:
        decay = self.gamma ** sum(1 for s in self.steps if i >= s)
        if i < self.warmup_iters:
            a = i / self.warmup_iters
            return decay * (self.warmup_factor * (1.0 - a) + a)
        return decay

    def __repr__(self) -> str:
        return (
            f"WarmupMultiStep(steps={self.steps}, gamma={self.gamma}, "
            f"warmup_iters={self.warmup_iters}, warmup_factor={self.warmup_factor})"
        )
