"""CPU latency of the exported ONNX model in ONNX Runtime, next to PyTorch (same weights, same photo).

Rows (medians over ``--iters`` after ``--warmup``, batch 1):

* **end to end**: a ``uint8 [H, W, 3]`` BGR photo in host memory to the
  final boxes (score > 0.01, top 5000, NMS 0.3, keep 750):
  ONNX Runtime running the ``--nms`` export (``detections`` output, ONNX
  ``NonMaxSuppression`` in the graph) vs :class:`dsfd.Detector` in float32
  and with its automatic precision (bf16 autocast where the CPU has bf16 in
  hardware, float32 elsewhere);
* **model only**: the raw outputs (``loc, conf, anchors``) from a
  prepared ``float32 [1, 3, H, W]`` input: ONNX Runtime running the
  ``--outputs raw --input-format float`` export vs the PyTorch network's
  forward in float32 (the anchors come from the cache in PyTorch, from the
  graph in ONNX Runtime).

Both runtimes use ``--threads`` intra-op threads (default: all cores).
Writes ``benchmarks/results/onnx_latency_cpu_<host>.json`` with the hardware
and versions.

    python benchmarks/onnx_latency.py                       # default model, 640x480
    python benchmarks/onnx_latency.py --iters 2 --warmup 1  # smoke run
    python benchmarks/onnx_latency.py --weights released-resnet152 --res 320x240
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from common import ROOT, hardware_info, write_result
from dsfd.export import export_onnx, match_detections
from dsfd.inference import Detector
from dsfd.io import read_image
from dsfd.models import load_weights


def photo(width: int, height: int) -> tuple:
    """A BGR uint8 photo of ``width x height``: a WIDER FACE val image when present, else the packaged one."""
    import cv2

    from dsfd.data_paths import wider_root

    files = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    src = files[0] if files else ROOT / "dsfd" / "assets" / "grace_hopper.jpg"
    img = read_image(src)
    return np.ascontiguousarray(cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)), str(src)


def median_ms(fn: Callable[[], Any], warmup: int, iters: int) -> Dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    return {"median_ms": round(med, 3), "min_ms": round(min(times), 3), "fps": round(1e3 / med, 3), "iters": iters}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import onnxruntime as ort

    w, h = (int(v) for v in args.res.lower().split("x"))
    img, src = photo(w, h)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = load_weights(args.weights).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    with tempfile.TemporaryDirectory() as tmp:
        det_path = export_onnx(Path(tmp) / "det.onnx", model=model, outputs="detections")
        raw_path = export_onnx(Path(tmp) / "raw.onnx", model=model, outputs="raw", input_format="float")
        det_sess = ort.InferenceSession(str(det_path), opts, providers=["CPUExecutionProvider"])
        raw_sess = ort.InferenceSession(str(raw_path), opts, providers=["CPUExecutionProvider"])

    rows: Dict[str, Dict[str, float]] = {}
    batch = img[None]
    rows["e2e_onnxruntime"] = median_ms(lambda: det_sess.run(None, {"images": batch}), args.warmup, args.iters)
    det32 = Detector(model=model, device="cpu", dtype=torch.float32)
    rows["e2e_pytorch_fp32"] = median_ms(lambda: det32.detect(img), args.warmup, args.iters)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = Detector(model=load_weights(args.weights).eval(), device="cpu")
    rows[f"e2e_pytorch_auto_{str(auto.dtype).replace('torch.', '')}"] = median_ms(
        lambda: auto.detect(img), args.warmup, args.iters
    )

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float().contiguous()
    x_norm = x - torch.tensor(auto.model.pixel_mean).view(1, 3, 1, 1)
    x_np = x.numpy()
    rows["model_onnxruntime"] = median_ms(lambda: raw_sess.run(None, {"images": x_np}), args.warmup, args.iters)

    def torch_model() -> None:
        with torch.inference_mode():
            model(x_norm)

    rows["model_pytorch_fp32"] = median_ms(torch_model, args.warmup, args.iters)

    # the two end-to-end paths must agree (same boxes as a set)
    (ort_dets,) = det_sess.run(None, {"images": batch})
    ort_dets = ort_dets[(ort_dets[:, 3] > ort_dets[:, 1]) & (ort_dets[:, 4] > ort_dets[:, 2])]
    ref = det32.detect(img)
    agreement = match_detections(ort_dets, np.insert(ref, 0, 0, axis=1))

    cfg = getattr(model, "config", {})
    return {
        "benchmark": "onnx_latency",
        "config": {"weights": args.weights, "network": cfg.get("network"), "backbone": cfg.get("backbone"),
                   "width": w, "height": h, "batch": 1, "threads": threads, "warmup": args.warmup,
                   "iters": args.iters, "image": src, "onnxruntime": ort.__version__,
                   "providers": det_sess.get_providers()},
        "results_ms": rows,
        "speedup_onnxruntime_vs_pytorch_fp32": {
            "end_to_end": round(rows["e2e_pytorch_fp32"]["median_ms"] / rows["e2e_onnxruntime"]["median_ms"], 3),
            "model_only": round(rows["model_pytorch_fp32"]["median_ms"] / rows["model_onnxruntime"]["median_ms"], 3),
        },
        "end_to_end_agreement": agreement,
        "hardware": hardware_info("cpu"),
    }


def table(result: Dict[str, Any]) -> str:
    c = result["config"]
    lines = [f"{c['network']}/{c['backbone']} ({c['weights']}), {c['width']}x{c['height']}, batch 1, "
             f"{c['threads']} threads, median of {c['iters']}",
             f"{'path':34s} {'median ms':>10s} {'fps':>8s}"]
    for k, v in result["results_ms"].items():
        lines.append(f"{k:34s} {v['median_ms']:10.2f} {v['fps']:8.2f}")
    s = result["speedup_onnxruntime_vs_pytorch_fp32"]
    lines.append(f"ONNX Runtime vs PyTorch fp32: x{s['end_to_end']} end to end, x{s['model_only']} model only")
    a = result["end_to_end_agreement"]
    lines.append(f"same boxes: {a['count'][0]} vs {a['count'][1]}, max diff {a['max_box_diff_px']:.2g} px")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="default", help="weights name, path or URL (default: default)")
    p.add_argument("--res", default="640x480", help="WxH of the photo (640x480)")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads for both runtimes (all cores)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/onnx_latency_cpu_<host>.json)")
    args = p.parse_args(argv)
    result = run(args)
    print(table(result))
    write_result(result, args.out, "onnx_latency_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
