"""The network a training run starts from: fresh, from a pretrained backbone, or a whole DSFD to fine-tune.

* from scratch: ``build_model("paper", backbone, ...)`` with the run's
  options (``--backbone``, default :data:`DEFAULT_BACKBONE`);
* ``init_weights`` (``--weights``: a file, a registered name such as
  ``default``, or a URL): the whole network of that checkpoint - the
  architecture comes from the checkpoint
  (:func:`dsfd.models.checkpoint_architecture`, the same choice
  :class:`dsfd.Detector` makes), so no architecture flag is needed; flags
  that contradict it are an error naming them;
* ``init_backbone``: only the backbone from a DSFD checkpoint;
* ``freeze_backbone``: the backbone's parameters fixed and its BatchNorms
  in eval mode (fine-tuning on few images).

:func:`place_training_model` then puts it on the run's device (memory
format, SyncBatchNorm under ``--bn sync``) and :func:`wrap_ddp` wraps it for
DistributedDataParallel once the resumed weights are in.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ..models import build_model, checkpoint_architecture, load_state_dict_checked, load_weights
from .config import TrainConfig
from .runtime import Runtime

__all__ = [
    "DEFAULT_BACKBONE",
    "build_training_model",
    "place_training_model",
    "set_train_mode",
    "wrap_ddp",
    "freeze_module",
    "architecture_conflicts",
]

#: Backbone of a run from scratch without ``--backbone``.
DEFAULT_BACKBONE = "resnet50"


def architecture_conflicts(cfg: TrainConfig, arch: Dict[str, Any]) -> List[str]:
    """The run's architecture flags that contradict the checkpoint's ``arch`` (``[]``: none).

    Only flags that were set (``backbone``, ``width_mult``) or moved away
    from the full DSFD (``--fem-norm``, ``--no-fem``, ``--no-pal``,
    ``--anchor-aspect``) are compared.
    """
    out: List[str] = []
    if cfg.backbone is not None and cfg.backbone.lower() != str(arch.get("backbone")):
        out.append(f"--backbone {cfg.backbone} (the weights are {arch.get('backbone')})")
    if cfg.width_mult is not None and abs(float(cfg.width_mult) - float(arch.get("width_mult") or 1.0)) > 1e-9:
        out.append(f"--width-mult {cfg.width_mult} (the weights have {arch.get('width_mult')})")
    # --fem-norm with weights whose FEM norms were folded away re-opens them (reopen_fem_norms): no conflict
    for key, value in cfg.model_switches().items():
        have = arch.get(key, 1.5 if key == "aspect_ratio" else True)
        if have != value:
            flag = {"fem": "--no-fem", "pal": "--no-pal", "aspect_ratio": f"--anchor-aspect {value}"}[key]
            out.append(f"{flag} (the weights have {key}={have})")
    return out


def freeze_module(module: nn.Module) -> List[nn.Module]:
    """Fix a module's parameters; returns its BatchNorm layers (to be kept in eval mode)."""
    norms: List[nn.Module] = []
    for m in module.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(False)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            norms.append(m)
    return norms


def build_training_model(cfg: TrainConfig) -> Tuple[nn.Module, List[nn.Module]]:
    """``(model, frozen BatchNorm layers)`` for a run (see the module docstring).

    Raises ``ValueError`` (including :class:`dsfd.models.CheckpointError`)
    and ``FileNotFoundError`` with a message for the command line, and
    :class:`dsfd.hub.WeightsDownloadError` for a name that cannot be downloaded.
    """
    if cfg.network != "paper":
        raise ValueError("training needs the paper's network (--network paper)")
    if cfg.init_weights:
        if cfg.backbone_weights:
            raise ValueError("--weights (a whole DSFD to fine-tune) and --pretrained (ImageNet-style backbone "
                             "weights for a fresh network) exclude each other")
        if cfg.init_backbone:
            raise ValueError("--weights (the whole network) and --init-backbone (only the backbone) exclude each other")
        arch = checkpoint_architecture(cfg.init_weights)
        if arch.get("network") != "paper":
            raise ValueError(
                f"--weights {cfg.init_weights}: a {arch.get('network')} / {arch.get('backbone')} network; only the "
                "paper's dual-shot network trains here (fine-tune 'default' or a dsfd train checkpoint)"
            )
        conflicts = architecture_conflicts(cfg, arch)
        if conflicts:
            desc = ", ".join(f"{k}={v}" for k, v in arch.items())
            raise ValueError(
                f"the architecture comes from --weights {cfg.init_weights} ({desc}); these flags contradict it: "
                + "; ".join(conflicts) + ". Leave them out to fine-tune that network."
            )
        if cfg.fem_norm and not arch.get("fem_norm", False):
            model = reopen_fem_norms(cfg.init_weights, arch).train()
        else:
            model = load_weights(cfg.init_weights, map_location="cpu").train()
    else:
        kw: Dict[str, Any] = {}
        if cfg.width_mult is not None:
            kw["width_mult"] = cfg.width_mult
        if cfg.backbone_weights:
            kw["backbone_weights"] = cfg.backbone_weights
        if cfg.fem_norm:
            kw["fem_norm"] = True
        kw.update(cfg.model_switches())
        model = build_model(cfg.network, cfg.backbone or DEFAULT_BACKBONE, **kw)
        if cfg.init_backbone:
            src = load_weights(cfg.init_backbone, map_location="cpu")
            load_state_dict_checked(
                model.backbone, src.backbone.state_dict(), source=f"the backbone of {str(cfg.init_backbone)!r}"
            )
            del src
    frozen: List[nn.Module] = []
    if cfg.freeze_backbone:
        frozen.extend(freeze_module(model.backbone))
    if cfg.bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
                if m not in frozen:
                    frozen.append(m)
    return model, frozen


