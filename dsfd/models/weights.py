"""Loading DSFD checkpoints: :func:`load_weights` recognises the network a file belongs to.

Recognised files (all read with ``torch.load(weights_only=True)``; a
``module.`` prefix from ``DataParallel`` is stripped):

* the authors' released single-shot weights (``WIDERFace_DSFD_RES152.pth``,
  ResNet152; or the VGG variant) - a plain ``state_dict`` without
  ``num_batches_tracked`` keys;
* this project's checkpoints: a plain ``state_dict`` of a paper or released
  model, or ``{"model": state_dict, "config": model.config, ...}``;
* the most used paper-style re-implementation's checkpoints (keys
  ``vgg.*``/``resnet.*``, ``fpn_topdown.*``, ``fpn_fem.*``, ``loc_pal1.*``,
  e.g. ``dsfd_vgg_0.880.pth``), converted with
  :func:`convert_dualshot_reference_state_dict`.

Loading is strict except that missing ``num_batches_tracked`` buffers are
allowed (set to 0). Everything else - a missing or unreadable file, a
truncated archive, another model's keys, wrong shapes - raises
:class:`CheckpointError` (or ``FileNotFoundError``) naming the problem, with
the missing / unexpected keys listed (truncated).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .backbones import RESNET_LAYERS, PathLike
from .checkpoint_reader import CheckpointError, MapLocation, read_checkpoint

__all__ = [
    "CheckpointError",
    "load_weights",
    "checkpoint_architecture",
    "MODEL_CONFIG_KEYS",
    "load_state_dict_checked",
    "read_checkpoint",
    "identify_checkpoint",
    "convert_dualshot_reference_state_dict",
    "dualshot_reference_key",
]

#: Keys of a checkpoint's ``config`` that are model-building options.
MODEL_CONFIG_KEYS = (
    "network",
    "backbone",
    "width_mult",
    "fuse_branches",
    "fem_norm",
    "conv6_dilation",
    "num_classes",
    "first_shot_sizes",
    "second_shot_sizes",
    "steps",
    "aspect_ratio",
    "clip_anchors",
    "fem_dilation",
    "upsample_align_corners",
    "fem",
    "pal",
)


def _fmt_keys(keys: Sequence[str], limit: int = 10) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)}: [{shown}{more}]"


# --------------------------------------------------------------------------- key conversion


_REF_PATTERNS: List[Tuple[re.Pattern, Any]] = [
    (re.compile(r"^vgg\.(.*)$"), lambda m: f"backbone.features.{m[1]}"),
    (re.compile(r"^resnet\.(.*)$"), lambda m: f"backbone.{m[1]}"),
    (re.compile(r"^extras\.(.*)$"), lambda m: f"backbone.extras.{m[1]}"),
    (re.compile(r"^L2Normof(\d)\.(.*)$"), lambda m: f"source_norms.{int(m[1]) - 1}.{m[2]}"),
    (re.compile(r"^L2Normef(\d)\.(.*)$"), lambda m: f"enhanced_norms.{int(m[1]) - 1}.{m[2]}"),
    (re.compile(r"^fpn_topdown\.(\d+)\.(.*)$"), lambda m: f"fem.top_down.{5 - int(m[1])}.{m[2]}"),
    (re.compile(r"^fpn_latlayer\.(\d+)\.(.*)$"), lambda m: f"fem.lateral.{4 - int(m[1])}.{m[2]}"),
    (re.compile(r"^fpn_fem\.(\d+)\.(.*)$"), lambda m: f"fem.enhance.{m[1]}.{m[2]}"),
    (re.compile(r"^loc_pal1\.(.*)$"), lambda m: f"first_shot_head.loc.{m[1]}"),
    (re.compile(r"^conf_pal1\.(.*)$"), lambda m: f"first_shot_head.conf.{m[1]}"),
    (re.compile(r"^loc_pal2\.(.*)$"), lambda m: f"second_shot_head.loc.{m[1]}"),
    (re.compile(r"^conf_pal2\.(.*)$"), lambda m: f"second_shot_head.conf.{m[1]}"),
]


def dualshot_reference_key(key: str) -> str:
    """Map one key of the paper-style re-implementation to this package's paper :class:`DSFD`.

    ``fpn_topdown.i`` (deepest first) becomes ``fem.top_down.{5-i}``,
    ``fpn_latlayer.i`` becomes ``fem.lateral.{4-i}``, ``fpn_fem.l`` becomes
    ``fem.enhance.l``; ``L2Normof/ef{k}`` become ``source_norms`` /
    ``enhanced_norms``; ``loc/conf_pal1/2`` become the first / second-shot heads;
    ``vgg.N`` becomes ``backbone.features.N``, ``resnet.*`` ``backbone.*``.
    Raises ``KeyError`` for an unknown key.
    """
    for pat, fn in _REF_PATTERNS:
        m = pat.match(key)
        if m:
            return fn(m)
    raise KeyError(f"not a key of the paper-style DSFD re-implementation: {key!r}")


def convert_dualshot_reference_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Rename all keys of a paper-style re-implementation checkpoint (values unchanged).

    The architecture then matches ``dsfd_paper(backbone)`` shape for shape.
    Note that re-implementation's ResNet extras are plain convolutions (no
    BatchNorm) and its VGG conv6 is dilated by 3 - both this package's defaults.
    """
    out: Dict[str, Any] = {}
    for k, v in state_dict.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        out[dualshot_reference_key(k)] = v
    return out


