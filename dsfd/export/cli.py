"""``dsfd export``: write a DSFD network as an ONNX file (dynamic batch, height and width).

Examples::

    dsfd export dsfd.onnx                                     # packaged default model, boxes + scores
    dsfd export dsfd_nms.onnx --nms --verify                  # + NonMaxSuppression; check with ONNX Runtime
    dsfd export released.onnx --weights released-resnet152    # the authors' network (downloads once)
    dsfd export raw.onnx --outputs raw --input-format float   # loc, conf, anchors; float [B, 3, H, W] input
    dsfd export dsfd_int8.onnx --int8                         # int8 QDQ raw graph, calibrated on WIDER train photos
    dsfd export dsfd_int8.onnx --int8 --calibration my_photos/  # ... calibrated on your own photos

The graph takes raw BGR images (``uint8 [B, H, W, 3]`` by default, or
``float32 [B, 3, H, W]`` with ``--input-format float``) and subtracts the
mean itself; see ``dsfd.export.exporter`` for every input and output.
``--verify`` runs the file in ONNX Runtime on a real photo (``--image``,
default the packaged ``dsfd/assets/grace_hopper.jpg``) and compares with
PyTorch.

``--int8`` writes the raw graph quantized by ONNX Runtime's static
quantization (QDQ; :mod:`dsfd.export.quantize`), for
``dsfd.Detector(backend="onnxruntime", weights=OUT)`` and ``dsfd detect /
eval --backend onnxruntime --weights OUT``; ``--verify`` then compares its
drawn faces with PyTorch float32's on the photo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli_options import nonempty_path, nonempty_text
from ..constants import BACKBONES
from ..postprocess import PostProcessConfig

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "export",
        help="write a DSFD network as an ONNX file (dynamic batch / height / width; optional NMS)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("out", type=nonempty_path, metavar="OUT.onnx", help="ONNX file to write")
    m = p.add_argument_group("model")
    m.add_argument("--weights", default=None, type=nonempty_text,
                   help="weights name (default, released-resnet152), checkpoint path or URL (default: default)")
    m.add_argument("--random", action="store_true",
                   help="export a randomly initialised --network/--backbone network instead (for speed tests)")
    m.add_argument("--network", choices=["paper", "released"], help="architecture (forced with --weights; "
                   "with --random default paper)")
    m.add_argument("--backbone", choices=list(BACKBONES),
                   help="backbone (forced with --weights; with --random default tiny)")
    g = p.add_argument_group("graph")
    g.add_argument("--input-format", choices=["uint8", "float"], default="uint8",
                   help="uint8 [B, H, W, 3] (default) or float32 [B, 3, H, W]; BGR 0-255 either way")
    g.add_argument("--outputs", choices=["raw", "boxes", "detections"], default="boxes",
                   help="raw: loc, conf, anchors; boxes: pixel boxes + face scores (default); "
                        "detections: after ONNX NonMaxSuppression")
    g.add_argument("--nms", action="store_true", help="shorthand for --outputs detections")
    PostProcessConfig.add_arguments(g)  # the NMS settings of --outputs detections
    g.add_argument("--opset", type=int, default=17, help="ONNX opset (17)")
    g.add_argument("--sample-size", type=int, nargs=2, default=(320, 416), metavar=("H", "W"),
                   help="tracing sample size; the file works at any size (320 416)")
    q = p.add_argument_group("int8 (ONNX Runtime static quantization, QDQ)")
    q.add_argument("--int8", action="store_true",
                   help="write the raw graph (loc, conf, anchors) in int8, calibrated on photos (implies --outputs raw)")
    q.add_argument("--calibration", nargs="+", type=nonempty_path, metavar="PHOTO_OR_DIR", default=None,
                   help="calibration photos / folders (default: 32 photos evenly spaced over the WIDER FACE "
                        "training images, <wider root>/WIDER_train/images; never the val photos)")
    q.add_argument("--calibration-count", type=int, default=None, metavar="N",
                   help="most calibration photos used (default 32)")
    q.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default=None,
                   help="how activation ranges are set (default: the measured recipe's, minmax)")
    v = p.add_argument_group("check")
    v.add_argument("--verify", action="store_true", help="run the file in ONNX Runtime and compare with PyTorch")
    v.add_argument("--image", type=nonempty_path, default=None, help="photo for --verify (default: the packaged one)")
    p.set_defaults(func=run)
    return p


def _error(msg: str) -> int:
    print(f"dsfd export: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``dsfd export`` (returns the exit code)."""
    from ..hub import WeightsDownloadError
    from .exporter import export_onnx, onnx_metadata, verify_onnx
    from .quantize import verify_int8

    outputs = "detections" if args.nms else args.outputs
    if args.int8:
        if outputs != "raw" and (args.nms or args.outputs != "boxes"):
            return _error("--int8 writes the raw graph (loc, conf, anchors): leave out --nms / --outputs")
        outputs = "raw"
    elif args.calibration or args.calibration_count or args.calibration_method:
        return _error("--calibration* options need --int8")
    model = None
    weights = args.weights
    try:
        if args.random:
            if weights is not None:
                return _error("--random and --weights exclude each other")
            from ..models import build_model, calibrate_random_model

            model = calibrate_random_model(build_model(args.network or "paper", args.backbone or "tiny")).eval()
        else:
            from ..models import load_weights

            model = load_weights(weights or "default", network=args.network, backbone=args.backbone)
        fp32_out = args.out.with_name(args.out.stem + ".fp32.tmp.onnx") if args.int8 else args.out
        path = export_onnx(
            fp32_out, model=model, input_format=args.input_format, outputs=outputs,
            **PostProcessConfig.from_args(args).as_dict(), opset=args.opset, sample_size=tuple(args.sample_size),
        )
        if args.int8:
            from .quantize import DEFAULT_CALIBRATION_COUNT, DEFAULT_RECIPE, quantize_int8

            try:
                path = quantize_int8(
                    fp32_out, args.out, args.calibration,
                    calibration=args.calibration_method or DEFAULT_RECIPE["calibration"],
                    count=args.calibration_count or DEFAULT_CALIBRATION_COUNT)
            finally:
                fp32_out.unlink(missing_ok=True)
    except (ValueError, OSError, WeightsDownloadError, ImportError) as e:
        return _error(str(e))
    meta = onnx_metadata(path)
    cfg = meta.get("config", {})
    size_mb = path.stat().st_size / 2**20
    print(f"wrote {path} ({size_mb:.1f} MiB): {cfg.get('network', '?')}/{cfg.get('backbone', '?')} network, "
          f"weights {'random' if args.random else (weights or 'default')}")
    inp = meta.get("input", {})
    print(f"  input  images: {inp.get('dtype')} [{', '.join('B' if c == 'B' else c for c in inp.get('layout', ''))}]"
          f" BGR 0-255 (mean subtracted in the graph); batch, height and width dynamic")
    outs = meta.get("outputs", {})
    print(f"  output {', '.join(outs.get('names', []))}")
    quant = meta.get("quantization")
    if quant:
        print(f"  int8 (QDQ): {quant['op_types']} ({quant['weights']} weights, {quant['activations']} activations, "
              f"{quant['calibration']} on {len(quant['calibration_photos'])} photos); {len(quant['float_nodes'])} "
              f"convolution(s) kept float ({', '.join(quant['keep_float']) or 'none'})")
    if args.verify and args.int8:
        try:
            report = verify_int8(path, model, image=args.image)
        except ImportError as e:
            return _error(f"--verify needs onnxruntime: {e}")
        print("  verify (int8 in ONNX Runtime vs PyTorch float32, faces drawn): " + json.dumps(report))
        return 0 if report["ok"] else 1
    if args.verify:
        try:
            report = verify_onnx(path, model, image=args.image)
        except ImportError as e:
            return _error(f"--verify needs onnxruntime: {e}")
        print("  verify (ONNX Runtime vs PyTorch): " + json.dumps(report))
        if not report.get("ok", False):
            return 1
    return 0
