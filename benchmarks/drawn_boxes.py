"""The boxes people see: precision and recall of what each detector keeps at its drawing threshold.

AP scores a ranking; ``dsfd detect`` shows the boxes above one threshold
(the model's own, chosen from its PR curve and stored with its weights).
This scores those boxes against the WIDER FACE *medium* faces of the shared
val subset (IoU 0.5; a box on a face outside the medium list counts neither
way; :mod:`dsfd.evaluation.display`) for this package's model and for the
peers' real predictions in ``../shared/fixtures`` at their usual thresholds
(YuNet 0.5 as OpenCV's samples, RetinaFace 0.6 as its demo, MTCNN 0.9).

    python benchmarks/drawn_boxes.py --dsfd PRED_DIR [--dsfd-threshold T] [--out results.json]

``PRED_DIR`` is the WIDER prediction folder ``dsfd eval --weights ...``
writes (full size, one pass). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from common import write_result
from dsfd.data_paths import fixtures_root
from dsfd.evaluation import drawn_precision_recall, load_wider_ground_truth
from dsfd.io import read_prediction_folder

PEERS = {"yunet": 0.5, "retinaface_mnet": 0.6, "mtcnn": 0.9}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsfd", help="WIDER prediction folder of this package's model on the val subset")
    p.add_argument("--dsfd-threshold", type=float, default=None,
                   help="its drawing threshold (default: the packaged default model's display_score)")
    p.add_argument("--setting", default="medium", choices=["easy", "medium", "hard"])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    gt = load_wider_ground_truth()
    rows: Dict[str, Any] = {}
    if args.dsfd:
        t = args.dsfd_threshold
        if t is None:
            from dsfd.models import default_weights_path, load_weights

            t = float(getattr(load_weights(default_weights_path()), "display_score", 0.5))
        preds, _ = read_prediction_folder(args.dsfd)
        rows["dsfd"] = drawn_precision_recall(preds, gt, args.setting).at(t)
    for name, t in PEERS.items():
        folder = fixtures_root() / "wider_eval_predictions" / name
        if folder.is_dir():
            preds, _ = read_prediction_folder(folder)
            rows[name] = drawn_precision_recall(preds, gt, args.setting).at(t)
    print(f"boxes kept at each detector's drawing threshold vs the WIDER {args.setting} faces "
          f"of the val subset ({len(gt)} photos)")
    print(f"{'detector':18s}{'threshold':>10s}{'precision':>11s}{'recall':>9s}{'kept':>7s}{'faces':>7s}")
    for name, r in rows.items():
        print(f"{name:18s}{r['threshold']:10.2f}{r['precision']:11.3f}{r['recall']:9.3f}"
              f"{r['counted_boxes']:7d}{r['faces']:7d}")
    write_result({"benchmark": "drawn_boxes", "setting": args.setting, "photos": len(gt), "results": rows},
                 args.out, "drawn_boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
