"""Writing the picture of a video: H.264 in MP4 with the source's sound and timing (PyAV), or OpenCV's MPEG-4.

``dsfd detect clip.mp4 --anonymize blur`` must give a file people can
publish: it plays in web browsers and on upload pages (H.264, ``yuv420p``,
the ``moov`` atom first), keeps the sound, and has the source's frame count,
frame times (variable frame rates included) and size. That is written
through `PyAV <https://pyav.basswood-io.com>`_ (``pip install av``, or
``pip install dsfd[video]``), whose wheels bundle FFmpeg with the ``libx264``
encoder:

* video: ``libx264``, ``yuv420p`` (CRF 18, preset ``medium``), each frame at
  its source presentation time (read from the source's packets), so frame
  count, frame rate and duration are the source's; an odd width or height
  (which ``yuv420p`` cannot hold) gets one more column / row, a copy of the
  last one;
* sound: the source's first audio track is *copied* packet by packet (no
  re-encoding, no loss) when MP4 can hold its codec (AAC, MP3, Opus, ALAC,
  FLAC, AC-3, E-AC-3), and re-encoded to AAC otherwise (e.g. PCM from a MOV
  or AVI); audio and video packets are interleaved as they are written;
* metadata: none of the source's container or stream tags (a phone clip's
  ``location`` / ``com.apple.quicktime.location.ISO6709``, its make and
  model, its creation time) is copied. Frames are decoded the way OpenCV
  shows them (rotation metadata applied), so a rotated phone clip is
  written upright with no rotation tag.

Without PyAV (or when it cannot encode H.264 here) the picture is written by
OpenCV's ``VideoWriter`` (``mp4v``, MPEG-4 Part 2, at the average frame
rate) with a warning that the sound is dropped; that file does not play in
most browsers.

Why PyAV rather than imageio-ffmpeg: both bundle FFmpeg with an H.264
encoder, but imageio-ffmpeg drives an ``ffmpeg`` process through pipes
(raw frames in, one command line for the whole file), so copying the audio
track and giving each frame its own timestamp means a second ffmpeg pass to
mux, while PyAV does both in-process, packet by packet, and reads the
source's packet times without decoding.
"""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

__all__ = ["AUDIO_COPY_CODECS", "pyav_h264_available", "source_timing", "H264Writer", "OpenCVWriter", "open_writer"]

#: Audio codecs copied into MP4 as they are (others are re-encoded to AAC).
AUDIO_COPY_CODECS = ("aac", "mp3", "opus", "alac", "flac", "ac3", "eac3")
#: H.264 encoder settings (libx264).
H264_OPTIONS = {"crf": "18", "preset": "medium"}


def pyav_h264_available() -> bool:
    """Whether PyAV is installed and its FFmpeg has the ``libx264`` encoder."""
    try:
        import av
    except ImportError:
        return False
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # noqa: BLE001 - any failure: no usable encoder
        return False
    return True


def source_timing(path: Path) -> Tuple[Optional[Fraction], List[int], Optional[Fraction]]:
    """``(time_base, sorted presentation times of the video packets, average rate)`` of a file's video, by PyAV.

    Read from the packets (no decoding). ``(None, [], None)`` when PyAV is
    missing or the file cannot be read.
    """
    try:
        import av
    except ImportError:
        return None, [], None
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None, [], None
            s = c.streams.video[0]
            pts = [p.pts for p in c.demux(s) if p.pts is not None and p.size > 0]
            return s.time_base, sorted(pts), s.average_rate
    except Exception:  # noqa: BLE001
        return None, [], None


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


