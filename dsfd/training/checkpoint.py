"""Training checkpoints: atomic writes, RNG state capture and resume lookup.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` can read
(no pickled classes), so :func:`dsfd.models.load_weights` loads its
``"model"`` / ``"config"`` entries directly::

    {
        "model": state_dict,              # of the bare model (no "module." prefix)
        "config": model.config,           # build_model(**config) rebuilds it
        "optimizer": ..., "scheduler": ..., "scaler": ... or None,
        "iteration": int,                 # optimizer steps done
        "rng": {"python", "numpy", "torch", "cuda"},
        "data": {"epoch", "batch_in_epoch", "batches_per_epoch", "num_images",
                 "global_batch", "seed", "world_size"},
        "args": TrainConfig.to_dict(),
        "format": "dsfd-train-v1",
    }

Files are written atomically: to a temporary file in the same folder,
flushed and ``fsync``-ed, then ``os.replace``-d over the target (and the
folder entry ``fsync``-ed), so a crash or a kill at any moment leaves either
the old or the new complete checkpoint, never a truncated one.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_atomic",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "resolve_resume",
]

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
