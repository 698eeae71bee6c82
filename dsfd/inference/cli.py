"""``dsfd detect``: run the face detector over images, folders and videos.

Examples::

    dsfd detect photo.jpg --weights dsfd.pth                 # -> detections/photo.jpg + photo.json
    dsfd detect WIDER_val/images --out preds --format wider  # -> preds/<event>/<name>.txt (+ drawings)
    dsfd detect clip.mp4 --out out --batch-size 16           # -> out/clip.mp4 (annotated) + out/clip.jsonl

Inputs: image files, folders (searched recursively for image and video
extensions; other files are ignored and counted) and video files (read with
``cv2.VideoCapture``). Outputs go to ``--out`` (default ``detections``):
files given directly are written as ``<out>/<name>``, files found in a folder
keep their path relative to that folder.

Per image: the annotated image (boxes with scores, unless ``--no-draw``) and
``<name>.json`` (``{"image", "width", "height", "detections": [{"box":
[x1, y1, x2, y2], "score"}]}``) or, with ``--format wider``, the WIDER FACE
prediction file ``<name>.txt`` (image name, count, ``x y w h score`` lines).
Per video: ``<name>.mp4`` annotated and ``<name>.jsonl``, one JSON line per
frame. ``summary.json`` lists what was processed and every skipped input
with the reason; the exit code is 0 when nothing was skipped, 1 otherwise,
2 for usage errors.

Thresholds: ``--score-threshold`` (0.01) is the detector's pre-NMS cut;
``--min-score`` is the cut for drawing and saving (default 0.5; for
``--format wider`` everything is saved by default, as the evaluation needs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..constants import DISPLAY_SCORE
from ..io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ImageError, is_video_path
from ..postprocess import PostProcessConfig
from .drawing import detections_to_records

__all__ = ["add_parser", "run", "collect_inputs"]

_WRITABLE = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detect`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "detect",
        help="detect faces in images, folders and videos; write annotated copies and JSON / WIDER files",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or video files")
    p.add_argument("--out", type=Path, default=Path("detections"), help="output folder (default: detections)")
    m = p.add_argument_group("model")
    m.add_argument("--weights", help="weights name (default, released-resnet152; downloaded once into torch's "
                   "hub cache), checkpoint path or URL (default: the packaged default model)")
    m.add_argument("--network", choices=["paper", "released"], help="architecture (detected from --weights; "
                   "default paper without weights)")
    m.add_argument("--backbone", choices=["vgg16", "resnet50", "resnet101", "resnet152", "tiny", "lite"],
                   help="backbone (detected from --weights; default resnet50 without weights)")
    m.add_argument("--device", default=None, help="cuda, cpu or cuda:N (default: cuda when available)")
    m.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                   help="network precision (auto: bfloat16 on CUDA and on CPUs with bf16 in hardware, "
                        "float32 elsewhere; float16: CUDA only)")
    d = p.add_argument_group("detection")
    PostProcessConfig.add_arguments(d)
    d.add_argument("--min-score", type=float, default=None,
                   help=f"drawing / saving threshold (default {DISPLAY_SCORE}; --format wider saves all by default)")
    d.add_argument("--accuracy-mode", action="store_true",
                   help="multi-scale + flip test of the released WIDER protocol (~11 passes per image, slow)")
    d.add_argument("--batch-size", type=int, default=4, help="images (or video frames) per forward pass (4)")
    d.add_argument("--max-size", type=int, default=None, help="downscale images whose longer side exceeds this")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["json", "wider"], default="json", help="per-image file format (json)")
    o.add_argument("--no-draw", action="store_true", help="do not write annotated images / videos")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


# --------------------------------------------------------------------------- inputs


class InputItem(NamedTuple):
    path: Path
    rel: Path  # output path relative to --out, with the source extension
    kind: str  # "image" or "video"


def collect_inputs(paths: Sequence[os.PathLike]) -> Tuple[List[InputItem], List[Dict[str, str]], int]:
    """Expand PATH arguments: ``(items, skipped [{path, reason}], ignored file count)``."""
    items: List[InputItem] = []
    skipped: List[Dict[str, str]] = []
    ignored = 0
    used: set = set()

    def add(path: Path, rel: Path, kind: str) -> None:
        key = rel.with_suffix("").as_posix().lower()
        n = 2
        base = rel
        while key in used:
            rel = base.with_name(f"{base.stem}_{n}{base.suffix}")
            key = rel.with_suffix("").as_posix().lower()
            n += 1
        used.add(key)
        items.append(InputItem(path, rel, kind))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = False
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for f in sorted(files):
                    fp = Path(root) / f
                    ext = fp.suffix.lower()
                    if ext in IMAGE_EXTENSIONS:
                        add(fp, fp.relative_to(p), "image")
                        found = True
                    elif ext in VIDEO_EXTENSIONS:
                        add(fp, fp.relative_to(p), "video")
                        found = True
                    else:
                        ignored += 1
            if not found:
                skipped.append({"path": str(p), "reason": "folder contains no image or video files"})
        elif p.is_file():
            add(p, Path(p.name), "video" if is_video_path(p) else "image")
        else:
            skipped.append({"path": str(p), "reason": "not found"})
    return items, skipped, ignored


# --------------------------------------------------------------------------- outputs


def _drawn_name(rel: Path) -> Path:
    return rel if rel.suffix.lower() in _WRITABLE else rel.with_suffix(".png")


def _write_image_outputs(args: argparse.Namespace, item: InputItem, image: np.ndarray, dets: np.ndarray,
                         save_min: float, draw_min: float) -> int:
    import cv2

    from .drawing import draw_detections

    out = args.out / item.rel
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = dets[dets[:, 4] >= save_min]
    if args.format == "wider":
        from ..io import write_prediction_file

        write_prediction_file(out.with_suffix(".txt"), item.rel.as_posix(), kept)
    else:
        record = {"image": str(item.path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                  "min_score": save_min, "detections": detections_to_records(kept)}
        out.with_suffix(".json").write_text(json.dumps(record))
    if not args.no_draw:
        drawn = draw_detections(image, dets, min_score=draw_min)
        target = args.out / _drawn_name(item.rel)
        if not cv2.imwrite(str(target), drawn):
            raise OSError(f"could not write {target}")
    return int((dets[:, 4] >= draw_min).sum())


# --------------------------------------------------------------------------- running


def _load(item: InputItem) -> Tuple[InputItem, Optional[np.ndarray], Optional[str]]:
    from ..io import read_image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            img = read_image(item.path)
        note = "; ".join(str(w.message) for w in caught) or None
        return item, img, note
    except ImageError as e:
        return item, None, str(e)
    except Exception as e:  # noqa: BLE001 - report and keep going
        return item, None, f"{type(e).__name__}: {e}"


def _batches(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _detect_many(detector: Any, images: List[np.ndarray]) -> List[Any]:
    """``detect_batch``, falling back to one image at a time if the batch fails (e.g. out of memory)."""
    try:
        return detector.detect_batch(images)
    except Exception:  # noqa: BLE001
        if len(images) == 1:
            raise
    out: List[Any] = []
    for im in images:
        try:
            out.append(detector.detect(im))
        except Exception as e:  # noqa: BLE001
            out.append(e)
    return out


def _run_images(args: argparse.Namespace, detector: Any, items: List[InputItem], stats: Dict[str, Any],
                save_min: float, draw_min: float) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="images", unit="img", disable=args.quiet or not items)
    with ThreadPoolExecutor(max_workers=2) as pool:
        for batch in _batches(items, max(1, args.batch_size)):
            loaded = list(pool.map(_load, batch))
            good = []
            for item, img, note in loaded:
                if img is None:
                    stats["skipped"].append({"path": str(item.path), "reason": note or "unreadable"})
                else:
                    if note:
                        stats["notes"].append({"path": str(item.path), "note": note})
                    good.append((item, img))
            if good:
                results = _detect_many(detector, [img for _, img in good])
                for (item, img), dets in zip(good, results):
                    if isinstance(dets, Exception):
                        stats["skipped"].append({"path": str(item.path),
                                                 "reason": f"detection failed: {type(dets).__name__}: {dets}"})
                        continue
                    try:
                        stats["faces"] += _write_image_outputs(args, item, img, dets, save_min, draw_min)
                        stats["images"] += 1
                    except Exception as e:  # noqa: BLE001
                        stats["skipped"].append({"path": str(item.path),
                                                 "reason": f"writing outputs failed: {type(e).__name__}: {e}"})
            bar.update(len(batch))
    bar.close()


def _run_video(args: argparse.Namespace, detector: Any, item: InputItem, stats: Dict[str, Any],
               save_min: float, draw_min: float) -> None:
    import cv2
    from tqdm import tqdm

    from .drawing import draw_detections

    cap = cv2.VideoCapture(str(item.path))
    if not cap.isOpened():
        stats["skipped"].append({"path": str(item.path), "reason": "cannot open video"})
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    if not np.isfinite(fps) or fps <= 0:
        fps = 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    out_base = args.out / item.rel
    out_base.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    frames = 0
    bar = tqdm(total=total or None, desc=item.path.name, unit="frame", disable=args.quiet)
    try:
        with open(out_base.with_suffix(".jsonl"), "w") as lines:
            done = False
            while not done:
                batch: List[np.ndarray] = []
                while len(batch) < max(1, args.batch_size):
                    ok, frame = cap.read()
                    if not ok:
                        done = True
                        break
                    batch.append(frame)
                if not batch:
                    break
                results = detector.detect_batch(batch)
                for frame, dets in zip(batch, results):
                    kept = dets[dets[:, 4] >= save_min]
                    lines.write(json.dumps({"frame": frames, "time_s": round(frames / fps, 4),
                                            "detections": detections_to_records(kept)}) + "\n")
                    if not args.no_draw:
                        if writer is None:
                            h, w = frame.shape[:2]
                            writer = cv2.VideoWriter(str(out_base.with_suffix(".mp4")),
                                                     cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                        writer.write(draw_detections(frame, dets, min_score=draw_min))
                    stats["faces"] += int((dets[:, 4] >= draw_min).sum())
                    frames += 1
                bar.update(len(batch))
    except Exception as e:  # noqa: BLE001
        stats["skipped"].append({"path": str(item.path),
                                 "reason": f"video failed after {frames} frames: {type(e).__name__}: {e}"})
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0 and not any(s["path"] == str(item.path) for s in stats["skipped"]):
        stats["skipped"].append({"path": str(item.path), "reason": "no frames could be read"})
    stats["frames"] += frames
    stats["videos"] += 1 if frames else 0


def _error(msg: str) -> int:
    print(f"dsfd detect: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dsfd detect`` (returns the exit code)."""
    from .detector import DEFAULT_MAX_SIZE, Detector

    if args.batch_size < 1:
        return _error("--batch-size must be >= 1")
    items, skipped, ignored = collect_inputs(args.paths)
    if not items:
        for s in skipped:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        return _error("no image or video inputs found")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            detector = Detector(
                weights=args.weights, network=args.network, backbone=args.backbone, device=args.device,
                dtype=args.dtype, **PostProcessConfig.from_args(args).as_dict(),
                max_size=args.max_size or DEFAULT_MAX_SIZE, accuracy_mode=args.accuracy_mode,
            )
        except (ValueError, OSError, RuntimeError) as e:  # bad file / name, failed download
            return _error(str(e))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)

    fmt_default = 0.0 if args.format == "wider" else DISPLAY_SCORE
    save_min = fmt_default if args.min_score is None else args.min_score
    draw_min = DISPLAY_SCORE if args.min_score is None else args.min_score
    args.out.mkdir(parents=True, exist_ok=True)
    stats: Dict[str, Any] = {"images": 0, "videos": 0, "frames": 0, "faces": 0, "skipped": list(skipped),
                             "notes": []}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [it for it in items if it.kind == "image"]
        _run_images(args, detector, images, stats, save_min, draw_min)
        for it in items:
            if it.kind == "video":
                _run_video(args, detector, it, stats, save_min, draw_min)
    for msg in sorted({str(w.message) for w in caught}):
        print(f"warning: {msg}", file=sys.stderr)
    elapsed = time.perf_counter() - start

    done = stats["images"] + stats["frames"]
    rate = done / elapsed if elapsed > 0 else 0.0
    summary = {
        "images": stats["images"], "videos": stats["videos"], "video_frames": stats["frames"],
        "faces": stats["faces"], "face_score_threshold": draw_min, "seconds": round(elapsed, 3),
        "images_per_second": round(rate, 3), "skipped": stats["skipped"], "notes": stats["notes"],
        "ignored_files": ignored, "detector": repr(detector), "device": str(detector.device),
        "dtype": str(detector.dtype).replace("torch.", ""), "out": str(args.out),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    line = f"{stats['images']} image(s)"
    if stats["videos"]:
        line += f", {stats['frames']} frame(s) of {stats['videos']} video(s)"
    line += (f", {stats['faces']} face(s) with score >= {draw_min:g}, {rate:.2f} images/s, "
             f"{len(stats['skipped'])} skipped")
    if ignored:
        line += f", {ignored} non-image file(s) ignored"
    print(line)
    for s in stats["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    for n in stats["notes"]:
        print(f"  note {n['path']}: {n['note']}")
    print(f"  ran on {detector.device} in {str(detector.dtype).replace('torch.', '')}"
          f"{' (channels_last)' if detector.channels_last else ''}")
    print(f"outputs written to {args.out}")
    return 1 if stats["skipped"] else 0
