"""What ``dsfd detect`` writes for each input: detection files, and one picture per photo or video.

* **Detection files** (``--output-format``): ``json`` (one ``<name>.json`` per
  photo), ``wider`` (one WIDER prediction ``<name>.txt`` per photo), ``jsonl``
  (one ``detections.jsonl`` for the run) or ``coco`` (``coco_images.json`` +
  ``coco_results.json`` for the run); videos always get ``<name>.jsonl``, one
  line per frame.
* **The picture** (``--anonymize``, ``--no-draw``): a copy of each photo /
  video with the kept faces boxed (``boxes``, the default), or hidden
  (``blur``, ``pixelate``, ``box``; see :mod:`dsfd.inference.anonymize`), or
  none. Photos keep their format where OpenCV can write it (PNG otherwise)
  and carry no metadata (:mod:`dsfd.inference.metadata`); videos are written
  as H.264 MP4 with the source's frames, frame times, size and sound
  (:mod:`dsfd.inference.video`; OpenCV's silent ``mp4v`` without PyAV).

Every file is written atomically (a temporary file, then a rename), so a
killed run never leaves a partial output for ``--resume`` to trust; the
runner (:mod:`dsfd.inference.runner`) commits an input only after these
writes.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..constants import DISPLAY_SCORE
from .anonymize import ANONYMIZE_METHODS, DEFAULT_MARGIN

__all__ = [
    "DiskFullError",
    "FORMATS",
    "PICTURES",
    "OutputOptions",
    "atomic_write_bytes",
    "atomic_write_text",
    "detection_records",
    "is_disk_full",
    "naming_full_disk",
    "picture_of",
    "picture_name",
    "write_image_outputs",
    "VideoPictureWriter",
    "to_coco",
    "write_run_files",
]

#: Detection file formats (``--output-format``).
FORMATS: Tuple[str, ...] = ("json", "wider", "jsonl", "coco")
#: What the per-input picture shows: boxes drawn, or the faces hidden in one of the anonymisation methods.
PICTURES: Tuple[str, ...] = ("boxes",) + ANONYMIZE_METHODS
_WRITABLE = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class OutputOptions:
    """The output part of a run's options (see ``dsfd detect --help``)."""

    out: Path
    format: str = "json"
    picture: Optional[str] = "boxes"  # None: no picture
    save_min: float = DISPLAY_SCORE  # score from which boxes go into the detection files
    draw_min: float = DISPLAY_SCORE  # score from which faces are drawn / hidden
    margin: float = DEFAULT_MARGIN  # anonymisation: share of a box each side grows by
    video_codec: str = "auto"  # h264 (PyAV, with sound), mp4v (OpenCV, no sound) or auto (h264 when PyAV is here)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.picture is not None and self.picture not in PICTURES:
            raise ValueError(f"picture must be one of {PICTURES} or None, got {self.picture!r}")
        if self.margin < 0:
            raise ValueError(f"the anonymisation margin must be >= 0, got {self.margin}")


# --------------------------------------------------------------------------- atomic files

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """No space left (or the quota is used up) while writing ``path``: the run stops, ``--resume`` continues it."""

    def __init__(self, path: "os.PathLike[str] | str", cause: Optional[OSError] = None) -> None:
        code = cause.errno if cause is not None and cause.errno else errno.ENOSPC
        super().__init__(code, os.strerror(code), str(path))
        self.path = Path(path)


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the quota) is full."""
    return isinstance(e, OSError) and e.errno in _FULL


@contextmanager
def naming_full_disk(path: "os.PathLike[str] | str") -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised inside into a :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(path, e) from e
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a resumed run) never see a partial file.

    A full disk raises :class:`DiskFullError` naming ``path``, after removing
    the partial temporary file (so the space it took is free again).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with naming_full_disk(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- photos


def detection_records(dets: np.ndarray, min_score: float) -> List[Dict[str, Any]]:
    """``[{"box": [x1, y1, x2, y2], "score": s}, ...]`` of the detections scoring ``>= min_score``."""
    from .drawing import detections_to_records

    return list(detections_to_records(dets[dets[:, 4] >= min_score]))


def picture_name(rel: Path) -> Path:
    """The picture's file name: the input's, or ``.png`` where OpenCV cannot write that format."""
    return rel if rel.suffix.lower() in _WRITABLE else rel.with_suffix(".png")


def picture_of(image: np.ndarray, dets: np.ndarray, opts: OutputOptions) -> np.ndarray:
    """The picture of one photo / frame: boxes drawn, or the faces hidden."""
    if opts.picture == "boxes":
        from .drawing import draw_detections

        return draw_detections(image, dets, min_score=opts.draw_min)
    from .anonymize import anonymize

    return anonymize(image, dets, method=str(opts.picture), margin=opts.margin, min_score=opts.draw_min)


def write_image_outputs(opts: OutputOptions, rel: Path, image: np.ndarray, dets: np.ndarray,
                        source: Optional[Path] = None) -> None:
    """A photo's detection file (``json`` / ``wider``) and picture, under ``opts.out / rel``."""
    import cv2

    kept = dets[dets[:, 4] >= opts.save_min]
    target = opts.out / rel
    if opts.format == "wider":
        from ..io import format_prediction_file

        atomic_write_text(target.with_suffix(".txt"), format_prediction_file(rel.as_posix(), kept))
    elif opts.format == "json":
        record = {"image": str(source if source is not None else rel), "width": int(image.shape[1]),
                  "height": int(image.shape[0]), "min_score": opts.save_min,
                  "detections": detection_records(dets, opts.save_min)}
        if opts.picture in ANONYMIZE_METHODS:
            record["hidden_min_score"] = opts.draw_min  # the faces hidden in the picture score at least this
        atomic_write_text(target.with_suffix(".json"), json.dumps(record))
    if opts.picture is not None:
        name = picture_name(rel)
        ok, buf = cv2.imencode(name.suffix, picture_of(image, dets, opts))
        if not ok:
            raise OSError(f"could not encode {name}")
        atomic_write_bytes(opts.out / name, buf.tobytes())


