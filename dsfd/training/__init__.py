"""Training DSFD: the paper's schedule, AMP, DistributedDataParallel, atomic checkpoints, exact resume.

* :class:`TrainConfig` - every setting of a run (``dsfd train`` flags map 1:1);
* :class:`Trainer` (:mod:`.trainer`) - ``Trainer(cfg).train()``: the loop,
  composing the parts below;
* :mod:`.runtime` - device, process group, precision (autocast dtype,
  channels_last), determinism, seeding, the stop signal;
* :mod:`.data_setup` - datasets from ``cfg.data``, :class:`IndexSubset`,
  DataLoaders (worker init, fork-safe iteration), data counts and problems;
* :func:`build_training_model` (:mod:`.model_setup`) - the network a run
  starts from: fresh, or the whole network of ``--weights`` with the
  checkpoint's architecture, ``--freeze-backbone``; its device placement,
  SyncBatchNorm and DDP wrapping;
* :mod:`.optimization` - the PAL criterion, SGD, the schedule, the GradScaler, one step;
* :mod:`.checkpoint` - the run's state (save, exact resume, ``final.pt``),
  atomic ``torch.save``, RNG capture, resume lookup;
* :mod:`.validation` - the eval-mode, dataset-normalised validation loss;
* :mod:`.run_log` - ``log.jsonl`` and the progress bar;
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