def _is_dualshot_reference(keys: Sequence[str]) -> bool:
    return any(k.startswith(("fpn_topdown.", "loc_pal1.", "loc_pal2.", "fpn_fem.")) for k in keys)


# --------------------------------------------------------------------------- identification


def _resnet_depth(sd: Mapping[str, Tensor], stage_prefixes: Sequence[str]) -> Optional[str]:
    """Name of the ResNet whose bottleneck counts per stage match the keys, or ``None``."""
    counts = []
    for prefix in stage_prefixes:
        pat = re.compile(rf"^{re.escape(prefix)}(\d+)\.conv1\.weight$")
        n = [int(m[1]) for k in sd for m in [pat.match(k)] if m]
        counts.append(max(n) + 1 if n else 0)
    return next((name for name, layers in RESNET_LAYERS.items() if tuple(counts) == layers), None)


def identify_checkpoint(state_dict: Mapping[str, Tensor]) -> Optional[Dict[str, Any]]:
    """Guess ``{"network", "backbone", "width_mult"}`` from a (converted) state_dict's keys.

    Returns ``None`` when the keys belong to no known DSFD variant.
    """
    sd = state_dict
    if "cpm3_3.cpm1.weight" in sd and "loc.0.conv1.weight" in sd:
        if "vgg.0.weight" in sd:
            return {"network": "released", "backbone": "vgg16", "width_mult": sd["vgg.0.weight"].shape[0] / 64}
        if "layer1.0.weight" in sd:
            name = _resnet_depth(sd, ["layer1.4.", "layer2.0.", "layer3.0.", "layer4.0."])
            if name is not None:
                return {"network": "released", "backbone": name, "width_mult": sd["layer1.0.weight"].shape[0] / 64}
        return None
    if "second_shot_head.loc.0.weight" in sd:
        if "backbone.features.0.weight" in sd:
            wm = sd["backbone.features.0.weight"].shape[0] / 64
            return {"network": "paper", "backbone": "vgg16", "width_mult": wm}
        if "backbone.conv1.weight" in sd:
            name = _resnet_depth(sd, [f"backbone.layer{i}." for i in range(1, 5)])
            if name is not None:
                return {"network": "paper", "backbone": name, "width_mult": sd["backbone.conv1.weight"].shape[0] / 64}
    return None


