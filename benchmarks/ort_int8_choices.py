"""Which int8 recipe keeps the detections? ONNX Runtime static quantization (QDQ) candidates against float32.

Each candidate (what is quantized, per-channel or per-tensor weights, which
nodes stay float, how activation ranges are calibrated) is built by
:func:`dsfd.export.quantize.quantize_int8` from the same float32 raw graph
and calibrated on the same WIDER FACE *training* photos (the default
calibration set). It then runs through ``Detector(backend="onnxruntime")``
on *other* training photos (held out from the calibration; never the val
photos the AP is measured on) and is compared with the float32 graph:

* ``drawn_recall`` / ``drawn_precision``: of the float32 boxes at the model's
  drawing threshold, the share int8 also draws (IoU >= 0.5), and of int8's, the
  share float32 draws;
* ``top100_matched``: of float32's 100 best boxes (every score), the share
  int8 has at IoU >= 0.7, and ``top100_score_diff`` the mean score difference of those pairs.

Not a timing benchmark (it runs on a loaded machine without harm). The
chosen recipe becomes :data:`dsfd.export.quantize.DEFAULT_RECIPE`; its WIDER
AP on the val subset is measured by ``benchmarks/ort_backends.py``.

    python benchmarks/ort_int8_choices.py [--weights default] [--holdout 24] [--out results.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from common import hardware_info, write_result
from dsfd.export import export_onnx
from dsfd.export.quantize import DEFAULT_CALIBRATION_COUNT, default_calibration_photos, quantize_int8
from dsfd.inference import Detector
from dsfd.ops import box_iou


def _recipe(calibration: str = "minmax", per_channel: bool = True, keep_float=("head",), op_types=("Conv",)):
    return dict(op_types=op_types, per_channel=per_channel, calibration=calibration, keep_float=keep_float)


CANDIDATES: Dict[str, Dict[str, Any]] = {
    "conv, per-channel, minmax, head float": _recipe(),
    "conv, per-channel, minmax, all int8": _recipe(keep_float=()),
    "conv, per-tensor, minmax, head float": _recipe(per_channel=False),
    "conv, per-channel, percentile, head float": _recipe("percentile"),
    "conv, per-channel, entropy, head float": _recipe("entropy"),
    "conv+eltwise, per-channel, minmax, head float": _recipe(
        op_types=("Conv", "Mul", "Add", "Concat", "LeakyRelu", "Relu", "Resize")),
    "conv, per-channel, minmax, head + stem float": _recipe(keep_float=("head", "stem")),
    "conv, per-channel, minmax, head + fem float": _recipe(keep_float=("head", "fem")),
    "conv, per-channel, minmax, head + backbone float": _recipe(keep_float=("head", "backbone")),
    "conv, per-channel, percentile, head + stem float": _recipe("percentile", keep_float=("head", "stem")),
    "conv, per-channel, minmax, head + depthwise float": _recipe(keep_float=("head", "depthwise")),
    "conv, per-channel, minmax, head + backbone stages float": _recipe(keep_float=("head", "/backbone/stage")),
    "conv, per-channel, minmax, head + backbone neck float": _recipe(keep_float=("head", "/backbone/neck")),
    "conv, per-channel, minmax, head + stage1 float": _recipe(keep_float=("head", "/backbone/stage1")),
    "conv, per-channel, percentile, head + stage1 float": _recipe("percentile", keep_float=("head", "/backbone/stage1")),
    "conv, per-channel, minmax, head + stem + stage1 depthwise float": _recipe(
        keep_float=("head", "stem", "/backbone/stage1.1/stage1.1.0", "/backbone/stage1.2/stage1.2.0",
                    "/backbone/stage1.3/stage1.3.0", "/backbone/stage1.4/stage1.4.0", "/backbone/stage1.5/stage1.5.0")),
    "conv, per-channel, minmax, stage1 float": _recipe(keep_float=("/backbone/stage1",)),
}


def holdout_photos(count: int) -> List[Path]:
    """Training photos not in the default calibration set (the ones halfway between its picks)."""
    from dsfd.data_paths import wider_root

    all_photos = sorted((wider_root() / "WIDER_train" / "images").glob("*/*.jpg"))
    calibration = set(default_calibration_photos())
    rest = [p for p in all_photos if p not in calibration]
    step = max(1, len(rest) // count)
    return rest[step // 2::step][:count]


def compare(ref: List[np.ndarray], got: List[np.ndarray], display: float) -> Dict[str, float]:
    drawn_tp_r = drawn_n_r = drawn_tp_p = drawn_n_p = 0
    top_hit = top_n = 0
    diffs: List[float] = []
    for r, g in zip(ref, got):
        rt, gt = torch.from_numpy(r), torch.from_numpy(g)
        rd, gd = rt[rt[:, 4] >= display], gt[gt[:, 4] >= display]
        if len(rd) and len(gd):
            iou = box_iou(rd[:, :4], gd[:, :4])
            drawn_tp_r += int((iou.max(1).values >= 0.5).sum())
            drawn_tp_p += int((iou.max(0).values >= 0.5).sum())
        drawn_n_r += len(rd)
        drawn_n_p += len(gd)
        top = rt[:100]
        top_n += len(top)
        if len(top) and len(gt):
            iou = box_iou(top[:, :4], gt[:, :4])
            best, idx = iou.max(1)
            hit = best >= 0.7
            top_hit += int(hit.sum())
            diffs.extend((top[hit, 4] - gt[idx[hit], 4]).abs().tolist())
    return {"drawn_recall": round(drawn_tp_r / max(1, drawn_n_r), 4),
            "drawn_precision": round(drawn_tp_p / max(1, drawn_n_p), 4),
            "drawn_boxes_fp32": drawn_n_r, "drawn_boxes_int8": drawn_n_p,
            "top100_matched": round(top_hit / max(1, top_n), 4),
            "top100_score_diff": round(float(np.mean(diffs)) if diffs else float("nan"), 5)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="default")
    p.add_argument("--holdout", type=int, default=24, help="held-out training photos compared (24)")
    p.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT)
    p.add_argument("--only", action="append", help="run only these candidates (repeatable)")
    p.add_argument("--out", default=None, help="JSON (default benchmarks/results/ort_int8_choices_<host>.json)")
    args = p.parse_args(argv)
    from dsfd.io import read_image

    calibration = default_calibration_photos(args.calibration_count)
    photos = holdout_photos(args.holdout)
    assert not set(photos) & set(calibration)
    images = [read_image(x) for x in photos]
    rows: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = export_onnx(Path(tmp) / "fp32.onnx", args.weights, outputs="raw")
        ref_det = Detector(backend="onnxruntime", weights=str(fp32))
        ref = [ref_det.detect(im, min_score=None) for im in images]
        for name, recipe in CANDIDATES.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            path = quantize_int8(fp32, Path(tmp) / "int8.onnx", calibration, **recipe)
            seconds = time.perf_counter() - t0
            det = Detector(backend="onnxruntime", weights=str(path))
            got = [det.detect(im, min_score=None) for im in images]
            rows[name] = {"recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in recipe.items()},
                          "quantize_seconds": round(seconds, 1), **compare(ref, got, ref_det.display_score)}
            print(f"{name:48s} " + "  ".join(f"{k} {v}" for k, v in rows[name].items() if k != "recipe"),
                  flush=True)
    write_result({"benchmark": "ort_int8_choices", "weights": args.weights,
                  "calibration_photos": [x.name for x in calibration], "holdout_photos": [x.name for x in photos],
                  "display_score": ref_det.display_score, "hardware": hardware_info("cpu"), "results": rows},
                 args.out, "ort_int8_choices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
