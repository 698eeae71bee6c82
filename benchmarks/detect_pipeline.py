"""``dsfd detect`` at scale: decoding workers, and memory over a long video.

1. images/s over a folder of real photos (the shared WIDER val images) with
   ``--workers 0`` (decoding in the main process) against ``--workers 2``
   (DataLoader processes), same detector, same batch size; each setting is
   run twice, alternating, and the best of the two is kept;
2. a generated video of ``--video-minutes`` minutes streamed through
   ``dsfd detect``'s engine: resident memory sampled every batch, frames/s.

    python benchmarks/detect_pipeline.py --out benchmarks/results/detect_pipeline_vm.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from common import ROOT, hardware_info, write_result  # benchmarks/common.py

from dsfd import Detector
from dsfd.inference.runner import InputItem, RunOptions, collect_inputs, run_detection


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def images_per_second(detector: Detector, folder: Path, workers: int, batch: int, limit: int) -> float:
    items, _, _ = collect_inputs([folder])
    items = items[:limit] if limit else items
    out = Path(tempfile.mkdtemp(prefix="dsfd_bench_"))
    try:
        t0 = time.perf_counter()
        s = run_detection(detector, items, RunOptions(out=out, format="jsonl", draw=False, batch_size=batch,
                                                      workers=workers, progress=False))
        dt = time.perf_counter() - t0
        assert s is not None and s["images"] == len(items), s
        return len(items) / dt
    finally:
        shutil.rmtree(out, ignore_errors=True)


def make_video(path: Path, minutes: float, size=(320, 240), fps: float = 25.0) -> int:
    """A synthetic video with moving bright squares (detections vary from frame to frame)."""
    n = int(minutes * 60 * fps)
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    for i in range(n):
        frame = np.roll(base, i % w, axis=1)
        writer.write(frame)
    writer.release()
    return n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(ROOT.parent / "shared" / "data" / "widerface" / "WIDER_val" / "images"))
    p.add_argument("--limit", type=int, default=0, help="first N images (0: all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--video-minutes", type=float, default=5.0)
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/detect_pipeline_<host>.json)")
    a = p.parse_args()

    detector = Detector(device="cpu")
    result = {"what": "dsfd detect engine: decoding workers and long-video memory", "hardware": hardware_info("cpu"),
              "detector": repr(detector), "batch_size": a.batch_size}
    folder = Path(a.images)
    if folder.is_dir():
        images_per_second(detector, folder, 0, a.batch_size, 8)  # warm-up (anchors, oneDNN kernels)
        runs = {0: [], 2: []}
        for _ in range(2):
            for w in (0, 2):
                runs[w].append(images_per_second(detector, folder, w, a.batch_size, a.limit))
        n = len(collect_inputs([folder])[0])
        result["images"] = {"folder": str(folder), "count": a.limit or n,
                            "images_per_s": {f"workers_{w}": round(max(v), 3) for w, v in runs.items()},
                            "all_runs": {f"workers_{w}": [round(x, 3) for x in v] for w, v in runs.items()}}
        result["images"]["speedup_workers_2"] = round(max(runs[2]) / max(runs[0]), 3)
        print(f"images/s: workers 0 {max(runs[0]):.2f}, workers 2 {max(runs[2]):.2f} "
              f"(x{result['images']['speedup_workers_2']:.2f}) over {result['images']['count']} photos")
    tmp = Path(tempfile.mkdtemp(prefix="dsfd_video_"))
    try:
        video = tmp / "long.mp4"
        frames = make_video(video, a.video_minutes)
        samples = []
        t0 = time.perf_counter()
        s = run_detection(detector, [InputItem(video, Path("long.mp4"), "video")],
                          RunOptions(out=tmp / "out", format="jsonl", batch_size=8, workers=2, progress=False),
                          on_video_batch=lambda f: samples.append((f, _rss_mb())))
        dt = time.perf_counter() - t0
        assert s is not None and s["video_frames"] == frames, s
        rss = [m for _, m in samples]
        tenth = max(1, len(rss) // 10)
        result["video"] = {"minutes": a.video_minutes, "frames": frames, "size": [320, 240],
                           "frames_per_s": round(frames / dt, 2),
                           "rss_mb_after_first_tenth": round(max(rss[:tenth]), 1),
                           "rss_mb_max": round(max(rss), 1), "rss_mb_last": round(rss[-1], 1),
                           "rss_mb_samples": [[f, round(m, 1)] for f, m in samples[:: max(1, len(samples) // 50)]]}
        print(f"video: {frames} frames at {frames / dt:.1f} frames/s; resident memory "
              f"{max(rss[:tenth]):.0f} MB after the first tenth, {max(rss):.0f} MB max, {rss[-1]:.0f} MB at the end")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(result, a.out, "detect_pipeline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
