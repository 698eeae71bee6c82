"""No face flashing through: in a video, a hidden face stays hidden while the detector blinks.

A detector decides each frame alone; a face it misses for one frame of a
clip is visible in that frame, and a viewer stepping through frames sees
it. :class:`FaceHold` follows each face from frame to frame with a simple
IoU tracker (a detection continues the track whose last box it overlaps
most, IoU >= :data:`TRACK_IOU`, greedily, best pairs first) and adds boxes
to the frames where a tracked face was not detected:

* **interpolated** between two detections of the same face at most
  ``hold`` frames apart (the box moves linearly from one to the other);
* **held** after the last detection: the face's last box stays hidden for
  ``hold`` frames (:data:`HOLD_SECONDS`, half a second, by default:
  ``dsfd detect --anonymize-hold``), in case the face is still there.

Interpolating needs the next detection before a frame is written, so frames
wait in a look-ahead buffer of ``hold`` frames (at 30 frames/s and 0.5 s,
15 frames); memory stays bounded by it whatever the video's length. The
per-frame JSON lines keep the detector's own boxes; only the picture hides
the added ones.

    >>> hold = FaceHold(fps=25.0)                       # doctest: +SKIP
    >>> for frame, dets in video:                       # doctest: +SKIP
    ...     for f, boxes in hold.push(frame, dets):     # frames come out `hold.lookahead` frames later
    ...         write(anonymize(f, boxes))
    >>> for f, boxes in hold.flush(): ...               # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Iterator, List, Tuple

import numpy as np

__all__ = ["HOLD_SECONDS", "MIN_HITS", "TRACK_IOU", "FaceHold", "box_iou"]

#: How long a face stays hidden after the detector last saw it, and the longest gap interpolated (seconds).
HOLD_SECONDS: float = 0.5
#: A detection continues a track when its box overlaps the track's last box at least this much.
TRACK_IOU: float = 0.25
#: A face's last box is held only once it was detected in this many frames (a one-frame false positive is not).
MIN_HITS: int = 2


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` IoU of ``x1, y1, x2, y2`` boxes (continuous coordinates)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class _Track:
    frames: List[int] = field(default_factory=list)  # frames where it was detected, ascending
    boxes: List[np.ndarray] = field(default_factory=list)  # its [5] detection in each
    hits: int = 1  # detections so far (frames/boxes forget old ones)

    @property
    def last(self) -> int:
        return self.frames[-1]


class FaceHold:
    """Adds tracked boxes to the frames where a face was missed (see the module's notes).

    Args:
        fps: frames per second (turns ``hold_s`` into frames).
        hold_s: seconds a face stays hidden after its last detection, and the
            longest gap between two detections that is interpolated; 0 turns
            both off (frames pass straight through).
        iou: IoU from which a detection continues a track.
        min_score: detections below are not faces (not tracked, not hidden).
        min_hits: detections of a face before its last box is held (interpolation
            between two detections needs no more).
    """

    def __init__(self, fps: float, hold_s: float = HOLD_SECONDS, iou: float = TRACK_IOU, min_score: float = 0.0,
                 min_hits: int = MIN_HITS) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {hold_s}")
        fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 25.0
        self.hold = int(round(hold_s * fps))
        self.lookahead = self.hold
        self.iou, self.min_score, self.min_hits = float(iou), float(min_score), int(min_hits)
        self._buffer: Deque[Tuple[int, Any, np.ndarray]] = deque()
        self._tracks: List[_Track] = []
        self._t = 0

    def push(self, item: Any, dets: np.ndarray) -> Iterator[Tuple[Any, np.ndarray]]:
        """Add the next frame (anything: it is handed back) and its ``[K, 5]`` detections.

        Yields the frames that leave the look-ahead buffer, each with the
        ``[K', 5]`` boxes to hide: its own detections scoring ``>= min_score``
        and the tracked ones added.
        """
        d = np.asarray(dets, np.float32).reshape(-1, 5)
        d = d[d[:, 4] >= self.min_score]
        t = self._t
        self._t += 1
        if self.hold > 0:
            self._associate(t, d)
        self._buffer.append((t, item, d))
        while len(self._buffer) > self.lookahead:
            yield self._emit()

    def flush(self) -> Iterator[Tuple[Any, np.ndarray]]:
        """The frames still in the buffer (at the end of the video)."""
        while self._buffer:
            yield self._emit()

    # ------------------------------------------------------------------ internals
    def _associate(self, t: int, d: np.ndarray) -> None:
        live = [tr for tr in self._tracks if tr.last >= t - self.hold - 1]
        taken_d, taken_t = set(), set()
        if live and len(d):
            iou = box_iou(d[:, :4], np.stack([tr.boxes[-1][:4] for tr in live]))
            for k in np.argsort(-iou, axis=None, kind="stable"):
                i, j = divmod(int(k), iou.shape[1])
                if iou[i, j] < self.iou:
                    break
                if i in taken_d or j in taken_t:
                    continue
                taken_d.add(i)
                taken_t.add(j)
                live[j].frames.append(t)
                live[j].boxes.append(d[i].copy())
                live[j].hits += 1
        for i in range(len(d)):
            if i not in taken_d:
                self._tracks.append(_Track([t], [d[i].copy()]))
        # forget what no buffered frame and no future detection can use any more
        oldest = t - self.lookahead
        keep = []
        for tr in self._tracks:
            if tr.last + self.hold < oldest and tr.last < t - self.hold - 1:
                continue
            while len(tr.frames) > 1 and tr.frames[1] < oldest - self.hold - 1:
                tr.frames.pop(0)
                tr.boxes.pop(0)
            keep.append(tr)
        self._tracks = keep

    def _emit(self) -> Tuple[Any, np.ndarray]:
        f, item, d = self._buffer.popleft()
        if self.hold == 0:
            return item, d
        extra = []
        for tr in self._tracks:
            fr = tr.frames
            k = int(np.searchsorted(fr, f, side="right"))  # fr[k-1] <= f < fr[k]
            if k == 0 or fr[k - 1] == f:
                continue  # not seen yet, or detected in this very frame
            a, box_a = fr[k - 1], tr.boxes[k - 1]
            if k < len(fr) and fr[k] - a - 1 <= self.hold:  # seen again within the hold: interpolate
                b, box_b = fr[k], tr.boxes[k]
                w = (f - a) / (b - a)
                box = (1 - w) * box_a + w * box_b
                box[4] = min(box_a[4], box_b[4])
                extra.append(box)
            elif f - a <= self.hold and tr.hits >= self.min_hits:  # not seen again (yet): hold its last box
                extra.append(box_a)
        if extra:
            d = np.concatenate([d, np.stack(extra).astype(np.float32)], 0)
        return item, d
