"""Training checkpoints: the state of a run, atomic writes, RNG state capture, resume lookup, the final weights.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` can read
(no pickled classes), so :func:`dsfd.models.load_weights` loads its
``"model"`` / ``"config"`` entries directly (``"ema"`` first, when present)::

    {
        "model": state_dict,              # of the bare model (no "module." prefix)
        "config": model.config,           # build_model(**config) rebuilds it
        "optimizer": ..., "scheduler": ..., "scaler": ... or None,
        "iteration": int,                 # optimizer steps done
        "rng": {"python", "numpy", "torch", "cuda"},
        "data": {"epoch", "batch_in_epoch", "batches_per_epoch", "num_images",
                 "global_batch", "seed", "world_size", "roots"},
        "args": TrainConfig.to_dict(),
        "format": "dsfd-train-v1",
        "rng_ranks": [rng of rank 0, rank 1, ...],   # distributed runs only
        "ema": state_dict, "ema_updates": int,       # runs with --ema only
    }

:func:`training_state` builds it and :func:`restore_training_state` reads it
back (one place for the format); ``final.pt`` (:func:`final_weights`) holds
only ``model`` (the moving average in runs with ``--ema``), ``config``,
``iteration``, ``args`` and ``format``.

Resuming continues exactly: the checkpoint holds the model, optimizer
(momentum buffers), scheduler, GradScaler, the iteration and every RNG
state; the data order and the augmentation are functions of
``(seed, epoch, index)`` and the iteration (see
:class:`~dsfd.training.distributed.ShardedBatchSampler` and
:func:`dsfd.data.sample_rng`), so a run stopped at iteration k and resumed
gives bit-identical weights to an uninterrupted run (same hardware, same
number of threads; ``deterministic=True`` on GPUs).

Files are written atomically: to a temporary file in the same folder,
flushed and ``fsync``-ed, then ``os.replace``-d over the target (and the
folder entry ``fsync``-ed), so a crash or a kill at any moment leaves either
the old or the new complete checkpoint, never a truncated one.
"""

from __future__ import annotations

import io
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..models import load_state_dict_checked
from .distributed import DistInfo, ShardedBatchSampler
from .ema import WeightEMA
from .optimization import Optimization

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_atomic",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "resolve_resume",
    "training_state",
    "save_collective",
    "restore_training_state",
    "final_weights",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dsfd-train-v1"
