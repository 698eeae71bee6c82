"""The DSFD trainer: the training loop, composing the parts listed in :mod:`dsfd.training`.

One iteration = one optimizer step on a global batch (``TrainConfig.batch_size``
images over all ranks). Per iteration::

    images, gt_boxes, gt_counts  <- ShardedBatchSampler (data position = f(iteration))
    out = model(images)                       # train mode: both shots, autocast
    loss = PAL(out.first, out.second)         # float32, matching/mining on the device,
                                              # normalised by the global positive counts
    scaler.scale(loss).backward(); [clip]; scaler.step(sgd); scaler.update(); scheduler.step()

Resuming continues exactly (bit-identical weights on the same hardware and
number of threads; ``deterministic=True`` on GPUs): see :mod:`.checkpoint`.

Interruption: SIGINT / SIGTERM only set a flag; the loop notices it at the
next iteration boundary (all ranks agree through a small all-reduce), writes
``last.pt`` and returns cleanly. A second SIGINT aborts at once.
DataLoader workers ignore both signals (their parent decides when they stop).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import collate_detection, collate_ignore_regions
from .checkpoint import final_weights, resolve_resume, restore_training_state, save_atomic, save_collective
from .checkpoint import training_state
from .config import TrainConfig
from .data_setup import IndexSubset, build_train_dataset, build_val_dataset, data_counts, fork_safe_iter, make_loader
from .data_setup import training_worker_init_fn
from .distributed import DistInfo, ShardedBatchSampler, any_rank, pal_loss
from .ema import WeightEMA
from .model_setup import build_training_model, calibrate_fem_norms, place_training_model, set_train_mode, wrap_ddp
from .optimization import Optimization, build_criterion
from .run_log import RunLog, TrainWindow, log_start
from .runtime import Runtime, StopSignal, deterministic_algorithms, seed_everything
from .runtime import amp_dtype as _amp_dtype  # noqa: F401  (tests/test_training.py imports it from here)
from .validation import validation_loss

__all__ = ["Trainer", "IndexSubset", "StopSignal", "train", "training_worker_init_fn", "fork_safe_iter"]

log = logging.getLogger(__name__)


class Trainer:
    """Trains a DSFD model as described by a :class:`TrainConfig`.

    Args:
        cfg: the run's configuration.
        train_dataset: overrides the training data built from ``cfg.data``
            (:func:`dsfd.data.build_dataset`: WIDER, COCO and YOLO roots; must accept
            ``(index, epoch)`` items and return ``(image, boxes, meta)``).
        val_dataset: overrides the val split (plain integer items); ``None``
            builds it from ``cfg.data`` when ``cfg.val_every > 0``.
        info: rank layout; default: from ``torchrun``'s environment (or an
            already initialised process group).
        callbacks: called as ``fn(trainer)`` after every iteration (after
            logging, before validation / checkpoints); e.g. tests raise a
            stop signal at a chosen iteration.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train_dataset: Optional[Dataset] = None,
        val_dataset: Optional[Dataset] = None,
        info: Optional[DistInfo] = None,
        callbacks: Sequence[Callable[["Trainer"], None]] = (),
    ) -> None:
        self.cfg, self.callbacks, self.out = cfg, list(callbacks), Path(cfg.out)
        self.runtime = rt = Runtime.from_config(cfg, info)
        self.info, self.device, self.amp_dtype, self.channels_last = rt.info, rt.device, rt.amp_dtype, rt.channels_last
        self.local_batch = rt.local_batch
        self.stop = StopSignal()
        self.run_log = RunLog(self.out, self.info.is_main)

        # model, identical on every rank (same seed); frozen_bn: the BatchNorms kept in eval mode
        seed_everything(cfg.seed)
        model, self.frozen_bn = place_training_model(*build_training_model(cfg), cfg, rt)
        self.model = model
        self.criterion = build_criterion(cfg)
        self.optimization = opt = Optimization.from_config(cfg, model, rt)
        self.params, self.optimizer, self.schedule, self.scheduler, self.scaler = (
            opt.params, opt.optimizer, opt.schedule, opt.scheduler, opt.scaler)
        self.iteration = 0
        self.resumed_from: Optional[Path] = None

        self.train_dataset = train_dataset if train_dataset is not None else build_train_dataset(cfg)
        self.val_dataset = val_dataset
        if val_dataset is None and cfg.val_every > 0:
            self.val_dataset = build_val_dataset(cfg)
        # the data order of the run, for the first batch and the checkpoint's data position
        self.sampler_probe = ShardedBatchSampler(len(self.train_dataset), cfg.batch_size, rt.info.rank,
                                                 rt.info.world_size, cfg.seed)
        if getattr(model, "_fem_norms_to_calibrate", False):
            # --fem-norm on weights whose FEM norms were folded: the re-opened norms set from the run's first batch
            first = collate_detection([self.train_dataset[item] for item in self.sampler_probe.batch(0)])
            n = calibrate_fem_norms(model, self.to_device(first)[0])
            log.info("re-opened %d FEM BatchNorms of %s, calibrated on %d crops", n, cfg.init_weights, len(first[0]))

        # the weight average starts at the weights the run starts from (after the FEM norms are set);
        # its decay warms up unless they are a whole trained network (a fine-tune)
        self.ema: Optional[WeightEMA] = (
            WeightEMA(model, cfg.ema, warmup=cfg.init_weights is None) if cfg.ema > 0 else None)
        # resume after everything that consumes RNG at construction; DDP after it (it broadcasts rank 0's weights)
        ckpt_path = resolve_resume(cfg.resume, self.out)
        if ckpt_path is not None:
            self.iteration = restore_training_state(ckpt_path, model, opt, self.sampler_probe, self.info, self.ema)
            self.resumed_from = ckpt_path
        self.ddp_model: nn.Module = wrap_ddp(model, cfg, rt)
        set_train_mode(model, self.frozen_bn)

    def make_loader(self, dataset: Dataset, **kw: Any) -> DataLoader:
        """The DataLoader the trainer uses (workers, pinning, collate, worker init); ``kw`` go to DataLoader."""
        return make_loader(dataset, self.cfg, self.device, **kw)

    def data_counts(self) -> List[Dict[str, Any]]:
        """Images and kept boxes per training data root (also in the log and checkpoints)."""
        return data_counts(self.train_dataset)

    def state_dict(self, rng_ranks: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """The full training state (see :mod:`dsfd.training.checkpoint`)."""
        return training_state(self.model, self.optimization, self.iteration, self.sampler_probe,
                              self.data_counts(), self.cfg.to_dict(), rng_ranks, self.ema)

    def save_checkpoint(self, name: str = "last.pt") -> Optional[Path]:
        """Collective: every rank calls it; rank 0 writes ``<out>/<name>`` atomically."""
        path = save_collective(self.state_dict, self.out / name, self.info)
        if path is not None:
            self.run_log.write({"type": "checkpoint", "iter": self.iteration, "path": str(path)})
        return path

    def to_device(self, batch: Sequence[Any]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(images, gt_boxes, gt_counts)`` of a collated batch on the training device (and memory format)."""
        return self.runtime.to_device(batch)

    def autocast(self) -> Any:
        """The training precision's autocast context (a no-op in fp32)."""
        return self.runtime.autocast()

    def ignore_regions(self, batch: Sequence[Any]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """``(ignore_boxes [B, M, 4], ignore_counts [B])`` of a collated batch on the device, or ``(None, None)``."""
        if self.criterion.shot_loss.ignore_iou is None or len(batch) < 4:
            return None, None
        boxes, counts = collate_ignore_regions(batch[3])
        return self.runtime.move(boxes), self.runtime.move(counts)

    def forward_loss(self, batch: Sequence[Any]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Forward the network's shots and the globally normalised PAL loss of one (per-rank) batch."""
        images, gt_boxes, gt_counts = self.to_device(batch)
        ignore_boxes, ignore_counts = self.ignore_regions(batch)
        with self.autocast():
            out = self.ddp_model(images)
        return pal_loss(self.criterion, out.first, out.second, gt_boxes, gt_counts, self.info,
                        ignore_boxes=ignore_boxes, ignore_counts=ignore_counts)

    def train_step(self, batch: Sequence[Any]) -> Dict[str, Tensor]:
        """One optimizer step; returns the detached loss parts (this rank's contributions)."""
        loss, parts = self.forward_loss(batch)
        self.optimization.step(loss)
        if self.ema is not None:
            self.ema.update(self.model)
        return parts

    def validate(self) -> Optional[Dict[str, float]]:
        """Eval-mode PAL loss over the val subset (:mod:`.validation`; all ranks); ``None`` without val data.

        With ``--ema`` it is the loss of the weight average (the network the run's files hold).
        """
        if self.val_dataset is None:
            return None
        with contextlib.ExitStack() as stack:
            if self.ema is not None:
                stack.enter_context(self.ema.applied_to(self.model))
            return validation_loss(self.model, self.frozen_bn, self.criterion, self.val_dataset, self.runtime,
                                   self.make_loader, self.cfg.val_images)

    def _next_batch(self, loader_iter: Iterator[Any], window: TrainWindow) -> Tuple[Optional[str], Any]:
        """``(None, batch)``, or ``(why, None)`` when the run stops at this boundary (collective: the ranks agree)."""
        if any_rank(self.stop.requested, self.info):
            return "signal", None
        if self.cfg.stop_at is not None and self.iteration >= self.cfg.stop_at:
            return "stop_at", None
        t0 = time.perf_counter()
        try:
            batch = next(loader_iter)
        except Exception:
            if any_rank(self.stop.requested, self.info):  # a worker dying after Ctrl-C
                return "signal", None
            raise
        window.data_time += time.perf_counter() - t0
        return None, batch

    def _validate_and_log(self) -> Optional[Dict[str, float]]:
        result = self.validate()
        if result is not None:
            self.run_log.write({"type": "val", "iter": self.iteration, **result})
        return result

    def train(self) -> Dict[str, Any]:
        """Run to ``cfg.iters`` (or until ``stop_at`` / a stop signal). Returns a summary."""
        cfg, info = self.cfg, self.info
        self.stop = StopSignal()
        start_iter = self.iteration
        sampler = ShardedBatchSampler(len(self.train_dataset), cfg.batch_size, info.rank, info.world_size, cfg.seed,
                                      start_iteration=self.iteration)
        log_start(self, sampler.batches_per_epoch)
        last_val: Optional[Dict[str, float]] = None
        reason = "done"
        loader_iter: Optional[Iterator[Any]] = None
        window = TrainWindow(cfg, self.runtime, self.run_log, self.iteration)
        try:
            with window, self.stop, deterministic_algorithms(cfg.deterministic, self.device):
                if self.iteration < cfg.iters:
                    loader_iter = fork_safe_iter(self.make_loader(self.train_dataset, batch_sampler=sampler))
                while self.iteration < cfg.iters:
                    stop, batch = self._next_batch(loader_iter, window)
                    if stop is not None:
                        reason = stop
                        break
                    window.add(self.train_step(batch))
                    self.iteration += 1
                    it = self.iteration
                    window.end_iteration(it, self.optimization)
                    for fn in self.callbacks:
                        fn(self)
                    if cfg.val_every and it % cfg.val_every == 0 and it < cfg.iters:
                        last_val = self._validate_and_log()
                        window.restart_clock()
                    if cfg.ckpt_every and it % cfg.ckpt_every == 0 and it < cfg.iters:
                        self.save_checkpoint("last.pt")
                    if cfg.keep_every and it % cfg.keep_every == 0:
                        self.save_checkpoint(f"iter_{it:07d}.pt")
                        window.restart_clock()
                # iteration boundary: consistent state whatever the reason
                if reason == "done" and cfg.val_every and self.iteration > start_iter:
                    last_val = self._validate_and_log()
                path = self.save_checkpoint("last.pt")
                if reason == "done" and info.is_main:
                    final = final_weights(self.model, self.iteration, cfg.to_dict(), self.ema)
                    save_atomic(final, self.out / "final.pt")
                self.run_log.write({"type": "stop", "iter": self.iteration, "reason": reason,
                                    "checkpoint": str(path) if path else None})
        finally:
            del loader_iter  # the workers stop now, not when a traceback holding this frame is dropped
        if info.distributed:
            dist.barrier(group=info.control_group)
        return {"iteration": self.iteration, "reason": reason, "train": window.last, "val": last_val,
                "checkpoint": str(self.out / "last.pt")}


def train(cfg: TrainConfig, **kwargs: Any) -> Dict[str, Any]:
    """``Trainer(cfg, **kwargs).train()``."""
    return Trainer(cfg, **kwargs).train()
