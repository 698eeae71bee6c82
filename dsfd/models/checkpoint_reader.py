"""Reading a checkpoint file into a ``state_dict`` (and its ``config``), with clear errors.

A leaf of :mod:`dsfd.models`: the backbones' ImageNet loader and the model
loader of :mod:`dsfd.models.weights` both read files through it, so neither
imports the other.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["CheckpointError", "MapLocation", "read_checkpoint"]

MapLocation = Union[str, torch.device, None]


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model."""


def read_checkpoint(
    path: Union[str, "os.PathLike[str]"], map_location: MapLocation = "cpu"
) -> Tuple[Dict[str, Tensor], Optional[Dict[str, Any]]]:
    """Read a checkpoint file: ``(state_dict, config or None)``.

    Unwraps ``{"model" | "state_dict" | "weight": state_dict, "config": ...}``
    and strips a ``module.`` prefix. A training checkpoint of a run with
    ``--ema`` is read as its weight average (``"ema"``), the network its
    run validated and the one ``final.pt`` holds.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"weights file not found: {p!r}")
    if not os.path.isfile(p):
        raise CheckpointError(f"{p!r} is not a file")
    if os.path.getsize(p) == 0:
        raise CheckpointError(f"{p!r} is empty")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every reader failure means a bad file
        raise CheckpointError(
            f"could not read {p!r} as a PyTorch checkpoint (truncated, corrupt, or not a torch file; "
            f"only weights are loaded, with weights_only=True): {type(e).__name__}: {e}"
        ) from e
    config: Optional[Dict[str, Any]] = None
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict", "weight", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                cfg = obj.get("config")
                config = dict(cfg) if isinstance(cfg, Mapping) else None
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p!r} does not contain a state_dict (found {type(obj).__name__})")
    sd: Dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise CheckpointError(f"{p!r} is not a state_dict: entry {k!r} is a {type(v).__name__}")
        sd[k[len("module.") :] if k.startswith("module.") else k] = v
    if not sd:
        raise CheckpointError(f"{p!r} holds an empty state_dict")
    return sd, config
