"""WIDER FACE evaluation with the official protocol (easy / medium / hard AP).

This reimplements, vectorised with numpy, the protocol of the official MATLAB
tool (``eval_tools/wider_eval.m``) and of its widely used Python port
(``evaluation.py`` of *WiderFace-Evaluation*, used e.g. by RetinaFace):

1. **Score normalisation** (``norm_score``): every score of the prediction set
   is mapped to ``(s - lo) / (hi - lo)`` with ``lo = min(1, min s)`` and
   ``hi = max(0, max s)`` (the official tool starts its running min/max at 1
   and 0, so this is plain min-max normalisation for scores in [0, 1]).
2. **Per-image matching** (``image_eval``): predictions are visited in
   descending score order; each one takes the ground-truth box of highest IoU
   (``+1`` pixel convention: a box ``x, y, w, h`` spans ``x .. x + w``
   inclusive, area ``(w + 1) * (h + 1)``).  If that IoU is ``>= 0.5``: a box
   outside the setting's keep list marks the prediction *ignored* (neither
   true nor false positive); a kept box not yet recalled becomes recalled (a
   true positive); a kept box already recalled leaves the prediction a false
   positive (duplicate).  The best box is chosen among all boxes, recalled or
   not, exactly as the official tool does.
3. **PR accumulation** (``img_pr_info`` / ``dataset_pr_info``): for the 1000
   thresholds ``t_k = 1 - k / 1000`` (k = 1..1000) the number of
   non-ignored predictions and of recalled kept faces among predictions with
   normalised score ``>= t_k`` are summed over the images; precision is their
   ratio, recall is the recalled count over the number of kept faces of the
   setting (``count_face``, the total length of the keep lists, including
   images without predictions).
4. **AP** (``voc_ap``): area under the precision envelope of that curve.

Because predictions are visited in score order, the per-threshold counts of
step 3 are counts over the whole data set of predictions with score
``>= t_k`` and a flag (non-ignored / first hit of a kept face).  They are
computed with one sort and ``searchsorted`` instead of the port's
1000-iteration loop per image; the greedy matching itself is vectorised too
(each prediction's best box does not depend on the others; only "first hit
of a face" does, which is a ``np.unique(..., return_index=True)``).  The only
Python loop left is over images (one IoU matrix each).

Deliberate differences from the Python port (each one is tested):

* **Equal scores.**  When every score is the same, ``hi - lo`` is 0 and the
  port divides by zero (NaN scores: no prediction passes any threshold, AP
  0).  Here every normalised score becomes 1.0: all predictions count at
  every threshold.
* **Missing prediction files** (and missing event folders) make the port
  raise ``KeyError``.  Here they count as images without detections (their
  faces still count in recall), are listed in :attr:`WiderResult.missing`
  and produce one warning.
* **Prediction order.**  The port relies on each file being sorted by
  descending score (it takes the *last* line above a threshold); the MATLAB
  tool sorts when reading.  Here predictions are sorted (stable, so equal
  scores keep file order), as the MATLAB tool does; on sorted files (all
  real detectors' outputs, including the fixtures) the results are the same.
* **Count line.**  The port ignores the count on line 2 and reads every line
  after it (as here); here a count that disagrees with the number of box
  lines, unreadable lines, a line 1 naming another image and files that are
  not text are reported in :attr:`WiderResult.warnings` as
  ``<file>:<line>: <problem>`` (:mod:`dsfd.io.wider_predictions`); such a
  file still counts as that image's predictions, never as missing.
* **No positives** in a setting (empty keep lists): the port divides by zero;
  here recall is 0 and the AP is NaN (``null`` in JSON).

Kept as in the port/MATLAB tool (they define the published numbers):
predictions on an image without any ground-truth box are skipped (they are
not false positives); the normalisation range includes every prediction given,
also those of images that are not in the ground truth; IoU is computed in
float64.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ..io.wider_predictions import image_key, read_prediction_folder

__all__ = [
    "SETTINGS",
    "NUM_THRESHOLDS",
    "WiderGroundTruth",
    "WiderResult",
    "load_wider_ground_truth",
    "save_wider_ground_truth",
    "normalize_scores",
    "voc_ap",
    "evaluate_wider",
]

SETTINGS: Tuple[str, str, str] = ("easy", "medium", "hard")
NUM_THRESHOLDS = 1000

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------


@dataclass
class WiderGroundTruth:
    """Ground truth of an evaluation split, in the order of the ``.mat`` files.

    ``boxes[i]`` is a float64 ``[N_i, 4]`` array of ``x, y, w, h`` boxes of
    image ``names[i]`` (event ``events[i]``); ``keep[setting][i]`` holds the
    0-based indices into ``boxes[i]`` of the faces that count in ``setting``
    (the ``.mat`` files store them 1-based).
    """

    events: List[str]
    names: List[str]
    boxes: List[np.ndarray]
    keep: Dict[str, List[np.ndarray]]

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.events) != n or len(self.boxes) != n:
            raise ValueError("events, names and boxes must have one entry per image")
        self.boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in self.boxes]
        for s in SETTINGS:
            if s not in self.keep:
                raise ValueError(f"keep lists for setting {s!r} are missing")
            if len(self.keep[s]) != n:
                raise ValueError(f"keep[{s!r}] must have one entry per image")
            self.keep[s] = [np.asarray(k, dtype=np.int64).reshape(-1) for k in self.keep[s]]
            for i, (k, b) in enumerate(zip(self.keep[s], self.boxes)):
                if k.size and (k.min() < 0 or k.max() >= len(b)):
                    raise ValueError(f"keep[{s!r}] of image {self.names[i]} indexes outside its boxes")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_faces(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    def as_predictions(self, score: float = 1.0) -> Dict[str, np.ndarray]:
        """The ground truth as a prediction set (``x, y, w, h, score``): AP 1.0 on every setting."""
        out = {}
        for name, b in zip(self.names, self.boxes):
            out[name] = np.concatenate([b, np.full((len(b), 1), float(score))], axis=1)
        return out


def _mat_str(x) -> str:
    """A MATLAB string as loaded by scipy (nested 1-element arrays)."""
    while isinstance(x, np.ndarray):
        if x.size == 0:
            return ""
        x = x.flat[0]
    return str(x)


def load_wider_ground_truth(gt_dir: Optional[PathLike] = None) -> WiderGroundTruth:
    """Read the official ground truth (``wider_face_val.mat`` + ``wider_{easy,medium,hard}_val.mat``).

    ``gt_dir`` defaults to ``wider_root() / "ground_truth"``.
    """
    from scipy.io import loadmat

    if gt_dir is None:
        from ..data_paths import wider_root

        gt_dir = wider_root() / "ground_truth"
    gt_dir = Path(gt_dir)
    face_path = gt_dir / "wider_face_val.mat"
    if not face_path.is_file():
        raise FileNotFoundError(f"WIDER ground truth not found: {face_path}")
    face = loadmat(str(face_path))
    keep_mats = {}
    for s in SETTINGS:
        p = gt_dir / f"wider_{s}_val.mat"
        if not p.is_file():
            raise FileNotFoundError(f"WIDER ground truth not found: {p}")
        keep_mats[s] = loadmat(str(p))["gt_list"]

    event_list = face["event_list"]
    file_list = face["file_list"]
    bbx_list = face["face_bbx_list"]
    events: List[str] = []
    names: List[str] = []
    boxes: List[np.ndarray] = []
    keep: Dict[str, List[np.ndarray]] = {s: [] for s in SETTINGS}
    for i in range(len(event_list)):
        event = _mat_str(event_list[i][0])
        files = file_list[i][0]
        bbx = bbx_list[i][0]
        for j in range(len(files)):
            events.append(event)
            names.append(_mat_str(files[j][0]))
            b = np.asarray(bbx[j][0], dtype=np.float64)
            boxes.append(b.reshape(-1, 4) if b.size else np.zeros((0, 4)))
            for s in SETTINGS:
                k = np.asarray(keep_mats[s][i][0][j][0]).astype(np.int64).reshape(-1)
                keep[s].append(k - 1)
    return WiderGroundTruth(events=events, names=names, boxes=boxes, keep=keep)


def save_wider_ground_truth(gt: WiderGroundTruth, out_dir: PathLike) -> Path:
    """Write ``gt`` as the four official ``.mat`` files (same nesting as the release).

    Images must be grouped by event (consecutive); useful to build small test
    sets that :func:`load_wider_ground_truth` (and the official tools) read.
    """
    from scipy.io import savemat

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: List[Tuple[str, List[int]]] = []
    for idx, ev in enumerate(gt.events):
        if groups and groups[-1][0] == ev:
            groups[-1][1].append(idx)
        elif any(g[0] == ev for g in groups):
            raise ValueError(f"images of event {ev!r} are not consecutive")
        else:
            groups.append((ev, [idx]))

    def obj(n):
        return np.empty((n, 1), dtype=object)

    event_list, file_list, bbx_list = obj(len(groups)), obj(len(groups)), obj(len(groups))
    keep_lists = {s: obj(len(groups)) for s in SETTINGS}
    for gi, (ev, idxs) in enumerate(groups):
        event_list[gi, 0] = ev
        files, bbx = obj(len(idxs)), obj(len(idxs))
        kl = {s: obj(len(idxs)) for s in SETTINGS}
        for j, idx in enumerate(idxs):
            files[j, 0] = gt.names[idx]
            b = gt.boxes[idx]
            bbx[j, 0] = b.astype(np.int32) if np.array_equal(b, np.round(b)) else b  # the release stores int32
            for s in SETTINGS:
                kl[s][j, 0] = (gt.keep[s][idx] + 1).astype(np.float64).reshape(-1, 1)
        file_list[gi, 0], bbx_list[gi, 0] = files, bbx
        for s in SETTINGS:
            keep_lists[s][gi, 0] = kl[s]
    base = {"event_list": event_list, "file_list": file_list, "face_bbx_list": bbx_list}
    savemat(str(out_dir / "wider_face_val.mat"), base)
    for s in SETTINGS:
        savemat(str(out_dir / f"wider_{s}_val.mat"), dict(base, gt_list=keep_lists[s]))
    return out_dir


# --------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------


def normalize_scores(scores: np.ndarray) -> Tuple[float, float]:
    """The ``(lo, hi)`` of the official normalisation ``(s - lo) / (hi - lo)``.

    ``lo = min(1, min s)``, ``hi = max(0, max s)`` (the official running
    min/max start at 1 and 0).  With no scores: ``(1.0, 0.0)``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return 1.0, 0.0
    return min(1.0, float(s.min())), max(0.0, float(s.max()))


