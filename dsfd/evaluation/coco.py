"""COCO metrics for faces on your own data: AP, AP50, AR through pycocotools.

What ``dsfd eval`` runs on COCO and YOLO ground truth. Both are turned into
one COCO ground-truth dictionary (:func:`coco_ground_truth`: category 1
``face``, boxes ``[x, y, w, h]`` in pixels, ``area`` = box area, ignore
regions as ``iscrowd: 1``), the detections into COCO results (``image_id``,
``category_id`` 1, ``bbox``, ``score``), and both go to
``pycocotools.cocoeval.COCOeval`` with ``iouType="bbox"`` and its default
parameters (IoU 0.50:0.05:0.95, 101 recall points, at most 1 / 10 / 100
detections per image). pycocotools decides every number: a detection that
overlaps a crowd region is neither a true nor a false positive, and the
twelve values of ``COCOeval.stats`` are reported under their usual names
(:data:`STAT_NAMES`).

Needs ``pycocotools`` (``pip install pycocotools``); nothing here needs torch.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["STAT_NAMES", "CocoResult", "coco_ground_truth", "coco_detections", "evaluate_coco"]

PathLike = Union[str, "os.PathLike[str]"]

#: Names of ``COCOeval.stats`` in order (``AP`` is AP at IoU 0.50:0.95, ``AR100`` the AR of the summary).
STAT_NAMES: Tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)

FACE_CATEGORY = {"id": 1, "name": "face", "supercategory": "person"}


def _xywh(boxes: np.ndarray) -> List[List[float]]:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]


def coco_ground_truth(images: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """A COCO ground-truth dictionary of faces.

    ``images``: one mapping per image with ``id``, ``file_name``, ``width``,
    ``height``, ``faces`` (corner pixels ``[K, 4]``) and optionally
    ``ignore`` (``[M, 4]``, written as ``iscrowd: 1``).
    """
    out_images, anns = [], []
    for im in images:
        out_images.append({"id": im["id"], "file_name": str(im["file_name"]),
                           "width": int(im["width"]), "height": int(im["height"])})
        for crowd, key in ((0, "faces"), (1, "ignore")):
            for bbox in _xywh(im.get(key, np.zeros((0, 4)))):
                anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": 1, "iscrowd": crowd,
                             "bbox": bbox, "area": bbox[2] * bbox[3]})
    return {"info": {"description": "dsfd eval ground truth"}, "images": out_images, "annotations": anns,
            "categories": [dict(FACE_CATEGORY)]}


def coco_detections(image_id: Any, detections: np.ndarray) -> List[Dict[str, Any]]:
    """COCO results of one image from ``[K, 5]`` ``x1, y1, x2, y2, score`` pixel detections."""
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    return [{"image_id": image_id, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            for x1, y1, x2, y2, s in d.tolist()]


@dataclass
class CocoResult:
    """pycocotools' numbers for one set of detections.

    Attributes:
        stats: :data:`STAT_NAMES` -> value (``-1`` where pycocotools has no
            ground truth for it, e.g. no large faces).
        pr_curves: ``label -> (precision[101], recall[101])`` at IoU 0.50,
            0.75 and averaged over 0.50:0.95 (all sizes, 100 detections);
            precision NaN where undefined.
        summary: pycocotools' own printed summary (12 lines).
        num_images, num_faces, num_ignore, num_detections: what was scored.
    """

    stats: Dict[str, float]
    pr_curves: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    summary: str = ""
    num_images: int = 0
    num_faces: int = 0
    num_ignore: int = 0
    num_detections: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.stats.items()}
        d.update(num_images=self.num_images, num_faces=self.num_faces, num_ignore=self.num_ignore,
                 num_detections=self.num_detections, evaluator="pycocotools COCOeval (bbox)")
        d.update(self.extra)
        return d

    def to_json(self, path: Optional[PathLike] = None, indent: int = 2) -> str:
        text = json.dumps(self.as_dict(), indent=indent)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> str:
        """AP, AP50, AP75 and AR100 with what was scored."""
        rows = [f"{'metric':<8} {'value':>8}", "-" * 17]
        for k in ("AP", "AP50", "AP75", "AR100"):
            rows.append(f"{k:<8} {self.stats[k]:>8.4f}")
        rows.append(f"({self.num_images} images, {self.num_faces} faces, {self.num_ignore} ignore regions, "
                    f"{self.num_detections} detections)")
        return "\n".join(rows)


def evaluate_coco(ground_truth: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> CocoResult:
    """Score COCO results against a COCO ground-truth dictionary with pycocotools (bbox, defaults).

    Raises ``ImportError`` with the install command when pycocotools is missing.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - CI has it
        raise ImportError(f"COCO metrics need pycocotools (pip install pycocotools): {e}") from e
    gt = COCO()
    gt.dataset = json.loads(json.dumps(ground_truth))  # a private copy, JSON types only
    num_faces = sum(1 for a in gt.dataset["annotations"] if not a.get("iscrowd"))
    num_ignore = len(gt.dataset["annotations"]) - num_faces
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt.createIndex()
    dets = [dict(d) for d in detections]
    if not dets:  # pycocotools cannot load an empty result list: nothing detected scores 0
        stats = {k: (0.0 if num_faces else -1.0) for k in STAT_NAMES}
        return CocoResult(stats, {}, "no detections", len(gt.dataset["images"]), num_faces, num_ignore, 0)
    with contextlib.redirect_stdout(out):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    prec = np.asarray(ev.eval["precision"], dtype=np.float64)[:, :, 0, 0, -1]  # [T, R]: face, all areas, 100 dets
    prec = np.where(prec < 0, np.nan, prec)
    rec = np.asarray(ev.params.recThrs, dtype=np.float64)
    iou = np.asarray(ev.params.iouThrs)
    curves = {
        "IoU 0.50": (prec[int(np.argmin(np.abs(iou - 0.5)))], rec),
        "IoU 0.75": (prec[int(np.argmin(np.abs(iou - 0.75)))], rec),
        "IoU 0.50:0.95": (np.nanmean(prec, 0) if np.isfinite(prec).any() else prec[0], rec),
    }
    return CocoResult(stats, curves, summary.getvalue(), len(gt.dataset["images"]), num_faces, num_ignore, len(dets))
