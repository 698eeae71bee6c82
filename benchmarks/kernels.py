"""Kernel benchmarks: dsfd ops vs their plain-PyTorch references vs torchvision.

Sizes are DSFD's: A = 34,125 anchors (640x640 input), N = 5,000 boxes into NMS
(the top-5000 after the score filter), up to G = 500 faces, B in {1, 16}.
Prints one table per device and writes JSON (hardware, versions, date) to
benchmarks/results/kernels_<device>_<host>.json.

    python benchmarks/kernels.py               # CPU, and CUDA when present
    python benchmarks/kernels.py --quick       # fewer repetitions
    python benchmarks/kernels.py --device cuda --out $OUT/kernels_cuda.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

# torch.utils.benchmark imports cpp_extension, which warns when it has to guess CUDA_HOME.
if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch
import torch.utils.benchmark as tbench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dsfd  # noqa: E402
import dsfd.ops as ops  # noqa: E402
from dsfd.ops import reference as ref  # noqa: E402

try:
    import torchvision
except ImportError:  # the benchmarks still run, without the torchvision column
    torchvision = None

NUM_ANCHORS = 34_125  # 640 x 640, six levels, one anchor per location


def write_result(result: Dict[str, object], out: Optional[str], name: str) -> Path:
    """Write a benchmark's JSON to ``out``, or ``benchmarks/results/<name>_<host>.json``; print where."""
    path = Path(out) if out else ROOT / "benchmarks" / "results" / f"{name}_{platform.node() or 'host'}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return path