PathLike = Union[str, "os.PathLike[str]"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialise first: a failure here leaves no temp file behind
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a training checkpoint (``weights_only=True``)."""
    obj = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or "model" not in obj:
        raise ValueError(f"{os.fspath(path)!r} is not a dsfd training checkpoint (no 'model' entry)")
    return obj


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy (global), torch CPU and every CUDA device's generator states, as plain data."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
            "has_gauss": int(n["has_gauss"]),
            "gauss": float(n["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda: List[torch.Tensor] = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


# --------------------------------------------------------------------------- resume


def resolve_resume(resume: Optional[str], out: PathLike) -> Optional[Path]:
    """The checkpoint to resume from.

    ``None`` / ``""``: none. ``"auto"``: ``<out>/last.pt`` when it exists
    (else start fresh). Anything else: that file (or ``<dir>/last.pt`` for a
    folder), which must exist.
    """
    if not resume:
        return None
    if resume == "auto":
        p = Path(out) / "last.pt"
        return p if p.is_file() else None
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {p}")
    return p


# --------------------------------------------------------------------------- the state of a run


def training_state(
    model: nn.Module,
    optimization: Optimization,
    iteration: int,
    sampler: ShardedBatchSampler,
    roots: List[Dict[str, Any]],
    args: Dict[str, Any],
    rng_ranks: Optional[List[Dict[str, Any]]] = None,
    ema: Optional[WeightEMA] = None,
) -> Dict[str, Any]:
    """The full training state after ``iteration`` steps (the format of the module docstring).

    ``sampler`` describes the data order (images, global batch, seed, world
    size), ``roots`` the images and boxes per data root, ``args`` the run's
    ``TrainConfig.to_dict()``, ``ema`` the run's weight average (if any).
    """
    epoch, pos = sampler.position(iteration)
    ckpt: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": dict(getattr(model, "config", {})),
        "optimizer": optimization.optimizer.state_dict(),
        "scheduler": optimization.scheduler.state_dict(),
        "scaler": optimization.scaler.state_dict() if optimization.scaler.is_enabled() else None,
        "iteration": int(iteration),
        "rng": capture_rng_state(),
        "data": {
            "epoch": int(epoch),
            "batch_in_epoch": int(pos),
            "batches_per_epoch": int(sampler.batches_per_epoch),
            "num_images": int(sampler.num_images),
            "global_batch": int(sampler.global_batch),
            "seed": int(sampler.seed),
            "world_size": int(sampler.world_size),
            "roots": roots,
        },
        "args": args,
    }
    if rng_ranks is not None:
        ckpt["rng_ranks"] = rng_ranks
    if ema is not None:
        ckpt["ema"] = ema.state_dict()
        ckpt["ema_updates"] = int(ema.updates)
    return ckpt


def save_collective(
    state: Callable[[Optional[List[Dict[str, Any]]]], Dict[str, Any]], path: PathLike, info: DistInfo
) -> Optional[Path]:
    """Collective: every rank calls it; rank 0 writes ``state(rng_ranks)`` to ``path`` atomically.

    Under DDP every rank's RNG states are gathered first (``rng_ranks``), so
    a resume with the same world size restores each rank's own. Returns the
    path on rank 0, ``None`` elsewhere.
    """
    rng_ranks = None
    if info.distributed:
        rng_ranks = [None] * info.world_size
        dist.all_gather_object(rng_ranks, capture_rng_state(), group=info.control_group)
    if not info.is_main:
        return None
    return save_atomic(state(rng_ranks), path)


def restore_training_state(
    path: Path,
    model: nn.Module,
    optimization: Optimization,
    sampler: ShardedBatchSampler,
    info: DistInfo,
    ema: Optional[WeightEMA] = None,
) -> int:
    """Loads a :func:`training_state` file into the model, the optimiser side, ``ema`` and this rank's RNGs.

    Returns the checkpoint's iteration. A run with ``--ema`` resumed from a
    checkpoint without an average starts its average at the loaded weights. Data settings that differ from the
    saved ones (``sampler``: images, global batch, seed) are allowed, with a
    warning: the data order then differs from the interrupted run.
    """
    ckpt = load_checkpoint(path, map_location="cpu")
    load_state_dict_checked(model, ckpt["model"], source=repr(str(path)))
    optimization.optimizer.load_state_dict(ckpt["optimizer"])
    optimization.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") is not None and optimization.scaler.is_enabled():
        optimization.scaler.load_state_dict(ckpt["scaler"])
    iteration = int(ckpt["iteration"])
    if ema is not None:
        if isinstance(ckpt.get("ema"), dict):
            ema.load(ckpt["ema"], int(ckpt.get("ema_updates", iteration)))
        else:
            ema.load(model.state_dict(), 0)
            log.warning("%s has no weight average: the --ema average starts at its weights", path)
    ranks = ckpt.get("rng_ranks")
    if ranks and len(ranks) == info.world_size:
        restore_rng_state(ranks[info.rank])
    else:
        restore_rng_state(ckpt["rng"])
    data = ckpt.get("data", {})
    now = {"num_images": sampler.num_images, "global_batch": sampler.global_batch, "seed": sampler.seed}
    changed = {k: (data.get(k), v) for k, v in now.items() if k in data and data[k] != v}
    if changed:
        log.warning("resuming %s with different data settings %s (saved, now): the data order differs "
                    "from the interrupted run", path, changed)
    if info.is_main:
        log.info("resumed from %s at iteration %d", path, iteration)
    return iteration


def final_weights(
    model: nn.Module, iteration: int, args: Dict[str, Any], ema: Optional[WeightEMA] = None
) -> Dict[str, Any]:
    """``final.pt`` of a finished run: the weights (``ema``'s average when given) and what rebuilds and
    describes them, no optimiser state."""
    weights = ema.state_dict() if ema is not None else model.state_dict()
    return {"model": weights, "config": dict(model.config), "iteration": iteration, "args": args,
            "format": CHECKPOINT_FORMAT}
