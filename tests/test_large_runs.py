"""Large ``dsfd detect`` runs: sharding over ranks (gloo), resume after SIGKILL, atomic outputs,
similar-size batching, COCO / JSON Lines outputs, flat memory over a long video.

A deterministic stand-in detector (boxes computed from the pixels) makes
outputs comparable between runs; one test drives the real CLI with the
packaged model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch

from dsfd.inference.runner import (
    InputItem,
    RankInfo,
    RunOptions,
    atomic_write_text,
    collect_inputs,
    committed_inputs,
    read_journal,
    run_detection,
    shard,
    size_batches,
    to_coco,
)

# --------------------------------------------------------------------------- helpers


class PixelDetector:
    """Deterministic detections from image content: one box per image, scored by its mean."""

    device = torch.device("cpu")

    def __init__(self, delay: float = 0.0, fail_on: int = -1) -> None:
        self.delay = delay
        self.fail_on = fail_on  # a mean pixel value that makes detection fail
        self.batches: List[List[tuple]] = []

    def detect(self, image: np.ndarray, min_score=None) -> np.ndarray:  # the runner asks for every box
        assert min_score is None
        h, w = image.shape[:2]
        m = float(image.mean())
        if int(m) == self.fail_on:
            raise RuntimeError("synthetic failure")
        return np.array([[w * 0.1, h * 0.2, w * 0.6, h * 0.7, min(1.0, m / 255 + 0.5)],
                         [0, 0, w * 0.2, h * 0.2, 0.05]], np.float32)

    def detect_batch(self, images: List[np.ndarray], min_score=None) -> List[np.ndarray]:
        assert min_score is None
        self.batches.append([im.shape[:2] for im in images])
        if self.delay:
            time.sleep(self.delay)
        return [self.detect(im) for im in images]


def make_photos(folder: Path, n: int, seed: int = 0) -> List[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (48, 64) if i % 3 else (64, 40)  # landscape and portrait
        img = np.full((h, w, 3), 20 + 3 * i, np.uint8) + rng.integers(0, 3, (h, w, 3), dtype=np.uint8)
        p = folder / f"sub{i % 2}" / f"img_{i:03d}.jpg"
        p.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def items_of(folder: Path) -> List[InputItem]:
    items, skipped, _ = collect_inputs([folder])
    assert not skipped
    return items


def image_records(out: Path) -> Dict[str, Dict[str, Any]]:
    return {k: {kk: v[kk] for kk in ("index", "width", "height", "detections")}
            for k, v in committed_inputs(out).items() if v["kind"] == "image"}


# --------------------------------------------------------------------------- units


def test_collect_inputs_follows_folder_links_and_stops_at_cycles(tmp_path):
    """A data set whose event folders are symbolic links is found; a link back up the tree is entered once."""
    real = tmp_path / "real"
    make_photos(real, 4)  # real/sub0, real/sub1
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "event_a").symlink_to(real / "sub0", target_is_directory=True)
    (dataset / "event_b").symlink_to(real / "sub1", target_is_directory=True)
    (dataset / "event_b_again").symlink_to(real / "sub1", target_is_directory=True)  # same folder twice: once
    (real / "sub0" / "loop").symlink_to(dataset, target_is_directory=True)  # a cycle through the links
    items, skipped, _ = collect_inputs([dataset])
    assert not skipped
    names = sorted(it.rel.as_posix() for it in items)
    assert names == ["event_a/img_000.jpg", "event_a/img_002.jpg", "event_b/img_001.jpg", "event_b/img_003.jpg"]
    # a folder that is itself a link works too
    link = tmp_path / "link_to_real"
    link.symlink_to(real, target_is_directory=True)
    assert len(collect_inputs([link])[0]) == 4


def test_shard_is_a_deterministic_partition():
    items = list(range(23))
    for world in (1, 2, 3, 8):
        parts = [shard(items, r, world) for r in range(world)]
        flat = sorted(i for p in parts for i, _ in p)
        assert flat == items  # every input exactly once
        assert all(i % world == r for r, p in enumerate(parts) for i, _ in p)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard(items, 1, 2) == shard(list(items), 1, 2)


def test_rank_info_from_torchrun_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = RankInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.is_main) == (2, 4, 0, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK"):
        RankInfo.from_env()


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "a" / "x.json"
    atomic_write_text(target, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new content")
    assert target.read_text() == "old"
    monkeypatch.undo()
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_journal_ignores_and_repairs_a_torn_last_line(tmp_path):
    j = tmp_path / "rank0.jsonl"
    j.write_text(json.dumps({"rel": "a", "index": 0}) + "\n" + json.dumps({"rel": "b", "index": 1}) + "\n" + '{"rel": "c", "ind')
    assert [r["rel"] for r in read_journal(j)] == ["a", "b"]
    assert j.read_text().endswith('"ind')  # reading alone changes nothing
    read_journal(j, repair=True)
    assert j.read_text().endswith("}\n") and len(read_journal(j)) == 2


def test_size_batches_groups_similar_shapes_and_emits_everything():
    shapes = [(48, 64) if i % 2 else (64, 40) for i in range(20)]
    decoded = [(i, np.zeros(s + (3,), np.uint8)) for i, s in enumerate(shapes)]
    batches = list(size_batches(iter(decoded), batch_size=4, window=4))
    assert sorted(i for b in batches for i, _ in b) == list(range(20))
    assert all(len(b) <= 4 for b in batches)
    homogeneous = sum(len({im.shape for _, im in b}) == 1 for b in batches)
    assert homogeneous >= len(batches) - 1  # alternating inputs, yet one shape per batch
    # bounded: nothing waits behind more than the window
    assert max(i for i, _ in batches[0]) < 16


def test_coco_output_loads_in_pycocotools_and_scores_itself_perfectly():
    records = [
        {"index": 4, "rel": "b.jpg", "kind": "image", "image": "/x/b.jpg", "width": 80, "height": 60,
         "detections": [{"box": [10.0, 12.0, 30.0, 40.0], "score": 0.9}]},
        {"index": 1, "rel": "a.jpg", "kind": "image", "image": "/x/a.jpg", "width": 64, "height": 48,
         "detections": [{"box": [1.0, 2.0, 21.0, 26.0], "score": 0.8}, {"box": [30.0, 5.0, 50.0, 30.0], "score": 0.7}]},
        {"index": 2, "rel": "v.mp4", "kind": "video", "frames": 3, "faces": 0},
    ]
    dataset, results = to_coco(records)
    assert [im["id"] for im in dataset["images"]] == [2, 5]  # global index + 1, videos left out
    assert results[0]["bbox"] == [1.0, 2.0, 20.0, 24.0] and results[0]["category_id"] == 1
    pytest.importorskip("pycocotools", reason="pycocotools not installed")
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # ground truth = the predictions themselves: a loader that misreads any field cannot give AP 1
    gt = dict(dataset)
    gt["annotations"] = [{"id": k + 1, "image_id": r["image_id"], "category_id": 1, "bbox": r["bbox"],
                          "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0} for k, r in enumerate(results)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dets = coco.loadRes(results)
        ev = COCOeval(coco, dets, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


# --------------------------------------------------------------------------- whole runs


def test_run_writes_every_format_and_skips_bad_inputs(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 7)
    (photos / "sub0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    items = items_of(photos)
    for fmt in ("json", "jsonl", "coco", "wider"):
        out = tmp_path / fmt
        det = PixelDetector()
        summary = run_detection(det, items, RunOptions(out=out, format=fmt, batch_size=3, workers=0, progress=False,
                                                       save_min=0.0 if fmt == "wider" else 0.5))
        assert summary["images"] == 7 and len(summary["skipped"]) == 1
        assert "broken.jpg" in summary["skipped"][0]["path"]
        assert summary["faces"] == 7 and summary["ranks"][0]["images"] == 7
        assert (out / "sub0" / "img_000.jpg").exists()  # drawings
        if fmt == "json":
            rec = json.loads((out / "sub1" / "img_001.json").read_text())
            assert rec["width"] == 64 and len(rec["detections"]) == 1
        if fmt == "wider":
            lines = (out / "sub1" / "img_001.txt").read_text().splitlines()
            assert lines[1] == "2"
        if fmt == "jsonl":
            lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
            assert [x["rel"] for x in lines] == [it.rel.as_posix() for it in items if "broken" not in str(it.path)]
        if fmt == "coco":
            images = json.loads((out / "coco_images.json").read_text())
            results = json.loads((out / "coco_results.json").read_text())
            assert len(images["images"]) == 7 and len(results) == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, photos: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run_detection(PixelDetector(), items_of(Path(photos)),
                      RunOptions(out=Path(out), format="coco", batch_size=2, workers=0, progress=False),
                      RankInfo.from_env())
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    photos = tmp_path / "photos"
    make_photos(photos, 9)
    single = tmp_path / "single"
    run_detection(PixelDetector(), items_of(photos),
                  RunOptions(out=single, format="coco", batch_size=2, workers=0, progress=False))
    out = tmp_path / "ranks"
    mp.spawn(_rank_worker, args=(2, _free_port(), str(photos), str(out)), nprocs=2, join=True)
    assert sorted(p.name for p in (out / "_journal").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    per_rank = [read_journal(out / "_journal" / f"rank{r}.jsonl") for r in range(2)]
    assert [len(x) for x in per_rank] == [5, 4] and all(r["index"] % 2 == k for k, x in enumerate(per_rank) for r in x)
    assert image_records(out) == image_records(single)
    assert json.loads((out / "coco_results.json").read_text()) == json.loads((single / "coco_results.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["images"] for r in summary["ranks"]] == [5, 4]
    assert summary["images"] == 9


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_large_runs import PixelDetector, items_of
from dsfd.inference.runner import RunOptions, run_detection
run_detection(PixelDetector(delay=0.4), items_of(Path({photos!r})),
              RunOptions(out=Path({out!r}), format="json", batch_size=2, workers=1, progress=False,
                         resume={resume}))
"""


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 12)
    full = tmp_path / "full"
    run_detection(PixelDetector(), items_of(photos), RunOptions(out=full, format="json", batch_size=2, workers=0,
                                                               progress=False))
    out = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), photos=str(photos), out=str(out), resume=False)
    proc = subprocess.Popen([sys.executable, "-c", script])
    journal = out / "_journal" / "rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_journal(journal)) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(read_journal(journal))
    assert 3 <= done_before < 12, "the run must be killed mid-way"
    assert not (out / "summary.json").exists()
    # no committed image lacks its outputs; no output file is partial
    for rel, rec in committed_inputs(out).items():
        json.loads((out / rel).with_suffix(".json").read_text())
    det = PixelDetector()
    summary = run_detection(det, items_of(photos), RunOptions(out=out, format="json", batch_size=2, workers=0,
                                                              progress=False, resume=True))
    assert summary["resumed_inputs"] == done_before and summary["processed_this_run"] == 12 - done_before
    assert sum(len(b) for b in det.batches) == 12 - done_before  # nothing committed was redone
    assert image_records(out) == image_records(full)
    for p in full.rglob("*.json"):
        if p.name != "summary.json":
            assert json.loads((out / p.relative_to(full)).read_text())["detections"] == json.loads(p.read_text())["detections"]
    assert not list(out.rglob(".*tmp*"))


