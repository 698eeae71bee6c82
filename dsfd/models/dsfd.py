"""The paper's Dual Shot Face Detector.

Li et al., "DSFD: Dual Shot Face Detector", CVPR 2019,
https://arxiv.org/abs/1810.10220.

Six source maps from a VGG16 or ResNet50/101/152 backbone feed

* the **first shot**: SSD heads on the original maps (VGG: L2Norm on levels
  0-2) with small anchors (8, 16, ..., 256 px), and
* the **second shot**: SSD heads on the Feature-Enhance-Module output
  (:class:`~dsfd.models.fem.FeatureEnhanceModule`; VGG: L2Norm on levels
  0-2) with anchors twice as large (16, ..., 512 px).

Training uses both shots (Progressive Anchor Loss); inference runs the
second shot only and never computes the first-shot heads.
Inputs are BGR images (0-255) minus the mean ``(104, 117, 123)``
(:func:`preprocess`); any input size works.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..constants import BGR_MEAN, BOX_VARIANCES
from .anchors import ASPECT_RATIO, FIRST_SHOT_SIZES, SECOND_SHOT_SIZES, STEPS, AnchorGenerator
from .backbones import BACKBONES, L2Norm, PathLike, build_backbone
from .fem import FeatureEnhanceModule
from .heads import DSFDHead, ShotOutput, decode_predictions
from .interface import PaperDSFDInterface

__all__ = [
    "DSFD",
    "DSFDOutput",
    "dsfd_paper",
    "build_model",
    "preprocess",
    "BGR_MEAN",
    "NETWORKS",
]

NETWORKS: Tuple[str, ...] = ("paper", "released")


def preprocess(images: Any, channels_last_input: bool = False) -> Tensor:
    """BGR 0-255 images -> network input (float32, minus :data:`BGR_MEAN`).

    Args:
        images: tensor or array, ``[B, 3, H, W]`` / ``[3, H, W]`` (or
            ``[B, H, W, 3]`` / ``[H, W, 3]`` with ``channels_last_input=True``,
            e.g. OpenCV images), any numeric dtype, BGR order.

    Returns:
        ``Tensor[B, 3, H, W]`` float32.
    """
    x = torch.as_tensor(images)
    if channels_last_input:
        x = x.movedim(-1, -3)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected BGR images [B, 3, H, W], got {tuple(x.shape)}")
    mean = torch.tensor(BGR_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.float() - mean


class DSFDOutput(NamedTuple):
    """Output of :class:`DSFD`.

    Attributes:
        first: first-shot :class:`~dsfd.models.heads.ShotOutput`
            (``loc[B, A, 4]``, ``conf[B, A, 2]`` logits, ``anchors[A, 4]`` with
            sizes 8..256), or ``None`` when not computed (eval mode).
        second: second-shot ``ShotOutput`` (anchors 16..512), or ``None`` when
            only the first shot was requested.
    """

    first: Optional[ShotOutput]
    second: Optional[ShotOutput]


ShotsArg = Union[None, int, str, Sequence[int]]


def _parse_shots(shots: ShotsArg, training: bool) -> Tuple[bool, bool]:
    if shots is None:
        return (True, True) if training else (False, True)
    if isinstance(shots, str):
        table = {"both": (1, 2), "first": (1,), "second": (2,)}
        if shots not in table:
            raise ValueError(f"shots must be one of {sorted(table)} or a subset of (1, 2), got {shots!r}")
        shots = table[shots]
    if isinstance(shots, int):
        shots = (shots,)
    s = set(int(v) for v in shots)
    if not s or not s <= {1, 2}:
        raise ValueError(f"shots must be a non-empty subset of (1, 2), got {shots!r}")
    return 1 in s, 2 in s


class DSFD(PaperDSFDInterface, nn.Module):
    """Dual Shot Face Detector (paper version), https://arxiv.org/abs/1810.10220.

    Args:
        backbone: a module returning six maps with ``out_channels`` (see
            :mod:`dsfd.models.backbones`); a VGG backbone's
            ``l2norm_scales`` (10, 8, 5) add L2Norm on levels 0-2 of both shots.
        num_classes: including background (2).
        first_shot_sizes, second_shot_sizes: anchor sizes per level (px).
        steps: strides of the six levels.
        aspect_ratio: anchor height : width (1.5).
        clip_anchors: clamp anchors to ``[0, 1]`` (the released code does; default off).
        fem_dilation: dilation of the FEM branch convs (3).
        fuse_branches: in eval mode, run the FEM branch stems as one conv, and each
            level's box and class head convs as one.
        upsample_align_corners: bilinear convention of the FEM top-down path (``False``).
        fem_norm: BatchNorm after every FEM conv, for training from scratch
            (see :class:`~dsfd.models.fem.FeatureEnhanceModule`);
            :meth:`fold_fem_norm` folds it away after training.
        fem: ablation switch (paper Table 1). ``False`` drops the Feature
            Enhance Module: the second shot's head runs on the backbone's
            own maps (a plain dual shot; with ``pal=False`` the FSSD baseline).
        pal: ablation switch (paper Table 3). ``False`` drops the first shot
            and its small anchors: one shot (the second: regular anchors,
            on the FEM output when ``fem``) trained with a single shot's
            loss. The model's ``shots`` is then ``(2,)``.

    Every combination keeps the second shot as the test-time shot, so
    inference, export and evaluation work the same for all of them.

    ``forward(images, shots=None)`` with ``images[B, 3, H, W]`` (BGR minus
    mean) returns :class:`DSFDOutput`. ``shots=None`` means both shots in
    training mode and the second shot only in eval mode; pass ``(1, 2)``,
    ``2``, ``"both"``, ``"second"`` ... to choose. First-shot heads (and the
    first-shot L2Norm) are only run when the first shot is requested.
    At 640x640 each shot has ``A = 34,125`` anchors.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        first_shot_sizes: Sequence[float] = FIRST_SHOT_SIZES,
        second_shot_sizes: Sequence[float] = SECOND_SHOT_SIZES,
        steps: Sequence[float] = STEPS,
        aspect_ratio: float = ASPECT_RATIO,
        clip_anchors: bool = False,
        fem_dilation: int = 3,
        fuse_branches: bool = True,
        upsample_align_corners: bool = False,
        fem_norm: bool = False,
        fem: bool = True,
        pal: bool = True,
    ) -> None:
        super().__init__()
        ch = list(getattr(backbone, "out_channels"))
        if len(ch) != len(steps):
            raise ValueError(f"backbone gives {len(ch)} maps but {len(steps)} steps were given")
        self.backbone = backbone
        self.num_classes = num_classes
        self.variances = BOX_VARIANCES
        self.use_fem = bool(fem)
        self.use_pal = bool(pal)
        #: Shots this network has (1: small anchors on the backbone maps, 2: the test-time shot).
        self.shots: Tuple[int, ...] = (1, 2) if self.use_pal else (2,)
        scales = getattr(backbone, "l2norm_scales", None) or ()
        # the backbone maps' L2Norms serve the first shot, and the second when there is no FEM
        needs_source_norms = self.use_pal or not self.use_fem
        self.source_norms = nn.ModuleList(
            [L2Norm(ch[i], s) for i, s in enumerate(scales)] if needs_source_norms else []
        )
        self.fem: Optional[FeatureEnhanceModule] = (
            FeatureEnhanceModule(ch, fem_dilation, upsample_align_corners, fuse_branches, norm=fem_norm)
            if self.use_fem
            else None
        )
        self.enhanced_norms = nn.ModuleList(
            [L2Norm(ch[i], s) for i, s in enumerate(scales)] if self.use_fem else []
        )
        self.first_shot_head: Optional[DSFDHead] = (
            DSFDHead(ch, num_classes, fuse=fuse_branches) if self.use_pal else None
        )
        self.second_shot_head = DSFDHead(ch, num_classes, fuse=fuse_branches)
        self.first_shot_anchors: Optional[AnchorGenerator] = (
            AnchorGenerator(first_shot_sizes, steps, aspect_ratio, clip_anchors) if self.use_pal else None
        )
        self.second_shot_anchors = AnchorGenerator(second_shot_sizes, steps, aspect_ratio, clip_anchors)
        self.config: Dict[str, Any] = {"network": "paper"}

    def fold_fem_norm(self) -> "DSFD":
        """Fold the FEM's BatchNorms into its convs (see ``fem_norm``); returns ``self``.

        Afterwards the model is the plain paper architecture (its
        ``state_dict`` loads into ``build_model(..., fem_norm=False)``) and
        ``config["fem_norm"]`` is dropped. Eval-mode outputs are unchanged.
        """
        if self.fem is not None:
            self.fem.fold_norm()
        self.config.pop("fem_norm", None)
        return self

    @property
    def out_channels(self) -> List[int]:
        return list(self.backbone.out_channels)

    @staticmethod
    def _norm(norms: nn.ModuleList, feats: List[Tensor]) -> List[Tensor]:
        return [norms[i](f) if i < len(norms) else f for i, f in enumerate(feats)]

    def forward(self, images: Tensor, shots: ShotsArg = None) -> DSFDOutput:
        """Raw predictions of the requested shots.

        Args:
            images: ``Tensor[B, 3, H, W]``, BGR 0-255 minus ``(104, 117, 123)``.
            shots: which shots to compute (default: both when training, the
                second only in eval mode).

        Returns:
            :class:`DSFDOutput` with ``ShotOutput(loc[B, A, 4], conf[B, A, C], anchors[A, 4])``
            per computed shot.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        want_first, want_second = _parse_shots(shots, self.training)
        if not self.use_pal:
            if shots is not None and want_first:
                raise ValueError("this network was built with pal=False and has no first shot")
            want_first = False
        feats = self.backbone(images)
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        dev = images.device
        first = second = None
        if want_first:
            assert self.first_shot_head is not None and self.first_shot_anchors is not None
            loc, conf = self.first_shot_head(self._norm(self.source_norms, feats))
            first = ShotOutput(loc, conf, self.first_shot_anchors(image_size, sizes, dev))
        if want_second:
            if self.fem is not None:
                enhanced = self._norm(self.enhanced_norms, self.fem(feats))
            else:
                enhanced = self._norm(self.source_norms, feats)
            loc, conf = self.second_shot_head(enhanced)
            second = ShotOutput(loc, conf, self.second_shot_anchors(image_size, sizes, dev))
        return DSFDOutput(first, second)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Second-shot face probabilities and decoded boxes for every anchor (no NMS).

        Runs in eval mode (BatchNorm statistics frozen) whatever the current
        mode, and restores the mode afterwards.

        Returns:
            ``scores[B, A]`` and ``boxes[B, A, 4]`` (``x1, y1, x2, y2``
            normalised by the input width / height).
        """
        was_training = self.training
        self.train(False)
        try:
            out = self.forward(images, shots=2).second
        finally:
            self.train(was_training)
        assert out is not None
        return decode_predictions(out.loc, out.conf, out.anchors, self.variances)


