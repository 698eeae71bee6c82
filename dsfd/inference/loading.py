"""Which network and device a :class:`dsfd.Detector` runs: weights, a given model, the default or a random one."""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

from torch import nn

from ..precision import resolve_device  # the one device rule, re-exported for the Detector

__all__ = ["LoadedNetwork", "load_network", "resolve_device"]


class LoadedNetwork(NamedTuple):
    """A network as found (not yet prepared for inference) and where it came from."""

    model: nn.Module
    #: the weights file or name, ``None`` for a given model or random weights
    weights: Optional[str]
    #: a randomly initialised network (no weights fitted): its detections are meaningless
    random_weights: bool


def load_network(weights: Any, network: Optional[str], backbone: Optional[str], model: Optional[nn.Module],
                 stacklevel: int = 2) -> LoadedNetwork:
    """The given ``model`` (itself: preparing it copies it), the network of ``weights``, or the default / a random one.

    Raises ``TypeError`` for a ``model`` that is not a :class:`dsfd.models.DetectionModel`.

    ``stacklevel`` (as for :func:`warnings.warn`, counted from the caller) places
    the random-weights warning in the user's code.
    """
    from ..models import DetectionModel, default_or_random_model, load_weights

    if model is not None:
        if weights is not None:
            raise ValueError("pass either weights or model, not both")
        if not isinstance(model, DetectionModel):
            raise TypeError(f"a {type(model).__name__} is not a DSFD network (dsfd.models.DetectionModel)")
        return LoadedNetwork(model, None, False)
    if weights is not None:
        return LoadedNetwork(load_weights(weights, map_location="cpu", network=network, backbone=backbone),
                             os.fspath(weights), False)
    built, path = default_or_random_model(network, backbone, stacklevel=stacklevel + 1)
    return LoadedNetwork(built, None if path is None else os.fspath(path), path is None)
