"""Large detection runs: sharded over ``torchrun`` ranks, resumable, with pipelined decoding.

The engine behind ``dsfd detect``. One process is the world of size 1; under
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
every rank takes a deterministic share of the inputs (input ``i`` of the
sorted list goes to rank ``i % WORLD_SIZE``), runs on ``cuda:LOCAL_RANK``
when there are GPUs (the CPU otherwise), writes its own outputs, and rank 0
merges them once every rank is done (over gloo, which lets ranks share a GPU).

Commit protocol (what makes ``--resume`` safe after a kill, even SIGKILL):

1. an image's own files (``<name>.json`` / ``.txt``, the drawing) are written
   to a temporary name and renamed into place (:func:`atomic_write_bytes`),
   so a file either has its full content or does not exist;
2. then one JSON line for the image is appended to the rank's journal
   ``_journal/rank<R>.jsonl`` and flushed: that line is the commit.

A resumed run reads every journal (so it also works with a different
number of ranks), drops a torn last line, and skips the committed inputs.
A video is committed as a whole: its per-frame JSON lines stream to a
``.partial`` file that is renamed when the video ends, so an interrupted
video is redone from its first frame.

Decoding runs in ``workers`` DataLoader processes; decoded images wait in a
small window and are batched by similar size (so one forward pass does not
pad a portrait photo to a landscape canvas). Video frames are decoded in a
worker process too and batched in order; memory stays flat over any length
(bounded queues, nothing accumulated per frame).

Outputs (``--output-format``): ``json`` (one ``<name>.json`` per image), ``wider``
(WIDER FACE prediction files), ``jsonl`` (the merged journal
``detections.jsonl``, one line per image) and ``coco`` (``coco_results.json``:
``[{image_id, category_id: 1, bbox: [x, y, w, h], score}]`` with
``coco_images.json``, the matching image list and category, loadable by
``pycocotools.coco.COCO`` and ``COCO.loadRes``). ``summary.json`` holds
images, faces and images/s per rank and in all, and every skipped input
with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..constants import DISPLAY_SCORE
from .anonymize import DEFAULT_MARGIN
from .tracking import HOLD_SECONDS, FaceHold
from .outputs import (FORMATS, DiskFullError, OutputOptions, VideoPictureWriter, atomic_write_bytes,
                      atomic_write_text, detection_records, naming_full_disk, to_coco, write_image_outputs,
                      write_run_files)

__all__ = [
    "RankInfo",
    "InputItem",
    "DiskFullError",
    "RunOptions",
    "collect_inputs",
    "shard",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_journal",
    "committed_inputs",
    "to_coco",
    "run_detection",
]

JOURNAL_DIR = "_journal"


# --------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class RankInfo:
    """Where this process sits in a ``torchrun`` launch (``world_size == 1``: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "RankInfo":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class InputItem(NamedTuple):
    path: Path
    rel: Path  # output path relative to --out, with the source extension
    kind: str  # "image" or "video"


def collect_inputs(
    paths: Sequence["os.PathLike[str]"], exclude: Optional["os.PathLike[str]"] = None
) -> Tuple[List[InputItem], List[Dict[str, str]], int]:
    """Expand PATH arguments into a sorted input list: ``(items, skipped [{path, reason}], ignored file count)``.

    ``exclude`` (the run's output folder) is never searched, so that ``dsfd
    detect .`` run twice does not detect faces in its own annotated copies.

    Folders are searched recursively for image and video extensions (other
    files are ignored and counted); files found in a folder keep their path
    relative to it as their output name, files given directly their own
    name. Equal output names get ``_2``, ``_3`` ... suffixes. The order is
    deterministic, which sharding relies on.
    """
    io = _io()
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

    excluded = os.path.realpath(exclude) if exclude is not None else None

    def is_excluded(path: str) -> bool:
        if excluded is None:
            return False
        real = os.path.realpath(path)
        return real == excluded or real.startswith(excluded + os.sep)

    for raw in paths:
        p = Path(raw)
        if is_excluded(str(p)) and p.is_dir():
            skipped.append({"path": str(p), "reason": "the output folder (--out) is not read as input"})
            continue
        if p.is_dir():
            found = False
            # follow symbolic links to folders (a data set whose event folders are links), but enter
            # each real folder once: a link back up the tree (a cycle) is not followed again
            seen: set = set()
            for root, dirs, files in os.walk(p, followlinks=True):
                real = os.path.realpath(root)
                if real in seen:
                    dirs[:] = []
                    continue
                seen.add(real)
                dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) not in seen
                                 and not is_excluded(os.path.join(root, d)))
                for f in sorted(files):
                    fp = Path(root) / f
                    ext = fp.suffix.lower()
                    if ext in io.IMAGE_EXTENSIONS:
                        add(fp, fp.relative_to(p), "image")
                        found = True
                    elif ext in io.VIDEO_EXTENSIONS:
                        add(fp, fp.relative_to(p), "video")
                        found = True
                    else:
                        ignored += 1
            if not found:
                skipped.append({"path": str(p), "reason": "folder contains no image or video files"})
        elif p.is_file():
            add(p, Path(p.name), "video" if io.is_video_path(p) else "image")
        else:
            skipped.append({"path": str(p), "reason": "not found"})
    return items, skipped, ignored


