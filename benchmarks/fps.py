"""End-to-end and model-only frames per second: this package's fast path vs plain PyTorch.

Both paths run the same network with the same (random, calibrated) weights in
one process:

* **dsfd** (optimised): :class:`dsfd.inference.Detector` - one host-to-device
  copy of the ``uint8`` images, normalisation on the device, channels_last
  (CUDA), fp16/bf16 autocast when ``--dtype`` asks, fused FEM branch
  convolutions and the fused ``upsample_mul`` kernel, cached anchors, and the
  compiled ``decode_boxes`` / ``batched_nms`` ops for the whole batch;
* **plain**: float32, ``dsfd.models.fem.use_fused_ops = False``, unfused FEM
  branches, NCHW, and the plain-PyTorch references of
  :mod:`dsfd.ops.reference` for decoding and NMS (NMS loops over images).

"End-to-end" is ``uint8 [H, W, 3]`` images in host memory to ``[K, 5]`` boxes
in host memory; "model" is the network's forward on a prepared device tensor.
Times are medians (CUDA: synchronised, model-only with CUDA events).

    python benchmarks/fps.py --res vga                       # CPU here: ~2-3 min on 2 cores
    python benchmarks/fps.py --res hd --device cuda --batch 1,16 --dtype float16 [--cuda-graphs] [--compile]
    python benchmarks/fps.py --backbone vgg16 --network paper --iters 50 --out $OUT/fps.json

Default: the paper's dual-shot network with a ResNet50 backbone (second
shot only, as at test time), 640 x 480, RANDOM weights (speed does not
depend on the weights; the detections are meaningless). Results are printed
as a table and written to ``benchmarks/results/fps_<device>_<res>_<host>.json``
with the hardware and versions.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import dsfd  # noqa: E402
import dsfd.models.fem as fem  # noqa: E402
from dsfd.inference import Detector  # noqa: E402
from dsfd.inference.detector import _dead_leaves, _face_outputs, calibrate_random_model  # noqa: E402
from dsfd.models import build_model  # noqa: E402
from dsfd.ops import reference as ref  # noqa: E402
from kernels import hardware_info, write_result  # noqa: E402

RESOLUTIONS: Dict[str, Tuple[int, int]] = {"vga": (640, 480), "hd": (1280, 720), "fullhd": (1920, 1080)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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

    from dsfd.data_paths import wider_root

    files = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    if files:
        imgs = [cv2.resize(cv2.imread(str(files[i % len(files)])), (width, height), interpolation=cv2.INTER_AREA)
                for i in range(batch)]
        return imgs, "WIDER FACE val photographs (resized)"
    return [_dead_leaves(height, width, seed=i) for i in range(batch)], "synthetic dead-leaves images"


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


# --------------------------------------------------------------------------- the plain path


class PlainDetector:
    """The unoptimised reference pipeline (float32, unfused, reference ops, per-image NMS loop)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, score_threshold: float = 0.01,
                 nms_threshold: float = 0.3, top_k: int = 5000, keep_top_k: int = 750) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.args = (nms_threshold, score_threshold, top_k, keep_top_k)

    def preprocess(self, images: List[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float().contiguous()
        return x - torch.tensor([104.0, 117.0, 123.0], device=self.device).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> Any:
        prev = fem.use_fused_ops
        fem.use_fused_ops = False
        try:
            return self.model(x)
        finally:
            fem.use_fused_ops = prev

    def detect_batch(self, images: List[np.ndarray]) -> List[np.ndarray]:
        with torch.inference_mode():
            x = self.preprocess(images)
            loc, conf, anchors = _face_outputs(self.forward(x))
            H, W = x.shape[-2:]
            scores = torch.softmax(conf, -1)[..., 1]
            boxes = ref.decode_boxes(loc, anchors) * torch.tensor([W, H, W, H], device=self.device)
            kb, ks, _, counts = ref.batched_nms(boxes, scores, *self.args)
            dets = torch.cat([kb, ks[..., None]], -1).cpu().numpy()
            return [dets[b, :n] for b, n in enumerate(counts.cpu().tolist())]


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device available")
    dtype = DTYPES[args.dtype or ("float16" if cuda else "float32")]
    iters = args.iters or (50 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    batches = [int(b) for b in (args.batch or ("1,16" if cuda else "1")).split(",")]
    width, height = parse_res(args.res)
    if cuda:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    fast_model = build_model(args.network, args.backbone).eval()
    calibrate_random_model(fast_model)
    plain_model = build_model(args.network, args.backbone, fuse_branches=False).eval()
    plain_model.load_state_dict(copy.deepcopy(fast_model.state_dict()))
    detector = Detector(model=fast_model, device=device, dtype=dtype, channels_last=args.channels_last,
                        cuda_graphs=args.cuda_graphs, compile=args.compile)
    plain = PlainDetector(plain_model, device)
    timer = Timer(device, warmup, iters)

    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    images, source = test_images(width, height, max(batches))
    for batch in batches:
        imgs = images[:batch]
        # model only: prepared device tensors
        x_u8 = torch.from_numpy(np.stack(imgs)).to(device)
        with torch.inference_mode():
            x_fast = x_u8.permute(0, 3, 1, 2).float() - detector._mean
            if not detector.channels_last:
                x_fast = x_fast.contiguous()
            x_plain = plain.preprocess(imgs)

        def fast_model_fn() -> None:
            with torch.inference_mode(), detector._autocast():
                detector._network(x_fast)

        def plain_model_fn() -> None:
            with torch.inference_mode():
                plain.forward(x_plain)

        for name, model_fn, e2e_fn in (
            ("dsfd", fast_model_fn, lambda: detector.detect_batch(imgs)),
            ("plain", plain_model_fn, lambda: plain.detect_batch(imgs)),
        ):
            t_model = timer(model_fn, device_only=True)
            t_e2e = timer(e2e_fn)
            m, e = statistics.median(t_model), statistics.median(t_e2e)
            row = {"path": name, "batch": batch, "dtype": str(dtype if name == "dsfd" else torch.float32),
                   "model_ms": round(m * 1e3, 2), "model_fps": round(batch / m, 3),
                   "e2e_ms": round(e * 1e3, 2), "e2e_fps": round(batch / e, 3),
                   "model_times_ms": [round(t * 1e3, 2) for t in t_model],
                   "e2e_times_ms": [round(t * 1e3, 2) for t in t_e2e]}
            rows.append(row)
            print(f"  {name:5s} batch {batch:3d}: model {row['model_ms']:9.1f} ms, e2e {row['e2e_ms']:9.1f} ms",
                  flush=True)
        # sanity: both paths find the same faces (float32 only; autocast changes the numbers)
        fast_dets, plain_dets = detector.detect_batch(imgs[:1])[0], plain.detect_batch(imgs[:1])[0]
        plain_clipped = plain_dets.copy()
        plain_clipped[:, 0:4:2] = plain_clipped[:, 0:4:2].clip(0, width)
        plain_clipped[:, 1:4:2] = plain_clipped[:, 1:4:2].clip(0, height)
        keep = (plain_clipped[:, 2] > plain_clipped[:, 0]) & (plain_clipped[:, 3] > plain_clipped[:, 1])
        notes.append(f"batch {batch}: dsfd path {len(fast_dets)} detections, plain path {int(keep.sum())} "
                     f"(after clipping) on image 0")

    result = {
        "benchmark": "fps",
        "config": {"network": args.network, "backbone": args.backbone, "resolution": [width, height],
                   "res": args.res, "batches": batches, "dtype": str(dtype), "iters": iters, "warmup": warmup,
                   "channels_last": detector.channels_last, "cuda_graphs": args.cuda_graphs,
                   "compile": args.compile, "weights": "random (calibrated); detections meaningless",
                   "images": source, "score_threshold": 0.01, "nms_threshold": 0.3, "top_k": 5000,
                   "keep_top_k": 750},
        "hardware": hardware_info(device.type),
        "results": rows,
        "notes": notes,
    }
    return result


def table(result: Dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"DSFD {cfg['network']}/{cfg['backbone']} at {cfg['resolution'][0]}x{cfg['resolution'][1]}, "
        f"device {result['hardware']['device']} ({result['hardware'].get('gpu') or result['hardware']['cpu']}), "
        f"RANDOM weights, median of {cfg['iters']} after {cfg['warmup']} warm-up",
        f"{'path':6s} {'batch':>5s} {'dtype':>15s} {'model ms':>10s} {'model FPS':>10s} {'e2e ms':>10s} "
        f"{'e2e FPS':>9s} {'e2e speedup':>12s}",
    ]
    plain = {r["batch"]: r for r in result["results"] if r["path"] == "plain"}
    for r in result["results"]:
        p = plain.get(r["batch"])
        speed = f"{p['e2e_ms'] / r['e2e_ms']:.2f}x" if p and r["path"] == "dsfd" else ""
        lines.append(f"{r['path']:6s} {r['batch']:5d} {r['dtype'].replace('torch.', ''):>15s} {r['model_ms']:10.1f} "
                     f"{r['model_fps']:10.2f} {r['e2e_ms']:10.1f} {r['e2e_fps']:9.2f} {speed:>12s}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", default="vga", help="vga (640x480, default), hd (1280x720), fullhd, or WxH")
    parser.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1 on CPU, 1,16 on CUDA)")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="optimised path precision (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--network", choices=["paper", "released"], default="paper")
    parser.add_argument("--backbone", choices=["vgg16", "resnet50", "resnet101", "resnet152", "tiny"],
                        default="resnet50")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: 3 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: 1 on CPU, 10 on CUDA)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                        help="force channels_last in the optimised path (default: on for CUDA only)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="optimised path: replay the whole pipeline as a CUDA graph (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="optimised path: torch.compile the network (CUDA only)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/fps_<device>_<res>_<host>.json)")
    args = parser.parse_args(argv)
    dsfd.extension._assert_has_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = run(args)
    print(table(result))
    device = result["hardware"]["device"]
    write_result(result, args.out, f"fps_{device}_{args.res.lower()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
