"""Does static int8 quantization (PT2E, x86 quantizer) beat bf16 on this CPU? Model-only latency at a fixed size.

The flow PyTorch recommends for int8 CPU inference: ``torch.export`` the
network at a fixed input size, ``prepare_pt2e`` with the
``X86InductorQuantizer`` (static, per-channel weights), calibrate on real
photos (WIDER FACE training images resized to the size), ``convert_pt2e``,
then ``torch.compile`` with Inductor's freezing so the quantized convolutions
run as oneDNN int8 kernels. Timed against the same network in eager fp32,
eager bf16 autocast + channels_last (what :class:`dsfd.Detector` picks on a
CPU with bf16 in hardware) and ``torch.compile`` of the bf16 path, in one run.
The int8 outputs are compared with fp32 on held-out photos (face-score
agreement on the top anchors).

Needs ``torchao`` (``pip install --no-deps torchao``; PT2E moved there
from ``torch.ao``). int8 is kept in the package only if it is faster than
bf16 here and loses at most 0.01 AP; this script measures the first
condition, docs/speed.md records the outcome.

    python benchmarks/int8.py                     # default model, 640x480
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from common import hardware_info, parse_res, write_result
from dsfd.constants import BGR_MEAN
from dsfd.data_paths import wider_root
from dsfd.io import read_image
from dsfd.models import default_weights_path, load_weights
from dsfd.models.heads import decode_predictions


def fold_batchnorms(model: torch.nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv into it (``convN``/``bnN`` pairs,
    consecutive pairs in a Sequential); the quantizer's pattern matcher fails on unfolded norms."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for mod in list(model.modules()):
        if isinstance(mod, torch.nn.Sequential):
            items = list(mod._modules.items())
            for (n1, a), (n2, b) in zip(items, items[1:]):
                if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d):
                    mod._modules[n1] = fuse_conv_bn_eval(a, b)
                    mod._modules[n2] = torch.nn.Identity()
                    folded += 1
        for name in list(mod._modules):
            if name.startswith("conv") and name[4:].isdigit():
                bn = "bn" + name[4:]
                a, b = mod._modules.get(name), mod._modules.get(bn)
                if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d):
                    mod._modules[name] = fuse_conv_bn_eval(a, b)
                    mod._modules[bn] = torch.nn.Identity()
                    folded += 1
    return folded


class SecondShot(torch.nn.Module):
    """The inference graph (second shot, raw outputs) as plain tensors for torch.export."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        out = self.model(x, shots=2).second
        return out.loc, out.conf


def photos(split: str, n: int, width: int, height: int, offset: int = 0) -> List[torch.Tensor]:
    import cv2

    files = sorted((wider_root() / f"WIDER_{split}" / "images").glob("*/*.jpg"))[offset: offset + n]
    if not files:
        raise SystemExit(f"no WIDER FACE {split} images under {wider_root()}")
    mean = torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    out = []
    for f in files:
        img = cv2.resize(read_image(f), (width, height), interpolation=cv2.INTER_AREA)
        out.append(torch.from_numpy(img).permute(2, 0, 1)[None].float() - mean)
    return out