def shard(items: Sequence[Any], rank: int, world_size: int) -> List[Tuple[int, Any]]:
    """``(global index, item)`` pairs of this rank: item ``i`` goes to rank ``i % world_size``.

    Round-robin rather than contiguous blocks, so that folders of large and
    small photos spread evenly over the ranks.
    """
    return [(i, it) for i, it in enumerate(items) if i % world_size == rank]


# --------------------------------------------------------------------------- atomic files


# --------------------------------------------------------------------------- journals


def read_journal(path: Path, repair: bool = False) -> List[Dict[str, Any]]:
    """Complete records of one journal; a torn last line (a kill mid-write) is ignored.

    With ``repair``, the file is truncated after its last complete line so
    that appending continues on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline belong to a torn line
    records = []
    for line in data[:end].splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash of an older writer; it is redone
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return records


def journal_files(out: Path) -> List[Path]:
    d = Path(out) / JOURNAL_DIR
    return sorted(d.glob("rank*.jsonl"), key=lambda p: int(p.stem[4:]) if p.stem[4:].isdigit() else 1 << 30)


def committed_inputs(out: Path) -> Dict[str, Dict[str, Any]]:
    """Every committed input of every rank's journal, by output name (later records win)."""
    done: Dict[str, Dict[str, Any]] = {}
    for j in journal_files(out):
        for rec in read_journal(j):
            if "rel" in rec:
                done[rec["rel"]] = rec
    return done


# --------------------------------------------------------------------------- options and outputs


@dataclass
class RunOptions:
    """What ``dsfd detect`` asks of a run (see its ``--help``)."""

    out: Path
    format: str = "json"
    draw: bool = True
    save_min: float = DISPLAY_SCORE
    draw_min: float = DISPLAY_SCORE
    batch_size: int = 4
    workers: int = 2
    resume: bool = False
    progress: bool = True
    window: int = 4  # decoded images waiting to be batched, in batches
    anonymize: Optional[str] = None  # the picture hides the faces (blur / pixelate / box) instead of boxing them
    margin: float = DEFAULT_MARGIN
    hold: float = HOLD_SECONDS  # videos, with anonymize: seconds a face stays hidden after its last detection

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.hold < 0:
            raise ValueError(f"hold must be >= 0, got {self.hold}")
        if self.anonymize is not None and not self.draw:
            raise ValueError("anonymize writes anonymised copies: it cannot be combined with draw=False")
        self.output = OutputOptions(self.out, self.format, (self.anonymize or "boxes") if self.draw else None,
                                    self.save_min, self.draw_min, self.margin)

    @property
    def picture(self) -> Optional[str]:
        """What each input's picture shows: ``boxes``, ``blur``, ``pixelate``, ``box``, or ``None``."""
        return self.output.picture


def _io() -> Any:
    from .. import io

    return io


# --------------------------------------------------------------------------- pipelined decoding


class _ImageDecoder(torch.utils.data.Dataset):
    """DataLoader dataset: item ``k`` -> ``(k, image or None, note or error)`` decoded in a worker."""

    def __init__(self, items: Sequence[InputItem], upright: bool = False) -> None:
        self.items = list(items)
        self.upright = upright  # apply the EXIF orientation to the pixels (anonymised copies: metadata.py)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Tuple[int, Optional[torch.Tensor], Optional[str]]:
        item = self.items[k]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                img = _io().read_image(item.path)
                if self.upright:
                    from .metadata import apply_orientation, read_orientation

                    img = apply_orientation(img, read_orientation(item.path))
            # a tensor crosses from a worker through shared memory; an array would be pickled
            return k, torch.from_numpy(img), "; ".join(str(w.message) for w in caught) or None
        except Exception as e:  # noqa: BLE001 - reported per input, the run goes on
            kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
            return k, None, f"{kind}{e}"


