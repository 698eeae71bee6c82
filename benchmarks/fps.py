"""End-to-end and model-only frames per second: this package vs the baseline people run.

All paths run the same network with the same weights in one process:

* **dsfd auto**: :class:`dsfd.inference.Detector` as users get it - the
  precision it picks by itself (:func:`dsfd.precision.auto_dtype`: bf16
  autocast + channels_last on CPUs with bf16 in hardware and on CUDA, fp32
  elsewhere), one host-to-device copy of the ``uint8`` images,
  normalisation on the device, fused FEM branch convolutions and the fused
  ``upsample_mul`` kernel, cached anchors, and the compiled
  ``decode_boxes`` / ``batched_nms`` ops for the whole batch;
* **dsfd fp32**: the same with ``dtype=torch.float32`` (forced);
* **baseline**: what users of the popular public re-implementations get:
  float32, NCHW, unfused FEM branches and the plain-PyTorch top-down step,
  anchors recomputed on every call, softmax / decode per image and
  ``torchvision.ops.nms`` per image (top 5000 above 0.01, keep 750).

"End-to-end" is ``uint8 [H, W, 3]`` images in host memory to ``[K, 5]`` boxes
in host memory; "model" is the network's forward on a prepared device tensor.
Times are medians (CUDA: synchronised, model-only with CUDA events).

    python benchmarks/fps.py --res vga                                  # paper ResNet50, random weights
    python benchmarks/fps.py --network released --backbone resnet152    # the authors' network
    python benchmarks/fps.py --weights default                          # the packaged default model
    python benchmarks/fps.py --res hd --device cuda --batch 1,16 --dtype float16 [--cuda-graphs] [--compile]

Random weights (the default) are calibrated so the box counts are realistic;
speed does not depend on the weights. Results are printed as a table and
written to ``benchmarks/results/fps_<device>_<res>_<host>.json`` with the
hardware and versions.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torchvision

import dsfd.ops
from common import hardware_info, parse_res, require_compiled_ops, test_images, write_result
from dsfd.inference import Detector
from dsfd.models import build_model, calibrate_random_model, default_weights_path, load_weights
from dsfd.constants import BACKBONES
from dsfd.models.anchors import clear_anchor_cache
from dsfd.postprocess import PostProcessConfig

DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Timer:
    """Median wall time of a callable; CUDA-synchronised, or CUDA events for device-only work."""

    def __init__(self, device: torch.device, warmup: int, iters: int) -> None:
        self.device, self.warmup, self.iters = device, warmup, iters

    def __call__(self, fn: Callable[[], Any], device_only: bool = False) -> List[float]:
        cuda = self.device.type == "cuda"
        for _ in range(self.warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(self.device)
        times = []
        for _ in range(self.iters):
            if cuda and device_only:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize(self.device)
                times.append(time.perf_counter() - t0)
        return times


# --------------------------------------------------------------------------- the baseline


class BaselineDetector:
    """The pipeline of the popular re-implementations: fp32, NCHW, unfused, per-image torchvision NMS."""

    def __init__(self, model: torch.nn.Module, device: torch.device,
                 postprocess: PostProcessConfig = PostProcessConfig()) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.postprocess = postprocess

    def preprocess(self, images: List[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float().contiguous()
        return x - torch.tensor(self.model.pixel_mean, device=self.device).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> Any:
        clear_anchor_cache()  # the re-implementations build their priors on every call
        with dsfd.ops.use_reference():  # nor do they have the fused top-down kernel
            return self.model(x)

    def detect_batch(self, images: List[np.ndarray]) -> List[np.ndarray]:
        with torch.inference_mode():
            x = self.preprocess(images)
            loc, conf, anchors = self.model.inference_shot(self.forward(x))
            H, W = x.shape[-2:]
            scale = torch.tensor([W, H, W, H], dtype=torch.float32, device=self.device)
            out = []
            for b in range(x.shape[0]):
                scores = torch.softmax(conf[b].float(), -1)[:, 1]
                boxes = dsfd.ops.reference.decode_boxes(loc[b].float(), anchors, self.model.variances) * scale
                keep = scores > self.postprocess.score_threshold
                scores, boxes = scores[keep], boxes[keep]
                order = scores.argsort(descending=True)[: self.postprocess.pre_nms_top_k]
                scores, boxes = scores[order], boxes[order]
                kept = torchvision.ops.nms(boxes, scores, self.postprocess.iou_threshold)[: self.postprocess.max_keep]
                out.append(torch.cat([boxes[kept], scores[kept, None]], 1).cpu().numpy())
            return out


# --------------------------------------------------------------------------- main


def _top_box_agreement(a: np.ndarray, b: np.ndarray, k: int = 50) -> Dict[str, float]:
    """Of the top-``k`` boxes of ``b`` (reference), the share matched in ``a`` at IoU > 0.95, and the min IoU."""
    if len(b) == 0:
        return {"top_k": 0, "matched_share": 1.0 if len(a) == 0 else 0.0, "min_iou": 1.0}
    ref_top = torch.from_numpy(b[:k, :4])
    if len(a) == 0:
        return {"top_k": int(len(ref_top)), "matched_share": 0.0, "min_iou": 0.0}
    best = torchvision.ops.box_iou(ref_top, torch.from_numpy(a[:, :4])).max(1).values
    return {"top_k": int(len(ref_top)), "matched_share": round(float((best > 0.95).float().mean()), 4),
            "min_iou": round(float(best.min()), 4)}


def _build(args: argparse.Namespace, fuse: bool) -> torch.nn.Module:
    if args.weights:
        path = default_weights_path() if args.weights == "default" else args.weights
        if path is None:
            raise SystemExit("--weights default: no packaged default model (dsfd/weights/default.pth)")
        model = load_weights(path, map_location="cpu")
        if not fuse and hasattr(model, "fem"):
            for m in model.modules():
                if hasattr(m, "fuse_branches"):
                    m.fuse_branches = False
        return model.eval()
    model = build_model(args.network, args.backbone, **({} if fuse else {"fuse_branches": False})).eval()
    return model


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device available")
    iters = args.iters or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    batches = [int(b) for b in (args.batch or ("1,16" if cuda else "1")).split(",")]
    width, height = parse_res(args.res)
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    fast_model = _build(args, fuse=True)
    if not args.weights:
        calibrate_random_model(fast_model)
    base_model = _build(args, fuse=False)
    base_model.load_state_dict(copy.deepcopy(fast_model.state_dict()))
    fp32_model = copy.deepcopy(fast_model)
    auto = Detector(model=fast_model, device=device, dtype=DTYPES[args.dtype], channels_last=args.channels_last,
                    cuda_graphs=args.cuda_graphs, compile=args.compile)
    fp32 = Detector(model=fp32_model, device=device, dtype=torch.float32)
    baseline = BaselineDetector(base_model, device)
    timer = Timer(device, warmup, iters)
    auto_name = f"dsfd {args.dtype}"

    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    agreement: Dict[str, Any] = {}
    images, source = test_images(width, height, max(batches))
    for batch in batches:
        imgs = images[:batch]
        x_u8 = torch.from_numpy(np.stack(imgs)).to(device)
        with torch.inference_mode():
            xs = {}
            for name, det in ((auto_name, auto), ("dsfd float32", fp32)):
                xs[name] = det.network_input(x_u8)
            x_base = baseline.preprocess(imgs)

        def model_fn(det: Detector, x: torch.Tensor) -> Callable[[], None]:
            def fn() -> None:
                with torch.inference_mode():
                    det.run_network(x)
            return fn

        def base_model_fn() -> None:
            with torch.inference_mode():
                baseline.forward(x_base)

        paths = [
            (auto_name, auto.dtype, auto.channels_last, model_fn(auto, xs[auto_name]), lambda: auto.detect_batch(imgs)),
            ("dsfd float32", torch.float32, fp32.channels_last, model_fn(fp32, xs["dsfd float32"]),
             lambda: fp32.detect_batch(imgs)),
            ("baseline", torch.float32, False, base_model_fn, lambda: baseline.detect_batch(imgs)),
        ]
        for name, dtype, cl, model_fn_, e2e_fn in paths:
            t_model = timer(model_fn_, device_only=True)
            t_e2e = timer(e2e_fn)
            m, e = statistics.median(t_model), statistics.median(t_e2e)
            row = {"path": name, "batch": batch, "dtype": str(dtype).replace("torch.", ""), "channels_last": cl,
                   "model_ms": round(m * 1e3, 2), "model_fps": round(batch / m, 3),
                   "e2e_ms": round(e * 1e3, 2), "e2e_fps": round(batch / e, 3),
                   "model_times_ms": [round(t * 1e3, 2) for t in t_model],
                   "e2e_times_ms": [round(t * 1e3, 2) for t in t_e2e]}
            rows.append(row)
            print(f"  {name:14s} batch {batch:3d}: model {row['model_ms']:9.1f} ms, e2e {row['e2e_ms']:9.1f} ms",
                  flush=True)
        # same faces? dsfd fp32 vs the baseline (clipped), and the automatic precision vs fp32 (top 50 boxes)
        d_auto, d_fp32, d_base = (auto.detect_batch(imgs[:1])[0], fp32.detect_batch(imgs[:1])[0],
                                  baseline.detect_batch(imgs[:1])[0])
        d_base = d_base.copy()
        d_base[:, 0:4:2] = d_base[:, 0:4:2].clip(0, width)
        d_base[:, 1:4:2] = d_base[:, 1:4:2].clip(0, height)
        d_base = d_base[(d_base[:, 2] > d_base[:, 0]) & (d_base[:, 3] > d_base[:, 1])]
        agreement[f"batch {batch}"] = {
            "auto_vs_fp32": _top_box_agreement(d_auto, d_fp32),
            "fp32_vs_baseline": _top_box_agreement(d_fp32, d_base),
        }
        notes.append(f"batch {batch}: image 0 gives {len(d_auto)} ({auto_name}), {len(d_fp32)} (dsfd float32), "
                     f"{len(d_base)} (baseline, clipped) detections")

    cfg_model = dict(getattr(fast_model, "config", {}))
    result = {
        "benchmark": "fps",
        "config": {"network": cfg_model.get("network", args.network),
                   "backbone": cfg_model.get("backbone", args.backbone), "resolution": [width, height],
                   "res": args.res, "batches": batches, "dtype_requested": args.dtype,
                   "dtype_chosen": str(auto.dtype).replace("torch.", ""), "channels_last": auto.channels_last,
                   "iters": iters, "warmup": warmup, "cuda_graphs": args.cuda_graphs, "compile": args.compile,
                   "weights": (str(args.weights) if args.weights
                               else "random (calibrated); detections meaningless"),
                   "images": source, **auto.postprocess.as_dict()},
        "hardware": hardware_info(device.type),
        "results": rows,
        "agreement": agreement,
        "notes": notes,
    }
    return result


def table(result: Dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"DSFD {cfg['network']}/{cfg['backbone']} at {cfg['resolution'][0]}x{cfg['resolution'][1]}, "
        f"device {result['hardware']['device']} ({result['hardware'].get('gpu') or result['hardware']['cpu']}), "
        f"weights: {cfg['weights']}, median of {cfg['iters']} after {cfg['warmup']} warm-up",
        f"{'path':14s} {'batch':>5s} {'dtype':>9s} {'model ms':>10s} {'e2e ms':>10s} {'e2e FPS':>9s} "
        f"{'time vs baseline':>17s}",
    ]
    base = {r["batch"]: r for r in result["results"] if r["path"] == "baseline"}
    for r in result["results"]:
        p = base.get(r["batch"])
        ratio = f"{r['e2e_ms'] / p['e2e_ms']:.2f}x" if p else ""
        lines.append(f"{r['path']:14s} {r['batch']:5d} {r['dtype']:>9s} {r['model_ms']:10.1f} "
                     f"{r['e2e_ms']:10.1f} {r['e2e_fps']:9.2f} {ratio:>17s}")
    for k, v in result.get("agreement", {}).items():
        lines.append(f"agreement ({k}): auto vs fp32 {v['auto_vs_fp32']}, fp32 vs baseline {v['fp32_vs_baseline']}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", default="vga", help="vga (640x480, default), hd (1280x720), fullhd, or WxH")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1 on CPU, 1,16 on CUDA)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="auto",
                        help="precision of the first dsfd path (default auto: what Detector picks by itself)")
    parser.add_argument("--network", choices=["paper", "released"], default="paper")
    parser.add_argument("--backbone", choices=list(BACKBONES),
                        default="resnet50")
    parser.add_argument("--weights", default=None,
                        help="weights file, or 'default' for the packaged default model (default: random weights "
                             "of --network / --backbone)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: 3 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: 1 on CPU, 10 on CUDA)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                        help="force channels_last in the first dsfd path (default: Detector's choice)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="optimised path: replay the whole pipeline as a CUDA graph (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="optimised path: torch.compile the network (CUDA only)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/fps_<device>_<res>_<host>.json)")
    args = parser.parse_args(argv)
    require_compiled_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = run(args)
    print(table(result))
    device = result["hardware"]["device"]
    tag = "default" if args.weights == "default" else f"{result['config']['network']}_{result['config']['backbone']}"
    write_result(result, args.out, f"fps_{device}_{args.res.lower()}_{tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
