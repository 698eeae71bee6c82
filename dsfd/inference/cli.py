"""``dsfd detect``: run the face detector over images, folders and videos, in one process or many.

Examples::

    dsfd detect photo.jpg --weights dsfd.pth                 # -> detections/photo.jpg + photo.json
    dsfd detect WIDER_val/images --out preds --output-format wider  # -> preds/<event>/<name>.txt (+ drawings)
    dsfd detect clip.mp4 --out out --batch-size 16           # -> out/clip.mp4 (annotated) + out/clip.jsonl
    dsfd detect photos/ --out run --output-format coco --no-draw --resume            # continue a killed run
    torchrun --nproc_per_node 8 -m dsfd detect photos/ --out run --output-format jsonl  # 8 ranks, one merged result
    dsfd detect party/ street.mp4 --out public --anonymize blur  # copies with every face blurred

Inputs: image files, folders (searched recursively for image and video
extensions; other files are ignored and counted) and video files (read with
``cv2.VideoCapture``). Outputs go to ``--out`` (default ``detections``):
files given directly are written as ``<out>/<name>``, files found in a folder
keep their path relative to that folder.

Per image: the annotated image (boxes with scores; with ``--anonymize
blur|pixelate|box`` the faces hidden instead, see
:mod:`dsfd.inference.anonymize`; none with ``--no-draw``) and,
by ``--output-format``: ``<name>.json`` (``{"image", "width", "height",
"detections": [{"box": [x1, y1, x2, y2], "score"}]}``), the WIDER FACE
prediction file ``<name>.txt`` (``wider``), one line of the merged
``detections.jsonl`` (``jsonl``) or an entry of ``coco_results.json`` /
``coco_images.json`` (``coco``, for pycocotools and FiftyOne). Per video:
``<name>.mp4`` annotated or anonymised (H.264 with the source's sound, frames, frame times and size, through
PyAV; see :mod:`dsfd.inference.video`) and ``<name>.jsonl``, one JSON line per frame.
``summary.json`` lists what was processed (per rank and in all) and every
skipped input with the reason; the exit code is 0 when nothing was skipped,
1 otherwise, 2 for usage errors, 3 when the disk filled up (one line names
the file, says how many inputs are done and gives the ``--resume`` command).

Large runs (see :mod:`dsfd.inference.runner`): decoding in ``--workers``
processes with batches of similar sizes; every output written atomically and
committed to a per-rank journal, so ``--resume`` continues a killed run
without redoing or trusting half-done work; under ``torchrun`` each rank
takes every ``WORLD_SIZE``-th input on ``cuda:LOCAL_RANK`` (or the CPU), and
rank 0 merges.

Thresholds: ``--score-threshold`` (0.01) is the detector's pre-NMS cut;
``--min-score`` is the cut for drawing and saving (default: the model's own threshold; for
``--output-format wider`` everything is saved by default, as the evaluation needs).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

from ..cli_options import (add_device, add_dtype, add_max_size, add_progress, add_weights, deprecated_alias,
                           device_or_none, nonempty_path)
from ..constants import BACKBONES, DISPLAY_SCORE
from ..models.default_model import RANDOM_BACKBONE
from ..postprocess import PostProcessConfig
from .anonymize import ANONYMIZE_METHODS, DEFAULT_MARGIN
from .tracking import HOLD_SECONDS
from .runner import (FORMATS, DiskFullError, InputItem, RankInfo, RunOptions, atomic_write_text, collect_inputs,
                     run_detection)

__all__ = ["add_parser", "run", "collect_inputs", "InputItem"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detect`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "detect",
        help="detect faces in images, folders and videos; write annotated copies and JSON / WIDER files",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("paths", nargs="+", type=nonempty_path, metavar="PATH",
                   help="image files, folders (recursive) or video files")
    p.add_argument("--out", type=nonempty_path, default=Path("detections"), help="output folder (default: detections)")
    m = p.add_argument_group("model")
    add_weights(m, "weights name (default, released-resnet152; downloaded once into torch's hub cache), checkpoint "
                   "path or URL (default: the packaged default model)")
    m.add_argument("--network", choices=["paper", "released"], help="architecture (detected from --weights; "
                   "with --random default paper)")
    m.add_argument("--backbone", choices=list(BACKBONES),
                   help=f"backbone (detected from --weights; with --random default {RANDOM_BACKBONE})")
    m.add_argument("--random", action="store_true",
                   help="run a randomly initialised --network / --backbone network (speed and smoke tests; its "
                        "boxes mean nothing); without --weights or --random, --network / --backbone are an error")
    add_device(m)
    add_dtype(m)
    m.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="what runs the network: torch (default) or onnxruntime (CPU; PyTorch weights are exported "
                        "once, or --weights is an .onnx file from dsfd export --outputs raw / --int8; the same "
                        "decoding and NMS; needs pip install 'dsfd[export]')")
    d = p.add_argument_group("detection")
    PostProcessConfig.add_arguments(d)
    d.add_argument("--min-score", type=float, default=None,
                   help=f"drawing / saving threshold (default: the model's own, stored with its weights and chosen from "
                        f"its PR curve; {DISPLAY_SCORE} for weights without one; --output-format wider saves all by default; "
                        f"with --anonymize: the model's hiding threshold hide_score, chosen for recall)")
    d.add_argument("--accuracy-mode", action="store_true",
                   help="multi-scale + flip test of the released WIDER protocol (~11 passes per image, slow)")
    d.add_argument("--batch-size", type=int, default=4,
                   help="images (or video frames) per forward pass, grouped by similar size (4)")
    add_max_size(d)
    o = p.add_argument_group("output")
    o.add_argument("--output-format", dest="output_format", choices=list(FORMATS), default="json",
                   help="json: <name>.json per image; wider: WIDER FACE .txt files; jsonl: one merged "
                        "detections.jsonl; coco: coco_results.json + coco_images.json (default json)")
    o.add_argument("--format", dest="output_format", choices=list(FORMATS),
                   action=deprecated_alias("--output-format"))
    o.add_argument("--no-draw", action="store_true", help="do not write annotated images / videos")
    o.add_argument("--anonymize", choices=list(ANONYMIZE_METHODS), default=None,
                   help="write copies of the photos / videos with every kept face hidden (blurred, pixelated or "
                        "covered by a black box) instead of boxed; faces from --min-score (default: the model's "
                        "hiding threshold, hide_score, chosen for recall and stored with its weights; its drawing "
                        "threshold for weights without one)")
    o.add_argument("--anonymize-margin", type=float, default=DEFAULT_MARGIN, metavar="M",
                   help=f"grow each face box by M times its width / height on every side before hiding it, "
                        f"so hair and chin edges are covered (default {DEFAULT_MARGIN})")
    o.add_argument("--anonymize-hold", type=float, default=HOLD_SECONDS, metavar="S",
                   help=f"videos: a face stays hidden S seconds after the detector last saw it, and boxes between "
                        f"two detections of a face up to S apart are interpolated (an IoU tracker; frames wait "
                        f"S seconds in a buffer); 0: each frame alone (default {HOLD_SECONDS})")
    add_progress(o, old_quiet=True)
    r = p.add_argument_group("large runs")
    r.add_argument("--workers", type=int, default=None,
                   help="image / video decoding processes (0: in the main one; default 2 on GPUs, 0 on the CPU, "
                        "where decoding workers compete with the network for the cores)")
    r.add_argument("--resume", action="store_true",
                   help="skip inputs a previous run into the same --out committed (after a kill or a crash)")
    p.set_defaults(func=run)
    return p


def _error(msg: str) -> int:
    print(f"dsfd detect: error: {msg}", file=sys.stderr)
    return 2


def _device_for(info: RankInfo, requested: Optional[str]) -> Optional[str]:
    """``cuda:LOCAL_RANK`` for each rank of a multi-rank run on GPUs; otherwise what was asked."""
    import torch

    if not info.distributed:
        return requested
    if requested is not None and requested != "cuda":
        return requested
    if not torch.cuda.is_available():
        return requested or "cpu"  # "cuda" without a GPU: the Detector says so
    # a bare "cuda" too: each rank its own GPU (torch.cuda.set_device needs an index)
    return f"cuda:{info.local_rank % torch.cuda.device_count()}"  # more ranks than GPUs: they share


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: the one typed, with ``--resume``."""
    import os
    import shlex

    argv = list(sys.argv)
    launcher = os.path.basename(argv[0]) if argv else ""
    if "detect" in argv[1:] and (launcher in ("dsfd", "__main__.py") or launcher.startswith("dsfd")):
        rest = argv[argv.index("detect", 1) + 1:]
    else:  # called from Python: the inputs, the output folder and what the pictures show
        rest = [*map(str, args.paths), "--out", str(args.out)]
        if args.anonymize:
            rest += ["--anonymize", args.anonymize]
        if args.no_draw:
            rest.append("--no-draw")
        if args.output_format != "json":
            rest += ["--output-format", args.output_format]
    if "--resume" not in rest:
        rest.append("--resume")
    return "dsfd detect " + shlex.join(rest)