def _first(batch: List[Any]) -> Any:
    return batch[0]


def _loader(dataset: torch.utils.data.Dataset, workers: int) -> Iterable[Any]:
    kw: Dict[str, Any] = {}
    if workers > 0:
        kw = {"num_workers": workers, "prefetch_factor": 4, "persistent_workers": False}
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=_first, **kw)


def size_batches(decoded: Iterable[Tuple[int, np.ndarray]], batch_size: int, window: int) -> Iterator[List[Tuple[int, np.ndarray]]]:
    """Group decoded images into batches of similar size.

    Keeps up to ``window * batch_size`` images, and whenever the window is
    full emits the ``batch_size`` images closest in shape to the oldest one
    (aspect ratio first, then area), so no image waits for long and memory
    stays bounded.
    """
    pending: List[Tuple[int, np.ndarray]] = []
    cap = max(batch_size, window * batch_size)

    keys: List[Tuple[float, float]] = []  # log aspect ratio and log area of each pending image

    def take() -> List[Tuple[int, np.ndarray]]:
        a0, s0 = keys[0]
        order = sorted(range(len(pending)), key=lambda i: (abs(keys[i][0] - a0), abs(keys[i][1] - s0), i))
        chosen = sorted(order[:batch_size])
        out = [pending[i] for i in chosen]
        for i in reversed(chosen):
            pending.pop(i)
            keys.pop(i)
        return out

    for entry in decoded:
        h, w = entry[1].shape[:2]
        pending.append(entry)
        keys.append((float(np.log(w / max(h, 1))), float(np.log(max(h * w, 1)))))
        if len(pending) >= cap:
            yield take()
    while pending:
        yield take()


class _FrameReader(torch.utils.data.IterableDataset):
    """Frames of one video, decoded in a worker process, as uint8 tensors (shared memory)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __iter__(self) -> Iterator[torch.Tensor]:
        import cv2

        cap = cv2.VideoCapture(self.path)
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield torch.from_numpy(frame)
        finally:
            cap.release()


def _video_meta(path: Path) -> Tuple[bool, float, int]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return False, 0.0, 0
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        if not np.isfinite(fps) or fps <= 0:
            fps = 25.0
        return True, float(fps), int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()


# --------------------------------------------------------------------------- the run


@dataclass
class _Stats:
    images: int = 0
    videos: int = 0
    frames: int = 0
    faces: int = 0
    resumed: int = 0
    seconds: float = 0.0
    skipped: List[Dict[str, str]] = field(default_factory=list)
    notes: List[Dict[str, str]] = field(default_factory=list)


class _Journal:
    """This rank's append-only commit log."""

    def __init__(self, out: Path, rank: int, resume: bool) -> None:
        self.path = out / JOURNAL_DIR / f"rank{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume:
            read_journal(self.path, repair=True)
            self.f = open(self.path, "a")
        else:
            self.f = open(self.path, "w")

    def commit(self, record: Dict[str, Any]) -> None:
        with naming_full_disk(self.path):
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:
            # only a commit that failed (a full disk, already being reported) leaves bytes to flush; a line
            # torn here is dropped by the next --resume
            pass


def _detect_many(detector: Any, images: List[np.ndarray]) -> List[Any]:
    """``detect_batch``, falling back to one image at a time if the batch fails (e.g. out of memory)."""
    try:
        return detector.detect_batch(images, min_score=None)
    except Exception:  # noqa: BLE001 - retried one by one; what still fails is reported per image
        return [_try_one(detector, im) for im in images]


def _try_one(detector: Any, image: np.ndarray) -> Any:
    try:
        return detector.detect(image, min_score=None)
    except Exception as e:  # noqa: BLE001
        return e


