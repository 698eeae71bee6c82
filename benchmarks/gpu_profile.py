"""Where one ``Detector.detect_batch`` call spends its time on a GPU.

Two views of the same call (``uint8`` images in host memory to boxes in host
memory), for one network, resolution and batch size:

* **stages**, each synchronised and timed on the wall clock: host preparation
  (resize decisions, canvas, metadata), host-to-device copy, the device
  pipeline (normalise, forward, decode, batched NMS), device-to-host copy;
* **operators**: ``torch.profiler`` over a few calls, the operators with the
  most GPU time and the most host time.

    python benchmarks/gpu_profile.py --weights default --batch 64
    python benchmarks/gpu_profile.py --backbone resnet50 --batch 32 --cuda-graphs --out $OUT/profile.json

Prints both tables and writes JSON with the hardware and versions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from common import hardware_info, parse_res, require_compiled_ops, test_images, write_result
from dsfd.inference import Detector
from dsfd.inference.canvas import batch_meta, paste, prepare
from dsfd.models import build_model, calibrate_random_model, default_weights_path, load_weights

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _median_ms(fn: Callable[[], Any], iters: int) -> float:
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    if args.weights:
        model = load_weights(default_weights_path() if args.weights == "default" else args.weights,
                             map_location="cpu")
    else:
        model = calibrate_random_model(build_model(args.network, args.backbone).eval())
    det = Detector(model=model, device=device, dtype=DTYPES[args.dtype], cuda_graphs=args.cuda_graphs)
    width, height = parse_res(args.res)
    images, source = test_images(width, height, args.batch)
    for _ in range(args.warmup):
        det.detect_batch(images)

    # stages, each synchronised
    state: Dict[str, Any] = {}

    def host_prep() -> None:
        arrays = [det._load(im, "bgr", i) for i, im in enumerate(images)]
        prepared = [prepare(a, det.input_size, det.max_size) for a in arrays]
        canvas, padded = paste([p.image for p in prepared], det.input_size, det._mean_u8)
        meta = batch_meta([p.image for p in prepared], [p.scale_xy for p in prepared],
                          [p.orig_hw for p in prepared])
        state.update(canvas=canvas, padded=padded, meta=meta)

    def h2d() -> None:
        state["x"] = det._to_device(state["canvas"])
        state["m"] = det._to_device(state["meta"])

    def device_pipeline() -> None:
        with torch.inference_mode():
            state["out"] = det._pipeline(state["x"], state["m"], state["padded"])

    def d2h() -> None:
        det._to_host(*state["out"])

    stages = {}
    for name, fn in (("host_prepare", host_prep), ("h2d", h2d), ("device_pipeline_eager", device_pipeline),
                     ("d2h", d2h)):
        stages[name] = round(_median_ms(fn, args.iters), 3)
    stages["detect_batch_e2e"] = round(_median_ms(lambda: det.detect_batch(images), args.iters), 3)

    # operators
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.profile_iters):
            det.detect_batch(images)
        torch.cuda.synchronize()
    events = prof.key_averages()

    def device_us(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    rows = [{"op": e.key, "calls": e.count, "self_gpu_us": round(device_us(e) / args.profile_iters, 1),
             "self_cpu_us": round(e.self_cpu_time_total / args.profile_iters, 1)} for e in events]
    by_gpu = sorted(rows, key=lambda r: -r["self_gpu_us"])[: args.top]
    by_cpu = sorted(rows, key=lambda r: -r["self_cpu_us"])[: args.top]
    cfg = dict(getattr(det.model, "config", {}))
    return {
        "benchmark": "gpu_profile",
        "config": {"network": cfg.get("network"), "backbone": cfg.get("backbone"), "weights": args.weights,
                   "resolution": [width, height], "batch": args.batch, "dtype": str(det.dtype),
                   "cuda_graphs": det.cuda_graphs, "images": source, "iters": args.iters},
        "hardware": hardware_info("cuda"),
        "stages_ms": stages,
        "gpu_time_per_call_us": round(sum(r["self_gpu_us"] for r in rows), 1),
        "top_by_gpu": by_gpu,
        "top_by_cpu": by_cpu,
    }


def table(res: Dict[str, Any]) -> str:
    c = res["config"]
    lines = [f"profile {c['network']}/{c['backbone']} {c['resolution'][0]}x{c['resolution'][1]} batch {c['batch']} "
             f"{c['dtype']} cuda_graphs={c['cuda_graphs']} ({res['hardware'].get('gpu')})"]
    lines += [f"  stage {k:24s} {v:9.3f} ms" for k, v in res["stages_ms"].items()]
    lines.append(f"  GPU time per call (sum of self times): {res['gpu_time_per_call_us'] / 1e3:.3f} ms")
    lines.append("  top operators by GPU time (us per call):")
    lines += [f"    {r['self_gpu_us']:10.1f}  {r['calls']:6d}  {r['op'][:90]}" for r in res["top_by_gpu"]]
    lines.append("  top operators by host time (us per call):")
    lines += [f"    {r['self_cpu_us']:10.1f}  {r['calls']:6d}  {r['op'][:90]}" for r in res["top_by_cpu"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", choices=["paper", "released"], default="paper")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--weights", default=None, help="'default' or a weights file (default: random --backbone)")
    p.add_argument("--res", default="vga")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile-iters", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_profile.py needs a CUDA device")
    require_compiled_ops()
    res = run(args)
    print(table(res))
    tag = "default" if args.weights == "default" else args.backbone
    write_result(res, args.out, f"gpu_profile_{tag}_b{args.batch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