def to_sync_batchnorm(model: nn.Module, frozen: List[nn.Module]) -> Tuple[nn.Module, List[nn.Module]]:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the frozen BatchNorms frozen.

    The conversion replaces every BatchNorm module, so a list of frozen
    layers collected before it would point at the detached old modules (and
    the new ones would keep updating their statistics): the list is rebuilt
    by module name.
    """
    names = {id(m): n for n, m in model.named_modules()}
    frozen_names = [names[id(m)] for m in frozen]
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    modules = dict(model.named_modules())
    return model, [modules[n] for n in frozen_names]


def place_training_model(
    model: nn.Module, frozen: List[nn.Module], cfg: TrainConfig, runtime: Runtime
) -> Tuple[nn.Module, List[nn.Module]]:
    """``(model, frozen)`` on the run's device and memory format, with SyncBatchNorm under ``--bn sync`` and DDP."""
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.bn == "sync" and runtime.info.distributed:
        if runtime.device.type != "cuda":
            raise ValueError("--bn sync needs CUDA devices (SyncBatchNorm has no CPU implementation)")
        model, frozen = to_sync_batchnorm(model, frozen)
    return model, frozen


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Train mode, but the frozen BatchNorms stay in eval mode (their running statistics are fixed)."""
    model.train()
    for m in frozen:
        m.eval()


def wrap_ddp(model: nn.Module, cfg: TrainConfig, runtime: Runtime) -> nn.Module:
    """``model`` in DistributedDataParallel (the model itself when not distributed).

    Called after loading a checkpoint: DDP broadcasts rank 0's weights at
    construction.
    """
    if not runtime.info.distributed:
        return model
    ddp_cls = nn.parallel.DistributedDataParallel
    # frozen BatchNorm: nothing to keep in sync after the initial broadcast
    sync = cfg.bn != "frozen"
    sync_kw = ({"forward_sync_buffers": sync}
               if "forward_sync_buffers" in inspect.signature(ddp_cls.__init__).parameters
               else {"broadcast_buffers": sync})
    device = runtime.device
    return ddp_cls(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **sync_kw,
    )


def _fem_norms(model: nn.Module) -> List[nn.BatchNorm2d]:
    fem = getattr(model, "fem", None)
    return [] if fem is None else [m for m in fem.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def reopen_fem_norms(weights: Any, arch: Dict[str, Any]) -> nn.Module:
    """The network of ``weights`` (FEM BatchNorms folded away, as in an exported file) with the norms back.

    Fine-tuning such a file trains its FEM without the norms it was trained
    with (``--fem-norm``). This builds the network with them, loads the
    weights (every key but the norms'), and makes each norm an exact
    identity in eval mode; :func:`calibrate_fem_norms` then sets its
    statistics from real images so that it is (close to) one in train mode
    too. The model is marked ``_fem_norms_to_calibrate``.
    """
    folded = load_weights(weights, map_location="cpu")
    options = {k: v for k, v in arch.items() if k not in ("network", "backbone")}
    model = build_model(arch["network"], arch["backbone"], **{**options, "fem_norm": True})
    result = model.load_state_dict(folded.state_dict(), strict=False)
    norm_keys = {f"fem.{n}.{k}" for n, m in model.fem.named_modules() if isinstance(m, nn.BatchNorm2d)
                 for k in m.state_dict()}
    stray = [k for k in result.missing_keys if k not in norm_keys] + list(result.unexpected_keys)
    if stray:
        raise ValueError(f"cannot re-open the FEM norms of {weights}: keys that do not fit {stray[:5]}")
    for bn in _fem_norms(model):  # eval mode: (y - 0) / sqrt(1 + eps) * sqrt(1 + eps) + 0 = y
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.fill_(float(1.0 + bn.eps) ** 0.5)
        bn.bias.zero_()
    for attr in ("display_score", "hide_score"):
        if getattr(folded, attr, None) is not None:
            setattr(model, attr, getattr(folded, attr))
    model._fem_norms_to_calibrate = True
    return model


@torch.no_grad()
def calibrate_fem_norms(model: nn.Module, images: torch.Tensor) -> int:
    """Sets each FEM norm of a :func:`reopen_fem_norms` network from one batch; returns how many.

    One eval-mode forward (where every norm is still the identity, so each
    sees what the folded network computed) records the per-channel mean
    and variance of each norm's input; the norm then gets them as running
    statistics and as its affine shift and scale, so that in eval mode it
    stays exactly the identity and in train mode, whose batch statistics are
    close to these, nearly so.
    """
    norms = _fem_norms(model)
    stats: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].float()
        stats[id(module)] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    hooks = [bn.register_forward_pre_hook(record) for bn in norms]
    was_training = model.training
    try:
        model.eval()
        model(images)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    for bn in norms:
        if id(bn) not in stats:
            continue
        mean, var = stats[id(bn)]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean)
    if hasattr(model, "_fem_norms_to_calibrate"):
        del model._fem_norms_to_calibrate
    return len(stats)
