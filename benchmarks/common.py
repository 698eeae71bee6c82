"""What the benchmarks share: result files, hardware records, timing, test images, the compiled-ops check.

Imported as ``import common`` by the scripts in this folder (Python puts a
script's own folder first on ``sys.path``); the ``dsfd`` package must be
installed (``bash scripts/env.sh``) or on ``PYTHONPATH`` (``gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

# torch.utils.benchmark imports cpp_extension, which warns when it has to guess CUDA_HOME.
if os.path.isdir("/usr/local/cuda") and "CUDA_HOME" not in os.environ:
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import numpy as np
import torch
import torch.utils.benchmark as tbench

import dsfd
import dsfd.ops
from dsfd.data_paths import wider_root
from dsfd.io import read_image
from dsfd.models import dead_leaves_image

try:
    import torchvision
except ImportError:  # the benchmarks still run, without the torchvision columns
    torchvision = None

ROOT = Path(__file__).resolve().parents[1]


def require_compiled_ops() -> None:
    """Exit with the build instructions unless the compiled kernels are loaded (they are what is measured)."""
    try:
        dsfd.ops.require_compiled()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


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


RESOLUTIONS: Dict[str, Tuple[int, int]] = {"vga": (640, 480), "hd": (1280, 720), "fullhd": (1920, 1080)}


def parse_res(res: str) -> Tuple[int, int]:
    """``vga`` / ``hd`` / ``fullhd`` or ``WxH`` -> ``(width, height)``."""
    if res.lower() in RESOLUTIONS:
        return RESOLUTIONS[res.lower()]
    try:
        w, h = (int(v) for v in res.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--res must be vga, hd, fullhd or WxH, got {res!r}") from None
    return w, h


def test_images(width: int, height: int, batch: int) -> Tuple[List[np.ndarray], str]:
    """``batch`` BGR uint8 images: WIDER FACE val photographs resized to ``width x height`` when present."""
    import cv2

    files = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    if files:
        imgs = [cv2.resize(read_image(files[i % len(files)]), (width, height), interpolation=cv2.INTER_AREA)
                for i in range(batch)]
        return imgs, "WIDER FACE val photographs (resized)"
    return [dead_leaves_image(height, width, seed=i) for i in range(batch)], "synthetic dead-leaves images"
