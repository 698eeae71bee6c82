"""How good are the boxes a detector *draws*: precision and recall at a raw score threshold.

AP scores a ranking; a user sees the boxes above one threshold. This module
measures those boxes against the WIDER FACE ground truth of one setting
(``medium`` by default) and chooses a model's drawing threshold from that
curve.

Matching is the official protocol's (:mod:`dsfd.evaluation.wider`), on
**raw** scores (no min-max normalisation, since the threshold is applied to
raw scores): each box takes the ground-truth face of highest IoU (``+1``
pixel convention); at IoU ``>= 0.5`` a face outside the setting's list makes
the box *ignored* (it counts neither way), the first box on a listed face is
a true positive and any further one a false positive (a duplicate); a box
overlapping no face at 0.5 is a false positive. Images without any
ground-truth face are skipped, as the protocol does.

    >>> curve = drawn_precision_recall(predictions, gt)          # doctest: +SKIP
    >>> t = choose_display_threshold(curve)                      # doctest: +SKIP
    >>> curve.at(t)                                              # doctest: +SKIP
    {'threshold': 0.62, 'precision': 0.87, 'recall': 0.74, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from ..io.wider_predictions import image_key
from .wider import SETTINGS, WiderGroundTruth, _as_prediction_array, _iou_plus_one

__all__ = ["DrawnCurve", "drawn_precision_recall", "choose_display_threshold"]


@dataclass
class DrawnCurve:
    """Precision / recall of the boxes scoring ``>= thresholds[k]`` (raw scores, ascending thresholds)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    true_positives: np.ndarray
    counted_boxes: np.ndarray  # boxes that count (not ignored) at each threshold
    num_faces: int
    setting: str

    def at(self, threshold: float) -> Dict[str, float]:
        """Precision, recall and counts of the boxes scoring ``>= threshold``."""
        k = int(np.searchsorted(self.thresholds, threshold, side="left"))
        k = min(k, len(self.thresholds) - 1)
        return {"threshold": float(threshold), "precision": float(self.precision[k]), "recall": float(self.recall[k]),
                "true_positives": int(self.true_positives[k]), "counted_boxes": int(self.counted_boxes[k]),
                "faces": int(self.num_faces), "setting": self.setting}


def drawn_precision_recall(
    predictions: Mapping[str, np.ndarray],
    gt: WiderGroundTruth,
    setting: str = "medium",
    iou_threshold: float = 0.5,
    thresholds: Optional[np.ndarray] = None,
) -> DrawnCurve:
    """Precision and recall of the boxes at or above each raw score threshold.

    Args:
        predictions: image name -> ``[K, 5]`` ``x, y, w, h, score`` (as for
            :func:`~dsfd.evaluation.evaluate_wider`; keys may carry an event
            prefix or ``.jpg``).
        gt: the ground truth (:func:`~dsfd.evaluation.load_wider_ground_truth`).
        setting: ``"easy"``, ``"medium"`` or ``"hard"``: whose faces count.
        thresholds: raw score thresholds (default 0.00, 0.01, ..., 1.00).
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    preds = {image_key(k): _as_prediction_array(v) for k, v in predictions.items()}
    thr = np.round(np.arange(0, 101) / 100, 2) if thresholds is None else np.sort(np.asarray(thresholds, float))
    num_faces = int(sum(len(k) for k in gt.keep[setting]))
    tp_scores, counted_scores = [], []
    for i, name in enumerate(gt.names):
        p, g = preds.get(name), gt.boxes[i]
        if p is None or len(p) == 0 or len(g) == 0:
            continue
        order = np.argsort(-p[:, 4], kind="stable")
        p = p[order]
        iou = _iou_plus_one(p[:, :4], g)
        best = iou.argmax(axis=1)
        hit = iou[np.arange(len(p)), best] >= iou_threshold
        listed = np.zeros(len(g), dtype=bool)
        listed[gt.keep[setting][i]] = True
        ignored = hit & ~listed[best]
        first = np.zeros(len(p), dtype=bool)
        hit_listed = np.flatnonzero(hit & listed[best])
        _, first_idx = np.unique(best[hit_listed], return_index=True)  # highest-scoring box on each face
        first[hit_listed[first_idx]] = True
        tp_scores.append(p[first, 4])
        counted_scores.append(p[~ignored, 4])
    tps = np.sort(np.concatenate(tp_scores)) if tp_scores else np.zeros(0)
    counted = np.sort(np.concatenate(counted_scores)) if counted_scores else np.zeros(0)
    n_tp = len(tps) - np.searchsorted(tps, thr, side="left")
    n_counted = len(counted) - np.searchsorted(counted, thr, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_counted > 0, n_tp / np.maximum(n_counted, 1), 1.0)
    recall = n_tp / num_faces if num_faces else np.zeros(len(thr))
    return DrawnCurve(thr, precision, recall, n_tp, n_counted, num_faces, setting)


def choose_display_threshold(curve: DrawnCurve, min_precision: Optional[float] = None) -> float:
    """The drawing threshold of a model: the highest F1 on ``curve`` (ties: the higher threshold).

    With ``min_precision``, the lowest threshold whose precision reaches it
    (the most faces at that precision) instead; if none does, the highest-F1
    threshold.
    """
    p, r, t = curve.precision, curve.recall, curve.thresholds
    if min_precision is not None:
        ok = np.flatnonzero(p >= min_precision)
        if len(ok):
            return float(t[ok[0]])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = np.flatnonzero(f1 == f1.max())
    return float(t[best[-1]])
