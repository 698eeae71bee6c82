"""Kernel benchmarks: dsfd ops vs their plain-PyTorch references vs torchvision.

Sizes are DSFD's: A = 34,125 anchors (640x640 input), N = 5,000 boxes into NMS
(the top-5000 after the score filter), up to G = 500 faces, B in {1, 16}.
Prints one table per device and writes JSON (hardware, versions, date) to
benchmarks/results/kernels_<device>_<host>.json.

    python benchmarks/kernels.py               # CPU, and CUDA when present
    python benchmarks/kernels.py --quick       # fewer repetitions
    python benchmarks/kernels.py --device cuda --out $OUT/kernels_cuda.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

import torch

import dsfd.ops.compiled as ops  # the kernels themselves, not the dispatch
from common import Bench, hardware_info, require_compiled_ops, torchvision, write_result
from dsfd.constants import IOU_THRESHOLD, MAX_KEEP, PRE_NMS_TOP_K, SCORE_THRESHOLD
from dsfd.ops import reference as ref

NUM_ANCHORS = 34_125  # 640 x 640, six levels, one anchor per location


def detection_like(batch: int, n: int, faces: int = 60, size: int = 640, seed: int = 0, device: str = "cpu"):
    """Boxes clustered around `faces` objects (like a detector's raw output) with random scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, faces, 2, generator=g) * size
    sides = torch.exp(torch.rand(batch, faces, 1, generator=g) * 3.5) * 8  # 8 .. 265 px
    owner = torch.randint(0, faces, (batch, n), generator=g)
    c = torch.gather(centres, 1, owner[..., None].expand(-1, -1, 2))
    s = torch.gather(sides, 1, owner[..., None])
    c = c + torch.randn(batch, n, 2, generator=g) * s * 0.15
    wh = s * torch.exp(torch.randn(batch, n, 2, generator=g) * 0.15)
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    scores = torch.rand(batch, n, generator=g)
    return boxes.to(device), scores.to(device)


def dsfd_anchors(device: str) -> torch.Tensor:
    """The 34,125 second-shot anchors at 640x640 (cx, cy, w, h normalised)."""
    out = []
    for step, size in zip((4, 8, 16, 32, 64, 128), (16, 32, 64, 128, 256, 512)):
        f = -(-640 // step)
        ys, xs = torch.meshgrid(torch.arange(f), torch.arange(f), indexing="ij")
        cx = (xs.flatten() + 0.5) * step / 640
        cy = (ys.flatten() + 0.5) * step / 640
        w = torch.full_like(cx, size / 1.5**0.5 / 640)
        h = torch.full_like(cx, size * 1.5**0.5 / 640)
        out.append(torch.stack([cx, cy, w, h], 1))
    a = torch.cat(out).clamp(0, 1)
    assert a.shape[0] == NUM_ANCHORS
    return a.to(device)


def faces(batch: int, g_max: int, seed: int, device: str):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, g_max, 2, generator=gen) * 0.9
    wh = torch.exp(torch.rand(batch, g_max, 2, generator=gen) * 4) * 0.004  # 2.6 .. 140 px
    gt = torch.cat([xy, (xy + wh).clamp(max=1)], -1)
    counts = torch.full((batch,), g_max, dtype=torch.long)
    return gt.to(device), counts.to(device)


def run(device: str, quick: bool) -> Dict[str, object]:
    b = Bench(device, min_run_time=0.3 if quick else 1.0)
    tv = torchvision.ops if torchvision is not None else None
    print(f"\n== {device} ==", flush=True)

    # box_iou
    for n, m in [(5000, 500), (34_125, 64)]:
        x, _ = detection_like(1, n, device=device)
        y, _ = detection_like(1, m, seed=1, device=device)
        x, y = x[0], y[0]
        b.case("box_iou", f"[{n},4]x[{m},4]", {
            "dsfd": lambda: ops.box_iou(x, y),
            "reference": lambda: ref.box_iou(x, y),
            "torchvision": (lambda: tv.box_iou(x, y)) if tv else None,
        })

    # decode
    anchors = dsfd_anchors(device)
    for batch in (1, 16):
        deltas = torch.randn(batch, NUM_ANCHORS, 4, device=device) * 0.5
        b.case("decode_boxes", f"[{batch},{NUM_ANCHORS},4]", {
            "dsfd": lambda: ops.decode_boxes(deltas, anchors),
            "reference": lambda: ref.decode_boxes(deltas, anchors),
        })

    # nms, N = 5000
    boxes, scores = detection_like(1, 5000, device=device)
    bx, sc = boxes[0], scores[0]
    same = tv is None or torch.equal(ops.nms(bx, sc, 0.3).cpu(), tv.nms(bx, sc, 0.3).cpu())
    b.case("nms", "N=5000, iou 0.3", {
        "dsfd": lambda: ops.nms(bx, sc, 0.3),
        "torchvision": (lambda: tv.nms(bx, sc, 0.3)) if tv else None,
    }, note=f"same kept set as torchvision: {same}")

    # batched_nms: DSFD post-processing, 5000 candidates per image
    for batch in (1, 16):
        boxes, scores = detection_like(batch, 5000, seed=batch, device=device)

        def tv_loop():
            out = []
            for bb, ss in zip(boxes, scores):
                idx = torch.nonzero(ss > SCORE_THRESHOLD).flatten()
                top = torch.sort(ss[idx], descending=True, stable=True).indices[:PRE_NMS_TOP_K]
                idx = idx[top]
                out.append(idx[tv.nms(bb[idx], ss[idx], IOU_THRESHOLD)][:MAX_KEEP])
            return out

        def tv_batched():
            # torchvision.ops.batched_nms over the whole batch (one id per image)
            flat_b = boxes.reshape(-1, 4)
            flat_s = scores.reshape(-1)
            img = torch.arange(batch, device=device).repeat_interleave(boxes.shape[1])
            keep = flat_s > SCORE_THRESHOLD
            kept = tv.batched_nms(flat_b[keep], flat_s[keep], img[keep], IOU_THRESHOLD)
            return kept

        _, _, cnt, idx = ops.batched_nms(boxes, scores, IOU_THRESHOLD, SCORE_THRESHOLD, PRE_NMS_TOP_K, MAX_KEEP, return_indices=True)
        same = same_batched = True
        if tv is not None:
            for i, want in enumerate(tv_loop()):
                same &= torch.equal(idx[i, : cnt[i]].cpu(), want.cpu())
            # torchvision.ops.batched_nms over the whole batch: its kept indices (score order across
            # images) split per image and cut at max_keep must be dsfd's kept sets, in order
            flat_keep = torch.nonzero(scores.reshape(-1) > SCORE_THRESHOLD).flatten()
            kept_flat = flat_keep[tv_batched()].cpu()
            img_of, box_of = kept_flat // boxes.shape[1], kept_flat % boxes.shape[1]
            for i in range(batch):
                want = box_of[img_of == i][:MAX_KEEP]
                same_batched &= torch.equal(idx[i, : cnt[i]].cpu(), want)
        b.case("batched_nms", f"B={batch}, N=5000", {
            "dsfd": lambda: ops.batched_nms(boxes, scores, IOU_THRESHOLD, SCORE_THRESHOLD, PRE_NMS_TOP_K, MAX_KEEP),
            "reference": (lambda: ref.batched_nms(boxes, scores, IOU_THRESHOLD, SCORE_THRESHOLD, PRE_NMS_TOP_K, MAX_KEEP)) if device == "cpu" and batch == 1 else None,
            "torchvision_loop": tv_loop if tv else None,
            "torchvision_batched": tv_batched if tv else None,
        }, note=f"same kept sets as torchvision nms per image: {same}, as torchvision batched_nms: {same_batched}",
            slow={"reference"})

    # match_anchors
    for batch, g_max in [(1, 20), (16, 20), (16, 200), (16, 500)]:
        gt, counts = faces(batch, g_max, seed=g_max, device=device)
        b.case("match_anchors", f"B={batch}, G={g_max}, A={NUM_ANCHORS}", {
            "dsfd": lambda: ops.match_anchors(anchors, gt, counts),
            "reference": lambda: ref.match_anchors(anchors, gt, counts),
        }, slow={"reference"})

    # hard_negative_mask
    for batch in (1, 16):
        gen = torch.Generator().manual_seed(batch)
        loss = torch.rand(batch, NUM_ANCHORS, generator=gen).to(device)
        labels = (torch.rand(batch, NUM_ANCHORS, generator=gen) < 0.003).long().to(device)
        b.case("hard_negative_mask", f"B={batch}, A={NUM_ANCHORS}", {
            "dsfd": lambda: ops.hard_negative_mask(loss, labels),
            "reference": lambda: ref.hard_negative_mask(loss, labels),
        })

    # upsample_mul (FEM top-down step at 640x640, level 1 <- level 2 of ResNet50)
    for batch in (1, 16):
        upper = torch.randn(batch, 512, 40, 40, device=device)
        lateral = torch.randn(batch, 512, 80, 80, device=device)
        b.case("upsample_mul", f"B={batch}, 512x40x40 -> 80x80", {
            "dsfd": lambda: ops.upsample_mul(upper, lateral, False, True),
            "reference": lambda: ref.upsample_mul(upper, lateral, False, True),
        })
        if device == "cuda":
            ucl = upper.contiguous(memory_format=torch.channels_last)
            lcl = lateral.contiguous(memory_format=torch.channels_last)
            b.case("upsample_mul", f"B={batch}, channels_last", {
                "dsfd": lambda: ops.upsample_mul(ucl, lcl, False, True),
                "reference": lambda: ref.upsample_mul(ucl, lcl, False, True),
            })

    # the default model's stride-4 FEM step, bf16 channels_last (what CPU detection runs)
    upper = torch.randn(1, 32, 60, 80, device=device).bfloat16().contiguous(memory_format=torch.channels_last)
    lateral = torch.randn(1, 32, 120, 160, device=device).bfloat16().contiguous(memory_format=torch.channels_last)
    b.case("upsample_mul", "B=1, 32x60x80 -> 120x160, bf16 channels_last", {
        "dsfd": lambda: ops.upsample_mul(upper, lateral, False, True),
        "reference": lambda: ref.upsample_mul(upper, lateral, False, True),
    })

    # the inference path: network input of a 640x480 uint8 photo batch, and one shot decoded
    mean = (104.0, 117.0, 123.0)
    for batch in (1, 8):
        images = torch.randint(0, 256, (batch, 480, 640, 3), dtype=torch.uint8, device=device)
        mean_t = torch.tensor(mean, device=device)
        b.case("normalize_images", f"B={batch}, 640x480 -> bf16", {
            "dsfd": lambda: ops.normalize_images(images, mean, torch.bfloat16),
            "reference": lambda: ref.normalize_images(images, mean, torch.bfloat16),
            "three_passes": lambda: (images.float() - mean_t).to(torch.bfloat16).permute(0, 3, 1, 2),
        })
    anchors = dsfd_anchors(device)
    g = torch.Generator().manual_seed(0)
    for batch in (1, 8):
        loc = torch.randn(batch, NUM_ANCHORS, 4, generator=g).bfloat16().to(device)
        conf = torch.randn(batch, NUM_ANCHORS, 2, generator=g).bfloat16().to(device)
        b.case("decode_detections", f"[{batch},{NUM_ANCHORS}] bf16", {
            "dsfd": lambda: ops.decode_detections(loc, conf, anchors, (0.1, 0.2), 46.0, 640.0, 640.0),
            "reference": lambda: ref.decode_detections(loc, conf, anchors, (0.1, 0.2), 46.0, 640.0, 640.0),
        })

    return {"hardware": hardware_info(device), "results": b.rows}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kernels_<device>_<host>.json)")
    args = parser.parse_args(argv)
    require_compiled_ops()
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            print("no CUDA device available", file=sys.stderr)
            return 2
        devices.remove("cuda")
    for device in devices:
        result = run(device, args.quick)
        write_result(result, args.out if len(devices) == 1 else None, f"kernels_{device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