def median_ms(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t) * 1e3


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="weights (default: the packaged default model)")
    p.add_argument("--res", default="vga")
    p.add_argument("--calib", type=int, default=16, help="calibration photos (WIDER train)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )
    import torch._inductor.config as inductor_config

    width, height = parse_res(args.res)
    model = load_weights(args.weights or default_weights_path(), map_location="cpu").eval()
    for m in model.modules():  # in-place ReLUs confuse the quantizer's pattern matching
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    net = SecondShot(model).eval()
    quant_net = copy.deepcopy(net)
    folded = fold_batchnorms(quant_net)
    calib = photos("train", args.calib, width, height)
    held_out = photos("val", 4, width, height)
    x = held_out[0]
    anchors = model(x, shots=2).second.anchors
    rows: Dict[str, Dict[str, float]] = {}
    timings: Dict[str, float] = {}

    with torch.no_grad():
        ref = [net(h) for h in held_out]
        timings["fp32 eager"] = median_ms(lambda: net(x), args.warmup, args.iters)

        net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def bf16() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net_cl(x_cl)

        timings["bf16 eager (Detector's choice)"] = median_ms(bf16, args.warmup, args.iters)

        t0 = time.perf_counter()
        inductor_config.freezing = True
        compiled_bf16 = torch.compile(net_cl)

        def bf16_compiled() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled_bf16(x_cl)

        bf16_compiled()
        compile_bf16_s = time.perf_counter() - t0
        timings["bf16 torch.compile"] = median_ms(bf16_compiled, args.warmup, args.iters)

        t0 = time.perf_counter()
        import dsfd.ops

        int8_error = None
        compiled_int8 = None
        try:
            with dsfd.ops.use_reference():  # plain-PyTorch top-down step: no dsfd:: op in the exported graph
                exported = torch.export.export(quant_net, (x,)).module()
            quantizer = X86InductorQuantizer()
            quantizer.set_global(get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            for c in calib:
                prepared(c)
            converted = convert_pt2e(prepared)
            compiled_int8 = torch.compile(converted)
            compiled_int8(x)
        except Exception as e:  # recorded: the outcome of the attempt is the measurement
            int8_error = f"{type(e).__name__}: {e}"
            print(f"int8 quantization failed: {int8_error}", file=sys.stderr)
        quantize_s = time.perf_counter() - t0
        if compiled_int8 is not None:
            timings["int8 PT2E + torch.compile"] = median_ms(lambda: compiled_int8(x), args.warmup, args.iters)

        # agreement with fp32 on held-out photos: face scores of the 200 best fp32 anchors
        agree: Dict[str, List[float]] = {"int8": [], "bf16": []}
        for h, (loc32, conf32) in zip(held_out, ref):
            s32, _ = decode_predictions(loc32, conf32, anchors)
            top = s32[0].topk(200).indices
            if compiled_int8 is not None:
                loc8, conf8 = compiled_int8(h)
                s8, _ = decode_predictions(loc8, conf8, anchors)
                agree["int8"].append(float((s8[0, top] - s32[0, top]).abs().max()))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                locb, confb = net_cl(h.contiguous(memory_format=torch.channels_last))
            sb, _ = decode_predictions(locb, confb, anchors)
            agree["bf16"].append(float((sb[0, top] - s32[0, top]).abs().max()))

    for k, v in timings.items():
        rows[k] = {"model_ms": round(v, 2)}
    result = {
        "benchmark": "int8",
        "config": {"weights": args.weights or "default model", "resolution": [width, height],
                   "calibration_photos": len(calib), "batchnorms_folded_for_int8": folded, "iters": args.iters, "warmup": args.warmup,
                   "quantizer": "X86InductorQuantizer, default config (static, per-channel weights)",
                   "torchao": __import__("torchao").__version__},
        "hardware": hardware_info("cpu"),
        "results": rows,
        "compile_seconds": {"bf16": round(compile_bf16_s, 1), "int8 (export+calibrate+convert+compile)":
                            round(quantize_s, 1)},
        "max_face_score_diff_vs_fp32_top200": {k: round(max(v), 4) for k, v in agree.items() if v},
        "int8_error": int8_error,
    }
    base = timings["bf16 eager (Detector's choice)"]
    print(f"{width}x{height}, model only, median of {args.iters}")
    for k, v in timings.items():
        print(f"  {k:34s} {v:8.1f} ms   ({v / base:.2f}x bf16 eager)")
    print(f"  max face-score difference vs fp32 (top 200 anchors, 4 val photos): "
          f"{result['max_face_score_diff_vs_fp32_top200']}")
    write_result(result, args.out, "int8_cpu")
    return 0


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.exit(main())
