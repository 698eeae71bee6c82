"""What a run optimises and how: the PAL loss with the run's matching, SGD, the paper's schedule, AMP's GradScaler.

Everything here with state (momentum buffers, scheduler position, loss
scale) goes into the checkpoint (:func:`dsfd.training.checkpoint.training_state`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import Tensor, nn

from ..losses import ProgressiveAnchorLoss
from .config import TrainConfig, WarmupMultiStep
from .runtime import Runtime

__all__ = ["build_criterion", "Optimization"]


def build_criterion(cfg: TrainConfig) -> ProgressiveAnchorLoss:
    """The Progressive Anchor Loss with the run's matching preset, IoU thresholds, ignore band and mining."""
    return ProgressiveAnchorLoss(
        lambda_=cfg.lambda_, matching=cfg.matching, iou_threshold=cfg.match_iou,
        ignore_iou=cfg.ignore_iou or None, min_negatives=cfg.min_negatives,
    )


@dataclass
class Optimization:
    """SGD with momentum, the warm-up + multi-step learning rate, and the GradScaler (enabled for fp16 only)."""

    params: List[nn.Parameter]
    optimizer: torch.optim.SGD
    schedule: WarmupMultiStep
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    clip_grad: float

    @classmethod
    def from_config(cls, cfg: TrainConfig, model: nn.Module, runtime: Runtime) -> "Optimization":
        """Optimises the parameters of ``model`` that require gradients (frozen ones are left out)."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        schedule = WarmupMultiStep(
            cfg.resolved_lr_steps(), cfg.lr_gamma, cfg.resolved_warmup_iters(), cfg.warmup_factor
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp_dtype == torch.float16)
        return cls(params, optimizer, schedule, scheduler, scaler, float(cfg.clip_grad))

    def step(self, loss: Tensor) -> None:
        """Backward of ``loss``, gradient clipping (``clip_grad > 0``), one optimizer and one scheduler step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