def dsfd_paper(
    backbone: str = "resnet152",
    *,
    width_mult: Optional[float] = None,
    backbone_weights: Optional[PathLike] = None,
    conv6_dilation: int = 3,
    fssd: bool = False,
    **kwargs: Any,
) -> DSFD:
    """The paper's dual-shot DSFD.

    Args:
        backbone: ``"vgg16"``, ``"resnet50"``, ``"resnet101"``, ``"resnet152"``,
            ``"tiny"`` (1-block-per-stage ResNet, 1/8 widths, for tests and
            CPU smoke runs) or ``"lite"`` (all-BatchNorm backbone for training
            from scratch on CPU; the default model's).
        width_mult: width multiplier of the backbone (default 1; 1/8 for tiny).
        backbone_weights: local torchvision-format ImageNet ``state_dict`` file.
        conv6_dilation: VGG16 conv6 dilation (3).
        fssd: the paper's FSSD baseline, shorthand for ``fem=False, pal=False``:
            one shot on the backbone's six maps with the regular
            S3FD-style anchors (16..512 px on strides 4..128).
        **kwargs: passed to :class:`DSFD` (``fem``, ``pal``, ``clip_anchors``,
            ``fuse_branches``, ...).
    """
    if fssd:
        if kwargs.get("fem") or kwargs.get("pal"):
            raise ValueError("fssd=True means fem=False and pal=False")
        kwargs["fem"] = False
        kwargs["pal"] = False
    # the full paper network is the default: only record switches that differ
    for switch in ("fem", "pal"):
        if switch in kwargs and bool(kwargs[switch]):
            del kwargs[switch]
    bb = build_backbone(backbone, width_mult=width_mult, conv6_dilation=conv6_dilation, weights=backbone_weights)
    model = DSFD(bb, **kwargs)
    config: Dict[str, Any] = {"network": "paper", "backbone": backbone.lower(), "width_mult": bb.width_mult}
    if backbone.lower() == "vgg16" and conv6_dilation != 3:
        config["conv6_dilation"] = conv6_dilation
    for k, v in kwargs.items():
        config[k] = list(v) if isinstance(v, tuple) else v
    model.config = config
    return model


