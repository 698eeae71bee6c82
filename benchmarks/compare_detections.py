"""Compare two ``dsfd detect`` output folders (e.g. the CPU run and the GPU run of the same inputs).

Every per-image ``.json`` of the reference folder must have a counterpart in
the other with the same boxes: each reference box matched by a box at IoU >=
``--iou`` (default 0.9) with a score within ``--score-tol`` (default 0.03:
bf16 / TF32 on the GPU against float32 on the CPU). Prints one line per image
and exits 1 on any mismatch.

    python benchmarks/compare_detections.py detections_cpu detections_gpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np


def _boxes(path: Path) -> np.ndarray:
    dets = json.loads(path.read_text())["detections"]
    return np.array([d["box"] + [d["score"]] for d in dets], dtype=np.float64).reshape(-1, 5)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-12)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", type=Path)
    p.add_argument("other", type=Path)
    p.add_argument("--iou", type=float, default=0.9)
    p.add_argument("--score-tol", type=float, default=0.03)
    args = p.parse_args(argv)
    files = sorted(f for f in args.reference.rglob("*.json") if f.name != "summary.json")
    if not files:
        print(f"no per-image .json files under {args.reference}")
        return 1
    bad = 0
    for f in files:
        g = args.other / f.relative_to(args.reference)
        if not g.is_file():
            print(f"MISSING {g}")
            bad += 1
            continue
        a, b = _boxes(f), _boxes(g)
        ok = len(a) == len(b)
        if len(a) and len(b):
            iou = _iou(a, b)
            j = iou.argmax(1)
            ok &= bool((iou.max(1) >= args.iou).all() and (np.abs(a[:, 4] - b[j, 4]) <= args.score_tol).all())
        bad += not ok
        print(f"{'ok' if ok else 'MISMATCH'} {f.relative_to(args.reference)}: {len(a)} vs {len(b)} boxes; "
              f"scores {np.round(a[:, 4], 4).tolist()} vs {np.round(b[:, 4], 4).tolist()}")
    print(f"{len(files) - bad}/{len(files)} images agree")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
