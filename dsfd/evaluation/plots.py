"""PNG plots of evaluation results (matplotlib, Agg canvas; no pyplot global state).

The figures are drawn on :class:`matplotlib.backends.backend_agg.FigureCanvasAgg`
directly, so plotting works headless and never changes the user's pyplot
backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Mapping, Optional, Union

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .coco import CocoResult
    from .fddb import FDDBResult
    from .wider import WiderResult

__all__ = ["plot_wider_pr", "plot_fddb_roc", "plot_coco_pr"]

PathLike = Union[str, "os.PathLike[str]"]


def _figure(title: str, xlabel: str, ylabel: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def plot_wider_pr(
    results: Union["WiderResult", Mapping[str, "WiderResult"]],
    out_dir: PathLike,
    prefix: str = "pr_",
) -> List[Path]:
    """Write ``<out_dir>/<prefix>{easy,medium,hard}.png``: precision-recall curves with AP in the legend.

    ``results`` is one :class:`~dsfd.evaluation.wider.WiderResult` or a
    mapping ``label -> result`` to compare several detectors on one plot.
    """
    from .wider import SETTINGS, WiderResult

    if isinstance(results, WiderResult):
        results = {"predictions": results}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for setting in SETTINGS:
        fig, ax = _figure(f"WIDER FACE val, {setting}", "Recall", "Precision")
        for label, res in results.items():
            precision, recall = res.pr_curves[setting]
            ok = np.isfinite(precision)
            ax.plot(recall[ok], precision[ok], linewidth=2.0, label=f"{label} (AP {res.ap[setting]:.4f})")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.legend(loc="lower left")
        path = out_dir / f"{prefix}{setting}.png"
        fig.savefig(str(path))
        paths.append(path)
    return paths


def plot_fddb_roc(
    results: Union["FDDBResult", Mapping[str, "FDDBResult"]],
    path: PathLike,
    max_fp: Optional[float] = 2000,
    kind: str = "discrete",
) -> Path:
    """Write an FDDB ROC (true positive rate vs false positives) PNG to ``path``."""
    from .fddb import FDDBResult

    if isinstance(results, FDDBResult):
        results = {"detections": results}
    fig, ax = _figure(f"FDDB, {kind} score", "False positives", "True positive rate")
    for label, res in results.items():
        fp, tpr = res.false_positives, res.tpr(kind)
        ax.plot(fp, tpr, linewidth=2.0, label=f"{label} ({res.tpr_at(1000, kind):.4f} @ 1000 FP)")
    if max_fp is not None:
        ax.set_xlim(0, max_fp)
    ax.set_ylim(0.0, 1.0)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path


def plot_coco_pr(result: "CocoResult", path: PathLike, title: str = "faces, COCO metrics") -> Path:
    """Write the precision-recall curves of a :class:`~dsfd.evaluation.coco.CocoResult` (IoU 0.50, 0.75,
    0.50:0.95; pycocotools' 101 recall points) to ``path``."""
    fig, ax = _figure(title, "Recall", "Precision")
    names = {"IoU 0.50": "AP50", "IoU 0.75": "AP75", "IoU 0.50:0.95": "AP"}
    for label, (precision, recall) in result.pr_curves.items():
        ok = np.isfinite(precision)
        ax.plot(recall[ok], precision[ok], linewidth=2.0,
                label=f"{label} ({names.get(label, 'AP')} {result.stats[names.get(label, 'AP')]:.4f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.legend(loc="lower left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))
    return path
