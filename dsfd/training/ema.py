"""An exponential moving average of the weights (``dsfd train --ema DECAY``).

Why: at a constant learning rate the snapshots of one run differ by several
AP points from one to the next (on the default model, easy AP moved by up
to 0.048 between snapshots 200 iterations apart, following the data order:
docs/models.md), and a uniform mean of snapshots scored better than most of
them. An average kept during training gives that steadier network at every
checkpoint, without saving and averaging files afterwards.

After optimizer step ``n`` (1-based) every floating-point entry of the
model's ``state_dict`` (parameters and BatchNorm running statistics) is
moved towards the live value::

    ema = d_n * ema + (1 - d_n) * live
    d_n = decay                              # a fine-tune (the run starts from whole-network weights)
    d_n = min(decay, (1 + n) / (10 + n))     # otherwise: a warm-up, so the random start is soon forgotten

Integer buffers (``num_batches_tracked``) are copied. The average starts
at the weights the run starts from: a fine-tune's average begins at the
pretrained network and leaves it at the pace of ``decay`` (after ``k``
steps its weight in the average is ``decay ** k``), which keeps it close to
the start early in the run, as mixing a snapshot with its starting
weights did for the default model. TensorFlow's ``ExponentialMovingAverage``
uses the same warm-up.

Checkpoints keep both: ``"model"`` (the live weights, for an exact resume)
and ``"ema"`` (this average, with ``"ema_updates"``); ``final.pt`` holds the
average as its ``"model"``. :func:`dsfd.models.read_checkpoint` (so
``dsfd eval`` / ``detect`` / ``train --weights``) reads ``"ema"`` when a
file has it.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["WeightEMA"]


class WeightEMA:
    """The moving average of a model's ``state_dict`` (see the module docstring).

    Args:
        model: the (bare, not DDP-wrapped) model; its current weights are the start.
        decay: the long-run decay in ``(0, 1)`` (0.999 averages over roughly the last 1,000 steps).
        warmup: ramp the decay up as ``(1 + n) / (10 + n)`` (for runs from random or backbone-only weights).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self.shadow: Dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        if not self.warmup:
            return self.decay
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _pairs(self, model: nn.Module) -> Tuple[List[Tensor], List[Tensor], List[Tuple[Tensor, Tensor]]]:
        live = model.state_dict()
        if live.keys() != self.shadow.keys():
            raise RuntimeError("the model's state_dict keys changed since its EMA was made")
        avg, cur, copies = [], [], []
        for k, v in live.items():
            s = self.shadow[k]
            if s.is_floating_point():
                avg.append(s)
                cur.append(v.detach().to(s.dtype))
            else:
                copies.append((s, v))
        return avg, cur, copies

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (call after each optimizer step)."""
        d = self.current_decay()
        avg, cur, copies = self._pairs(model)
        if avg:
            torch._foreach_lerp_(avg, cur, 1.0 - d)
        for s, v in copies:
            s.copy_(v)
        self.updates += 1

    def state_dict(self) -> Dict[str, Tensor]:
        """The averaged weights, a ``state_dict`` of the model (detached copies)."""
        return {k: v.clone() for k, v in self.shadow.items()}

    def load(self, state_dict: Dict[str, Tensor], updates: int) -> None:
        """Restore an average saved with :meth:`state_dict` after ``updates`` steps (resume)."""
        if state_dict.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state_dict.keys())[:5]
            unexpected = sorted(state_dict.keys() - self.shadow.keys())[:5]
            raise RuntimeError(f"the checkpoint's EMA does not fit the model (missing {missing}, "
                               f"unexpected {unexpected})")
        with torch.no_grad():
            for k, v in state_dict.items():
                if tuple(v.shape) != tuple(self.shadow[k].shape):
                    raise RuntimeError(f"the checkpoint's EMA entry {k} has shape {tuple(v.shape)}, "
                                       f"the model {tuple(self.shadow[k].shape)}")
                self.shadow[k].copy_(v)
        self.updates = int(updates)

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own are put back afterwards."""
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(saved)
