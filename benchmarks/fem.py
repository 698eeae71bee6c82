"""Fused vs unfused Feature Enhance Module (the paper FEM over six levels).

Variants, each timed in the same run:
  * fused:    dsfd.ops.upsample_mul for the top-down step and, in eval mode,
              the three branch stems as one convolution;
  * unfused:  F.interpolate + mul + relu and three separate stem convs;
  * compiled (``--compile``): the fused module under ``torch.compile``, which
    fuses the branch concatenation with the final ReLU and the bias+ReLU
    epilogues where Inductor can (forward only).
Forward in eval mode (inference) and forward+backward in train mode.

    python benchmarks/fem.py [--device cuda] [--size 640] [--batch 1,4] [--compile] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

from common import Bench, hardware_info, write_result  # first: also sets CUDA_HOME quietly

import torch

import dsfd.models.fem as fem
import dsfd.ops as ops

RESNET_CHANNELS = (256, 512, 1024, 2048, 512, 256)
STRIDES = (4, 8, 16, 32, 64, 128)


def features(batch: int, size: int, device: str, width: float) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(batch, max(3, int(c * width)), -(-size // s), -(-size // s), generator=g).to(device)
        for c, s in zip(RESNET_CHANNELS, STRIDES)
    ]


def run(device: str, size: int, batches: List[int], width: float, quick: bool, compile: bool = False) -> Dict[str, object]:
    bench = Bench(device, min_run_time=0.3 if quick else 1.0)
    channels = [max(3, int(c * width)) for c in RESNET_CHANNELS]
    module = fem.FeatureEnhanceModule(channels).to(device)
    print(f"\n== FEM, ResNet50 channels x{width}, {size}x{size}, {device} ==", flush=True)

    def set_variant(fused: bool) -> None:  # "unfused": separate branch convs and the reference top-down step
        module.fuse_branches = fused

    for batch in batches:
        xs = features(batch, size, device, width)
        module.eval()

        def forward(fused: bool):
            set_variant(fused)
            with ops.use_reference(not fused), torch.inference_mode():
                return module(xs)

        set_variant(True)
        with torch.inference_mode():
            a = module(xs)
        set_variant(False)
        with ops.use_reference(), torch.inference_mode():
            b = module(xs)
        err = max(float((p - q).abs().max() / q.abs().max().clamp(min=1e-12)) for p, q in zip(a, b))
        variants = {"dsfd": lambda: forward(True), "unfused": lambda: forward(False)}
        if compile:
            set_variant(True)
            compiled = torch.compile(module, dynamic=False)

            def forward_compiled():
                set_variant(True)
                with torch.inference_mode():
                    return compiled(xs)

            c = forward_compiled()  # compile outside the timing
            err = max(err, max(float((p - q).abs().max() / q.abs().max().clamp(min=1e-12)) for p, q in zip(c, b)))
            variants["compiled"] = forward_compiled
        bench.case("FEM forward (eval)", f"B={batch}", variants, note=f"max rel diff {err:.1e}")

        module.train()
        xs_grad = [x.clone().requires_grad_() for x in xs]

        def fwd_bwd(fused: bool):
            set_variant(fused)
            module.zero_grad(set_to_none=True)
            with ops.use_reference(not fused):
                out = module(xs_grad)
            torch.autograd.backward(out, [torch.ones_like(o) for o in out])

        bench.case("FEM forward+backward", f"B={batch}", {"dsfd": lambda: fwd_bwd(True), "unfused": lambda: fwd_bwd(False)})
    return {"hardware": hardware_info(device), "size": size, "width": width, "results": bench.rows}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=None, help="input side (default 640 on CUDA, 320 on CPU)")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,16 on CUDA, 1 on CPU)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1 = ResNet50's)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time the module under torch.compile (forward)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    size = args.size or (640 if cuda else 320)
    batches = [int(b) for b in (args.batch or ("1,16" if cuda else "1")).split(",")]
    result = run(args.device, size, batches, args.width, args.quick, args.compile)
    write_result(result, args.out, f"fem_{args.device.split(':')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