def _iou_plus_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of ``x, y, w, h`` boxes with the official ``+1`` convention."""
    ax1, ay1 = a[:, 0], a[:, 1]
    ax2, ay2 = ax1 + a[:, 2], ay1 + a[:, 3]
    bx1, by1 = b[:, 0], b[:, 1]
    bx2, by2 = bx1 + b[:, 2], by1 + b[:, 3]
    iw = np.minimum(ax2[:, None], bx2[None, :]) - np.maximum(ax1[:, None], bx1[None, :]) + 1.0
    ih = np.minimum(ay2[:, None], by2[None, :]) - np.maximum(ay1[:, None], by1[None, :]) + 1.0
    hit = (iw > 0) & (ih > 0)
    inter = np.where(hit, iw * ih, 0.0)
    area_a = (ax2 - ax1 + 1.0) * (ay2 - ay1 + 1.0)
    area_b = (bx2 - bx1 + 1.0) * (by2 - by1 + 1.0)
    union = area_a[:, None] + area_b[None, :] - inter
    ok = hit & (union > 0)
    return np.divide(inter, union, out=np.zeros_like(inter), where=ok)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (VOC 2010+ style, as the WIDER tools).

    Undefined precisions (NaN, thresholds with no prediction) only occur
    where recall is still 0 and do not change the area; they are taken as 0.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.nan_to_num(np.asarray(precision, dtype=np.float64), nan=0.0), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold, how many of ``sorted_values`` (ascending) are ``>=`` it."""
    return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="left")