# --------------------------------------------------------------------------- videos


class VideoPictureWriter:
    """The picture of a video, frame by frame: an MP4 with the source's frames, timing, size and sound.

    H.264 with the audio track copied when PyAV is installed, OpenCV's
    ``mp4v`` without sound otherwise (:mod:`dsfd.inference.video`). Frames
    go to a hidden temporary file that :meth:`finish` renames into place
    (``discard`` deletes it), so a killed run leaves no partial video.
    """

    def __init__(self, opts: OutputOptions, target: Path, fps: float, source: Optional[Path] = None) -> None:
        self.opts, self.target, self.fps = opts, Path(target).with_suffix(".mp4"), float(fps)
        self.source = None if source is None else Path(source)
        self.tmp = self.target.with_name(f".{self.target.stem}.mp4.partial.mp4")
        self._writer: Any = None
        self._closed = False

    def write(self, frame: np.ndarray, dets: np.ndarray) -> None:
        if self.opts.picture is None:
            return
        self.write_picture(picture_of(frame, dets, self.opts))

    def write_picture(self, picture: np.ndarray) -> None:
        """Append one finished picture (boxes drawn or faces hidden already)."""
        from .video import open_writer

        with naming_full_disk(self.target):
            if self._writer is None:
                self._writer = open_writer(self.tmp, self.source, self.fps, self.opts.video_codec)
            self._writer.write(picture)

    def close(self) -> None:
        if self._writer is not None and not self._closed:
            self._closed = True
            with naming_full_disk(self.target):
                self._writer.close()

    def finish(self) -> None:
        """Close and move the video into place (nothing to do when no frame was written)."""
        self.close()
        if self._writer is not None:
            os.replace(self.tmp, self.target)

    def discard(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the file is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- whole-run files


def to_coco(records: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """COCO image list (with the face category) and results from committed image records.

    Image ids are the inputs' global indices + 1, so they do not depend on
    the number of ranks. Boxes become ``[x, y, width, height]`` in pixels.
    """
    images, results = [], []
    for rec in sorted(records, key=lambda r: r["index"]):
        if rec.get("kind") != "image":
            continue
        image_id = int(rec["index"]) + 1
        images.append({"id": image_id, "file_name": rec["rel"], "width": rec["width"], "height": rec["height"],
                       "path": rec["image"]})
        for d in rec["detections"]:
            x1, y1, x2, y2 = d["box"]
            results.append({"image_id": image_id, "category_id": 1,
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": d["score"]})
    dataset = {"info": {"description": "dsfd detect inputs"}, "images": images,
               "categories": [{"id": 1, "name": "face", "supercategory": "person"}], "annotations": []}
    return dataset, results


def write_run_files(opts: OutputOptions, records: Sequence[Dict[str, Any]]) -> None:
    """The whole-run detection files of ``jsonl`` / ``coco`` from every committed record (rank 0)."""
    private = ("index", "format", "drawn", "picture")
    if opts.format == "jsonl":
        atomic_write_text(opts.out / "detections.jsonl",
                          "".join(json.dumps({k: v for k, v in r.items() if k not in private}) + "\n"
                                  for r in records if r.get("kind") == "image"))
    if opts.format == "coco":
        dataset, results = to_coco(records)
        atomic_write_text(opts.out / "coco_images.json", json.dumps(dataset))
        atomic_write_text(opts.out / "coco_results.json", json.dumps(results))
