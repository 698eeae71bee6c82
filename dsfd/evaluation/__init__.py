"""Evaluation: WIDER FACE (official easy/medium/hard AP) and FDDB (discrete/continuous ROC).

* :mod:`dsfd.evaluation.wider` - the official WIDER FACE protocol, vectorised
  (prediction files are read and written by :mod:`dsfd.io.wider_predictions`).
* :mod:`dsfd.evaluation.coco` - COCO AP / AP50 / AR through pycocotools,
  for faces in COCO or YOLO format (your own data).
* :mod:`dsfd.evaluation.fddb` - FDDB fold files, rasterised ellipse overlaps,
  bipartite matching, ROC.
* :mod:`dsfd.evaluation.display` - precision / recall of the boxes drawn at a
  score threshold, and a model's drawing threshold.
* :mod:`dsfd.evaluation.plots` - PR / ROC PNGs.
* :mod:`dsfd.evaluation.cli` - the ``dsfd eval`` subcommand.

Nothing here needs the compiled extension or torch.
"""

from .coco import STAT_NAMES, CocoResult, coco_detections, coco_ground_truth, evaluate_coco
from .fddb import (
    FDDBResult,
    box_to_ellipse,
    evaluate_fddb,
    fddb_overlaps,
    read_fddb_detections,
    read_fddb_folds,
    read_fddb_image_list,
    write_fddb_detections,
)
from .display import DrawnCurve, choose_display_threshold, drawn_precision_recall
from .plots import plot_coco_pr, plot_fddb_roc, plot_wider_pr
from .wider import (
    SETTINGS,
    WiderGroundTruth,
    WiderResult,
    evaluate_wider,
    load_wider_ground_truth,
    save_wider_ground_truth,
    voc_ap,
)

__all__ = [
    "DrawnCurve",
    "drawn_precision_recall",
    "choose_display_threshold",
    "SETTINGS",
    "WiderGroundTruth",
    "WiderResult",
    "evaluate_wider",
    "load_wider_ground_truth",
    "save_wider_ground_truth",
    "voc_ap",
    "FDDBResult",
    "evaluate_fddb",
    "fddb_overlaps",
    "box_to_ellipse",
    "read_fddb_folds",
    "read_fddb_image_list",
    "read_fddb_detections",
    "write_fddb_detections",
    "plot_wider_pr",
    "plot_coco_pr",
    "CocoResult",
    "STAT_NAMES",
    "coco_ground_truth",
    "coco_detections",
    "evaluate_coco",
    "plot_fddb_roc",
]