@dataclass
class WiderResult:
    """Outcome of :func:`evaluate_wider`."""

    ap: Dict[str, float]
    pr_curves: Dict[str, Tuple[np.ndarray, np.ndarray]]  # setting -> (precision, recall), 1000 points
    thresholds: np.ndarray  # 1 - k/1000, k = 1..1000 (descending)
    missing: List[str] = field(default_factory=list)  # "<event>/<image>" without predictions
    warnings: List[str] = field(default_factory=list)
    num_images: int = 0
    num_predictions: int = 0
    num_faces: Dict[str, int] = field(default_factory=dict)  # positives per setting
    iou_threshold: float = 0.5

    def as_dict(self) -> dict:
        def clean(v: float):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        return {
            "ap": {s: clean(self.ap[s]) for s in SETTINGS},
            "iou_threshold": self.iou_threshold,
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "num_faces": dict(self.num_faces),
            "num_missing": len(self.missing),
            "missing": list(self.missing),
            "warnings": list(self.warnings),
        }

    def to_json(self, path: Optional[PathLike] = None, indent: int = 2) -> str:
        """The APs and bookkeeping as JSON (NaN as ``null``); also written to ``path`` if given."""
        text = json.dumps(self.as_dict(), indent=indent)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> str:
        """A small text table of the three APs."""
        head = f"{'setting':<8} {'AP':>8} {'faces':>7}"
        rows = [head, "-" * len(head)]
        for s in SETTINGS:
            ap = self.ap[s]
            ap_s = "nan" if ap is None or math.isnan(ap) else f"{ap:.4f}"
            rows.append(f"{s:<8} {ap_s:>8} {self.num_faces.get(s, 0):>7d}")
        if self.missing:
            rows.append(f"({len(self.missing)} image(s) without predictions)")
        return "\n".join(rows)