def _disk_full(args: argparse.Namespace, items: Any, e: "DiskFullError") -> int:
    """One line instead of a traceback: the file, how far the run got, how to continue (exit code 3)."""
    from .runner import committed_inputs

    try:
        done = committed_inputs(args.out)
        n_done = sum(1 for it in items if it.rel.as_posix() in done)
    except OSError:
        n_done = 0
    print(f"dsfd detect: error: no space left on the device: could not write {e.path}; {n_done} of "
          f"{len(items)} input(s) are done and kept; free some space and continue with: {_resume_command(args)}",
          file=sys.stderr)
    return 3


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dsfd detect`` (returns the exit code)."""
    if args.batch_size < 1:
        return _error("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        return _error("--workers must be >= 0")
    if args.anonymize and args.no_draw:
        return _error("--anonymize writes anonymised copies; it cannot be combined with --no-draw")
    if args.anonymize_margin < 0:
        return _error("--anonymize-margin must be >= 0")
    if args.anonymize_hold < 0:
        return _error("--anonymize-hold must be >= 0")
    if args.weights is None and (args.network or args.backbone) and not args.random:
        return _error("--network / --backbone without --weights would run a randomly initialised network; give "
                      "--weights, or --random to run one on purpose (the packaged default model needs neither)")
    if args.random and args.weights is not None:
        return _error("--random and --weights exclude each other")
    try:
        info = RankInfo.from_env()
    except ValueError as e:
        return _error(str(e))
    items, skipped, ignored = collect_inputs(args.paths, exclude=args.out)
    if not items:
        for s in skipped:
            print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
        return _error("no image or video inputs found")
    device = _device_for(info, device_or_none(args.device))
    group = False
    if info.distributed:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            if device is not None and str(device).startswith("cuda"):
                torch.cuda.set_device(torch.device(device))  # an indexed device (see _device_for)
            # gloo even on GPUs: the ranks only exchange small summaries at the end, and gloo
            # (unlike NCCL) lets several ranks share one GPU
            dist.init_process_group("gloo")
            group = True
    try:
        return _run(args, info, items, skipped, ignored, device)
    finally:
        if group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(args: argparse.Namespace, info: RankInfo, items: Any, skipped: Any, ignored: int,
         device: Optional[str]) -> int:
    from .detector import DEFAULT_MAX_SIZE, Detector

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            random_model = None
            if args.random:  # asked for: a calibrated random network of that architecture, no weights at all
                from ..models import build_model, calibrate_random_model

                random_model = calibrate_random_model(
                    build_model(args.network or "paper", args.backbone or RANDOM_BACKBONE)).eval()
            detector = Detector(
                model=random_model,
                weights=None if args.random else args.weights,
                network=None if args.random else args.network,
                backbone=None if args.random else args.backbone, device=device,
                dtype=args.dtype, **PostProcessConfig.from_args(args).as_dict(),
                max_size=args.max_size or DEFAULT_MAX_SIZE, accuracy_mode=args.accuracy_mode, backend=args.backend,
            )
        except (ValueError, OSError, RuntimeError, ImportError) as e:  # bad file / name, failed download, no onnxruntime
            return _error(str(e))
    if info.is_main:
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)

    # the model's own drawing threshold (stored with its weights), unless --min-score says otherwise
    display = detector.display_score
    if args.anonymize:  # hiding: the model's recall-first threshold (its display_score for weights without one)
        display = getattr(detector, "hide_score", None) or display
    own_hide = getattr(getattr(detector, "model", None), "hide_score", None) is not None
    threshold_source = ("--min-score" if args.min_score is not None else
                        "hide_score (the model's hiding threshold)" if args.anonymize and own_hide else
                        "display_score (these weights store no hiding threshold; their drawing threshold)"
                        if args.anonymize else "display_score (the model's drawing threshold)")
    fmt_default = 0.0 if args.output_format == "wider" else display
    opts = RunOptions(
        out=args.out, format=args.output_format, draw=not args.no_draw,
        save_min=fmt_default if args.min_score is None else args.min_score,
        draw_min=display if args.min_score is None else args.min_score,
        batch_size=args.batch_size, resume=args.resume, progress=args.progress,
        anonymize=args.anonymize, margin=args.anonymize_margin, hold=args.anonymize_hold,
        # measured on a 2-core CPU: 2 workers gave 0.86x the images/s of none (benchmarks/detect_pipeline.py)
        workers=args.workers if args.workers is not None else (2 if detector.device.type == "cuda" else 0),
    )
    floor = min(opts.save_min, opts.draw_min)
    if args.score_threshold == PostProcessConfig.score_threshold and not args.accuracy_mode:
        # nothing scoring below `floor` is drawn or saved: filter there before NMS (the same boxes, fewer to sort)
        detector.postprocess = detector.postprocess.filtering_at(floor)
    extra = {"face_score_threshold": opts.draw_min, "face_score_threshold_from": threshold_source,
             "anonymize": args.anonymize, "ignored_files": ignored, "detector": repr(detector),
             "device": str(detector.device), "dtype": str(detector.dtype).replace("torch.", "")}
    try:
        summary = run_detection(detector, items, opts, info, extra)
        if summary is None:  # not rank 0: rank 0 reports for everyone
            return 0
        summary["skipped"] = list(skipped) + summary["skipped"]
        atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
    except DiskFullError as e:
        return _disk_full(args, items, e)
    line = f"{summary['images']} image(s)"
    if summary["videos"]:
        line += f", {summary['video_frames']} frame(s) of {summary['videos']} video(s)"
    line += (f", {summary['faces']} face(s) {'hidden, ' if args.anonymize else 'with '}score >= {opts.draw_min:g} "
             f"({threshold_source.split(' ')[0]}), "
             f"{summary['images_per_second']:.2f} images/s, {len(summary['skipped'])} skipped")
    if info.distributed:
        line += f" ({info.world_size} ranks)"
    if summary["resumed_inputs"]:
        line += f", {summary['resumed_inputs']} already done (resumed)"
    if ignored:
        line += f", {ignored} non-image file(s) ignored"
    print(line)
    for s in summary["skipped"]:
        print(f"  skipped {s['path']}: {s['reason']}")
    for n in summary["notes"]:
        print(f"  note {n['path']}: {n['note']}" if n["path"] else f"  {n['note']}")
    print(f"  ran on {detector.device} in {detector.precision}"
          f"{' (ONNX Runtime)' if detector.backend == 'onnxruntime' else ''}"
          f"{' (channels_last)' if detector.channels_last else ''}")
    print(f"outputs written to {args.out}")
    return 1 if summary["skipped"] else 0
