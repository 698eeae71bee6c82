"""Training-step profile of DSFD: where an iteration's time goes, and images/s.

Phases of one iteration (the trainer's step, decomposed):

* ``data``       - waiting for the next batch from the DataLoader (host);
* ``h2d``        - copying it to the device (+ channels_last);
* ``forward``    - both shots, under autocast;
* ``matching``   - ``dsfd.ops.match_anchors`` for both shots (IoU, assignment, encoding);
* ``mining``     - ``dsfd.ops.hard_negative_mask`` for both shots;
* ``loss``       - per-anchor cross-entropy, smooth-L1, masked sums, normalisation;
* ``backward``   - ``scaler.scale(loss).backward()``;
* ``optimizer``  - SGD step, GradScaler update, lr scheduler.

On CUDA each phase is bracketed by CUDA events and the iteration ends with a
synchronize (phase times are GPU-timeline intervals, so host-side launch gaps
count towards the phase that waits for them); on CPU, wall-clock. The phase
table is measured with these markers; the headline images/s comes from
separate, unsynchronised runs of the trainer's real ``train_step``:
``compute`` (one cached batch, no data loading) and ``end_to_end`` (batches
from the DataLoader with ``--workers`` processes), plus the DataLoader alone.

    python benchmarks/train_profile.py                   # CPU: tiny network, 160 px, batch 4
    python benchmarks/train_profile.py --device cuda     # GPU: ResNet50, 640 px, batch 16, bf16
    python benchmarks/train_profile.py --device cuda --backbone vgg16 --amp fp16 --out $OUT/p.json

Writes JSON (hardware, versions, settings, phases, throughput) to
``benchmarks/results/train_profile_<device>_<backbone>_<host>.json``. Uses
the WIDER FACE training images when present (else synthetic images with
random faces, noted in the JSON).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F

from common import hardware_info, write_result  # first: also sets CUDA_HOME quietly

import dsfd.ops as ops
from dsfd.data_paths import wider_root
from dsfd.training import ShardedBatchSampler, TrainConfig, Trainer
from dsfd.training.trainer import fork_safe_iter

PHASES = ("data", "h2d", "forward", "matching", "mining", "loss", "backward", "optimizer")


class PhaseTimer:
    """Accumulates per-phase times of one iteration (CUDA events or wall-clock)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.pending: List[tuple] = []
        self.host: Dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str, host: bool = False) -> Iterator[None]:
        if self.cuda and not host:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.host[name] += (time.perf_counter() - t0) * 1e3

    def collect(self) -> Dict[str, float]:
        """Milliseconds per phase for the iteration just finished (synchronises on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
        out = defaultdict(float, self.host)
        for name, s, e in self.pending:
            out[name] += s.elapsed_time(e)
        self.pending.clear()
        self.host = defaultdict(float)
        return dict(out)


def profiled_step(tr: Trainer, batch: Any, timer: PhaseTimer) -> float:
    """The trainer's step (``forward_loss`` + optimizer) split into phases; returns the loss."""
    with timer("h2d"):
        images, gt_boxes, gt_counts = tr.to_device(batch)
    with timer("forward"):
        with tr.autocast():
            out = tr.model(images)
    crit = tr.criterion.shot_loss
    total: Optional[torch.Tensor] = None
    for weight, shot in ((1.0, out.first), (tr.criterion.lambda_, out.second)):
        loc, conf, anchors = shot
        B, A, _ = loc.shape
        with timer("matching"):
            labels, loc_t = crit.targets(anchors.float(), gt_boxes, gt_counts)
        with timer("loss"):
            ce = F.cross_entropy(conf.reshape(B * A, -1).float(), labels.clamp(min=0).reshape(-1),
                                 reduction="none").view(B, A)
        with timer("mining"):
            selected = ops.hard_negative_mask(ce.detach(), labels, crit.neg_pos_ratio)
        with timer("loss"):
            pos = labels > 0
            denom = pos.sum().clamp(min=1).float()
            loss_c = torch.where(selected, ce, 0.0).sum() / denom
            sl1 = F.smooth_l1_loss(loc.float(), loc_t, reduction="none").sum(-1)
            loss_l = torch.where(pos, sl1, 0.0).sum() / denom
            term = (loss_l + loss_c) * weight
            total = term if total is None else total + term
    assert total is not None
    with timer("backward"):
        tr.optimizer.zero_grad(set_to_none=True)
        tr.scaler.scale(total).backward()
    with timer("optimizer"):
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
        tr.scheduler.step()
    return float(total.detach())