def _run_images(opts: RunOptions, detector: Any, items: List[Tuple[int, InputItem]], journal: _Journal,
                stats: _Stats, bar: Any) -> None:
    decoder = _ImageDecoder([it for _, it in items], upright=opts.anonymize is not None)

    def decoded() -> Iterator[Tuple[int, np.ndarray]]:
        # no worker processes to start for a single photo (the README's main command)
        for k, img, note in _loader(decoder, min(opts.workers, max(0, len(items) - 1))):
            item = items[k][1]
            if img is None:
                stats.skipped.append({"path": str(item.path), "reason": note or "unreadable"})
                bar.update(1)
                continue
            if note:
                stats.notes.append({"path": str(item.path), "note": note})
            yield k, img.numpy()

    for batch in size_batches(decoded(), opts.batch_size, opts.window):
        results = _detect_many(detector, [img for _, img in batch])
        for (k, img), dets in zip(batch, results):
            index, item = items[k]
            bar.update(1)
            if isinstance(dets, Exception):
                stats.skipped.append({"path": str(item.path),
                                      "reason": f"detection failed: {type(dets).__name__}: {dets}"})
                continue
            try:
                write_image_outputs(opts.output, item.rel, img, dets, item.path)
            except DiskFullError:
                raise  # every later input would fail the same way: the run stops and says how to resume
            except Exception as e:  # noqa: BLE001
                stats.skipped.append({"path": str(item.path),
                                      "reason": f"writing outputs failed: {type(e).__name__}: {e}"})
                continue
            faces = int((dets[:, 4] >= opts.draw_min).sum())
            journal.commit({"index": index, "rel": item.rel.as_posix(), "kind": "image", "image": str(item.path),
                            "format": opts.format, "drawn": opts.draw, "picture": opts.picture,
                            "width": int(img.shape[1]), "height": int(img.shape[0]), "faces": faces,
                            "detections": detection_records(dets, opts.save_min)})
            stats.images += 1
            stats.faces += faces


def _run_video(opts: RunOptions, detector: Any, index: int, item: InputItem, journal: _Journal, stats: _Stats,
               on_batch: Optional[Callable[[int], None]] = None) -> None:
    ok, fps, total = _video_meta(item.path)
    if not ok:
        stats.skipped.append({"path": str(item.path), "reason": "cannot open video"})
        return
    base = opts.out / item.rel
    base.parent.mkdir(parents=True, exist_ok=True)
    lines_path = base.with_suffix(".jsonl")
    partial = lines_path.with_name(lines_path.name + ".partial")
    picture = VideoPictureWriter(opts.output, base, fps, source=item.path)
    frames = faces = 0
    # anonymised videos: tracked faces stay hidden through the detector's misses (a look-ahead of `hold` frames)
    held = FaceHold(fps, opts.hold if opts.anonymize else 0.0, min_score=opts.draw_min)
    from tqdm.auto import tqdm

    bar = tqdm(total=total or None, desc=item.path.name, unit="frame", disable=not opts.progress, leave=False)
    error: Optional[str] = None
    try:
        loader = torch.utils.data.DataLoader(
            _FrameReader(item.path), batch_size=opts.batch_size, collate_fn=list,
            num_workers=1 if opts.workers > 0 else 0, **({"prefetch_factor": 2} if opts.workers > 0 else {}),
        )
        with naming_full_disk(partial), open(partial, "w") as lines:
            for batch in loader:
                frames_np = [t.numpy() for t in batch]
                results = detector.detect_batch(frames_np, min_score=None)
                for frame, dets in zip(frames_np, results):
                    lines.write(json.dumps({"frame": frames, "time_s": round(frames / fps, 4),
                                            "detections": detection_records(dets, opts.save_min)}) + "\n")
                    for shown, boxes in held.push(frame, dets):
                        picture.write(shown, boxes)
                    faces += int((dets[:, 4] >= opts.draw_min).sum())
                    frames += 1
                lines.flush()
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(frames)
            for shown, boxes in held.flush():
                picture.write(shown, boxes)
    except DiskFullError:
        bar.close()
        picture.discard()
        partial.unlink(missing_ok=True)
        raise
    except Exception as e:  # noqa: BLE001
        error = f"video failed after {frames} frames: {type(e).__name__}: {e}"
    finally:
        bar.close()
        picture.close()
    if error is None and frames == 0:
        error = "no frames could be read"
    if error is not None:
        stats.skipped.append({"path": str(item.path), "reason": error})
        partial.unlink(missing_ok=True)
        picture.discard()
        return
    os.replace(partial, lines_path)
    picture.finish()
    journal.commit({"index": index, "rel": item.rel.as_posix(), "kind": "video", "video": str(item.path),
                    "format": opts.format, "drawn": opts.draw, "picture": opts.picture,
                    "frames": frames, "faces": faces})
    stats.videos += 1
    stats.frames += frames
    stats.faces += faces


