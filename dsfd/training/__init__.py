"""Training DSFD: the paper's schedule, AMP, DistributedDataParallel, atomic checkpoints, exact resume.

* :class:`TrainConfig` - every setting of a run (``dsfd train`` flags map 1:1);
* :class:`Trainer` - ``Trainer(cfg).train()``;
* :func:`build_training_model` (:mod:`.model_setup`) - the network a run
  starts from: fresh, or the whole network of ``--weights`` with the
  checkpoint's architecture, ``--freeze-backbone``;
* :mod:`.checkpoint` - atomic ``torch.save``, RNG capture, resume lookup;
* :mod:`.distributed` - ``torchrun`` setup, :class:`ShardedBatchSampler`,
  :func:`pal_loss` (PAL normalised by the global positive count under DDP).
"""

from .checkpoint import capture_rng_state, load_checkpoint, resolve_resume, restore_rng_state, save_atomic
from .config import TrainConfig, WarmupMultiStep, default_lr_steps, default_warmup_iters
from .distributed import DistInfo, ShardedBatchSampler, init_distributed, pal_loss
from .model_setup import build_training_model
from .trainer import IndexSubset, StopSignal, Trainer, train

__all__ = [
    "TrainConfig",
    "WarmupMultiStep",
    "default_lr_steps",
    "default_warmup_iters",
    "Trainer",
    "train",
    "build_training_model",
    "IndexSubset",
    "StopSignal",
    "DistInfo",
    "ShardedBatchSampler",
    "init_distributed",
    "pal_loss",
    "save_atomic",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "resolve_resume",
]