def hardware_info(device: str) -> Dict[str, object]:
    info: Dict[str, object] = {
        "device": device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "torchvision": getattr(torchvision, "__version__", None),
        "dsfd": dsfd.__version__,
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from dsfd.precision import cpu_bf16_support, cpu_has_bf16

    info["cpu_bf16"] = {**cpu_bf16_support(), "used": cpu_has_bf16()}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = p.name
        info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
        info["gpu_sms"] = p.multi_processor_count
    return info


def detection_like(batch: int, n: int, faces: int = 60, size: int = 640, seed: int = 0, device: str = "cpu"):
    """Boxes clustered around `faces` objects (like a detector's raw output) with random scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, faces, 2, generator=g) * size
    sides = torch.exp(torch.rand(batch, faces, 1, generator=g) * 3.5) * 8  # 8 .. 265 px
    owner = torch.randint(0, faces, (batch, n), generator=g)
    c = torch.gather(centres, 1, owner[..., None].expand(-1, -1, 2))
    s = torch.gather(sides, 1, owner[..., None])
    c = c + torch.randn(batch, n, 2, generator=g) * s * 0.15
    wh = s * torch.exp(torch.randn(batch, n, 2, generator=g) * 0.15)
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    scores = torch.rand(batch, n, generator=g)
    return boxes.to(device), scores.to(device)


def dsfd_anchors(device: str) -> torch.Tensor:
    """The 34,125 second-shot anchors at 640x640 (cx, cy, w, h normalised)."""
    out = []
    for step, size in zip((4, 8, 16, 32, 64, 128), (16, 32, 64, 128, 256, 512)):
        f = -(-640 // step)
        ys, xs = torch.meshgrid(torch.arange(f), torch.arange(f), indexing="ij")
        cx = (xs.flatten() + 0.5) * step / 640
        cy = (ys.flatten() + 0.5) * step / 640
        w = torch.full_like(cx, size / 1.5**0.5 / 640)
        h = torch.full_like(cx, size * 1.5**0.5 / 640)
        out.append(torch.stack([cx, cy, w, h], 1))
    a = torch.cat(out).clamp(0, 1)
    assert a.shape[0] == NUM_ANCHORS
    return a.to(device)


def faces(batch: int, g_max: int, seed: int, device: str):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, g_max, 2, generator=gen) * 0.9
    wh = torch.exp(torch.rand(batch, g_max, 2, generator=gen) * 4) * 0.004  # 2.6 .. 140 px
    gt = torch.cat([xy, (xy + wh).clamp(max=1)], -1)
    counts = torch.full((batch,), g_max, dtype=torch.long)
    return gt.to(device), counts.to(device)


class Bench:
    def __init__(self, device: str, min_run_time: float):
        self.device = device
        self.min_run_time = min_run_time
        self.rows: List[Dict[str, object]] = []

    def time(self, fn: Callable[[], object], budget: Optional[float] = None) -> float:
        """Median seconds per call (CUDA: synchronised by torch.utils.benchmark)."""
        fn()  # warm-up
        if self.device == "cuda":
            torch.cuda.synchronize()
        t = tbench.Timer(stmt="fn()", globals={"fn": fn})
        m = t.blocked_autorange(min_run_time=budget or self.min_run_time)
        return m.median

    def case(self, op: str, shape: str, variants: Dict[str, Callable[[], object]], note: str = "",
             slow: Optional[set] = None):
        times = {}
        for name, fn in variants.items():
            if fn is None:
                continue
            times[name] = self.time(fn, budget=self.min_run_time / 4 if slow and name in slow else None)
        row = {"op": op, "shape": shape, "device": self.device, "ms": {k: v * 1e3 for k, v in times.items()}, "note": note}
        base = times.get("dsfd")
        if base:
            row["speedup"] = {k: v / base for k, v in times.items() if k != "dsfd"}
        self.rows.append(row)
        cols = "  ".join(f"{k}={v * 1e3:9.3f}ms" for k, v in times.items())
        sp = "  ".join(f"x{v:.1f} vs {k}" for k, v in row.get("speedup", {}).items())
        print(f"{op:20s} {shape:28s} {cols}   {sp}  {note}", flush=True)


def run(device: str, quick: bool) -> Dict[str, object]:
    b = Bench(device, min_run_time=0.3 if quick else 1.0)
    tv = torchvision.ops if torchvision is not None else None
    print(f"\n== {device} ==", flush=True)

    # box_iou
    for n, m in [(5000, 500), (34_125, 64)]:
        x, _ = detection_like(1, n, device=device)
        y, _ = detection_like(1, m, seed=1, device=device)
        x, y = x[0], y[0]
        b.case("box_iou", f"[{n},4]x[{m},4]", {
            "dsfd": lambda: ops.box_iou(x, y),
            "reference": lambda: ref.box_iou(x, y),
            "torchvision": (lambda: tv.box_iou(x, y)) if tv else None,
        })

    # decode
    anchors = dsfd_anchors(device)
    for batch in (1, 16):
        deltas = torch.randn(batch, NUM_ANCHORS, 4, device=device) * 0.5
        b.case("decode_boxes", f"[{batch},{NUM_ANCHORS},4]", {
            "dsfd": lambda: ops.decode_boxes(deltas, anchors),
            "reference": lambda: ref.decode_boxes(deltas, anchors),
        })

    # nms, N = 5000
    boxes, scores = detection_like(1, 5000, device=device)
    bx, sc = boxes[0], scores[0]
    same = tv is None or torch.equal(ops.nms(bx, sc, 0.3).cpu(), tv.nms(bx, sc, 0.3).cpu())
    b.case("nms", "N=5000, iou 0.3", {
        "dsfd": lambda: ops.nms(bx, sc, 0.3),
        "torchvision": (lambda: tv.nms(bx, sc, 0.3)) if tv else None,
    }, note=f"same kept set as torchvision: {same}")

    # batched_nms: DSFD post-processing, 5000 candidates per image
    for batch in (1, 16):
        boxes, scores = detection_like(batch, 5000, seed=batch, device=device)

        def tv_loop():
            out = []
            for bb, ss in zip(boxes, scores):
                idx = torch.nonzero(ss > 0.01).flatten()
                top = torch.sort(ss[idx], descending=True, stable=True).indices[:5000]
                idx = idx[top]
                out.append(idx[tv.nms(bb[idx], ss[idx], 0.3)][:750])
            return out

        def tv_batched():
            # torchvision.ops.batched_nms over the whole batch (one id per image)
            flat_b = boxes.reshape(-1, 4)
            flat_s = scores.reshape(-1)
            img = torch.arange(batch, device=device).repeat_interleave(boxes.shape[1])
            keep = flat_s > 0.01
            kept = tv.batched_nms(flat_b[keep], flat_s[keep], img[keep], 0.3)
            return kept

        _, _, cnt, idx = ops.batched_nms(boxes, scores, 0.3, 0.01, 5000, 750, return_indices=True)
        same = True
        if tv is not None:
            for i, want in enumerate(tv_loop()):
                same &= torch.equal(idx[i, : cnt[i]].cpu(), want.cpu())
        b.case("batched_nms", f"B={batch}, N=5000", {
            "dsfd": lambda: ops.batched_nms(boxes, scores, 0.3, 0.01, 5000, 750),
            "reference": (lambda: ref.batched_nms(boxes, scores, 0.3, 0.01, 5000, 750)) if device == "cpu" and batch == 1 else None,
            "torchvision_loop": tv_loop if tv else None,
            "torchvision_batched": tv_batched if tv else None,
        }, note=f"same kept sets as torchvision: {same}", slow={"reference"})

    # match_anchors
    for batch, g_max in [(1, 20), (16, 20), (16, 500)]:
        gt, counts = faces(batch, g_max, seed=g_max, device=device)
        b.case("match_anchors", f"B={batch}, G={g_max}, A={NUM_ANCHORS}", {
            "dsfd": lambda: ops.match_anchors(anchors, gt, counts),
            "reference": lambda: ref.match_anchors(anchors, gt, counts),
        }, slow={"reference"})

    # hard_negative_mask
    for batch in (1, 16):
        gen = torch.Generator().manual_seed(batch)
        loss = torch.rand(batch, NUM_ANCHORS, generator=gen).to(device)
        labels = (torch.rand(batch, NUM_ANCHORS, generator=gen) < 0.003).long().to(device)
        b.case("hard_negative_mask", f"B={batch}, A={NUM_ANCHORS}", {
            "dsfd": lambda: ops.hard_negative_mask(loss, labels),
            "reference": lambda: ref.hard_negative_mask(loss, labels),
        })

    # upsample_mul (FEM top-down step at 640x640, level 1 <- level 2 of ResNet50)
    for batch in (1, 16):
        upper = torch.randn(batch, 512, 40, 40, device=device)
        lateral = torch.randn(batch, 512, 80, 80, device=device)
        b.case("upsample_mul", f"B={batch}, 512x40x40 -> 80x80", {
            "dsfd": lambda: ops.upsample_mul(upper, lateral, False, True),
            "reference": lambda: ref.upsample_mul(upper, lateral, False, True),
        })
        if device == "cuda":
            ucl = upper.contiguous(memory_format=torch.channels_last)
            lcl = lateral.contiguous(memory_format=torch.channels_last)
            b.case("upsample_mul", f"B={batch}, channels_last", {
                "dsfd": lambda: ops.upsample_mul(ucl, lcl, False, True),
                "reference": lambda: ref.upsample_mul(ucl, lcl, False, True),
            })

    return {"hardware": hardware_info(device), "results": b.rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kernels_<device>_<host>.json)")
    args = parser.parse_args(argv)
    dsfd.extension._assert_has_ops()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            print("no CUDA device available", file=sys.stderr)
            return 2
        devices.remove("cuda")
    for device in devices:
        result = run(device, args.quick)
        write_result(result, args.out if len(devices) == 1 else None, f"kernels_{device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
