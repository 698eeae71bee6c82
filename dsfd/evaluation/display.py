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
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..io.wider_predictions import image_key
from .wider import SETTINGS, WiderGroundTruth, _as_prediction_array, _iou_plus_one

__all__ = ["DrawnCurve", "drawn_precision_recall", "choose_display_threshold", "HidingCurve", "hiding_curve",
           "choose_hide_threshold", "wider_hiding_ground_truth", "HIDE_MAX_COST", "HIDING_BANDS"]


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


# --------------------------------------------------------------------------- hiding faces (--anonymize)

#: Face size bands (pixels, the shorter side of the ground-truth box) of the hiding scores; ``lo <= size < hi``.
HIDING_BANDS: Dict[str, Tuple[float, float]] = {"10-20": (10.0, 20.0), "20-40": (20.0, 40.0),
                                                ">=40": (40.0, float("inf")), ">=10": (10.0, float("inf"))}
#: A face counts as hidden when at least this share of its box is under the union of the grown boxes.
HIDDEN_COVER: float = 0.8
#: The bound on the area cost that chooses a model's hiding threshold (:func:`choose_hide_threshold`).
HIDE_MAX_COST: float = 0.10


@dataclass
class HidingCurve:
    """How much an anonymiser hides at each raw score threshold (ascending ``thresholds``).

    ``hidden[band][k]``: share of the valid ground-truth faces of that size
    band with at least ``cover`` of their box under the union of the boxes
    scoring ``>= thresholds[k]``, each grown by ``margin`` (what
    :func:`dsfd.inference.anonymize.anonymize` hides); ``cost[k]``: share of
    the photos' pixels outside every ground-truth face box (invalid-flagged
    faces included) that is hidden, pooled over the photos.
    """

    thresholds: np.ndarray
    hidden: Dict[str, np.ndarray]
    faces: Dict[str, int]
    cost: np.ndarray
    margin: float
    cover: float
    photos: int

    def at(self, threshold: float) -> Dict[str, Any]:
        """The scores of the boxes scoring ``>= threshold`` (the nearest grid threshold at or above it)."""
        k = min(int(np.searchsorted(self.thresholds, threshold - 1e-9, side="left")), len(self.thresholds) - 1)
        return {"threshold": float(threshold), "hidden": {b: float(v[k]) for b, v in self.hidden.items()},
                "faces": dict(self.faces), "cost": float(self.cost[k]), "margin": self.margin, "cover": self.cover,
                "photos": self.photos}


def face_hide_scores(score_map: np.ndarray, faces_xyxy: np.ndarray, cover: float = HIDDEN_COVER) -> np.ndarray:
    """Per face box: the highest threshold at which ``cover`` of its pixels are hidden (-1: never).

    ``score_map[y, x]`` is the highest score of the grown boxes covering the
    pixel (-1 where none does); a face is hidden at ``t`` iff its value is ``>= t``.
    """
    H, W = score_map.shape
    out = np.full(len(faces_xyxy), -1.0)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(faces_xyxy, np.float64).reshape(-1, 4)):
        xa, ya = int(np.clip(np.floor(x1), 0, W)), int(np.clip(np.floor(y1), 0, H))
        xb, yb = int(np.clip(np.ceil(x2), 0, W)), int(np.clip(np.ceil(y2), 0, H))
        v = score_map[ya:yb, xa:xb].ravel()
        if v.size == 0:
            continue
        need = int(np.ceil(cover * v.size - 1e-9))
        out[i] = np.partition(v, v.size - need)[v.size - need] if need > 0 else 1.0
    return out


def hide_score_map(boxes_xyxy_score: np.ndarray, width: int, height: int, margin: float) -> np.ndarray:
    """``[H, W]`` float32: the highest score of the boxes (grown by ``margin`` as the anonymiser does) over each pixel."""
    from ..inference.anonymize import grown_boxes

    d = np.asarray(boxes_xyxy_score, np.float64).reshape(-1, 5)
    m = np.full((height, width), -1.0, np.float32)
    order = np.argsort(d[:, 4], kind="stable")  # low to high: the higher scores win
    for (x1, y1, x2, y2), s in zip(grown_boxes(d[order], width, height, margin), d[order, 4]):
        if x2 > x1 and y2 > y1:
            region = m[y1:y2, x1:x2]
            np.maximum(region, np.float32(s), out=region)
    return m


