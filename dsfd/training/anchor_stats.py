"""``dsfd anchors``: how many anchors each training face is matched to.

The DSFD paper (section 3.3, Improved Anchor Matching) argues that
data-anchor-sampling moves faces to the scales the anchors cover, raising the
mean number of anchors matched per face from 6.4 to 6.9. This command
measures that on real training data: each training image is augmented the
way training does (geometry only: the photometric part cannot change a match)
``--samples`` times, once with SSD-style crops only and once with IAM's
data-anchor-sampling 2/5 of the time, and the augmented faces are matched to
the test-time shot's anchors (16..512 px at 640 px) with each matching
preset of :data:`dsfd.losses.MATCHING_PRESETS`. Reported, in total and per
face-scale bucket (``sqrt(w * h)`` in network-input pixels):

* ``mean_matched``: anchors assigned to the face (positives whose best face
  it is; the face's forced best anchor included; S3FD compensation included);
* ``share_unmatched``: faces with no anchor at IoU >= the threshold (before
  the forced best anchor, the faces that only the forcing rescues);
* a histogram of matched counts.

Outputs ``anchor_stats.json`` and ``anchor_stats.png`` (faces per scale, the
paper's figure, and matched anchors per face by scale) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from ..cli_options import add_device, add_progress, deprecated_alias, nonempty_path

__all__ = ["SCALE_EDGES", "AUGMENTATIONS", "FaceMatches", "match_faces", "anchor_stats", "add_parser", "run"]

#: Face-scale bucket edges in network-input pixels (the anchor sizes).
SCALE_EDGES: Tuple[float, ...] = (0.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)
#: Augmentations compared: name -> data-anchor-sampling probability.
AUGMENTATIONS: Dict[str, float] = {"ssd_crops": 0.0, "iam_das": 0.4}
_HIST_MAX = 20


def _bucket_names() -> List[str]:
    names = []
    for lo, hi in zip(SCALE_EDGES[:-1], SCALE_EDGES[1:]):
        names.append(f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}")
    return names


class FaceMatches:
    """Per-face results of one setting: scale (px), matched count, best IoU."""

    def __init__(self) -> None:
        self.scale: List[np.ndarray] = []
        self.matched: List[np.ndarray] = []
        self.best_iou: List[np.ndarray] = []

    def add(self, scale: np.ndarray, matched: np.ndarray, best_iou: np.ndarray) -> None:
        self.scale.append(scale)
        self.matched.append(matched)
        self.best_iou.append(best_iou)

    def summary(self, iou_threshold: float) -> Dict[str, Any]:
        scale = np.concatenate(self.scale) if self.scale else np.zeros(0)
        matched = np.concatenate(self.matched) if self.matched else np.zeros(0, dtype=np.int64)
        best = np.concatenate(self.best_iou) if self.best_iou else np.zeros(0)

        def stats(sel: np.ndarray) -> Dict[str, Any]:
            n = int(sel.sum())
            if n == 0:
                return {"faces": 0, "mean_matched": None, "share_unmatched": None}
            return {
                "faces": n,
                "mean_matched": round(float(matched[sel].mean()), 4),
                "share_unmatched": round(float((best[sel] < iou_threshold).mean()), 4),
            }

        out = stats(np.ones(len(matched), dtype=bool))
        out["iou_threshold"] = iou_threshold
        out["histogram"] = np.bincount(np.minimum(matched, _HIST_MAX), minlength=_HIST_MAX + 1).tolist()
        out["by_scale"] = {
            name: stats((scale >= lo) & (scale < hi))
            for name, lo, hi in zip(_bucket_names(), SCALE_EDGES[:-1], SCALE_EDGES[1:])
        }
        return out


def match_faces(anchors: Tensor, boxes: Tensor, criterion: Any) -> np.ndarray:
    """Number of anchors matched to each face of one image.

    Args:
        anchors: ``[A, 4]`` ``cx, cy, w, h`` normalised.
        boxes: ``[G, 4]`` normalised corner boxes.
        criterion: a :class:`dsfd.losses.MultiBoxLoss` (its matching settings are used).
    """
    g = boxes.shape[0]
    labels, matched, _ = criterion.match(anchors, boxes[None], torch.tensor([g], device=boxes.device))
    pos = labels[0] > 0
    return torch.bincount(matched[0][pos], minlength=g)[:g].cpu().numpy()


def anchor_stats(
    dataset: Any,
    size: int = 640,
    samples: int = 1,
    matchings: Sequence[str] = ("iam", "s3fd", "ssd"),
    shot: str = "second",
    seed: int = 0,
    images: int = 0,
    progress: bool = True,
    device: Union[str, torch.device] = "cpu",
) -> Dict[str, Any]:
    """Matched-anchor statistics of a :class:`dsfd.data.WiderFaceDataset` without a transform.

    Returns ``{"settings": {"<augmentation>/<matching>": summary}, ...}``
    (see :meth:`FaceMatches.summary`).
    """
    from ..data import TrainTransform
    from ..losses import MultiBoxLoss
    from .. import ops
    from ..models.anchors import FIRST_SHOT_SIZES, SECOND_SHOT_SIZES, STEPS, generate_anchors

    if shot not in ("first", "second"):
        raise ValueError(f"shot must be 'first' or 'second', got {shot!r}")
    sizes = SECOND_SHOT_SIZES if shot == "second" else FIRST_SHOT_SIZES
    feature_sizes = [(math.ceil(size / s), math.ceil(size / s)) for s in STEPS]
    anchors = generate_anchors((size, size), feature_sizes, sizes, STEPS).to(device)
    corners = ops.reference.anchors_to_corners(anchors)
    criteria = {m: MultiBoxLoss(matching=m) for m in matchings}
    transforms = {
        name: TrainTransform(size=size, das_prob=p, photometric=False) for name, p in AUGMENTATIONS.items()
    }
    results = {f"{a}/{m}": FaceMatches() for a in transforms for m in criteria}
    n = len(dataset) if not images else min(len(dataset), int(images))
    it: Any = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="anchors", unit="img", dynamic_ncols=True)
    skipped = 0
    t0 = time.time()
    for i in it:
        loaded = dataset.load(i)
        if loaded is None:
            skipped += 1
            continue
        img, boxes = loaded
        for k in range(samples):
            for a, tf in transforms.items():
                # the same random stream for both augmentations: they differ only in the crop choice
                rng = np.random.default_rng([seed, i, k])
                _, b = tf(img, boxes, rng)
                if b.shape[0] == 0:
                    continue
                scale = (torch.sqrt((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)) * size).numpy()
                b = b.to(device)
                best = ops.box_iou(b, corners).amax(1).cpu().numpy()
                for m, crit in criteria.items():
                    results[f"{a}/{m}"].add(scale, match_faces(anchors, b, crit), best)
    settings = {key: fm.summary(criteria[key.split("/")[1]].iou_threshold) for key, fm in results.items()}
    return {
        "images": n - skipped,
        "skipped_images": skipped,
        "samples_per_image": samples,
        "size": size,
        "shot": shot,
        "anchor_sizes": list(sizes),
        "num_anchors": int(anchors.shape[0]),
        "augmentations": {a: {"das_prob": p} for a, p in AUGMENTATIONS.items()},
        "matchings": {m: {"iou_threshold": c.iou_threshold, "compensation": c.compensation} for m, c in criteria.items()},
        "scale_buckets": _bucket_names(),
        "seconds": round(time.time() - t0, 1),
        "device": str(device),
        "settings": settings,
    }


def plot(stats: Dict[str, Any], path: Path) -> None:
    """The paper-style figure: faces per scale bucket, and matched anchors per face by scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = stats["scale_buckets"]
    settings = stats["settings"]
    x = np.arange(len(buckets))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    augs = list(stats["augmentations"])
    width = 0.8 / max(1, len(augs))
    for j, a in enumerate(augs):
        s = settings[f"{a}/iam"] if f"{a}/iam" in settings else next(v for k, v in settings.items() if k.startswith(a))
        faces = [s["by_scale"][b]["faces"] for b in buckets]
        ax1.bar(x + (j - (len(augs) - 1) / 2) * width, faces, width, label=a)
    ax1.set_xticks(x, buckets, rotation=30)
    ax1.set_xlabel("face scale sqrt(w*h) at the network input (px)")
    ax1.set_ylabel("faces")
    ax1.set_title("training faces per scale")
    ax1.legend()
    width = 0.8 / max(1, len(settings))
    for j, (key, s) in enumerate(settings.items()):
        means = [s["by_scale"][b]["mean_matched"] or 0.0 for b in buckets]
        ax2.bar(x + (j - (len(settings) - 1) / 2) * width, means, width,
                label=f"{key} (mean {s['mean_matched']:.2f})" if s["mean_matched"] is not None else key)
    ax2.set_xticks(x, buckets, rotation=30)
    ax2.set_xlabel("face scale (px)")
    ax2.set_ylabel("anchors matched per face")
    ax2.set_title(f"matched anchors per face ({stats['shot']} shot)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "anchors",
        help="matched anchors per training face, with and without improved anchor matching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=nonempty_path, action="append", default=None, metavar="ROOT",
                   help="WIDER-layout root(s) whose train split is measured (repeatable; default: the WIDER root)")
    p.add_argument("--size", type=int, default=640, help="network input side (640)")
    p.add_argument("--samples", type=int, default=1, help="augmented samples per image (1)")
    p.add_argument("--max-images", type=int, default=0, metavar="N", help="use only the first N images (0: all)")
    p.add_argument("--images", dest="max_images", type=int, action=deprecated_alias("--max-images"))
    p.add_argument("--matching", nargs="+", default=["iam", "s3fd", "ssd"], choices=["iam", "s3fd", "ssd"],
                   help="matching presets to compare")
    p.add_argument("--shot", choices=["first", "second"], default="second",
                   help="anchors of this shot (second: 16..512 px, the test-time shot)")
    p.add_argument("--min-face", type=float, default=1.0, help="drop annotated faces smaller than this (px)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p, "the matching")
    p.add_argument("--out", type=nonempty_path, default=Path("runs/anchors"), help="output folder")
    add_progress(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..data import WiderFaceDataset
    from ..data_paths import wider_root

    roots = [Path(d) for d in (args.data or [])] or [wider_root()]
    for r in roots:
        if not r.exists():
            raise SystemExit(f"dsfd anchors: data root {str(r)!r} does not exist")
    if args.samples < 1:
        raise SystemExit("dsfd anchors: --samples must be >= 1")
    ds = WiderFaceDataset(roots if len(roots) > 1 else roots[0], "train", transform=None, min_face=args.min_face)
    from ..precision import resolve_device

    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"dsfd anchors: {e}") from None
    stats = anchor_stats(ds, args.size, args.samples, args.matching, args.shot, args.seed, args.max_images,
                         args.progress, device=device)
    stats["data"] = [str(r) for r in roots]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "anchor_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    plot(stats, out / "anchor_stats.png")
    print(f"{stats['images']} images x {stats['samples_per_image']} sample(s), {stats['shot']}-shot anchors "
          f"at {stats['size']} px")
    print(f"{'augmentation/matching':<24} {'faces':>8} {'anchors/face':>13} {'no anchor >= thr':>17}")
    for key, s in stats["settings"].items():
        if s["faces"]:
            print(f"{key:<24} {s['faces']:>8} {s['mean_matched']:>13.2f} {100 * s['share_unmatched']:>16.1f}%")
    print(f"wrote {out / 'anchor_stats.json'} and {out / 'anchor_stats.png'}")
    return 0