class _SyntheticFaces(torch.utils.data.Dataset):
    """Random images with 1-20 random faces (when WIDER FACE is not available)."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: Any) -> Any:
        i = item[0] if isinstance(item, (tuple, list)) else item
        g = torch.Generator().manual_seed(int(i))
        img = torch.randn(3, self.size, self.size, generator=g) * 50
        k = int(torch.randint(1, 21, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 0.8
        wh = torch.rand(k, 2, generator=g) * 0.15 + 0.01
        return img, torch.cat([xy, xy + wh], 1), {"index": i}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device)
    have_data = (Path(args.data or wider_root()) / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file()
    out_dir = tempfile.mkdtemp(prefix="dsfd_profile_")
    cfg = TrainConfig(
        data=args.data, out=out_dir, backbone=args.backbone, size=args.size, batch_size=args.batch_size,
        iters=10**6, workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last,
        val_every=0, ckpt_every=0, progress=False, seed=0, augment=args.augment,
    )
    ds = None if have_data else _SyntheticFaces(max(64, 4 * args.batch_size), args.size)
    tr = Trainer(cfg, train_dataset=ds)
    n_iter = args.warmup + args.iters

    def loader_iter(start: int = 0) -> Iterator[Any]:
        sampler = ShardedBatchSampler(len(tr.train_dataset), cfg.batch_size, seed=0, start_iteration=start)
        return fork_safe_iter(tr.make_loader(tr.train_dataset, batch_sampler=sampler))

    # 1) phase profile (synchronised markers)
    timer = PhaseTimer(device)
    it = loader_iter()
    rows: List[Dict[str, float]] = []
    losses = []
    for i in range(n_iter):
        with timer("data", host=True):
            batch = next(it)
        losses.append(profiled_step(tr, batch, timer))
        ms = timer.collect()
        if i >= args.warmup:
            rows.append(ms)
    del it
    phases = {p: statistics.median([r.get(p, 0.0) for r in rows]) for p in PHASES}
    step_ms = statistics.median([sum(r.values()) for r in rows])

    # 2) DataLoader alone
    it = loader_iter(n_iter)
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        next(it)
    data_ips = args.iters * cfg.batch_size / (time.perf_counter() - t0)
    del it

    # 3) the real train_step, unsynchronised: cached batch (compute) and DataLoader (end to end)
    it = loader_iter(2 * n_iter)
    batch = next(it)
    for _ in range(args.warmup):
        tr.train_step(batch)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        tr.train_step(batch)
    _sync(device)
    compute_ips = args.iters * cfg.batch_size / (time.perf_counter() - t0)
    for _ in range(args.warmup):
        tr.train_step(next(it))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        tr.train_step(next(it))
    _sync(device)
    e2e_ips = args.iters * cfg.batch_size / (time.perf_counter() - t0)
    del it

    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    with torch.no_grad():
        probe = tr.model(torch.zeros(1, 3, args.size, args.size, device=device), shots=(1, 2))
    anchors = sum(s.anchors.shape[0] for s in probe)
    settings = {
        "network": "paper", "backbone": args.backbone, "size": args.size, "batch_size": args.batch_size,
        "amp": str(tr.amp_dtype).replace("torch.", "") if tr.amp_dtype else "none",
        "channels_last": tr.channels_last, "workers": args.workers, "augment": args.augment,
        "iters": args.iters, "warmup": args.warmup, "data": "wider_face_train" if have_data else "synthetic",
        "anchors_per_image_both_shots": anchors, "torch_threads": torch.get_num_threads(),
    }
    return {
        "hardware": hardware_info(device.type),
        "settings": settings,
        "phases_ms": {k: round(v, 3) for k, v in phases.items()},
        "step_ms_phase_sum": round(step_ms, 3),
        "images_per_s": {
            "profiled": round(cfg.batch_size / (step_ms / 1e3), 2),
            "compute": round(compute_ips, 2),
            "end_to_end": round(e2e_ips, 2),
            "dataloader_only": round(data_ips, 2),
        },
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        "peak_memory_gib": round(peak_mem, 2) if peak_mem is not None else None,
    }


def print_table(res: Dict[str, Any]) -> None:
    s = res["settings"]
    print(f"\nDSFD training step: {s['backbone']} {s['size']}x{s['size']} batch {s['batch_size']} "
          f"amp={s['amp']} channels_last={s['channels_last']} workers={s['workers']} data={s['data']} "
          f"({res['hardware'].get('gpu') or res['hardware']['cpu']})")
    total = res["step_ms_phase_sum"]
    print(f"{'phase':<11}{'ms/iter':>10}{'share':>8}")
    for k, v in res["phases_ms"].items():
        print(f"{k:<11}{v:>10.2f}{100 * v / total:>7.1f}%")
    print(f"{'step':<11}{total:>10.2f}")
    ips = res["images_per_s"]
    print(f"images/s: profiled {ips['profiled']}, compute (cached batch) {ips['compute']}, "
          f"end-to-end {ips['end_to_end']}, DataLoader alone {ips['dataloader_only']}")
    if res["peak_memory_gib"] is not None:
        print(f"peak GPU memory: {res['peak_memory_gib']} GiB")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default=None, help="default: tiny on CPU, resnet50 on CUDA")
    p.add_argument("--size", type=int, default=None, help="default: 160 on CPU, 640 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 16 on CUDA")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--workers", type=int, default=None, help="default: 0 on CPU, min(12, cpus) on CUDA")
    p.add_argument("--augment", default="full", choices=["full", "none"])
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 CPU / 30 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 2 CPU / 10 CUDA)")
    p.add_argument("--data", default=None, help="WIDER FACE root")
    p.add_argument("--out", default=None, help="JSON path")
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.backbone = args.backbone or ("resnet50" if cuda else "tiny")
    args.size = args.size or (640 if cuda else 160)
    args.batch_size = args.batch_size or (16 if cuda else 4)
    args.workers = args.workers if args.workers is not None else (min(12, os.cpu_count() or 1) if cuda else 0)
    args.iters = args.iters or (30 if cuda else 10)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    res = run(args)
    print_table(res)
    dev = "cuda" if cuda else "cpu"
    write_result(res, args.out, f"train_profile_{dev}_{args.backbone}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