def _as_prediction_array(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.size == 0:
        return np.zeros((0, 5))
    if a.ndim != 2 or a.shape[1] < 5:
        raise ValueError(f"predictions must be [K, 5] arrays of x, y, w, h, score, got shape {a.shape}")
    return a[:, :5]


def evaluate_wider(
    predictions: Union[PathLike, Mapping[str, np.ndarray]],
    gt_dir: Union[None, PathLike, WiderGroundTruth] = None,
    iou_threshold: float = 0.5,
    *,
    progress: bool = False,
) -> WiderResult:
    """Easy / medium / hard AP of a prediction set with the official WIDER FACE protocol.

    ``predictions``: a prediction folder in the official format (see
    :func:`dsfd.io.read_prediction_folder`) or a mapping ``image name -> [K, 5]``
    array of ``x, y, w, h, score`` (keys may carry an event prefix or a
    ``.jpg`` suffix).  ``gt_dir``: folder of the official ``.mat`` files
    (default ``wider_root() / "ground_truth"``) or a loaded
    :class:`WiderGroundTruth`.  See the module docstring for the protocol
    and the deliberate differences from the Python port.
    """
    gt = gt_dir if isinstance(gt_dir, WiderGroundTruth) else load_wider_ground_truth(gt_dir)
    problems: List[str] = []
    if isinstance(predictions, (str, os.PathLike)):
        preds, problems = read_prediction_folder(predictions, progress)
    else:
        preds = {}
        for k, v in predictions.items():
            preds[image_key(k)] = _as_prediction_array(v)

    missing = [f"{ev}/{nm}" for ev, nm in zip(gt.events, gt.names) if nm not in preds]
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(gt)} images have no predictions (counted as no detections); "
            f"first: {missing[0]}",
            stacklevel=2,
        )
    if problems:
        warnings.warn(f"{len(problems)} problem(s) in the predictions; first: {problems[0]}", stacklevel=2)

    # 1. score normalisation over every prediction given
    arrays = [v for v in preds.values() if len(v)]
    all_scores = np.concatenate([v[:, 4] for v in arrays]) if arrays else np.zeros(0)
    lo, hi = normalize_scores(all_scores)
    diff = hi - lo
    constant = not diff > 0  # all scores equal: deliberate difference, see module docstring

    # 2. per image: each prediction's best ground-truth box (score-sorted)
    offsets = np.zeros(len(gt) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in gt.boxes])
    score_parts: List[np.ndarray] = []
    gidx_parts: List[np.ndarray] = []
    image_iter = range(len(gt))
    if progress:
        from tqdm import tqdm

        image_iter = tqdm(image_iter, desc="matching", unit="img")
    for i in image_iter:
        p = preds.get(gt.names[i])
        g = gt.boxes[i]
        if p is None or len(p) == 0 or len(g) == 0:
            continue
        s = np.ones(len(p)) if constant else (p[:, 4] - lo) / diff
        order = np.argsort(-s, kind="stable")
        iou = _iou_plus_one(p[order, :4], g)
        best = iou.argmax(axis=1)
        best_iou = iou[np.arange(len(best)), best]
        score_parts.append(s[order])
        gidx_parts.append(np.where(best_iou >= iou_threshold, best + offsets[i], -1))
    scores = np.concatenate(score_parts) if score_parts else np.zeros(0)
    gidx = np.concatenate(gidx_parts) if gidx_parts else np.zeros(0, dtype=np.int64)
    matched = gidx >= 0

    # 3./4. per setting: flags, threshold counts, AP
    thresholds = 1.0 - np.arange(1, NUM_THRESHOLDS + 1) / NUM_THRESHOLDS
    ap: Dict[str, float] = {}
    curves: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    num_faces: Dict[str, int] = {}
    for setting in SETTINGS:
        keep_mask = np.zeros(int(offsets[-1]), dtype=bool)
        count_face = 0
        for i, k in enumerate(gt.keep[setting]):
            keep_mask[offsets[i] + k] = True
            count_face += len(k)
        num_faces[setting] = count_face
        kept = np.zeros(len(gidx), dtype=bool)
        kept[matched] = keep_mask[gidx[matched]]
        ignored = matched & ~kept
        kept_idx = np.flatnonzero(kept)
        _, first = np.unique(gidx[kept_idx], return_index=True)
        new_tp = np.zeros(len(gidx), dtype=bool)
        new_tp[kept_idx[first]] = True

        n_prop = _count_at_least(np.sort(scores[~ignored]), thresholds)
        n_tp = _count_at_least(np.sort(scores[new_tp]), thresholds)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = n_tp / n_prop.astype(np.float64)
        recall = n_tp / float(count_face) if count_face else np.zeros(NUM_THRESHOLDS)
        curves[setting] = (precision, recall)
        ap[setting] = voc_ap(recall, precision) if count_face else float("nan")

    return WiderResult(
        ap=ap,
        pr_curves=curves,
        thresholds=thresholds,
        missing=missing,
        warnings=problems,
        num_images=len(gt),
        num_predictions=int(sum(len(v) for v in preds.values())),
        num_faces=num_faces,
        iou_threshold=iou_threshold,
    )