def test_resume_redoes_inputs_committed_in_another_format_or_without_drawings(tmp_path):
    photos = tmp_path / "photos"
    make_photos(photos, 4)
    items = items_of(photos)
    out = tmp_path / "out"

    def run(**kw):
        return run_detection(PixelDetector(), items, RunOptions(out=out, workers=0, progress=False, resume=True, **kw))

    assert run(format="json", draw=False)["processed_this_run"] == 4
    assert run(format="json", draw=False)["processed_this_run"] == 0
    assert run(format="wider", draw=False)["processed_this_run"] == 4  # no .txt files yet
    assert (out / "sub0" / "img_000.txt").exists()
    assert run(format="coco", draw=False)["processed_this_run"] == 0  # the journal records are enough
    assert run(format="wider", draw=True)["processed_this_run"] == 4  # the drawings are missing
    assert run(format="wider", draw=False)["processed_this_run"] == 0


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the resident memory")
def test_long_video_streams_with_flat_memory(tmp_path):
    video = tmp_path / "long.mp4"
    n = 1500
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (96, 64))
    for i in range(n):
        frame = np.full((64, 96, 3), i % 200, np.uint8)
        writer.write(frame)
    writer.release()
    samples: Dict[int, float] = {}
    out = tmp_path / "out"
    summary = run_detection(PixelDetector(), [InputItem(video, Path("long.mp4"), "video")],
                            RunOptions(out=out, format="jsonl", batch_size=8, workers=1, progress=False),
                            on_video_batch=lambda frames: samples.__setitem__(frames, _rss_mb()))
    assert summary["videos"] == 1 and summary["video_frames"] == n
    lines = (out / "long.jsonl").read_text().splitlines()
    assert len(lines) == n and json.loads(lines[-1])["frame"] == n - 1
    assert (out / "long.mp4").stat().st_size > 0 and not list(out.glob("*.partial*"))
    frames = sorted(samples)
    early = max(samples[f] for f in frames if f <= n // 5)
    late = max(samples[f] for f in frames if f >= n // 2)
    assert late - early < 25, f"memory grew from {early:.0f} to {late:.0f} MB over the video"


def test_torchrun_cli_two_cpu_ranks_match_one_process(tmp_path):
    """The torchrun command of docs/detection.md on the CPU (gloo), with the packaged model, anonymising."""
    photos = tmp_path / "photos"
    make_photos(photos, 6)
    common = [str(photos), "--output-format", "coco", "--workers", "0", "--no-progress", "--anonymize", "pixelate", "--device", "cpu",
              "--dtype", "float32", "--min-score", "0.02",  # keep weak boxes: the comparison must not be vacuous
              "--batch-size", "1"]  # batches of mixed sizes are padded, which moves weak boxes
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "dsfd", "detect", *common, "--out", str(single)], check=True, env=env)
    ranks = tmp_path / "ranks"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), "-m", "dsfd", "detect", *common, "--out", str(ranks)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 ranks)" in proc.stdout
    summary = json.loads((ranks / "summary.json").read_text())
    assert summary["world_size"] == 2 and [r["images"] for r in summary["ranks"]] == [3, 3]
    assert summary["dtype"] == "float32" and summary["images"] == 6
    # each rank wrote the anonymised copies of its photos
    for src in sorted(photos.rglob("*.jpg")):
        copy = cv2.imread(str(ranks / src.relative_to(photos)))
        assert copy is not None and copy.shape == cv2.imread(str(src)).shape
    a = json.loads((single / "coco_results.json").read_text())
    b = json.loads((ranks / "coco_results.json").read_text())
    assert len(a) == len(b) > 6
    for x, y in zip(sorted(a, key=lambda r: (r["image_id"], -r["score"])), sorted(b, key=lambda r: (r["image_id"], -r["score"]))):
        assert x["image_id"] == y["image_id"] and x["score"] == pytest.approx(y["score"], abs=1e-4)
        assert x["bbox"] == pytest.approx(y["bbox"], abs=0.05)


def test_torchrun_ranks_get_indexed_cuda_devices(monkeypatch):
    """torch.cuda.set_device refuses a bare "cuda" (torch 2.11, seen on the H200): each rank of a
    multi-rank run gets cuda:LOCAL_RANK (modulo the GPU count), also when --device cuda was given."""
    from dsfd.inference.cli import _device_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local, want in ((0, "cuda:0"), (1, "cuda:1"), (3, "cuda:1")):
        info = RankInfo(rank=local, world_size=4, local_rank=local)
        assert _device_for(info, None) == want
        assert _device_for(info, "cuda") == want
        assert _device_for(info, "cuda:0") == "cuda:0"  # an explicit index is kept
        assert _device_for(info, "cpu") == "cpu"
    single = RankInfo()
    assert _device_for(single, "cuda") == "cuda" and _device_for(single, None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device_for(RankInfo(rank=1, world_size=2, local_rank=1), None) == "cpu"
    assert _device_for(RankInfo(rank=1, world_size=2, local_rank=1), "cuda") == "cuda"  # the Detector says no GPU
