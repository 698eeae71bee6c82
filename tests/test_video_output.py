"""Videos people can publish (issue #31, item 2): H.264 in MP4 with the source's sound, frames and timing.

Clips are made here with PyAV: a tone on an AAC audio track, no audio, a
variable frame rate, an odd frame size, a rotated phone clip (the MP4 track
matrix written by hand) with a location tag. They go through the
detection runner with a stand-in detector (one fixed face per frame), and
the anonymised copy is read back with PyAV.
"""

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from dsfd.inference import video as video_mod  # noqa: E402
from dsfd.inference.runner import InputItem, RunOptions, run_detection  # noqa: E402

FACE = np.array([[20, 16, 60, 64, 0.9]], np.float32)


class _OneFace:
    device = "cpu"

    def detect_batch(self, images, min_score=None):
        return [FACE.copy() for _ in images]


def _pattern(i, h, w):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4] = (0, 0, 255)  # a red band on the left: shows the orientation
    img[h // 2:, :] += np.uint8(60)
    img[:, (4 * i) % w] = 255  # a moving line
    return img


def make_clip(path, frames=40, size=(160, 96), fps=25, times_ms=None, tone=True, audio_codec="aac",
              location=None):
    """An MP4 (MOV for PCM audio) of ``frames`` frames; ``times_ms`` gives each frame's time (a variable rate)."""
    w, h = size
    c = av.open(str(path), "w")
    if location:
        c.metadata["location"] = location
    v = c.add_stream("mpeg4", rate=fps)
    v.width, v.height, v.pix_fmt = w, h, "yuv420p"
    v.codec_context.time_base = Fraction(1, 1000)
    a = None
    if tone:
        a = c.add_stream(audio_codec, rate=44100)
        a.layout = "mono"
    for i in range(frames):
        f = av.VideoFrame.from_ndarray(_pattern(i, h, w), format="bgr24")
        f.pts = int(times_ms[i] if times_ms is not None else round(i * 1000 / fps))
        f.time_base = Fraction(1, 1000)
        for p in v.encode(f):
            c.mux(p)
    for p in v.encode(None):
        c.mux(p)
    if a is not None:
        seconds = (times_ms[-1] / 1000 + 1 / fps) if times_ms is not None else frames / fps
        n = int(round(seconds * 44100))
        t = np.arange(n) / 44100
        samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
        for start in range(0, n, 1024):
            chunk = samples[start:start + 1024]
            af = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = 44100, start, Fraction(1, 44100)
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    c.close()
    return path


def rotate_track_matrix(path):
    """Write a 90-degree display matrix into the video track's ``tkhd`` (as a phone does for a portrait clip)."""
    data = bytearray(Path(path).read_bytes())
    at = 0
    while True:
        at = data.find(b"tkhd", at + 1)
        assert at > 0, "no video tkhd"
        version = data[at + 4]
        matrix = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
        width = struct.unpack(">I", data[matrix + 36:matrix + 40])[0]
        if width:  # the video track (audio tracks have no width)
            break
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    Path(path).write_bytes(bytes(data))


def probe(path):
    """Codec names, decoded frame count, frame times (s), video size, audio duration (s) and tags."""
    with av.open(str(path)) as c:
        out = {"container_tags": dict(c.metadata), "streams": [s.type for s in c.streams]}
        v = c.streams.video[0]
        out["video_codec"] = v.codec_context.name
        out["pix_fmt"] = v.codec_context.pix_fmt
        out["video_tags"] = dict(v.metadata)
        frames = list(c.decode(v))
        out["frames"] = len(frames)
        out["times"] = [float(f.pts * f.time_base) for f in frames]
        out["size"] = (frames[0].width, frames[0].height)
        out["rotation"] = frames[0].rotation
        out["first"] = frames[0].to_ndarray(format="bgr24")
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            out["audio_codec"] = a.codec_context.name
            packets = [p for p in c.demux(a) if p.size > 0]
            out["audio_seconds"] = float(sum(p.duration for p in packets) * a.time_base)
            out["audio_first_pts"] = float(packets[0].pts * a.time_base)
            out["audio_bytes"] = [bytes(p) for p in packets]
            out["audio_tags"] = dict(a.metadata)
    return out


def _run(tmp_path, clip, method="box", codec="auto"):
    out = tmp_path / "out"
    opts = RunOptions(out=out, anonymize=method, workers=0, progress=False, draw_min=0.5, save_min=0.5)
    opts.output.video_codec = codec
    summary = run_detection(_OneFace(), [InputItem(clip, Path(clip.name), "video")], opts)
    assert summary["skipped"] == [], summary["skipped"]
    return out / Path(clip.name).with_suffix(".mp4").name


def test_tone_clip_keeps_its_audio_copied_and_is_h264(tmp_path):
    src = make_clip(tmp_path / "tone.mp4", frames=40, fps=25)
    res = _run(tmp_path, src)
    a, b = probe(src), probe(res)
    assert b["video_codec"] == "h264" and b["pix_fmt"] == "yuv420p"
    assert b["frames"] == a["frames"] == 40 and b["size"] == a["size"] == (160, 96)
    assert b["times"] == pytest.approx(a["times"], abs=1e-3)  # same frame rate and frame times
    assert b["audio_codec"] == "aac" and b["audio_seconds"] == pytest.approx(a["audio_seconds"], abs=1e-3)
    assert b["audio_bytes"] == a["audio_bytes"]  # copied packet by packet: not re-encoded
    assert b["audio_first_pts"] == pytest.approx(a["audio_first_pts"], abs=1e-3)
    x1, y1, x2, y2 = 12, 6, 68, 74  # the face grown by 0.2, hidden (box: black); the rest as it was
    assert b["first"][y1 + 2:y2 - 2, x1 + 2:x2 - 2].max() < 30
    assert np.abs(b["first"][:, 90:].astype(int) - a["first"][:, 90:].astype(int)).mean() < 4
    # a browser can start playing before the whole file is there: the moov atom comes before mdat
    head = res.read_bytes()
    assert head.find(b"moov") < head.find(b"mdat")


def test_clip_without_sound_and_odd_size(tmp_path):
    src = make_clip(tmp_path / "silent.mp4", frames=12, size=(161, 97), tone=False)
    b = probe(_run(tmp_path, src, method="blur"))
    assert "audio" not in b["streams"] and b["frames"] == 12 and b["video_codec"] == "h264"
    assert b["size"] == (162, 98)  # yuv420p needs even sizes: one more column and row, copies of the last ones


def test_pcm_audio_is_reencoded_to_aac(tmp_path):
    src = make_clip(tmp_path / "pcm.mov", frames=20, audio_codec="pcm_s16le")
    a, b = probe(src), probe(_run(tmp_path, src))
    assert b["audio_codec"] == "aac" and b["frames"] == 20
    assert b["audio_seconds"] == pytest.approx(a["audio_seconds"], abs=0.05)


def test_variable_frame_rate_keeps_each_frame_time(tmp_path):
    times = [0, 40, 80, 200, 240, 400, 440, 480, 700, 740, 780, 1000]
    src = make_clip(tmp_path / "vfr.mp4", frames=len(times), times_ms=times)
    a, b = probe(src), probe(_run(tmp_path, src))
    assert a["times"] == pytest.approx([t / 1000 for t in times], abs=1e-3)
    assert b["frames"] == len(times) and b["times"] == pytest.approx(a["times"], abs=1e-3)
    assert b["audio_seconds"] == pytest.approx(a["audio_seconds"], abs=1e-3)


def test_rotated_phone_clip_comes_back_upright_without_its_location(tmp_path):
    src = make_clip(tmp_path / "phone.mp4", frames=10, location="+52.5200+013.4050/")
    rotate_track_matrix(src)
    a = probe(src)
    assert a["container_tags"].get("location") == "+52.5200+013.4050/"
    assert a["rotation"] in (90, -90, 270)  # PyAV sees the display matrix
    import cv2

    cap = cv2.VideoCapture(str(src))
    ok, shown = cap.read()  # OpenCV shows it turned
    cap.release()
    assert ok and shown.shape[:2] == (160, 96)
    b = probe(_run(tmp_path, src, method="blur"))
    assert b["size"] == (96, 160) and b["rotation"] == 0  # upright pixels, no matrix
    assert b["frames"] == 10 and b["times"] == pytest.approx(a["times"], abs=1e-3)
    # the red band (left in the stored frames) is where OpenCV showed it
    keep = np.ones((160, 96), bool)
    keep[6:74, 12:68] = False  # the hidden face, grown
    diff = lambda x, y: np.abs(x.astype(int) - y.astype(int))[keep].mean()  # noqa: E731
    assert diff(b["first"], shown) < 4 < 10 < diff(b["first"], shown[::-1, ::-1])
    tags = {**b["container_tags"], **b["video_tags"], **b.get("audio_tags", {})}
    assert not any("location" in k.lower() or "xyz" in k.lower() for k in tags), tags
    assert not any("52.52" in str(v) for v in tags.values()), tags


def test_without_pyav_opencv_writes_and_warns(tmp_path, monkeypatch):
    src = make_clip(tmp_path / "tone.mp4", frames=10)
    monkeypatch.setattr(video_mod, "pyav_h264_available", lambda: False)
    monkeypatch.setattr(video_mod, "_WARNED", set())
    with pytest.warns(UserWarning, match="without their sound"):
        w = video_mod.open_writer(tmp_path / "x.mp4", src, 25.0)
    assert isinstance(w, video_mod.OpenCVWriter)
    res = _run(tmp_path, src, codec="mp4v")
    b = probe(res)
    assert b["video_codec"] == "mpeg4" and "audio" not in b["streams"] and b["frames"] == 10


def test_late_video_start_stays_in_sync_with_the_sound(tmp_path):
    """Video starting 0.5 s after the sound (as cut clips do): both keep their own times."""
    times = [500 + 40 * i for i in range(15)]
    src = make_clip(tmp_path / "late.mp4", frames=15, times_ms=times)
    a, b = probe(src), probe(_run(tmp_path, src))
    assert a["times"][0] == pytest.approx(0.5, abs=1e-3)
    assert b["times"] == pytest.approx(a["times"], abs=1e-3)
    assert b["audio_first_pts"] == pytest.approx(a["audio_first_pts"], abs=1e-3)
    assert b["audio_bytes"] == a["audio_bytes"]