def hiding_curve(
    predictions: Mapping[str, np.ndarray],
    photos: Mapping[str, Tuple[np.ndarray, np.ndarray, Tuple[int, int]]],
    margin: Optional[float] = None,
    cover: float = HIDDEN_COVER,
    thresholds: Optional[np.ndarray] = None,
) -> HidingCurve:
    """Faces hidden by size band and the area cost at each threshold.

    Args:
        predictions: image name -> ``[K, 5]`` ``x, y, w, h, score`` (WIDER
            prediction format, as :func:`dsfd.io.read_prediction_folder` reads;
            keys may carry an event prefix or ``.jpg``). A photo without
            predictions hides nothing.
        photos: image key -> ``(valid faces [N, 4] x1 y1 x2 y2, every face
            box [M, 4] x1 y1 x2 y2 (invalid-flagged too), (height, width))``
            (:func:`wider_hiding_ground_truth`).
        margin: box growth of the anonymiser (default its ``DEFAULT_MARGIN``).
        thresholds: raw score thresholds (default 0.01, 0.02, ..., 1.00).
    """
    from ..inference.anonymize import DEFAULT_MARGIN

    margin = DEFAULT_MARGIN if margin is None else float(margin)
    thr = np.round(np.arange(1, 101) / 100, 2) if thresholds is None else np.sort(np.asarray(thresholds, float))
    preds = {image_key(k): _as_prediction_array(v) for k, v in predictions.items()}
    face_scores: List[np.ndarray] = []
    face_sizes: List[np.ndarray] = []
    hidden_outside = np.zeros(len(thr), np.float64)
    outside_total = 0.0
    for key, (valid, every, (H, W)) in photos.items():
        p = preds.get(image_key(key), np.zeros((0, 5)))
        xyxy = np.concatenate([p[:, :2], p[:, :2] + p[:, 2:4], p[:, 4:5]], 1) if len(p) else np.zeros((0, 5))
        smap = hide_score_map(xyxy, W, H, margin)
        valid = np.asarray(valid, np.float64).reshape(-1, 4)
        face_scores.append(face_hide_scores(smap, valid, cover))
        face_sizes.append(np.minimum(valid[:, 2] - valid[:, 0], valid[:, 3] - valid[:, 1]))
        inside = np.zeros((H, W), bool)
        for x1, y1, x2, y2 in np.asarray(every, np.float64).reshape(-1, 4):
            inside[int(max(0, np.floor(y1))):int(max(0, np.ceil(y2))), int(max(0, np.floor(x1))):int(max(0, np.ceil(x2)))] = True
        vals = np.sort(smap[~inside])
        outside_total += vals.size
        hidden_outside += vals.size - np.searchsorted(vals, thr - 1e-7, side="left")
    scores = np.concatenate(face_scores) if face_scores else np.zeros(0)
    sizes = np.concatenate(face_sizes) if face_sizes else np.zeros(0)
    hidden, faces = {}, {}
    for band, (lo, hi) in HIDING_BANDS.items():
        s = np.sort(scores[(sizes >= lo) & (sizes < hi)])
        faces[band] = int(s.size)
        n_hidden = s.size - np.searchsorted(s, thr - 1e-7, side="left")
        hidden[band] = n_hidden / s.size if s.size else np.zeros(len(thr))
    cost = hidden_outside / outside_total if outside_total else np.zeros(len(thr))
    return HidingCurve(thr, hidden, faces, cost, margin, cover, len(photos))


def choose_hide_threshold(curve: HidingCurve, max_cost: float = HIDE_MAX_COST) -> float:
    """The hiding threshold of a model: the lowest threshold whose area cost is ``<= max_cost``.

    The lowest such threshold hides the most faces the cost allows (a face
    left visible is a leak; a blurred patch of wall costs little). If no
    threshold meets the bound, the highest threshold of the curve.
    """
    ok = np.flatnonzero(curve.cost <= max_cost)
    return float(curve.thresholds[ok[0]] if len(ok) else curve.thresholds[-1])


def wider_hiding_ground_truth(root: Optional[str] = None, split: str = "val"
                              ) -> Dict[str, Tuple[np.ndarray, np.ndarray, Tuple[int, int]]]:
    """The faces of a WIDER-layout folder for :func:`hiding_curve`: image path -> (valid, every box, (H, W)).

    Valid faces are those not flagged invalid (with a positive size); every
    box includes the invalid-flagged ones (hiding them costs nothing).
    Photo sizes are read from the image headers.
    """
    import os

    from ..data.wider import parse_wider_annotations
    from ..data_paths import wider_root

    base = wider_root() if root is None else root
    anns, _ = parse_wider_annotations(os.path.join(base, "wider_face_split", f"wider_face_{split}_bbx_gt.txt"))
    out = {}
    for a in anns:
        path = os.path.join(base, f"WIDER_{split}", "images", a.path)
        every = np.concatenate([np.asarray(a.boxes, np.float64).reshape(-1, 4),
                                np.asarray(a.ignore, np.float64).reshape(-1, 4)])
        out[a.path] = (np.asarray(a.boxes, np.float64).reshape(-1, 4), every, _image_size(path))
    return out


def _image_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of an image file (from its header when Pillow is there)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except ImportError:
        import cv2

        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot read {path}")
        return int(img.shape[0]), int(img.shape[1])