def build_model(network: str = "paper", backbone: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Build any DSFD variant.

    Args:
        network: ``"paper"`` (dual shot, :func:`dsfd_paper`) or ``"released"``
            (the authors' single-shot network, :func:`~dsfd.models.released.dsfd_released`).
        backbone: ``"vgg16"``, ``"resnet50"``, ``"resnet101"``, ``"resnet152"``
            (default), ``"tiny"`` or ``"lite"`` (paper network only).
        **kwargs: options of the chosen factory (``width_mult``,
            ``backbone_weights``, ``fuse_branches``, ...). ``tiny=True`` is a
            shorthand for ``backbone="tiny"``.

    The returned model has a ``config`` dict; ``build_model(**model.config)``
    rebuilds the same architecture (what :func:`~dsfd.models.load_weights`
    does for ``{"model": state_dict, "config": config}`` checkpoints).
    """
    from .released import dsfd_released

    if kwargs.pop("tiny", False):
        backbone = "tiny"
    backbone = (backbone or "resnet152").lower()
    network = network.lower()
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    if network == "paper":
        return dsfd_paper(backbone, **kwargs)
    if network == "released":
        unknown = set(kwargs) - {"width_mult", "fuse_branches", "backbone_weights"}
        if unknown:
            raise TypeError(f"unexpected options for the released network: {sorted(unknown)}")
        return dsfd_released(backbone, **kwargs)
    raise ValueError(f"unknown network {network!r}; expected one of {NETWORKS}")