class H264Writer:
    """H.264 / MP4 through PyAV, with the source's audio and frame times (see the module's notes)."""

    def __init__(self, tmp: Path, source: Optional[Path], fps: float) -> None:
        import av

        self.tmp, self.source, self.fps = Path(tmp), source, float(fps)
        self.time_base, self.times, rate = source_timing(source) if source is not None else (None, [], None)
        if rate is None or rate <= 0:
            rate = Fraction(self.fps).limit_denominator(1001)
        self.rate = rate
        if self.time_base is None:
            self.time_base = Fraction(1, 90000)
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.out = av.open(str(self.tmp), "w", format="mp4", options={"movflags": "+faststart"})
        self.video: Any = None
        self.audio_in: Any = None
        self.audio_out: Any = None
        self.audio_packets: Any = None
        self.resampler_stream: Any = None
        self.pending_audio: Any = None
        self.last_pts: Optional[int] = None
        self.n = 0
        if source is not None:
            self._open_audio(source)

    # ------------------------------------------------------------------ audio
    def _open_audio(self, source: Path) -> None:
        import av

        try:
            self.audio_in = av.open(str(source))
        except Exception:  # noqa: BLE001 - the video is still written
            self.audio_in = None
            return
        if not self.audio_in.streams.audio:
            self.audio_in.close()
            self.audio_in = None
            return
        a = self.audio_in.streams.audio[0]
        self.copy_audio = False
        if a.codec_context.name in AUDIO_COPY_CODECS:
            try:
                self.audio_out = self.out.add_stream_from_template(a)
                self.copy_audio = True
                self.audio_packets = (p for p in self.audio_in.demux(a) if p.dts is not None and p.size > 0)
            except Exception:  # noqa: BLE001 - re-encoded below
                self.audio_out = None
        if not self.copy_audio:
            try:
                self.audio_out = self.out.add_stream("aac", rate=a.rate or 48000)
                if a.layout is not None:
                    try:
                        self.audio_out.layout = a.layout.name
                    except Exception:  # noqa: BLE001 - the encoder's default layout
                        pass
                self.audio_packets = self._encoded_audio(a)
            except Exception as e:  # noqa: BLE001 - the video is still written, without its sound
                warnings.warn(f"{source}: the audio track ({a.codec_context.name}) could not be kept: {e}",
                              stacklevel=2)
                self.audio_out = self.audio_packets = None
                self.audio_in.close()
                self.audio_in = None
                return
        for key in list(self.audio_out.metadata):  # no tag of the source (language is harmless, but none is kept)
            del self.audio_out.metadata[key]

    def _encoded_audio(self, a: Any) -> Any:
        for frame in self.audio_in.decode(a):
            frame.pts = None
            yield from self.audio_out.encode(frame)
        yield from self.audio_out.encode(None)

    def _mux_audio_until(self, seconds: Optional[float]) -> None:
        """Mux the source's audio packets up to ``seconds`` (all of them for ``None``)."""
        if self.audio_packets is None:
            return
        while True:
            p = self.pending_audio
            if p is None:
                p = next(self.audio_packets, None)
                if p is None:
                    self.audio_packets = None
                    return
            if seconds is not None and p.pts is not None and p.time_base is not None \
                    and float(p.pts * p.time_base) > seconds:
                self.pending_audio = p
                return
            self.pending_audio = None
            if self.copy_audio:
                p.stream = self.audio_out
            self.out.mux(p)

    # ------------------------------------------------------------------ video
    def _pts(self, i: int) -> int:
        # the source's own presentation times (not shifted to 0): the copied audio keeps its own, so the two
        # stay in sync whatever the source's start times are
        if i < len(self.times):
            pts = self.times[i]
        else:  # more frames decoded than packets listed (or no list): one frame duration after the last
            step = max(1, round(1 / (float(self.rate) * float(self.time_base))))
            pts = (self.last_pts + step) if self.last_pts is not None else 0
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1
        return int(pts)

    def write(self, picture: np.ndarray) -> None:
        import av

        pic = _even(np.ascontiguousarray(picture))
        if self.video is None:
            self.video = self.out.add_stream("libx264", rate=self.rate, options=dict(H264_OPTIONS))
            self.video.width, self.video.height = pic.shape[1], pic.shape[0]
            self.video.pix_fmt = "yuv420p"
            self.video.codec_context.time_base = self.time_base
            self.video.time_base = self.time_base
        frame = av.VideoFrame.from_ndarray(pic, format="bgr24")
        pts = self._pts(self.n)
        frame.pts, frame.time_base = pts, self.time_base
        self.last_pts = pts
        for packet in self.video.encode(frame):
            self.out.mux(packet)
        self.n += 1
        self._mux_audio_until(float(pts * self.time_base) + 0.5)

    def close(self) -> None:
        """Flush the encoder, the rest of the audio, and the file."""
        if self.out is None:
            return
        try:
            if self.video is not None:
                for packet in self.video.encode(None):
                    self.out.mux(packet)
                self._mux_audio_until(None)
        finally:
            out, self.out = self.out, None
            out.close()
            if self.audio_in is not None:
                self.audio_in.close()

    @property
    def frames(self) -> int:
        return self.n


class OpenCVWriter:
    """OpenCV's ``mp4v`` writer at the average frame rate: no sound, does not play in most browsers."""

    def __init__(self, tmp: Path, fps: float) -> None:
        self.tmp, self.fps = Path(tmp), float(fps)
        self._w: Any = None
        self.n = 0

    def write(self, picture: np.ndarray) -> None:
        import cv2

        if self._w is None:
            h, w = picture.shape[:2]
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            self._w = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._w.isOpened():
                raise OSError(f"could not open a video writer for {self.tmp}")
        self._w.write(picture)
        self.n += 1

    def close(self) -> None:
        if self._w is not None:
            self._w.release()

    @property
    def frames(self) -> int:
        return self.n


_WARNED = set()


def open_writer(tmp: Path, source: Optional[Path], fps: float, codec: str = "auto") -> Any:
    """The writer for a video's picture: :class:`H264Writer` when PyAV can encode H.264, else :class:`OpenCVWriter`.

    ``codec``: ``"auto"``, ``"h264"`` (PyAV required) or ``"mp4v"`` (OpenCV).
    """
    if codec not in ("auto", "h264", "mp4v"):
        raise ValueError(f"codec must be auto, h264 or mp4v, got {codec!r}")
    if codec != "mp4v":
        if pyav_h264_available():
            return H264Writer(tmp, source, fps)
        if codec == "h264":
            raise RuntimeError("H.264 video output needs PyAV with libx264: pip install av")
        if "pyav" not in _WARNED:
            _WARNED.add("pyav")
            warnings.warn("PyAV is not installed (pip install av): videos are written by OpenCV as MPEG-4 Part 2 "
                          "(mp4v), without their sound, and may not play in web browsers", stacklevel=2)
    return OpenCVWriter(tmp, fps)


def remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
