"""FDDB evaluation (Jain & Learned-Miller, UMass tech. report UM-CS-2010-009).

FDDB annotates faces with ellipses (fold files
``FDDB-folds/FDDB-fold-XX-ellipseList.txt``: image name, face count, then
``major_axis_radius minor_axis_radius angle center_x center_y 1`` lines,
angle in radians) and scores detections given as rectangles
(``x y w h score``, top-left corner + size) or ellipses
(``ra rb angle cx cy score``).  This module follows the official
``evaluate`` program:

* **Overlap** of a detection and an annotation: area of intersection over
  area of union of the two regions, both rasterised on the pixel grid
  (pixel centres at integer coordinates; the official tool draws both
  regions into image-sized masks and counts pixels).  Here each region is
  rasterised row by row: on pixel row ``y`` a rectangle or an ellipse covers
  one interval of ``x``, so intersections are interval intersections and
  pixel counts are ``floor(hi) - ceil(lo) + 1``, all vectorised over
  ``[annotations, detections, rows]``.  A rectangle ``x, y, w, h`` covers the
  pixels ``x .. x + w`` by ``y .. y + h`` inclusive (OpenCV's filled
  rectangle from ``(x, y)`` to ``(x + w, y + h)``, as in the official tool).
  The axis ``ra`` of an ellipse lies along ``(cos a, -sin a)`` in image
  coordinates (y down), i.e. the official ``cvEllipse`` angle ``pi - a``.
  Pass ``image_sizes`` to clip the regions to the image as the official
  masks do; without them nothing is clipped.  The official tool draws
  ellipses as integer polygons; sampling the exact ellipse differs from it by
  a few boundary pixels.
* **Matching**: a maximum-weight bipartite matching between annotations and
  detections with the overlap as weight
  (``scipy.optimize.linear_sum_assignment``); pairs with overlap 0 are not
  matched.  It is recomputed for every score threshold (the set of
  detections above a threshold changes the best matching), exactly as the
  official tool; only thresholds where a detection touching some annotation
  enters need a new matching.
* **Scores**: a matched pair counts as a discrete true positive when its
  overlap is ``> 0.5``; the continuous score of a matched pair is its overlap.
  False positives (both curves) = detections above the threshold minus
  discrete true positives.  As in the official tool, the continuous curve
  sums the overlaps of *all* matched pairs (also those ``<= 0.5``), while
  the 0.5 ratio only gates the discrete score.
* **ROC**: for every distinct detection score ``s`` (descending), true
  positive rate (discrete or continuous TP over the number of annotated
  faces) against the number of false positives over the whole set.
  :meth:`FDDBResult.tpr_at` gives the usual "TPR at 1,000 false positives"
  (highest TPR among points with at most that many false positives).

Boxes can also be turned into ellipses (:func:`box_to_ellipse`; rule:
centre = box centre, ``ra = h / 2``, ``rb = w / 2`` (times ``scale``),
axis ``ra`` vertical, i.e. the ellipse inscribed in the box) and evaluated
with ``det_format="ellipse"``; evaluating rectangles directly
(``det_format="rect"``, the default) is what the released DSFD code reports.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "FDDBResult",
    "read_fddb_file",
    "read_fddb_folds",
    "read_fddb_image_list",
    "read_fddb_detections",
    "write_fddb_detections",
    "box_to_ellipse",
    "fddb_overlaps",
    "evaluate_fddb",
]

PathLike = Union[str, "os.PathLike[str]"]
_FOLD_RE = re.compile(r"FDDB-fold-(\d+)-ellipseList\.txt$")
_DET_COLUMNS = {"rect": 5, "ellipse": 6}
_MAX_CELLS = 4_000_000  # cap of annotation x detection x row cells per chunk
_EPS = 1e-9  # boundary tolerance of the rasterisation (pixels / relative)


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def read_fddb_file(path: PathLike, columns: Optional[int] = 5) -> Dict[str, np.ndarray]:
    """Read a file of FDDB records: image name, count, then ``count`` value lines.

    Returns ``{image name: [count, columns] float64}`` (the first ``columns``
    values of each line; ellipse annotations have 6, the last being 1).  With
    ``columns=None`` every value is kept (all lines of a record must then have
    the same number).  Blank lines between records are skipped.  A record
    with fewer value lines than announced raises ``ValueError``.
    """
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    out: Dict[str, np.ndarray] = {}
    i = 0
    while i < len(lines):
        name = lines[i]
        if i + 1 >= len(lines):
            raise ValueError(f"{path}: record {name!r} has no count line")
        try:
            n = int(float(lines[i + 1]))
        except ValueError as e:
            raise ValueError(f"{path}: bad count line after {name!r}: {lines[i + 1]!r}") from e
        rows = lines[i + 2 : i + 2 + n]
        if len(rows) < n:
            raise ValueError(f"{path}: record {name!r} announces {n} lines, has {len(rows)}")
        vals = [r.split()[:columns] for r in rows]
        need = columns if columns is not None else (len(vals[0]) if vals else 0)
        if any(len(v) != need for v in vals):
            raise ValueError(f"{path}: record {name!r} has lines with other than {need} values")
        out[name] = np.array(vals, dtype=np.float64).reshape(n, need) if n else np.zeros((0, columns or 0))
        i += 2 + n
    return out


def read_fddb_folds(folds_dir: PathLike, folds: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Read the ellipse annotations of ``FDDB-fold-XX-ellipseList.txt`` files (all folds by default).

    Returns ``{image name: [A, 5] ra, rb, angle, cx, cy}`` in fold order.
    """
    folds_dir = Path(folds_dir)
    files = sorted((int(m.group(1)), p) for p in folds_dir.glob("FDDB-fold-*-ellipseList.txt")
                   if (m := _FOLD_RE.search(p.name)))
    if folds is not None:
        wanted = set(int(f) for f in folds)
        files = [(k, p) for k, p in files if k in wanted]
    if not files:
        raise FileNotFoundError(f"no FDDB-fold-XX-ellipseList.txt files in {folds_dir}")
    out: Dict[str, np.ndarray] = {}
    for _, p in files:
        out.update(read_fddb_file(p, columns=5))
    return out


