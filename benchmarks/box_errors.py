"""Where a detector's boxes go wrong: localisation error by face size, and what its false positives are.

AP at IoU 0.5 punishes a box that finds a small face but misses its
outline by a pixel or two as hard as a box on a wall. This splits the two,
on the shared val subset, for this package's model and for the peers' real
predictions in ``../shared/fixtures`` (boxes as each wrote them, IoU with
the official ``+1`` convention):

* **localisation by face size**: every box scoring at least ``--score`` is
  paired with the labelled face it overlaps most (IoU >= 0.2); per size bin
  of that face: the median IoU, the share below 0.5 (a found face that
  counts as a miss and a false positive), the median log size ratio
  (box / face, width and height) and the median centre offset as a
  fraction of the face's width / height.
* **false positives at a recall**: the boxes down to the score where the
  detector reaches ``--recall`` of a setting's faces, counted as right,
  ignored (on a face outside the setting: the protocol counts them neither
  way), ``dup`` (a second box on a face already found), ``loc`` (IoU 0.2-0.5
  with a face: found but mis-outlined) or ``bg`` (nothing there), and the
  false positives by box size.

    python benchmarks/box_errors.py --dsfd PRED_DIR [--dsfd PRED_DIR2 ...] [--out results.json]

``PRED_DIR`` is the prediction folder of ``dsfd eval --weights ... --out DIR``
(``DIR/predictions``); the folder's parent name labels it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from common import write_result
from dsfd.data_paths import fixtures_root
from dsfd.evaluation import load_wider_ground_truth
from dsfd.evaluation.wider import _iou_plus_one
from dsfd.io import read_prediction_folder

PEERS = ("yunet", "retinaface_mnet")
SIZE_BINS = ((0, 10), (10, 16), (16, 24), (24, 40), (40, 80), (80, 1e9))


def _by_image(preds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k.split("/")[-1].replace(".jpg", ""): np.asarray(v, dtype=np.float64).reshape(-1, 5)
            for k, v in preds.items()}


def localisation(preds: Dict[str, np.ndarray], gt: Any, score: float) -> List[Dict[str, Any]]:
    rows = []
    for name, faces in zip(gt.names, gt.boxes):
        p = preds.get(name, np.zeros((0, 5)))
        p = p[p[:, 4] >= score]
        if not len(p) or not len(faces):
            continue
        iou = _iou_plus_one(p[:, :4], faces)
        best = iou.argmax(1)
        for j, g in enumerate(best):
            if iou[j, g] < 0.2:
                continue
            f, b = faces[g], p[j]
            fw, fh, bw, bh = max(f[2], 1.0), max(f[3], 1.0), max(b[2], 1.0), max(b[3], 1.0)
            rows.append((np.sqrt(fw * fh), iou[j, g], np.log(bw / fw), np.log(bh / fh),
                         (b[0] + bw / 2 - f[0] - fw / 2) / fw, (b[1] + bh / 2 - f[1] - fh / 2) / fh))
    r = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    out = []
    for lo, hi in SIZE_BINS:
        q = r[(r[:, 0] >= lo) & (r[:, 0] < hi)]
        if len(q) < 5:
            continue
        med = np.median(q, axis=0)
        out.append({"face_px": [lo, None if hi >= 1e9 else hi], "boxes": int(len(q)), "median_iou": round(med[1], 3),
                    "iou_below_0.5": round(float(np.mean(q[:, 1] < 0.5)), 3),
                    "log_w_ratio": round(med[2], 3), "log_h_ratio": round(med[3], 3),
                    "dx_of_width": round(med[4], 3), "dy_of_height": round(med[5], 3)})
    return out


def false_positives(preds: Dict[str, np.ndarray], gt: Any, setting: str, recall: float) -> Dict[str, Any]:
    rows = []  # (score, kind, box side)
    faces_counted = 0
    for name, faces, keep in zip(gt.names, gt.boxes, gt.keep[setting]):
        p = preds.get(name, np.zeros((0, 5)))
        p = p[np.argsort(-p[:, 4], kind="stable")]
        faces_counted += len(keep)
        counted, found = set(keep.tolist()), set()
        iou = _iou_plus_one(p[:, :4], faces) if len(p) and len(faces) else np.zeros((len(p), 0))
        for j in range(len(p)):
            best = float(iou[j].max()) if iou.shape[1] else 0.0
            if best >= 0.5:
                g = int(iou[j].argmax())
                kind = "ignored" if g not in counted else ("dup" if g in found else "right")
                found.add(g)
            else:
                kind = "loc" if best >= 0.2 else "bg"
            rows.append((float(p[j, 4]), kind, float(np.sqrt(max(p[j, 2], 1) * max(p[j, 3], 1)))))
    rows.sort(key=lambda t: -t[0])
    right = np.cumsum([k == "right" for _, k, _ in rows])
    reach = int(np.searchsorted(right, recall * faces_counted))
    if reach >= len(rows):
        return {"recall": recall, "reached": False, "max_recall": round(float(right[-1]) / faces_counted, 3)}
    top = rows[: reach + 1]
    kinds = {k: sum(1 for _, kk, _ in top if kk == k) for k in ("right", "ignored", "dup", "loc", "bg")}
    fps = [s for _, k, s in top if k in ("dup", "loc", "bg")]
    return {"recall": recall, "reached": True, "score": round(top[-1][0], 4), **kinds,
            "precision": round(kinds["right"] / max(1, kinds["right"] + len(fps)), 3),
            "fp_box_px": {"<16": sum(s < 16 for s in fps), "16-48": sum(16 <= s < 48 for s in fps),
                          ">=48": sum(s >= 48 for s in fps)}}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsfd", action="append", default=[], help="WIDER prediction folder (repeatable)")
    p.add_argument("--score", type=float, default=0.3, help="boxes scoring at least this are localised (0.3)")
    p.add_argument("--recall", type=float, default=0.8, help="false positives down to this recall (0.8)")
    p.add_argument("--settings", nargs="+", default=["easy", "medium"], choices=["easy", "medium", "hard"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    gt = load_wider_ground_truth()
    sources = {Path(d).absolute().parent.name if Path(d).name == "predictions" else Path(d).name: Path(d)
               for d in args.dsfd}
    for name in PEERS:
        folder = fixtures_root() / "wider_eval_predictions" / name
        if folder.is_dir():
            sources[name] = folder
    result: Dict[str, Any] = {"benchmark": "box_errors", "date": datetime.date.today().isoformat(), "photos": len(gt), "score": args.score,
                              "recall": args.recall, "detectors": {}}
    for name, folder in sources.items():
        preds = _by_image(read_prediction_folder(folder)[0])
        loc = localisation(preds, gt, args.score)
        fps = {s: false_positives(preds, gt, s, args.recall) for s in args.settings}
        result["detectors"][name] = {"predictions": str(folder), "localisation": loc, "false_positives": fps}
        print(f"\n{name}: boxes scoring >= {args.score} paired with the face they overlap most")
        print(f"{'face px':>10s}{'boxes':>7s}{'IoU med':>9s}{'<0.5':>7s}{'log w':>8s}{'log h':>8s}{'dx/w':>7s}{'dy/h':>7s}")
        for r in loc:
            lo, hi = r["face_px"]
            label = f"{lo}-{hi}" if hi is not None else f">={lo}"
            print(f"{label:>10s}{r['boxes']:7d}{r['median_iou']:9.2f}{r['iou_below_0.5']:7.2f}"
                  f"{r['log_w_ratio']:+8.2f}{r['log_h_ratio']:+8.2f}{r['dx_of_width']:+7.2f}{r['dy_of_height']:+7.2f}")
        for s, f in fps.items():
            if not f["reached"]:
                print(f"  {s}: recall {args.recall} not reached (max {f['max_recall']})")
                continue
            print(f"  {s} at recall {args.recall} (score {f['score']:.3f}): right {f['right']}, ignored {f['ignored']}, "
                  f"dup {f['dup']}, loc {f['loc']}, bg {f['bg']}; precision {f['precision']:.3f}; "
                  f"false positives by box side {f['fp_box_px']}")
    write_result(result, args.out, "box_errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
