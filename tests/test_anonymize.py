"""Face anonymisation (dsfd.inference.anonymize, dsfd detect --anonymize): faces hidden, nothing else touched."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsfd.data_paths import repo_root
from dsfd.inference.anonymize import ANONYMIZE_METHODS, anonymize, grown_boxes

PHOTO = repo_root() / "dsfd" / "assets" / "grace_hopper.jpg"


def _noise(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _outside_mask(boxes, h, w):
    mask = np.ones((h, w), bool)
    for x1, y1, x2, y2 in boxes:
        mask[max(0, y1):y2, max(0, x1):x2] = False
    return mask


@pytest.mark.parametrize("method", ANONYMIZE_METHODS)
def test_faces_hidden_and_the_rest_untouched(method):
    img = _noise()
    dets = np.array([[20, 30, 50, 70, 0.9], [100, 10, 140, 40, 0.6], [60, 80, 80, 100, 0.2]], np.float32)
    out = anonymize(img, dets, method=method, margin=0.2, min_score=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
    boxes = grown_boxes(dets[:2], 160, 120, 0.2)
    # the 30x40 face grows by 6 / 8 px per side
    assert boxes[0].tolist() == [14, 22, 56, 78]
    for x1, y1, x2, y2 in boxes:
        changed = (out[y1:y2, x1:x2] != img[y1:y2, x1:x2]).any(-1)
        assert changed.mean() > 0.95, (method, changed.mean())
    # the grown margin is hidden too: a pixel 3 px left of the first raw box
    assert (out[50, 17] != img[50, 17]).any()
    # everything outside the grown boxes, including the face below min_score, is exactly as before
    keep = _outside_mask(boxes, 120, 160)
    assert np.array_equal(out[keep], img[keep])
    assert np.array_equal(out[80:100, 60:80], img[80:100, 60:80])
    if method == "box":
        x1, y1, x2, y2 = boxes[0]
        assert (out[y1:y2, x1:x2] == 0).all()
    if method == "pixelate":  # a mosaic: few distinct colours per face, in blocks
        x1, y1, x2, y2 = boxes[0]
        assert len(np.unique(out[y1:y2, x1:x2].reshape(-1, 3), axis=0)) <= 64


def test_boxes_at_the_border_are_clipped_and_bad_input_is_named():
    img = _noise(40, 50)
    out = anonymize(img, np.array([[-10, -10, 8, 8, 1.0], [45, 30, 70, 60, 1.0]]), "box", margin=0)
    assert (out[:8, :8] == 0).all() and (out[30:, 45:] == 0).all() and np.array_equal(out[10:28, 10:40], img[10:28, 10:40])
    assert np.array_equal(anonymize(img, np.zeros((0, 5)), "blur"), img)
    gray = anonymize(img[..., 0], np.array([[5, 5, 20, 20, 1.0]]), "pixelate")
    assert gray.shape == (40, 50)
    with pytest.raises(ValueError, match="method"):
        anonymize(img, np.zeros((0, 5)), "smudge")
    with pytest.raises(ValueError, match="uint8"):
        anonymize(img.astype(np.float32), np.zeros((0, 5)))
    with pytest.raises(ValueError, match="finite"):
        anonymize(img, np.array([[np.nan, 0, 5, 5, 1.0]]))
    with pytest.raises(ValueError, match="margin"):
        grown_boxes(np.zeros((1, 5)), 10, 10, margin=-0.1)


def _detect(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dsfd", "detect", *map(str, args), "--device", "cpu", "--no-progress"],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def test_detect_anonymize_photo_end_to_end(tmp_path):
    """The packaged photo (lossless PNG copy): the face region changes, pixels far from it do not."""
    src = tmp_path / "photo.png"
    cv2.imwrite(str(src), cv2.imread(str(PHOTO)))
    r = _detect(src, "--out", tmp_path / "out", "--anonymize", "blur")
    assert r.returncode == 0, r.stderr
    faces = json.loads((tmp_path / "out" / "photo.json").read_text())["detections"]
    assert faces, "the packaged photo's face must be found"
    img, out = cv2.imread(str(src)), cv2.imread(str(tmp_path / "out" / "photo.png"))
    assert out.shape == img.shape
    dets = np.array([f["box"] + [f["score"]] for f in faces])
    boxes = grown_boxes(dets, img.shape[1], img.shape[0])
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        assert (out[y1:y2, x1:x2] != img[y1:y2, x1:x2]).any(-1).mean() > 0.9
    keep = _outside_mask(boxes, *img.shape[:2])
    assert keep.sum() > 0.5 * keep.size and np.array_equal(out[keep], img[keep])
    # the journal says what the picture shows; a resume with another method redoes it, the same one does not
    r = _detect(src, "--out", tmp_path / "out", "--anonymize", "blur", "--resume")
    assert r.returncode == 0 and "1 already done" in r.stdout, r.stdout
    r = _detect(src, "--out", tmp_path / "out", "--anonymize", "box", "--resume")
    assert r.returncode == 0 and "already done" not in r.stdout, r.stdout
    x1, y1, x2, y2 = boxes[0]
    assert (cv2.imread(str(tmp_path / "out" / "photo.png"))[y1:y2, x1:x2] == 0).all()
    r = _detect(src, "--out", tmp_path / "o2", "--anonymize", "blur", "--no-draw")
    assert r.returncode == 2 and "--no-draw" in r.stderr and "Traceback" not in r.stderr


def test_detect_anonymize_video_keeps_frames_rate_and_size(tmp_path):
    frame = cv2.resize(cv2.imread(str(PHOTO)), (256, 300), interpolation=cv2.INTER_AREA)
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (256, 300))
    for i in range(18):
        writer.write(np.roll(frame, i, axis=1))
    writer.release()
    r = _detect(video, "--out", tmp_path / "out", "--anonymize", "pixelate", "--min-score", "0.3")
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    n, size, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), (cap.get(cv2.CAP_PROP_FRAME_WIDTH),
                                                           cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), cap.get(cv2.CAP_PROP_FPS)
    ok, first = cap.read()
    cap.release()
    assert (n, size, fps) == (18, (256.0, 300.0), 12.0) and ok
    lines = (tmp_path / "out" / "clip.jsonl").read_text().splitlines()
    assert len(lines) == 18
    dets = json.loads(lines[0])["detections"]
    assert dets, "the face must be found in the first frame"
    x1, y1, x2, y2 = (int(round(v)) for v in dets[0]["box"])
    src_face = frame[y1:y2, x1:x2].astype(int)
    # the pixelated face differs from the source far beyond the codec's error; a corner far from it does not
    assert np.abs(first[y1:y2, x1:x2].astype(int) - src_face).mean() > 3 * np.abs(
        first[-40:, :40].astype(int) - frame[-40:, :40].astype(int)).mean()
