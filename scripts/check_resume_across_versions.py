"""Check that a training run resumed across a code change continues exactly.

A refactor of the trainer must keep both the checkpoint format and the
arithmetic of every iteration. This runs a tiny CPU run (the tiny network,
6 WIDER training images, 128 px, validation every 3 iterations) three ways
and compares them bit for bit:

1. the OLD code (a checkout given by ``--old``, e.g. ``git worktree add
   /tmp/trainer_old HEAD`` with the built ``dsfd/_C*.so`` copied in): 0..n,
   keeping a checkpoint at every iteration;
2. this checkout's code resuming from the old checkpoint of iteration k to n;
3. this checkout's code from scratch to n.

Every logged train / val record (losses, lr) of 2 and 3 must equal the old
run's, and every kept checkpoint, ``last.pt`` and ``final.pt`` must hold
the same keys, types and values (model, optimizer, scheduler, RNG states,
data position; ``args`` apart from ``out`` / ``resume``)::

    python scripts/check_resume_across_versions.py --old /tmp/trainer_old --k 3 --n 7

Exit status 0: identical; 1: a difference (listed). Each run is a separate
process with ``PYTHONPATH`` set to the checkout it exercises.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]


def run_config(out: Path, n: int, resume: str = "") -> Dict[str, Any]:
    """The tiny run of ``tests/test_training.py`` (``tiny_cfg``) plus validation and kept checkpoints."""
    from dsfd.data_paths import wider_root

    return dict(
        data=str(wider_root()), out=str(out), backbone="tiny", size=128, batch_size=2, iters=n, lr=1e-2,
        workers=0, val_every=3, val_images=2, ckpt_every=0, keep_every=1, log_every=1, progress=False, seed=3,
        train_images=6, deterministic=True, amp="none", resume=resume,
    )


def train_in(code_root: Path, cfg: Dict[str, Any]) -> None:
    """``Trainer(TrainConfig(**cfg)).train()`` in a fresh process importing ``dsfd`` from ``code_root``."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    script = (
        "import json, sys, dsfd\n"
        f"assert dsfd.__file__.startswith({str(code_root)!r}), dsfd.__file__\n"
        "from dsfd.training import TrainConfig, Trainer\n"
        "print(Trainer(TrainConfig(**json.loads(sys.argv[1]))).train())\n"
    )
    subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], cwd=code_root, env=env, check=True)


def records(out: Path) -> Dict[tuple, Dict[str, Any]]:
    """``(type, iter) -> record`` of the train / val lines of ``log.jsonl`` (without the wall-clock fields)."""
    res = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] in ("train", "val"):
            res[(rec["type"], rec["iter"])] = {
                k: v for k, v in rec.items() if k not in ("time", "images_per_s", "data_time_frac")
            }
    return res


def differences(a: Any, b: Any, where: str = "") -> List[str]:
    """Every place where two checkpoint trees differ in structure, type, dtype, shape or value."""
    import torch

    if type(a) is not type(b):
        return [f"{where}: type {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, dict):
        out = [f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"] if a.keys() != b.keys() else []
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor):
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"]
        return [] if torch.equal(a, b) else [f"{where}: values differ (max {(a.double() - b.double()).abs().max()})"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def compare_runs(ref: Path, got: Path, iters: range, label: str) -> List[str]:
    """Differences between two runs over ``iters``: log records and kept checkpoints."""
    from dsfd.training import load_checkpoint

    problems = []
    want, have = records(ref), records(got)
    keys = sorted(k for k in want if k[1] in iters)
    if not keys:
        problems.append(f"{label}: no logged iterations in {iters}")
    for key in keys:
        if have.get(key) != want[key]:
            problems.append(f"{label}: log {key}: {have.get(key)} vs {want[key]}")
    for name in [f"iter_{it:07d}.pt" for it in iters] + ["last.pt", "final.pt"]:
        a, b = load_checkpoint(ref / name), load_checkpoint(got / name)
        for d in (a, b):
            for k in ("out", "resume"):
                d["args"].pop(k)
        problems += [f"{label}: {name}{d}" for d in differences(a, b)]
    return problems


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, required=True, help="checkout of the code before the change")
    p.add_argument("--k", type=int, default=3, help="iteration of the old checkpoint to resume from")
    p.add_argument("--n", type=int, default=7, help="iterations of the run")
    p.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    a = p.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="dsfd_resume_check_"))
    old, resumed, fresh = work / "old", work / "resumed", work / "fresh"
    for d in (old, resumed, fresh):
        shutil.rmtree(d, ignore_errors=True)

    train_in(a.old.resolve(), run_config(old, a.n))
    resumed.mkdir(parents=True)
    shutil.copy(old / f"iter_{a.k:07d}.pt", resumed / "last.pt")
    train_in(REPO, run_config(resumed, a.n, resume="auto"))
    train_in(REPO, run_config(fresh, a.n))

    problems = compare_runs(old, resumed, range(a.k + 1, a.n + 1), "resumed")
    problems += compare_runs(old, fresh, range(1, a.n + 1), "fresh")
    for line in problems:
        print(line)
    n_log = len([k for k in records(old) if k[1] > a.k])
    print(f"{'DIFFERENT' if problems else 'IDENTICAL'}: old run 1..{a.n}, new code resumed at {a.k} "
          f"({n_log} train/val records, {a.n - a.k} kept checkpoints, last.pt and final.pt compared) and from scratch; runs in {work}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