# --------------------------------------------------------------------------- loading


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str = "state_dict") -> None:
    """Strict ``load_state_dict`` that tolerates missing ``num_batches_tracked`` buffers.

    Missing ``num_batches_tracked`` entries are set to 0. Any other missing or
    unexpected key, or a shape mismatch, raises :class:`CheckpointError`
    listing them (truncated lists).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing_real or unexpected or mismatched:
        parts = [f"{source} does not fit {type(model).__name__}"]
        if missing_real:
            parts.append(f"missing keys {_fmt_keys(missing_real)}")
        if unexpected:
            parts.append(f"unexpected keys {_fmt_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {_fmt_keys(mismatched, 5)}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(dict(state_dict), strict=False)
    if missing:
        named = dict(model.named_buffers())
        with torch.no_grad():
            for k in missing:
                named[k].zero_()


def _model_kwargs(config: Mapping[str, Any]) -> Dict[str, Any]:
    cfg = config
    if "network" not in cfg and isinstance(cfg.get("model"), Mapping):
        cfg = cfg["model"]
    return {k: cfg[k] for k in MODEL_CONFIG_KEYS if k in cfg}


def _build_on(device: torch.device, kwargs: Dict[str, Any]) -> nn.Module:
    from .dsfd import build_model

    with torch.device("meta"):
        model = build_model(**kwargs)
    return model.to_empty(device=device)


def _closest_candidate(sd: Mapping[str, Tensor]) -> Tuple[str, nn.Module]:
    from .dsfd import build_model

    best: Tuple[float, str, Optional[nn.Module]] = (-1.0, "", None)
    keys = set(sd)
    for network in ("released", "paper"):
        for backbone in ("resnet152", "resnet101", "resnet50", "vgg16"):
            with torch.device("meta"):
                m = build_model(network, backbone)
            own = set(m.state_dict())
            score = len(keys & own) / max(1, len(keys | own))
            if score > best[0]:
                best = (score, f"{network} {backbone}", m)
    assert best[2] is not None
    return best[1], best[2]


def _read_and_identify(
    path: PathLike,
    map_location: MapLocation,
    network: Optional[str],
    backbone: Optional[str],
    model_kwargs: Mapping[str, Any],
) -> Tuple[Dict[str, Tensor], Dict[str, Any], str, Optional[Dict[str, Any]]]:
    """``(state_dict, build_model options, source text, config)`` of a weights spec (see :func:`load_weights`)."""
    from ..hub import resolve_weights

    spec = path
    path, named = resolve_weights(path)
    if named is not None:
        network = network if network is not None else named.network
        backbone = backbone if backbone is not None else named.backbone
    sd, config = read_checkpoint(path, map_location)
    src = repr(os.fspath(path)) if named is None and os.fspath(spec) == os.fspath(path) else (
        f"{os.fspath(spec)!r} ({os.fspath(path)})"
    )
    if _is_dualshot_reference(list(sd)):
        try:
            sd = convert_dualshot_reference_state_dict(sd)
        except KeyError as e:
            raise CheckpointError(
                f"{src} looks like a paper-style re-implementation checkpoint but {e.args[0]}"
            ) from None
    kwargs: Dict[str, Any] = {}
    if config is not None:
        kwargs.update(_model_kwargs(config))
    detected = identify_checkpoint(sd)
    if detected is not None:
        for k, v in detected.items():
            kwargs.setdefault(k, v)
    if network is not None:
        kwargs["network"] = network
    if backbone is not None:
        kwargs["backbone"] = backbone
    kwargs.update(model_kwargs)
    if "network" not in kwargs or "backbone" not in kwargs:
        name, candidate = _closest_candidate(sd)
        own = candidate.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in sd if k not in own]
        raise CheckpointError(
            f"{src} is not a recognised DSFD checkpoint (closest: {name} network); "
            f"missing keys {_fmt_keys(missing)}; unexpected keys {_fmt_keys(unexpected)}. "
            "Pass network=... and backbone=... to force an architecture."
        )
    if isinstance(kwargs.get("width_mult"), float) and abs(kwargs["width_mult"] - 1.0) < 1e-9:
        kwargs["width_mult"] = 1.0
    return sd, kwargs, src, config


def checkpoint_architecture(
    path: PathLike,
    *,
    network: Optional[str] = None,
    backbone: Optional[str] = None,
) -> Dict[str, Any]:
    """The :func:`~dsfd.models.build_model` options of the network a weights file holds, without building it.

    The architecture :func:`load_weights` builds for ``path`` (a file, a
    registered name such as ``"default"``, or a URL): the checkpoint's
    ``config`` (:data:`MODEL_CONFIG_KEYS`; this project's checkpoints,
    any backbone of :data:`dsfd.constants.BACKBONES`), else what the keys
    identify (released and paper-style files), else ``network`` /
    ``backbone`` when given. Always has ``network`` and ``backbone``;
    ``build_model(**checkpoint_architecture(p))`` loads ``p`` strictly.
    What ``dsfd train --weights`` fine-tunes is this network, whole.

    Raises the errors of :func:`load_weights` (``FileNotFoundError``,
    :class:`CheckpointError`, ``dsfd.hub.WeightsDownloadError``).
    """
    return dict(_read_and_identify(path, "cpu", network, backbone, {})[1])


def load_weights(
    path: PathLike,
    map_location: MapLocation = "cpu",
    *,
    network: Optional[str] = None,
    backbone: Optional[str] = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Build the right DSFD model for a checkpoint file and load it strictly.

    Args:
        path: a weights file (see the module docstring for what is recognised),
            a registered weights name (``"default"``, ``"released-resnet152"``;
            downloaded into torch's hub cache on first use) or a URL, resolved
            by :func:`dsfd.hub.resolve_weights`. A name forces its network.
        map_location: device for the tensors and the returned model.
        network, backbone: force the architecture instead of detecting it
            (``"paper"``/``"released"``; ``"vgg16"``, ``"resnet50"``, ...).
        **model_kwargs: further :func:`~dsfd.models.build_model` options
            (they override a checkpoint's ``config``).

    Returns:
        The model (:class:`~dsfd.models.DSFD` or
        :class:`~dsfd.models.ReleasedDSFD`) on ``map_location``, in eval mode.

    Raises:
        FileNotFoundError: no such file (nor a known name or a URL).
        CheckpointError: unreadable / truncated file, unknown or mismatched keys.
        dsfd.hub.WeightsDownloadError: a name or URL that could not be downloaded.
    """
    sd, kwargs, src, config = _read_and_identify(path, map_location, network, backbone, model_kwargs)
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else torch.device("cpu")
    try:
        model = _build_on(device, kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build the model for {src} from {kwargs}: {e}") from e
    load_state_dict_checked(model, {k: v.to(device) for k, v in sd.items()}, source=src)
    if config is not None and config.get("display_score") is not None:
        # the model's own drawing threshold, chosen from its PR curve (see dsfd.evaluation.display_threshold)
        model.display_score = float(config["display_score"])
    if config is not None and config.get("hide_score") is not None:
        # the model's hiding threshold, chosen for recall (see dsfd.evaluation.display.choose_hide_threshold)
        model.hide_score = float(config["hide_score"])
    return model.eval()
