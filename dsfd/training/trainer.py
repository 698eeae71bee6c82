"""The DSFD trainer: the paper's schedule, AMP, DDP, atomic checkpoints and exact resume.

One iteration = one optimizer step on a global batch (``TrainConfig.batch_size``
images over all ranks). Per iteration::

    images, gt_boxes, gt_counts  <- ShardedBatchSampler (data position = f(iteration))
    out = model(images)                       # train mode: both shots, autocast
    loss = PAL(out.first, out.second)         # float32, matching/mining on the device,
                                              # normalised by the global positive counts
    scaler.scale(loss).backward(); [clip]; scaler.step(sgd); scaler.update(); scheduler.step()

Resuming continues exactly: the checkpoint holds the model, optimizer
(momentum buffers), scheduler, GradScaler, the iteration and every RNG
state; the data order and the augmentation are functions of
``(seed, epoch, index)`` and the iteration (see
:class:`~dsfd.training.distributed.ShardedBatchSampler` and
:func:`dsfd.data.sample_rng`), so a run stopped at iteration k and resumed
gives bit-identical weights to an uninterrupted run (same hardware, same
number of threads; ``deterministic=True`` on GPUs).

Interruption: SIGINT / SIGTERM only set a flag; the loop notices it at the
next iteration boundary (all ranks agree through a small all-reduce), writes
``last.pt`` and returns cleanly. A second SIGINT aborts at once.
DataLoader workers ignore both signals (their parent decides when they stop).

Validation loss (``val_every``): :mod:`dsfd.training.validation` (eval
mode, dataset-level normalisation).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import collate_detection, collate_ignore_regions
from ..losses import ProgressiveAnchorLoss
from .checkpoint import (
    final_weights,
    resolve_resume,
    restore_training_state,
    save_atomic,
    save_collective,
    training_state,
)
from .config import TrainConfig
from .data_setup import (
    IndexSubset,
    build_train_dataset,
    build_val_dataset,
    data_counts,
    fork_safe_iter,
    make_loader,
    report_training_data,
    training_worker_init_fn,
)
from .distributed import DistInfo, ShardedBatchSampler, all_reduce_sum, any_rank, pal_loss
from .model_setup import build_training_model, calibrate_fem_norms, place_training_model, set_train_mode, wrap_ddp
from .optimization import Optimization
from .runtime import Runtime, StopSignal, deterministic_algorithms, seed_everything
from .runtime import amp_dtype as _amp_dtype  # noqa: F401  (tests/test_training.py imports it from here)
from .validation import validation_loss

__all__ = ["Trainer", "IndexSubset", "StopSignal", "train", "training_worker_init_fn", "fork_safe_iter"]

log = logging.getLogger(__name__)

#: Order of the logged loss parts (accumulated as one device tensor).
LOG_KEYS: Tuple[str, ...] = (
    "total",
    "first_loss_l",
    "first_loss_c",
    "second_loss_l",
    "second_loss_c",
    "first_num_pos",
    "second_num_pos",
)


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

    ``trainer.train()`` runs to ``cfg.iters`` (or ``cfg.stop_at`` / a stop
    signal) and returns a summary dict.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        train_dataset: Optional[Dataset] = None,
        val_dataset: Optional[Dataset] = None,
        info: Optional[DistInfo] = None,
        callbacks: Sequence[Callable[["Trainer"], None]] = (),
    ) -> None:
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self.runtime = Runtime.from_config(cfg, info)
        rt = self.runtime
        self.info, self.device, self.amp_dtype, self.channels_last = rt.info, rt.device, rt.amp_dtype, rt.channels_last
        self.local_batch = rt.local_batch
        self.out = Path(cfg.out)
        self.stop = StopSignal()

        # --- model, identical on every rank (same seed) ----------------------
        # fresh, or the whole network of --weights with the checkpoint's architecture
        # (dsfd.training.model_setup); frozen: the BatchNorms kept in eval mode
        seed_everything(cfg.seed)
        model, self.frozen_bn = place_training_model(*build_training_model(cfg), cfg, self.runtime)
        self.model = model
        self.criterion = ProgressiveAnchorLoss(
            lambda_=cfg.lambda_, matching=cfg.matching, iou_threshold=cfg.match_iou,
            ignore_iou=cfg.ignore_iou or None, min_negatives=cfg.min_negatives,
        )
        self.optimization = opt = Optimization.from_config(cfg, model, self.runtime)
        self.params, self.optimizer, self.schedule, self.scheduler, self.scaler = (
            opt.params, opt.optimizer, opt.schedule, opt.scheduler, opt.scaler)
        self.iteration = 0
        self.resumed_from: Optional[Path] = None

        # --- data -------------------------------------------------------------
        self.train_dataset = train_dataset if train_dataset is not None else build_train_dataset(cfg)
        self.val_dataset = val_dataset
        if self.val_dataset is None and cfg.val_every > 0:
            self.val_dataset = build_val_dataset(cfg)
        self.sampler_probe = ShardedBatchSampler(
            len(self.train_dataset), cfg.batch_size, self.info.rank, self.info.world_size, cfg.seed
        )
        if getattr(model, "_fem_norms_to_calibrate", False):
            # --fem-norm on weights whose FEM norms were folded: set the re-opened norms from real crops
            # (the first batch of the run) so that training starts from the network the weights hold
            batch = collate_detection([self.train_dataset[item] for item in self.sampler_probe.batch(0)])
            n = calibrate_fem_norms(model, self.to_device(batch)[0])
            log.info("re-opened %d FEM BatchNorms of %s, calibrated on %d crops", n, cfg.init_weights,
                     len(batch[0]))

        # --- resume (after everything that consumes RNG at construction) -----
        ckpt_path = resolve_resume(cfg.resume, self.out)
        if ckpt_path is not None:
            self.iteration = restore_training_state(ckpt_path, model, self.optimization, self.sampler_probe,
                                                    self.info)
            self.resumed_from = ckpt_path

        self.ddp_model: nn.Module = wrap_ddp(model, cfg, self.runtime)
        self._set_train_mode()

    # ------------------------------------------------------------------ setup helpers
    def _set_train_mode(self) -> None:
        set_train_mode(self.model, self.frozen_bn)

    def make_loader(self, dataset: Dataset, **kw: Any) -> DataLoader:
        """The DataLoader the trainer uses (workers, pinning, collate, worker init); ``kw`` go to DataLoader."""
        return make_loader(dataset, self.cfg, self.device, **kw)

    def data_counts(self) -> List[Dict[str, Any]]:
        """Images and kept boxes per training data root (also in the log and checkpoints)."""
        return data_counts(self.train_dataset)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, rng_ranks: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
        """The full training state (see :mod:`dsfd.training.checkpoint`)."""
        return training_state(self.model, self.optimization, self.iteration, self.sampler_probe,
                              self.data_counts(), self.cfg.to_dict(), rng_ranks)

    def save_checkpoint(self, name: str = "last.pt") -> Optional[Path]:
        """Collective: every rank calls it; rank 0 writes ``<out>/<name>`` atomically."""
        path = save_collective(self.state_dict, self.out / name, self.info)
        if path is not None:
            self._log({"type": "checkpoint", "iter": self.iteration, "path": str(path)})
        return path

    # ------------------------------------------------------------------ logging
    def _log(self, record: Dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ steps
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
        return parts

    def validate(self) -> Optional[Dict[str, float]]:
        """Eval-mode PAL loss over the val subset (:mod:`dsfd.training.validation`; all ranks); ``None``: no val data."""
        if self.val_dataset is None:
            return None
        return validation_loss(self.model, self.frozen_bn, self.criterion, self.val_dataset, self.runtime,
                               self.make_loader, self.cfg.val_images)

    # ------------------------------------------------------------------ main loop
    def train(self) -> Dict[str, Any]:
        """Run to ``cfg.iters`` (or until ``stop_at`` / a stop signal). Returns a summary."""
        cfg, info = self.cfg, self.info
        self.stop = StopSignal()
        start_iter = self.iteration
        sampler = ShardedBatchSampler(
            len(self.train_dataset), cfg.batch_size, info.rank, info.world_size, cfg.seed,
            start_iteration=self.iteration,
        )
        self._log({
            "type": "start", "iter": self.iteration, "args": cfg.to_dict(), "config": dict(self.model.config),
            "world_size": info.world_size, "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "none",
            "channels_last": self.channels_last, "train_images": len(self.train_dataset),
            "data_roots": self.data_counts(),
            "batches_per_epoch": sampler.batches_per_epoch, "lr_schedule": repr(self.schedule),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        })
        if info.is_main:
            report_training_data(self.train_dataset, self.out)
        pbar = None
        if cfg.progress and info.is_main:
            from tqdm.auto import tqdm

            pbar = tqdm(total=cfg.iters, initial=self.iteration, dynamic_ncols=True, unit="it", desc="train")
        acc = torch.zeros(len(LOG_KEYS), dtype=torch.float64, device=self.device)
        window, data_time = 0, 0.0
        t_window = time.perf_counter()
        last_train: Dict[str, float] = {}
        last_val: Optional[Dict[str, float]] = None
        reason = "done"
        loader_iter: Optional[Iterator[Any]] = None
        try:
            with self.stop, deterministic_algorithms(cfg.deterministic, self.device):
                if self.iteration < cfg.iters:
                    loader_iter = fork_safe_iter(self.make_loader(self.train_dataset, batch_sampler=sampler))
                while self.iteration < cfg.iters:
                    if any_rank(self.stop.requested, info):
                        reason = "signal"
                        break
                    if cfg.stop_at is not None and self.iteration >= cfg.stop_at:
                        reason = "stop_at"
                        break
                    t0 = time.perf_counter()
                    try:
                        batch = next(loader_iter)
                    except Exception:
                        if any_rank(self.stop.requested, info):  # a dying worker after Ctrl-C
                            reason = "signal"
                            break
                        raise
                    data_time += time.perf_counter() - t0
                    parts = self.train_step(batch)
                    # a one-shot (pal=False) network logs 0 for the first shot
                    acc += torch.stack([parts[k].double() if k in parts else acc.new_zeros(()) for k in LOG_KEYS])
                    self.iteration += 1
                    window += 1
                    it = self.iteration
                    if it % max(1, cfg.log_every) == 0 or it == cfg.iters:
                        all_reduce_sum(acc, info)
                        vals = acc.tolist()
                        elapsed = max(time.perf_counter() - t_window, 1e-9)
                        last_train = {k: v / window for k, v in zip(LOG_KEYS, vals)}
                        if not math.isfinite(last_train["total"]):
                            raise FloatingPointError(f"training loss is {last_train['total']} at iteration {it}")
                        ips = window * cfg.batch_size / elapsed
                        rec = {"type": "train", "iter": it, "lr": self.optimizer.param_groups[0]["lr"],
                               **{k: round(v, 6) for k, v in last_train.items()},
                               "images_per_s": round(ips, 3), "data_time_frac": round(data_time / elapsed, 4)}
                        if self.scaler.is_enabled():
                            rec["amp_scale"] = float(self.scaler.get_scale())
                        self._log(rec)
                        if pbar is not None:
                            pbar.set_postfix_str(
                                f"loss {last_train['total']:.3f} (l1 {last_train['first_loss_l']:.2f} "
                                f"c1 {last_train['first_loss_c']:.2f} l2 {last_train['second_loss_l']:.2f} "
                                f"c2 {last_train['second_loss_c']:.2f}) lr {rec['lr']:.1e} {ips:.1f} img/s",
                                refresh=False,
                            )
                        acc.zero_()
                        window, data_time = 0, 0.0
                        t_window = time.perf_counter()
                    if pbar is not None:
                        pbar.update(1)
                    for fn in self.callbacks:
                        fn(self)
                    if cfg.val_every and it % cfg.val_every == 0 and it < cfg.iters:
                        last_val = self.validate()
                        if last_val is not None:
                            self._log({"type": "val", "iter": it, **last_val})
                        t_window = time.perf_counter()
                    if cfg.ckpt_every and it % cfg.ckpt_every == 0 and it < cfg.iters:
                        self.save_checkpoint("last.pt")
                    if cfg.keep_every and it % cfg.keep_every == 0:
                        self.save_checkpoint(f"iter_{it:07d}.pt")
                        t_window = time.perf_counter()
                # iteration boundary: consistent state whatever the reason
                if reason == "done" and cfg.val_every and self.iteration > start_iter:
                    last_val = self.validate()
                    if last_val is not None:
                        self._log({"type": "val", "iter": self.iteration, **last_val})
                path = self.save_checkpoint("last.pt")
                if reason == "done" and info.is_main:
                    save_atomic(final_weights(self.model, self.iteration, cfg.to_dict()), self.out / "final.pt")
                self._log({"type": "stop", "iter": self.iteration, "reason": reason,
                           "checkpoint": str(path) if path else None})
        finally:
            if pbar is not None:
                pbar.close()
            del loader_iter
        if info.distributed:
            dist.barrier(group=info.control_group)
        return {"iteration": self.iteration, "reason": reason, "train": last_train, "val": last_val,
                "checkpoint": str(self.out / "last.pt")}


def train(cfg: TrainConfig, **kwargs: Any) -> Dict[str, Any]:
    """``Trainer(cfg, **kwargs).train()``."""
    return Trainer(cfg, **kwargs).train()
