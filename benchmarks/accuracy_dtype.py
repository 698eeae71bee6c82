"""Accuracy guard for the automatic CPU precision: WIDER AP in float32 vs bfloat16 on the same images.

Runs the detector (default: the packaged default model) over the shared WIDER
FACE val subset once per precision, single scale at full size (and, with
``--accuracy-mode``, the multi-scale + flip protocol), scores each run with
the official protocol and writes the APs and their differences. The
automatic choice (bf16 on CPUs with bf16 in hardware) is kept only while the
difference stays within ``--max-delta`` (0.003) in every setting; the script
exits 1 otherwise.

    python benchmarks/accuracy_dtype.py                      # ~1-2 min per precision on 2 cores
    python benchmarks/accuracy_dtype.py --accuracy-mode --out /tmp/acc.json
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from common import hardware_info, write_result
from dsfd.data_paths import wider_root
from dsfd.evaluation.wider import evaluate_wider, load_wider_ground_truth
from dsfd.inference import Detector
from dsfd.io import read_image, wider_boxes_for_file


def predictions(det: Detector, gt, image_root: Path, accuracy_mode: bool) -> Dict[str, np.ndarray]:
    from tqdm import tqdm

    out: Dict[str, np.ndarray] = {}
    for event, name in tqdm(list(zip(gt.events, gt.names)), desc=str(det.dtype), unit="img", leave=False):
        img = read_image(image_root / event / f"{name}.jpg")
        d = det.detect(img, accuracy_mode=accuracy_mode)
        out[name] = np.concatenate([wider_boxes_for_file(d[:, :4]), d[:, 4:5]], 1)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="weights (default: the packaged default model)")
    p.add_argument("--accuracy-mode", action="store_true", help="also compare the multi-scale + flip protocol")
    p.add_argument("--max-delta", type=float, default=0.003, help="largest allowed |AP(bf16) - AP(fp32)|")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/accuracy_dtype_<host>.json)")
    args = p.parse_args(argv)

    root = wider_root()
    gt = load_wider_ground_truth(root / "ground_truth")
    image_root = root / "WIDER_val" / "images"
    modes = [False, True] if args.accuracy_mode else [False]
    runs: List[Dict[str, Any]] = []
    for accuracy_mode in modes:
        aps: Dict[str, Dict[str, float]] = {}
        for dtype in (torch.float32, torch.bfloat16):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                det = Detector(args.weights, device="cpu", dtype=dtype)
                t0 = time.perf_counter()
                preds = predictions(det, gt, image_root, accuracy_mode)
                seconds = time.perf_counter() - t0
                res = evaluate_wider(preds, gt)
            name = str(dtype).replace("torch.", "")
            aps[name] = {k: round(float(v), 4) for k, v in res.ap.items()}
            runs.append({"accuracy_mode": accuracy_mode, "dtype": name, "channels_last": det.channels_last,
                         "ap": aps[name], "seconds": round(seconds, 1), "images": len(preds)})
            print(f"{'accuracy mode' if accuracy_mode else 'single scale'} {name:9s} "
                  f"{aps[name]}  ({seconds:.0f} s)", flush=True)
        delta = {s: round(aps["bfloat16"][s] - aps["float32"][s], 4) for s in aps["float32"]}
        runs.append({"accuracy_mode": accuracy_mode, "delta_bf16_minus_fp32": delta})
        print(f"  bf16 - fp32: {delta}")
    worst = max(abs(v) for r in runs if "delta_bf16_minus_fp32" in r for v in r["delta_bf16_minus_fp32"].values())
    result = {
        "benchmark": "accuracy_dtype",
        "config": {"weights": args.weights or "default model", "data": "WIDER FACE val subset (events 0-1)",
                   "images": len(gt), "max_delta": args.max_delta},
        "hardware": hardware_info("cpu"),
        "results": runs,
        "worst_abs_delta": worst,
        "within_guard": worst <= args.max_delta,
    }
    write_result(result, args.out, "accuracy_dtype_cpu")
    print(f"largest |delta| {worst:.4f} ({'within' if worst <= args.max_delta else 'OUTSIDE'} {args.max_delta})")
    return 0 if worst <= args.max_delta else 1


if __name__ == "__main__":
    sys.exit(main())
