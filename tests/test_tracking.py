"""No face flashing through (issue #31, item 3): held and interpolated boxes of tracked faces, synthetic detections."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from dsfd.inference.runner import InputItem, RunOptions, run_detection
from dsfd.inference.tracking import FaceHold, box_iou


def _face(t, x0=10.0, y0=20.0, vx=2.0, size=30.0, score=0.9):
    x = x0 + vx * t
    return np.array([x, y0, x + size, y0 + size, score], np.float32)


def _run(hold, seq):
    """seq: per frame, a [K, 5] array; returns per emitted frame (index, boxes)."""
    out = []
    for t, d in enumerate(seq):
        out += list(hold.push(t, d))
    out += list(hold.flush())
    return out


def test_gaps_are_interpolated_and_frames_keep_their_order():
    hold = FaceHold(fps=10, hold_s=0.5)  # 5 frames
    assert hold.hold == hold.lookahead == 5
    missed = {5, 10, 11, 12}
    seq = [np.zeros((0, 5), np.float32) if t in missed else _face(t)[None] for t in range(20)]
    out = _run(hold, seq)
    assert [t for t, _ in out] == list(range(20))
    for t, boxes in out:
        assert len(boxes) == 1, (t, boxes)
        assert boxes[0][:4] == pytest.approx(_face(t)[:4], abs=1e-4)  # linear motion: interpolation is exact


def test_last_box_is_held_for_the_hold_then_released():
    hold = FaceHold(fps=10, hold_s=0.5)
    seq = [_face(0, vx=0)[None] if t <= 8 else np.zeros((0, 5), np.float32) for t in range(20)]
    out = dict(_run(hold, seq))
    for t in range(20):
        assert len(out[t]) == (1 if t <= 8 + 5 else 0), t


def test_a_gap_longer_than_the_hold_is_not_bridged():
    hold = FaceHold(fps=10, hold_s=0.3)  # 3 frames
    seq = [_face(t)[None] if t in (0, 1, 9, 10) else np.zeros((0, 5), np.float32) for t in range(12)]
    out = dict(_run(hold, seq))
    counts = [len(out[t]) for t in range(12)]
    assert counts == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]  # 2, 3, 4 held; 5-8 free; none back-filled
    assert out[3][0][:4] == pytest.approx(_face(1)[:4])  # the held box is the last one seen


def test_two_faces_are_followed_separately():
    hold = FaceHold(fps=10, hold_s=0.5)
    seq = []
    for t in range(12):
        a, b = _face(t, y0=10), _face(t, y0=100, vx=-1, x0=100)
        seq.append(np.stack([a] + ([b] if t != 6 else [])))
    out = dict(_run(hold, seq))
    boxes = out[6]
    assert len(boxes) == 2
    assert box_iou(boxes[:, :4], np.stack([_face(6, y0=10), _face(6, y0=100, vx=-1, x0=100)])[:, :4]).max(0) \
        == pytest.approx([1, 1])


def test_low_scores_are_not_faces_and_zero_hold_passes_through():
    hold = FaceHold(fps=10, hold_s=0.5, min_score=0.5)
    seq = [_face(t, score=0.3)[None] if t < 4 else np.zeros((0, 5), np.float32) for t in range(8)]
    assert all(len(b) == 0 for _, b in _run(hold, seq))
    plain = FaceHold(fps=10, hold_s=0)
    seq = [_face(t)[None] if t % 2 else np.zeros((0, 5), np.float32) for t in range(6)]
    got = []
    for t, d in enumerate(seq):
        got += list(plain.push(t, d))
        assert len(got) == t + 1  # no look-ahead
    assert [len(b) for _, b in got] == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError):
        FaceHold(fps=10, hold_s=-1)


def test_memory_is_bounded_by_the_lookahead():
    hold = FaceHold(fps=30, hold_s=0.5)
    for t in range(300):
        emitted = list(hold.push(t, _face(t % 50)[None] if t % 7 else np.zeros((0, 5), np.float32)))
        assert len(hold._buffer) <= hold.lookahead and len(emitted) == (1 if t >= hold.lookahead else 0)
    assert len(hold._tracks) <= 3


class _Blinking:
    """One face, missed on every third frame (the detector blinks)."""

    device = "cpu"

    def __init__(self):
        self.n = 0

    def detect_batch(self, images, min_score=None):
        out = []
        for _ in images:
            x = 20 + 2 * self.n
            out.append(np.zeros((0, 5), np.float32) if self.n % 3 == 2 else
                       np.array([[x, 30, x + 40, 80, 0.9]], np.float32))
            self.n += 1
        return out


@pytest.mark.parametrize("hold_s, leaks", [(0.5, False), (0.0, True)])
def test_video_face_never_flashes_through(tmp_path, hold_s, leaks):
    clip = tmp_path / "walk.mp4"
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (200, 120))
    for _ in range(15):
        w.write(np.full((120, 200, 3), 200, np.uint8))
    w.release()
    opts = RunOptions(out=tmp_path / "out", anonymize="box", workers=0, progress=False, draw_min=0.5,
                      save_min=0.5, hold=hold_s, batch_size=4)
    summary = run_detection(_Blinking(), [InputItem(clip, Path("walk.mp4"), "video")], opts)
    assert summary["skipped"] == []
    cap = cv2.VideoCapture(str(tmp_path / "out" / "walk.mp4"))
    visible = []
    for t in range(15):
        ok, frame = cap.read()
        assert ok
        x = 20 + 2 * t  # where the face is in frame t (moving right), centre well inside the box
        visible.append(bool(frame[50:60, x + 15:x + 25].mean() > 100))
    cap.release()
    assert any(visible) == leaks, visible
    # the JSON lines keep the detector's own boxes (the blinks stay empty)
    import json

    lines = [json.loads(x) for x in (tmp_path / "out" / "walk.jsonl").read_text().splitlines()]
    assert [len(x["detections"]) for x in lines] == [0 if t % 3 == 2 else 1 for t in range(15)]


def test_a_one_frame_detection_is_not_held():
    """A box seen in one frame only (most often a false positive) is not held; from the second detection it is."""
    seq = [_face(0, vx=0)[None] if t == 2 else np.zeros((0, 5), np.float32) for t in range(8)]
    assert [len(b) for _, b in _run(FaceHold(fps=10, hold_s=0.3), seq)] == [0, 0, 1, 0, 0, 0, 0, 0]
    assert [len(b) for _, b in _run(FaceHold(fps=10, hold_s=0.3, min_hits=1), seq)] == [0, 0, 1, 1, 1, 1, 0, 0]
    seq[3] = seq[2]
    assert [len(b) for _, b in _run(FaceHold(fps=10, hold_s=0.3), seq)] == [0, 0, 1, 1, 1, 1, 1, 0]
