"""``dsfd eval``: score WIDER FACE predictions, COCO metrics on your own faces, FDDB detections.

Examples::

    # your own faces (COCO JSON or a YOLO folder): COCO AP / AP50 / AR through pycocotools
    dsfd eval --weights runs/ft/final.pt --data my_faces.json --out runs/ft_eval
    dsfd eval --weights default --data my_yolo/ --split val --out runs/default_eval

    # score an existing prediction folder (<event>/<image>.txt)
    dsfd eval --predictions runs/preds --ground-truth ../shared/data/widerface/ground_truth

    # run the detector over the val images first, then score
    dsfd eval --weights dsfd.pth --data ../shared/data/widerface --split val [--accuracy-mode]

    # FDDB: ellipse folds + one detection file (or a folder of fold files)
    dsfd eval --fddb-folds FDDB-folds --fddb-detections dets.txt [--fddb-images originalPics]

Outputs (into ``--out``): ``ap.json`` and ``pr_{easy,medium,hard}.png`` for
WIDER FACE; ``coco_eval.json`` (the twelve COCOeval numbers), ``pr_coco.png``,
``coco_ground_truth.json`` and ``coco_results.json`` (to re-score them with
pycocotools yourself) for COCO / YOLO data; ``fddb.json``, ``fddb_roc.png`` and the official-layout
``fddb_DiscROC.txt`` / ``fddb_ContROC.txt`` for FDDB.  ``--out`` defaults to
``<predictions>_eval`` next to the prediction folder (or ``<fddb
detections>_eval``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from ..cli_options import add_data, add_device, add_dtype, add_max_size, add_progress, add_weights, nonempty_path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "eval",
        help="score WIDER FACE predictions (easy/medium/hard AP) and FDDB detections",
        description=__doc__.split("\n\n")[0],
    )
    w = p.add_argument_group("WIDER FACE")
    w.add_argument("--predictions", type=nonempty_path, help="prediction folder <event>/<image>.txt (read, or written "
                   "to when --weights is given)")
    w.add_argument("--ground-truth", type=nonempty_path, help="folder of wider_{face,easy,medium,hard}_val.mat "
                   "(default: <data>/ground_truth, <data> = --data or $DSFD_WIDER_ROOT)")
    w.add_argument("--iou", type=float, default=0.5, help="IoU threshold (default 0.5)")
    d = p.add_argument_group("running the detector")
    add_weights(d, "weights name (default, released-resnet152), file or URL: run the detector over the images first")
    add_max_size(d)
    add_dtype(d, "network precision with --weights")
    add_device(d, "the network (with --weights)")
    d.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="what runs the network with --weights: torch (default) or onnxruntime (CPU; --weights may "
                        "then be an .onnx file from dsfd export --outputs raw / --int8)")
    d.add_argument("--accuracy-mode", action="store_true",
                   help="multi-scale + flip test as in the released DSFD evaluation (slow)")
    u = p.add_argument_group("data: WIDER FACE (default), or your own faces (COCO / YOLO ground truth)")
    add_data(u, repeatable=False,
             data_help="WIDER FACE root (default $DSFD_WIDER_ROOT or ../shared/data/widerface), or your own "
                       "faces: a COCO .json file or a YOLO folder (images/ + labels/)",
             category_help="COCO category / YOLO class scored as faces (repeatable; default: the only one, or "
                           "'face')")
    u.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split to run on (default val; WIDER FACE: val only; YOLO: images/<split> when present)")
    u.add_argument("--coco-results", type=nonempty_path, metavar="FILE.json",
                   help="score these COCO-format detections (image ids as in coco_ground_truth.json) instead "
                        "of running --weights")
    f = p.add_argument_group("FDDB")
    f.add_argument("--fddb-folds", type=nonempty_path, help="FDDB-folds folder (FDDB-fold-XX-ellipseList.txt)")
    f.add_argument("--fddb-detections", type=nonempty_path, help="FDDB detection file, or folder of *.txt files")
    f.add_argument("--fddb-det-format", choices=["rect", "ellipse"], default="rect",
                   help="detections as x y w h score (rect, default) or ra rb angle cx cy score")
    f.add_argument("--fddb-images", type=nonempty_path, help="FDDB image root (originalPics); if given, regions are "
                   "clipped to the image like the official tool")
    p.add_argument("--out", type=nonempty_path, help="output folder (default: <predictions>_eval)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_progress(p, old_quiet=True)
    p.set_defaults(func=run)
    return p


def _error(msg: str) -> int:
    print(f"dsfd eval: error: {msg}", file=sys.stderr)
    return 2


def _load_detector(weights: str, accuracy_mode: bool, dtype: str = "auto", **options) -> Callable:
    """``dsfd.inference.load_detector``: a callable from a BGR ``uint8`` image to ``[K, 5]`` pixel boxes + scores.

    The one place where evaluation uses inference (only for ``--weights``),
    imported here so that scoring needs neither torch nor OpenCV.
    """
    try:
        from ..inference import load_detector
    except ImportError as e:
        raise RuntimeError(f"running the detector needs dsfd.inference (torch, OpenCV), which cannot be "
                           f"imported ({e}); score an existing prediction folder with --predictions DIR") from e
    try:
        return load_detector(str(weights), accuracy_mode=accuracy_mode, dtype=dtype, **options)
    except ImportError as e:  # backend="onnxruntime" without the package: its one-line message
        raise RuntimeError(str(e)) from None


def _detector_options(args) -> dict:
    """The :class:`dsfd.Detector` options the shared flags set (``--backend``, ``--device``, ``--max-size``);
    nothing for their defaults (the load_detector contract)."""
    from ..cli_options import device_or_none

    backend = getattr(args, "backend", "torch")
    opts = {} if backend == "torch" else {"backend": backend}
    device = device_or_none(getattr(args, "device", None))
    if device is not None:
        opts["device"] = device
    if getattr(args, "max_size", None) is not None:
        opts["max_size"] = args.max_size
    return opts


def _run_detector(args, gt, data_root: Path, pred_dir: Path) -> int:
    from tqdm import tqdm

    from ..io import ImageError, read_image, write_prediction_file

    detector = _load_detector(args.weights, args.accuracy_mode, getattr(args, "dtype", "auto"),
                              **_detector_options(args))
    if args.progress:
        print(f"detector: {detector!r}", file=sys.stderr)
    image_root = data_root / f"WIDER_{args.split}" / "images"
    unreadable = []
    items = list(zip(gt.events, gt.names))
    for event, name in tqdm(items, desc="detecting", unit="img", disable=not args.progress):
        try:
            img = read_image(image_root / event / f"{name}.jpg")
        except ImageError as e:
            unreadable.append(str(e))
            continue
        det = detector(img)
        det = det.detach().cpu().numpy() if hasattr(det, "detach") else det
        write_prediction_file(pred_dir / event / f"{name}.txt", f"{event}/{name}.jpg", det)
    if unreadable:
        print(f"warning: {len(unreadable)} image(s) could not be read, first: {unreadable[0]}", file=sys.stderr)
    return len(items) - len(unreadable)


def _eval_wider(args) -> int:
    from ..data_paths import wider_root
    from .wider import evaluate_wider, load_wider_ground_truth

    data_root = args.data if args.data is not None else wider_root()
    gt_dir = args.ground_truth if args.ground_truth is not None else data_root / "ground_truth"
    try:
        gt = load_wider_ground_truth(gt_dir)
    except FileNotFoundError as e:
        return _error(str(e))

    pred_dir: Optional[Path] = args.predictions
    out_dir: Optional[Path] = args.out
    if args.weights is not None:
        if pred_dir is None:
            if out_dir is None:
                return _error("--weights needs --predictions DIR or --out DIR to write the predictions to")
            pred_dir = out_dir / "predictions"
        try:
            n = _run_detector(args, gt, data_root, pred_dir)
        except (RuntimeError, ValueError, FileNotFoundError) as e:  # incl. unknown names, failed downloads
            return _error(str(e))
        print(f"wrote predictions for {n} image(s) to {pred_dir}")
    if pred_dir is None:
        return _error("nothing to evaluate: give --predictions DIR (or --weights, or --fddb-folds)")
    if not pred_dir.is_dir():
        return _error(f"prediction folder not found: {pred_dir}")
    if out_dir is None:
        out_dir = pred_dir.resolve().parent / f"{pred_dir.resolve().name}_eval"

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_wider(pred_dir, gt, iou_threshold=args.iou, progress=args.progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for problem in result.warnings:  # <file>:<line>: <problem>, every one
        print(f"  {problem}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.to_json(out_dir / "ap.json")
    print(result.table())
    if not args.no_plots:
        from .plots import plot_wider_pr

        plot_wider_pr({pred_dir.name: result}, out_dir)
    print(f"results written to {out_dir}")
    return 0


def _image_sizes(image_root: Path, names) -> dict:
    """``{name: (H, W)}`` of the images that can be read (the others are not clipped)."""
    from ..io import ImageError, read_image

    sizes = {}
    for n in names:
        try:
            sizes[n] = read_image(image_root / f"{n}.jpg").shape[:2]
        except ImageError:
            continue
    return sizes


def _eval_fddb(args) -> int:
    from .fddb import evaluate_fddb, read_fddb_detections, read_fddb_folds

    if args.fddb_detections is None:
        return _error("--fddb-folds needs --fddb-detections (running the detector on FDDB is not wired yet)")
    try:
        ann = read_fddb_folds(args.fddb_folds)
        dets = read_fddb_detections(args.fddb_detections, args.fddb_det_format)
    except (FileNotFoundError, ValueError) as e:
        return _error(str(e))
    # score the annotated images the detection file(s) cover (a record with count 0 counts)
    names = [n for n in ann if n in dets]
    if not names:
        return _error(f"no image of {args.fddb_detections} is in the FDDB annotations")
    if len(names) < len(ann):
        print(f"note: scoring the {len(names)} annotated image(s) that have detections "
              f"(of {len(ann)} annotated)", file=sys.stderr)
    sizes = _image_sizes(args.fddb_images, names) if args.fddb_images is not None else None
    result = evaluate_fddb(ann, dets, args.fddb_det_format, image_sizes=sizes, image_list=names,
                           progress=args.progress)
    det_path = args.fddb_detections.resolve()
    out_dir = args.out if args.out is not None else det_path.parent / f"{det_path.stem}_eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    result.to_json(out_dir / "fddb.json")
    result.write_roc_files(out_dir / "fddb_")
    print(result.table())
    if not args.no_plots:
        from .plots import plot_fddb_roc

        plot_fddb_roc(result, out_dir / "fddb_roc.png")
    print(f"FDDB results written to {out_dir}")
    return 0


def _user_format(args) -> Optional[str]:
    """``"coco"`` / ``"yolo"`` when ``--data`` holds your own faces, ``None`` for WIDER FACE (scored as before)."""
    fmt = getattr(args, "data_format", "auto")
    if args.data is None or fmt == "wider":
        return None
    if fmt != "auto":
        return fmt
    if (args.data / "wider_face_split").is_dir() or (args.data / "ground_truth").is_dir():
        return None
    from ..data import detect_format  # torch is needed from here on anyway (reading and detecting)

    found = detect_format(args.data)
    return None if found == "wider" else found


def _eval_user_data(args, fmt: str) -> int:
    """COCO / YOLO ground truth: run the detector (or read --coco-results), score with pycocotools."""
    import json

    import numpy as np

    from .coco import coco_detections, coco_ground_truth, evaluate_coco

    if args.predictions is not None:
        return _error("--predictions is a WIDER FACE prediction folder; with COCO / YOLO ground truth give "
                      "--weights (run the detector) or --coco-results FILE.json")
    if (args.weights is None) == (args.coco_results is None):
        return _error(f"{fmt.upper()} ground truth in --data: give --weights W (run the detector) or "
                      "--coco-results FILE.json (score existing detections), one of them")
    if args.out is None:
        return _error("--out DIR is needed (coco_eval.json, pr_coco.png, the ground truth and results go there)")
    from ..data import build_dataset

    try:
        ds = build_dataset(args.data, args.split, format=fmt, images=args.images, category=args.category,
                           strict=args.strict, paint_ignore=False)
    except (ValueError, OSError) as e:  # incl. AnnotationError (--strict, truncated JSON), missing folders
        return _error(str(e))
    if ds.problems:
        counts = ", ".join(f"{n} {r}" for r, n in ds.root_counts[0].get("skipped", {}).items())
        print(f"warning: {len(ds.problems)} bad annotation(s) skipped ({counts}); first: {ds.problems[0]}",
              file=sys.stderr)
    detector = None
    if args.weights is not None:
        opts = _detector_options(args)
        try:
            detector = _load_detector(args.weights, args.accuracy_mode, getattr(args, "dtype", "auto"), **opts)
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            return _error(str(e))
        if args.progress:
            print(f"detector: {detector!r}", file=sys.stderr)
    from tqdm import tqdm

    images, results, unreadable = [], [], []
    for i in tqdm(range(len(ds)), desc="detecting" if detector else "reading", unit="img", disable=not args.progress):
        got = ds.read(i)
        if got is None:
            unreadable.append(str(ds.image_path(i)))
            continue
        img, faces, ignore = got
        rec = ds.annotations[i]
        image_id = rec.image_id if rec.image_id is not None else i + 1
        images.append({"id": image_id, "file_name": rec.path, "width": img.shape[1], "height": img.shape[0],
                       "faces": faces, "ignore": ignore})
        if detector is not None:
            det = detector(img)
            det = det.detach().cpu().numpy() if hasattr(det, "detach") else np.asarray(det)
            results.extend(coco_detections(image_id, det))
    if unreadable:
        print(f"warning: {len(unreadable)} image(s) could not be read and are not scored, first: {unreadable[0]}",
              file=sys.stderr)
    if not images:
        return _error(f"no readable image in {args.data}")
    gt = coco_ground_truth(images)
    if args.coco_results is not None:
        try:
            results = json.loads(args.coco_results.read_text())
        except (OSError, ValueError) as e:
            return _error(f"cannot read --coco-results {args.coco_results}: {e}")
        if not isinstance(results, list):
            return _error(f"--coco-results {args.coco_results}: expected a list of detections")
        known = {im["id"] for im in images}
        foreign = sum(1 for r in results if not isinstance(r, dict) or r.get("image_id") not in known)
        if foreign:
            return _error(f"--coco-results {args.coco_results}: {foreign} detection(s) name image ids that are not "
                          f"in the ground truth (ids as in {args.out / 'coco_ground_truth.json'})")
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "coco_ground_truth.json").write_text(json.dumps(gt))
    if detector is not None:
        (out_dir / "coco_results.json").write_text(json.dumps(results))
    try:
        result = evaluate_coco(gt, results)
    except (ImportError, ValueError, KeyError, TypeError) as e:
        return _error(str(e))
    result.extra = {"data": str(args.data), "format": fmt, "split": args.split,
                    "weights": args.weights, "coco_results": str(args.coco_results) if args.coco_results else None,
                    "unreadable_images": len(unreadable), "bad_annotations": ds.root_counts[0].get("skipped", {})}
    result.to_json(out_dir / "coco_eval.json")
    if args.progress:
        print(result.summary.rstrip())
    print(result.table())
    if not args.no_plots and result.pr_curves:
        from .plots import plot_coco_pr

        plot_coco_pr(result, out_dir / "pr_coco.png", title=f"{Path(args.data).name}: faces, COCO metrics")
    print(f"results written to {out_dir}")
    return 0


def run(args) -> int:
    """Entry point of ``dsfd eval`` (returns the exit code)."""
    try:
        fmt = _user_format(args)
    except (ValueError, OSError) as e:
        return _error(str(e))
    if fmt is not None:
        if args.fddb_folds is not None:
            return _error("--fddb-folds cannot be combined with COCO / YOLO --data; run them separately")
        return _eval_user_data(args, fmt)
    for flag, value in (("--coco-results", args.coco_results), ("--images", args.images),
                        ("--category", args.category)):
        if value is not None:
            return _error(f"{flag} needs COCO / YOLO ground truth in --data")
    if args.split != "val":
        return _error("WIDER FACE is scored on its val split (--split val)")
    wider = args.predictions is not None or args.weights is not None
    if args.fddb_folds is None and not wider:
        return _error("nothing to evaluate: give --predictions DIR, --weights W, or --fddb-folds DIR")
    if args.fddb_detections is not None and args.fddb_folds is None:
        return _error("--fddb-detections needs --fddb-folds")
    code = 0
    if wider:
        code = _eval_wider(args)
    if code == 0 and args.fddb_folds is not None:
        code = _eval_fddb(args)
    return code
