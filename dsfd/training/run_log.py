"""What a run reports: ``<out>/log.jsonl`` (written by rank 0) and the console progress bar.

One JSON object a line, each with ``time`` and ``type``: ``start`` (the
settings, the network, the data, the device), ``train`` (the loss parts
averaged over the iterations since the previous ``train`` line, summed over
ranks; learning rate, speed), ``val``, ``checkpoint`` and ``stop`` (why).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple

import torch
from torch import Tensor

from .config import TrainConfig
from .data_setup import report_training_data
from .distributed import all_reduce_sum
from .optimization import Optimization
from .runtime import Runtime

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

__all__ = ["LOG_KEYS", "RunLog", "start_record", "log_start", "TrainWindow"]

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


class RunLog:
    """Appends records to ``<out>/log.jsonl`` on the main rank (a no-op on the others)."""

    def __init__(self, out: Path, is_main: bool) -> None:
        self.path = Path(out) / "log.jsonl"
        self.is_main = is_main

    def write(self, record: Dict[str, Any]) -> None:
        """One line: ``record`` after a ``time`` stamp (seconds since the epoch)."""
        if not self.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def start_record(trainer: "Trainer", batches_per_epoch: int) -> Dict[str, Any]:
    """The ``start`` record of a (resumed) run: settings, network, data, device."""
    cfg, model, rt = trainer.cfg, trainer.model, trainer.runtime
    return {
        "type": "start", "iter": trainer.iteration, "args": cfg.to_dict(), "config": dict(model.config),
        "world_size": rt.info.world_size, "device": str(rt.device),
        "amp": str(rt.amp_dtype).replace("torch.", "") if rt.amp_dtype else "none",
        "channels_last": rt.channels_last, "train_images": len(trainer.train_dataset),
        "data_roots": trainer.data_counts(),
        "batches_per_epoch": batches_per_epoch, "lr_schedule": repr(trainer.optimization.schedule),
        "parameters": sum(p.numel() for p in model.parameters()),
        "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
    }


def log_start(trainer: "Trainer", batches_per_epoch: int) -> None:
    """The ``start`` record, and on the main rank the data counts on the console and ``data_problems.txt``."""
    trainer.run_log.write(start_record(trainer, batches_per_epoch))
    if trainer.info.is_main:
        report_training_data(trainer.train_dataset, trainer.out)


class TrainWindow:
    """The iterations since the last ``train`` record: loss parts, data-loading time, speed; and the progress bar.

    The parts stay on the device between records (one tensor, no sync per
    iteration); every ``log_every`` iterations (and at the last one) they are
    summed over ranks (a collective: every rank calls :meth:`end_iteration`)
    and written as one ``train`` record. A context manager: the bar is closed on exit.
    """

    def __init__(self, cfg: TrainConfig, runtime: Runtime, run_log: RunLog, start_iteration: int) -> None:
        self.cfg, self.info, self.run_log = cfg, runtime.info, run_log
        self.parts = torch.zeros(len(LOG_KEYS), dtype=torch.float64, device=runtime.device)
        self.iterations = 0
        #: seconds spent waiting for batches (the loop adds them)
        self.data_time = 0.0
        self.started = time.perf_counter()
        #: the mean loss parts of the last record (``{}`` before the first)
        self.last: Dict[str, float] = {}
        self.pbar: Any = None
        if cfg.progress and self.info.is_main:
            from tqdm.auto import tqdm

            self.pbar = tqdm(total=cfg.iters, initial=start_iteration, dynamic_ncols=True, unit="it", desc="train")

    def __enter__(self) -> "TrainWindow":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pbar is not None:
            self.pbar.close()

    def restart_clock(self) -> None:
        """Leave the time since the last iteration (validation, a kept checkpoint) out of the speed."""
        self.started = time.perf_counter()

    def add(self, parts: Dict[str, Tensor]) -> None:
        """One iteration's loss parts (this rank's contributions)."""
        # a one-shot (pal=False) network logs 0 for the first shot
        self.parts += torch.stack([parts[k].double() if k in parts else self.parts.new_zeros(()) for k in LOG_KEYS])
        self.iterations += 1

    def end_iteration(self, iteration: int, optimization: Optimization) -> None:
        """Writes the ``train`` record when ``iteration`` closes a window; advances the bar.

        Raises ``FloatingPointError`` when the window's mean loss is not finite.
        """
        cfg = self.cfg
        if iteration % max(1, cfg.log_every) == 0 or iteration == cfg.iters:
            self._record(iteration, optimization)
        if self.pbar is not None:
            self.pbar.update(1)

    def _record(self, it: int, optimization: Optimization) -> None:
        all_reduce_sum(self.parts, self.info)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        last = self.last = {k: v / self.iterations for k, v in zip(LOG_KEYS, self.parts.tolist())}
        if not math.isfinite(last["total"]):
            raise FloatingPointError(f"training loss is {last['total']} at iteration {it}")
        ips = self.iterations * self.cfg.batch_size / elapsed
        rec = {"type": "train", "iter": it, "lr": optimization.optimizer.param_groups[0]["lr"],
               **{k: round(v, 6) for k, v in last.items()},
               "images_per_s": round(ips, 3), "data_time_frac": round(self.data_time / elapsed, 4)}
        if optimization.scaler.is_enabled():
            rec["amp_scale"] = float(optimization.scaler.get_scale())
        self.run_log.write(rec)
        if self.pbar is not None:
            self.pbar.set_postfix_str(
                f"loss {last['total']:.3f} (l1 {last['first_loss_l']:.2f} c1 {last['first_loss_c']:.2f} "
                f"l2 {last['second_loss_l']:.2f} c2 {last['second_loss_c']:.2f}) lr {rec['lr']:.1e} {ips:.1f} img/s",
                refresh=False,
            )
        self.parts.zero_()
        self.iterations, self.data_time = 0, 0.0
        self.restart_clock()