def _merge(opts: RunOptions, per_rank: List[Dict[str, Any]], info: RankInfo, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Rank 0: the merged outputs of all ranks, and the summary."""
    committed = committed_inputs(opts.out)
    records = sorted(committed.values(), key=lambda r: r["index"])
    write_run_files(opts.output, records)
    seconds = max((r["seconds"] for r in per_rank), default=0.0)
    done_now = sum(r["images"] + r["frames"] for r in per_rank)
    skipped = [s for r in per_rank for s in r["skipped"]]
    summary = {
        "images": sum(1 for r in records if r.get("kind") == "image"),
        "videos": sum(1 for r in records if r.get("kind") == "video"),
        "video_frames": sum(r.get("frames", 0) for r in records if r.get("kind") == "video"),
        "faces": sum(r.get("faces", 0) for r in records),
        "processed_this_run": done_now,
        "resumed_inputs": sum(r["resumed"] for r in per_rank),
        "seconds": round(seconds, 3),
        "images_per_second": round(done_now / seconds, 3) if seconds > 0 else 0.0,
        "ranks": [{"rank": i, "images": r["images"], "video_frames": r["frames"], "seconds": round(r["seconds"], 3),
                   "images_per_second": round((r["images"] + r["frames"]) / r["seconds"], 3) if r["seconds"] > 0 else 0.0,
                   "device": r.get("device")}
                  for i, r in enumerate(per_rank)],
        "world_size": info.world_size,
        "format": opts.format,
        "skipped": skipped,
        "notes": [n for r in per_rank for n in r["notes"]],
        "out": str(opts.out),
        **extra,
    }
    atomic_write_text(opts.out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _still_valid(record: Optional[Dict[str, Any]], opts: RunOptions) -> bool:
    """Whether a committed input's outputs serve this run (same per-image files, drawings if asked for)."""
    if record is None:
        return False
    if opts.format in ("json", "wider") and record.get("format") != opts.format:
        return False  # its per-image file was written in another format (jsonl / coco need only the record)
    if opts.picture is None:
        return True
    # journals written before pictures had kinds hold only "drawn" (boxes)
    done = record.get("picture", "boxes" if record.get("drawn") else None)
    return done == opts.picture


def run_detection(
    detector: Any,
    items: Sequence[InputItem],
    opts: RunOptions,
    info: Optional[RankInfo] = None,
    extra_summary: Optional[Dict[str, Any]] = None,
    on_video_batch: Optional[Callable[[int], None]] = None,
) -> Optional[Dict[str, Any]]:
    """Run this rank's share of ``items``; returns the merged summary on rank 0 (``None`` elsewhere).

    Under a multi-rank ``info`` the default process group must be initialised
    (``dsfd detect`` does it); the ranks meet once at the end to merge.
    """
    from tqdm.auto import tqdm

    info = info or RankInfo()
    opts.out.mkdir(parents=True, exist_ok=True)
    mine = shard(items, info.rank, info.world_size)
    stats = _Stats()
    if opts.resume:
        done = committed_inputs(opts.out)
        before = len(mine)
        mine = [(i, it) for i, it in mine if not _still_valid(done.get(it.rel.as_posix()), opts)]
        stats.resumed = before - len(mine)
    journal = _Journal(opts.out, info.rank, opts.resume)
    images = [(i, it) for i, it in mine if it.kind == "image"]
    videos = [(i, it) for i, it in mine if it.kind == "video"]
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bar = tqdm(total=len(images), desc=f"images{f' rank {info.rank}' if info.distributed else ''}",
                       unit="img", disable=not opts.progress or not images, dynamic_ncols=True)
            try:
                _run_images(opts, detector, images, journal, stats, bar)
            finally:
                bar.close()
            for index, item in videos:
                _run_video(opts, detector, index, item, journal, stats, on_video_batch)
        for msg in sorted({str(w.message) for w in caught}):
            stats.notes.append({"path": "", "note": f"warning: {msg}"})
    finally:
        journal.close()
    stats.seconds = time.perf_counter() - start
    mine_stats = dataclasses.asdict(stats)
    mine_stats["device"] = str(getattr(detector, "device", ""))
    if info.distributed:
        import torch.distributed as dist

        gathered: List[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, mine_stats)
        per_rank = gathered
    else:
        per_rank = [mine_stats]
    summary = _merge(opts, per_rank, info, extra_summary or {}) if info.is_main else None
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()  # no rank exits before the merged outputs exist
    return summary
