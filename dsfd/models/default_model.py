"""The packaged default model, or a calibrated random one when no weights fit.

What ``dsfd.Detector()`` and ``dsfd detect`` without ``--weights`` run: the
packaged default weights (:mod:`dsfd.hub` name ``"default"``,
``dsfd/weights/default.pth``) when they are of the requested architecture,
otherwise a randomly initialised network passed through
:func:`~dsfd.models.calibration.calibrate_random_model` and announced by a
:class:`RandomWeightsWarning`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from .calibration import calibrate_random_model

__all__ = ["RandomWeightsWarning", "default_weights_path", "default_weights_fit", "default_or_random_model"]

#: Architecture of the random model when none is named (a common trunk, not the slow ResNet152).
RANDOM_NETWORK, RANDOM_BACKBONE = "paper", "resnet50"


class RandomWeightsWarning(UserWarning):
    """The detector runs a randomly initialised network: its detections are meaningless."""


def default_weights_path() -> Optional[Path]:
    """The packaged default weights file, or ``None`` when this install has none."""
    from ..hub import cached_path, weights_info

    path = cached_path(weights_info("default"))
    return path if path.is_file() else None


def default_weights_fit(path: Path, network: Optional[str], backbone: Optional[str]) -> bool:
    """Whether the weights at ``path`` are of the requested ``network`` / ``backbone`` (``None``: any).

    Reads the ``.json`` record next to the file when there is one (cheap),
    else the checkpoint's own ``config``.
    """
    if network is None and backbone is None:
        return True
    try:
        cfg = json.loads(path.with_suffix(".json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        cfg = torch.load(path, map_location="cpu", weights_only=True).get("config", {})
    return (network is None or network.lower() == cfg.get("network")) and (
        backbone is None or backbone.lower() == cfg.get("backbone")
    )


def default_or_random_model(
    network: Optional[str] = None, backbone: Optional[str] = None, stacklevel: int = 2
) -> Tuple[nn.Module, Optional[Path]]:
    """``(model, weights path)``: the default model if it fits, else ``(calibrated random model, None)``.

    The random case warns with :class:`RandomWeightsWarning` (``stacklevel``
    as for :func:`warnings.warn`, counted from the caller).
    """
    from .dsfd import build_model
    from .weights import load_weights

    path = default_weights_path()
    if path is not None and default_weights_fit(path, network, backbone):
        return load_weights(path, map_location="cpu", network=network, backbone=backbone), path
    warnings.warn(
        f"no weights given and no fitting default weights (dsfd/weights/default.pth): using a RANDOMLY "
        f"INITIALISED {network or RANDOM_NETWORK} / {backbone or RANDOM_BACKBONE} network - its detections "
        "are meaningless. Pass weights='path/to/checkpoint.pth'.",
        RandomWeightsWarning,
        stacklevel=stacklevel + 1,
    )
    return calibrate_random_model(build_model(network or RANDOM_NETWORK, backbone or RANDOM_BACKBONE)), None