def read_fddb_image_list(folds_dir: PathLike, folds: Optional[Sequence[int]] = None) -> List[str]:
    """Image names of the ``FDDB-fold-XX.txt`` lists (all folds by default), in order."""
    folds_dir = Path(folds_dir)
    wanted = None if folds is None else set(int(f) for f in folds)
    names: List[str] = []
    for p in sorted(folds_dir.glob("FDDB-fold-*.txt")):
        m = re.search(r"FDDB-fold-(\d+)\.txt$", p.name)
        if not m or (wanted is not None and int(m.group(1)) not in wanted):
            continue
        names += [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return names


def read_fddb_detections(path: PathLike, det_format: str = "rect") -> Dict[str, np.ndarray]:
    """Read FDDB detections from one file or every ``*.txt`` in a folder.

    ``[D, 5]`` ``x, y, w, h, score`` per image for ``det_format="rect"``,
    ``[D, 6]`` ``ra, rb, angle, cx, cy, score`` for ``"ellipse"``.
    """
    cols = _DET_COLUMNS[det_format]
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    out: Dict[str, np.ndarray] = {}
    for f in files:
        out.update(read_fddb_file(f, columns=cols))
    return out


def write_fddb_detections(
    path: PathLike,
    detections: Mapping[str, np.ndarray],
    image_list: Optional[Sequence[str]] = None,
    *,
    box_format: str = "xyxy",
    plus_one: bool = True,
) -> Path:
    """Write rectangle detections in FDDB format, rounded like the released DSFD ``fddb_test.py``.

    ``detections``: ``{image name: [K, 5] box + score}``.  Boxes are written
    as ``floor(x1) floor(y1) ceil(x2 - x1 + 1) ceil(y2 - y1 + 1)``
    (``plus_one=False`` drops the ``+ 1``), scores with 6 decimals, in
    descending score order.  Images follow ``image_list`` (the official tool
    needs the fold order; images without detections get a count of 0) or
    the mapping order.
    """
    from ..io.wider_predictions import wider_boxes_for_file

    names = list(image_list) if image_list is not None else list(detections)
    lines: List[str] = []
    for name in names:
        d = np.asarray(detections.get(name, np.zeros((0, 5))), dtype=np.float64).reshape(-1, 5)
        d = d[np.argsort(-d[:, 4], kind="stable")]
        xywh = wider_boxes_for_file(d[:, :4], box_format, plus_one)
        lines += [name, str(len(d))]
        lines += [f"{x:.1f} {y:.1f} {w:.1f} {h:.1f} {s:.6f}"
                  for (x, y, w, h), s in zip(xywh.tolist(), d[:, 4].tolist())]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def box_to_ellipse(boxes_xywh: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Ellipses ``[K, 5]`` (``ra, rb, angle, cx, cy``) inscribed in ``x, y, w, h`` boxes.

    Centre = box centre, ``ra = scale * h / 2`` along the vertical
    (``angle = pi / 2``), ``rb = scale * w / 2``.  Extra columns (a score) are
    carried over after the five ellipse values.
    """
    b = np.asarray(boxes_xywh, dtype=np.float64)
    b = b.reshape(-1, b.shape[-1] if b.ndim == 2 else 4)
    x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    ell = np.stack([scale * h / 2, scale * w / 2, np.full_like(x, np.pi / 2), x + w / 2, y + h / 2], axis=1)
    return np.concatenate([ell, b[:, 4:]], axis=1)


# --------------------------------------------------------------------------
# rasterised overlaps
# --------------------------------------------------------------------------


def _ellipse_params(e: np.ndarray):
    """Quadratic-form coefficients and extents of ellipses ``[N, >=5]``."""
    ra, rb, ang, cx, cy = (e[:, k] for k in range(5))
    valid = (ra > 0) & (rb > 0)
    ra = np.where(valid, ra, 1.0)
    rb = np.where(valid, rb, 1.0)
    c, s = np.cos(ang), np.sin(ang)
    # axis ra along (c, -s), axis rb along (s, c) in image coordinates (y down)
    qa = c * c / ra**2 + s * s / rb**2  # coefficient of dx^2
    qb = s * c * (1.0 / rb**2 - 1.0 / ra**2)  # half the coefficient of dx*dy
    inv_det = (ra * rb) ** 2  # 1 / det(M)
    ex = np.sqrt((ra * c) ** 2 + (rb * s) ** 2)
    ey = np.sqrt((ra * s) ** 2 + (rb * c) ** 2)
    return dict(cx=cx, cy=cy, qa=qa, qb=qb, inv_det=inv_det, ex=ex, ey=ey, valid=valid)


def _bounds(regions: np.ndarray, kind: str) -> np.ndarray:
    """``[N, 4]`` float bounding boxes ``x1, y1, x2, y2`` of the regions."""
    if kind == "rect":
        x, y, w, h = (regions[:, k] for k in range(4))
        return np.stack([x, y, x + w, y + h], axis=1)
    p = _ellipse_params(regions)
    return np.stack([p["cx"] - p["ex"], p["cy"] - p["ey"], p["cx"] + p["ex"], p["cy"] + p["ey"]], axis=1)


def _row_intervals(regions: np.ndarray, kind: str, ys: np.ndarray, width: Optional[float]):
    """x-interval ``[lo, hi]`` of each region on pixel rows ``ys``.

    ``ys`` broadcasts against ``[N, 1]`` (``[Y]`` shared rows or ``[N, Y]``
    rows per region).  Empty intervals have ``lo > hi``.
    """
    n = len(regions)
    if kind == "rect":
        x, y, w, h = (regions[:, k, None] for k in range(4))
        inside = (ys >= y - _EPS) & (ys <= y + h + _EPS) & (w >= 0)
        lo = np.where(inside, x, np.inf)
        hi = np.where(inside, x + w, -np.inf)
    elif kind == "ellipse":
        p = _ellipse_params(regions)
        dy = ys - p["cy"][:, None]
        disc = p["qa"][:, None] - dy * dy / p["inv_det"][:, None]
        ok = (disc >= -_EPS * p["qa"][:, None]) & p["valid"][:, None]
        root = np.sqrt(np.where(ok, disc, 0.0))
        mid = p["cx"][:, None] - p["qb"][:, None] * dy / p["qa"][:, None]
        half = root / p["qa"][:, None]
        lo = np.where(ok, mid - half, np.inf)
        hi = np.where(ok, mid + half, -np.inf)
    else:
        raise ValueError(f"region kind must be 'rect' or 'ellipse', not {kind!r}")
    lo = np.broadcast_to(lo, np.broadcast_shapes(lo.shape, (n, 1)))
    hi = np.broadcast_to(hi, lo.shape)
    if width is not None:
        lo = np.maximum(lo, 0.0)
        hi = np.minimum(hi, width - 1.0)
    return lo, hi


def _pixel_count(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Number of integer x in ``[lo, hi]`` (0 for empty / infinite-empty intervals).

    Pixel centres within ``_EPS`` of the boundary count as inside, so that
    lattice points exactly on an ellipse do not depend on rounding.
    """
    with np.errstate(invalid="ignore"):
        n = np.floor(hi + _EPS) - np.ceil(lo - _EPS) + 1.0
    return np.where(np.isfinite(n) & (n > 0), n, 0.0)


def _region_areas(regions: np.ndarray, kind: str, size: Optional[Tuple[int, int]]) -> np.ndarray:
    """Pixel counts of each region (clipped to ``size = (height, width)`` if given)."""
    if len(regions) == 0:
        return np.zeros(0)
    b = _bounds(regions, kind)
    top = np.ceil(b[:, 1] - _EPS)
    bottom = np.floor(b[:, 3] + _EPS)
    if size is not None:
        top = np.maximum(top, 0.0)
        bottom = np.minimum(bottom, size[0] - 1.0)
    rows = bottom - top + 1
    if kind == "rect":  # analytic: (pixels per row) x (rows)
        lo, hi = regions[:, 0], regions[:, 0] + regions[:, 2]
        if size is not None:
            lo, hi = np.maximum(lo, 0.0), np.minimum(hi, size[1] - 1.0)
        return _pixel_count(lo, hi) * np.maximum(rows, 0.0) * (regions[:, 3] >= 0)
    height = int(max(np.max(rows, initial=0.0), 0.0))
    if height == 0:
        return np.zeros(len(regions))
    areas = np.zeros(len(regions))
    # chunk over regions so that [N, rows] stays small
    step = max(1, _MAX_CELLS // height)
    for s in range(0, len(regions), step):
        sl = slice(s, s + step)
        ys = top[sl, None] + np.arange(height)[None, :]
        lo, hi = _row_intervals(regions[sl], kind, ys, None if size is None else float(size[1]))
        cnt = _pixel_count(lo, hi)
        cnt = np.where(ys <= bottom[sl, None], cnt, 0.0)
        areas[sl] = cnt.sum(axis=1)
    return areas


def fddb_overlaps(
    annotations: np.ndarray,
    detections: np.ndarray,
    det_format: str = "rect",
    image_size: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """Rasterised intersection-over-union ``[A, D]`` of ellipse annotations and detections.

    ``annotations``: ``[A, >=5]`` ``ra, rb, angle, cx, cy``; ``detections``:
    ``[D, >=4]`` ``x, y, w, h`` (``det_format="rect"``) or ``[D, >=5]``
    ellipses (``"ellipse"``); ``image_size = (height, width)`` clips the
    regions to the image.
    """
    ann = np.asarray(annotations, dtype=np.float64)
    det = np.asarray(detections, dtype=np.float64)
    out = np.zeros((len(ann), len(det)))
    if len(ann) == 0 or len(det) == 0:
        return out
    ann, det = ann.reshape(len(ann), -1), det.reshape(len(det), -1)
    width = None if image_size is None else float(image_size[1])
    ab = _bounds(ann, "ellipse")
    db = _bounds(det, det_format)
    touch = ((db[:, None, 0] <= ab[None, :, 2]) & (db[:, None, 2] >= ab[None, :, 0])
             & (db[:, None, 1] <= ab[None, :, 3]) & (db[:, None, 3] >= ab[None, :, 1]))
    cand = np.flatnonzero(touch.any(axis=1))
    if len(cand) == 0:
        return out
    y0 = np.ceil(ab[:, 1].min() - _EPS)
    y1 = np.floor(ab[:, 3].max() + _EPS)
    if image_size is not None:
        y0, y1 = max(y0, 0.0), min(y1, image_size[0] - 1.0)
    if y1 < y0:
        return out
    ys = np.arange(y0, y1 + 1.0)
    a_lo, a_hi = _row_intervals(ann, "ellipse", ys[None, :], width)  # [A, Y]
    area_a = _pixel_count(a_lo, a_hi).sum(axis=1)
    area_d = _region_areas(det[cand], det_format, image_size)
    inter = np.zeros((len(ann), len(cand)))
    step = max(1, _MAX_CELLS // (len(ann) * len(ys)))
    for s in range(0, len(cand), step):
        sl = slice(s, s + step)
        d_lo, d_hi = _row_intervals(det[cand[sl]], det_format, ys[None, :], width)  # [d, Y]
        lo = np.maximum(a_lo[:, None, :], d_lo[None, :, :])
        hi = np.minimum(a_hi[:, None, :], d_hi[None, :, :])
        inter[:, sl] = _pixel_count(lo, hi).sum(axis=2)
    union = area_a[:, None] + area_d[None, :] - inter
    out[:, cand] = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------


@dataclass
class FDDBResult:
    """ROC of :func:`evaluate_fddb`; one point per distinct detection score (descending)."""

    thresholds: np.ndarray
    false_positives: np.ndarray
    true_positives_discrete: np.ndarray
    true_positives_continuous: np.ndarray
    num_faces: int
    num_images: int
    missing: List[str] = field(default_factory=list)  # annotated images without detections
    extra: List[str] = field(default_factory=list)  # detected images without annotations (ignored)

    def tpr(self, kind: str = "discrete") -> np.ndarray:
        tp = self.true_positives_discrete if kind == "discrete" else self.true_positives_continuous
        if kind not in ("discrete", "continuous"):
            raise ValueError("kind must be 'discrete' or 'continuous'")
        return tp / self.num_faces if self.num_faces else np.zeros(len(tp))

    def tpr_at(self, max_fp: float = 1000, kind: str = "discrete") -> float:
        """Highest TPR among ROC points with at most ``max_fp`` false positives (0 if none)."""
        ok = self.false_positives <= max_fp
        return float(self.tpr(kind)[ok].max()) if ok.any() else 0.0

    def as_dict(self) -> dict:
        return {
            "tpr_at_1000_fp": {"discrete": self.tpr_at(1000, "discrete"),
                               "continuous": self.tpr_at(1000, "continuous")},
            "num_faces": self.num_faces,
            "num_images": self.num_images,
            "num_detections": int(self.false_positives[-1] + self.true_positives_discrete[-1])
            if len(self.false_positives) else 0,
            "num_missing": len(self.missing),
            "missing": list(self.missing),
            "num_extra": len(self.extra),
        }

    def to_json(self, path: Optional[PathLike] = None, indent: int = 2) -> str:
        text = json.dumps(self.as_dict(), indent=indent)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> str:
        return "\n".join([
            f"FDDB: {self.num_images} images, {self.num_faces} faces",
            f"TPR @ 1000 FP  discrete {self.tpr_at(1000, 'discrete'):.4f}  "
            f"continuous {self.tpr_at(1000, 'continuous'):.4f}",
        ])

    def write_roc_files(self, prefix: PathLike) -> Tuple[Path, Path]:
        """``<prefix>DiscROC.txt`` (``tpr fp threshold``) and ``<prefix>ContROC.txt`` (``tpr fp``),
        in the official tool's layout (ascending threshold)."""
        prefix = str(prefix)
        disc, cont = Path(prefix + "DiscROC.txt"), Path(prefix + "ContROC.txt")
        disc.parent.mkdir(parents=True, exist_ok=True)
        td, tc = self.tpr("discrete")[::-1], self.tpr("continuous")[::-1]
        fp, th = self.false_positives[::-1], self.thresholds[::-1]
        disc.write_text("".join(f"{a:.6g} {int(b)} {c:.6g}\n" for a, b, c in zip(td, fp, th)))
        cont.write_text("".join(f"{a:.6g} {int(b)}\n" for a, b in zip(tc, fp)))
        return disc, cont


def _image_curve(overlaps: np.ndarray, scores: np.ndarray):
    """Per distinct score (descending) of one image: (scores, #dets >=, TP continuous, TP discrete)."""
    from scipy.optimize import linear_sum_assignment

    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ov = overlaps[:, order]
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each distinct score
    relevant = ov.max(axis=0, initial=0.0) > 0
    # evaluate where a group holding a relevant detection ends
    rel_count = np.cumsum(relevant)
    group_rel = np.diff(np.r_[0, rel_count[ends]]) > 0
    tpc = np.zeros(len(ends))
    tpd = np.zeros(len(ends))
    for gi in np.flatnonzero(group_rel):
        cols = np.flatnonzero(relevant[: ends[gi] + 1])
        sub = ov[:, cols]
        sub = sub[sub.max(axis=1) > 0]
        r, c = linear_sum_assignment(sub, maximize=True)
        v = sub[r, c]
        v = v[v > 0]
        tpc[gi], tpd[gi] = v.sum(), np.count_nonzero(v > 0.5)
    # groups without a new relevant detection keep the previous matching
    last = np.maximum.accumulate(np.where(group_rel, np.arange(len(ends)), -1))
    has = last >= 0
    tpc = np.where(has, tpc[np.maximum(last, 0)], 0.0)
    tpd = np.where(has, tpd[np.maximum(last, 0)], 0.0)
    return s[ends], ends + 1.0, tpc, tpd


def evaluate_fddb(
    annotations: Union[PathLike, Mapping[str, np.ndarray]],
    detections: Union[PathLike, Mapping[str, np.ndarray]],
    det_format: str = "rect",
    *,
    image_sizes: Optional[Mapping[str, Tuple[int, int]]] = None,
    image_list: Optional[Sequence[str]] = None,
    progress: bool = False,
) -> FDDBResult:
    """Discrete and continuous ROC of FDDB detections (see the module docstring).

    ``annotations``: a ``FDDB-folds`` folder or ``{image: [A, 5] ellipses}``;
    ``detections``: an FDDB detection file / folder of files or
    ``{image: [D, 5]}`` of ``x, y, w, h, score`` (``det_format="rect"``) or
    ``{image: [D, 6]}`` of ``ra, rb, angle, cx, cy, score`` (``"ellipse"``);
    ``image_sizes``: ``{image: (height, width)}`` to clip regions to the
    image like the official tool; ``image_list``: the images to score
    (default: every annotated image).
    """
    if det_format not in ("rect", "ellipse"):
        raise ValueError(f"det_format must be 'rect' or 'ellipse', not {det_format!r}")
    ann = read_fddb_folds(annotations) if isinstance(annotations, (str, os.PathLike)) else annotations
    dets = read_fddb_detections(detections, det_format) if isinstance(detections, (str, os.PathLike)) \
        else detections
    cols = _DET_COLUMNS[det_format]
    names = list(image_list) if image_list is not None else list(ann)
    unknown = [n for n in names if n not in ann]
    if unknown:
        raise KeyError(f"{len(unknown)} image(s) of image_list have no annotation; first: {unknown[0]}")
    missing = [n for n in names if n not in dets]
    name_set = set(names)
    extra = [n for n in dets if n not in name_set]
    if missing:
        warnings.warn(f"{len(missing)} image(s) without detections (counted as none); first: {missing[0]}",
                      stacklevel=2)

    num_faces = 0
    parts = []
    it = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="FDDB", unit="img")
    for name in it:
        a = np.asarray(ann[name], dtype=np.float64)
        a = a.reshape(-1, a.shape[-1]) if a.size else np.zeros((0, 5))
        num_faces += len(a)
        d = np.asarray(dets.get(name, np.zeros((0, cols))), dtype=np.float64)
        if d.size == 0:
            continue
        if d.ndim != 2 or d.shape[1] < cols:
            raise ValueError(f"detections of {name} must be [D, {cols}] for det_format={det_format!r}, "
                             f"got shape {d.shape}")
        size = None if image_sizes is None else image_sizes.get(name)
        ov = fddb_overlaps(a, d[:, : cols - 1], det_format, size)
        parts.append(_image_curve(ov, d[:, cols - 1]))

    if parts:
        u = np.concatenate([p[0] for p in parts])
        # per image cumulative values -> increments between its distinct scores
        deltas = [np.concatenate([np.diff(np.r_[0.0, p[k]]) for p in parts]) for k in (1, 2, 3)]
        order = np.argsort(-u, kind="stable")
        u = u[order]
        cum = [np.cumsum(x[order]) for x in deltas]
        last = np.flatnonzero(np.r_[u[1:] != u[:-1], True])
        thr = u[last]
        ndet, tpc, tpd = (c[last] for c in cum)
    else:
        thr = ndet = tpc = tpd = np.zeros(0)
    tpd = np.rint(tpd)
    return FDDBResult(
        thresholds=thr,
        false_positives=np.rint(ndet - tpd).astype(np.int64),
        true_positives_discrete=tpd.astype(np.int64),
        true_positives_continuous=tpc,
        num_faces=num_faces,
        num_images=len(names),
        missing=missing,
        extra=extra,
    )
