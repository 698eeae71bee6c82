"""A full disk during ``dsfd detect`` is one line, not a traceback (issue #31, item 5).

The line names the file that could not be written, says how many inputs are
done and gives the ``--resume`` command; the run's committed work is kept and
``--resume`` finishes the rest. Tested twice: with ``ENOSPC`` injected into the
writes of the outputs and the journal (any machine), and on a real 600 kB
tmpfs (only where the test runs as root and may mount one).
"""

import builtins
import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsfd import cli
from dsfd.inference import outputs, runner


def _photos(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # noise compresses badly: every picture takes about size * size * 3 bytes as PNG
        cv2.imwrite(str(folder / f"p{i:02d}.png"), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


class _Disk:
    """A disk of ``left`` bytes: writes past it raise ``ENOSPC`` as a full file system does (no file name)."""

    def __init__(self, left: int) -> None:
        self.left = left

    def open(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _LimitedFile(f, self) if any(c in mode for c in "wax+") else f


class _LimitedFile:
    def __init__(self, f, disk: _Disk) -> None:
        self._f, self._disk = f, disk

    def write(self, data):
        if len(data) > self._disk.left:
            self._disk.left = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_injected_enospc_is_one_line_and_resume_finishes(tmp_path, monkeypatch, capsys):
    photos = _photos(tmp_path / "photos", 6, 64)  # ~12 kB per picture
    out = tmp_path / "out"
    disk = _Disk(30_000)  # room for two photos' picture + json + journal line, not three
    monkeypatch.setattr(outputs, "open", disk.open, raising=False)
    monkeypatch.setattr(runner, "open", disk.open, raising=False)
    # --min-score 0.999: no "face" in the noise is hidden, so every copy stays incompressible noise of a known
    # size (whatever the packaged model's hiding threshold finds in it)
    args = ["detect", str(photos), "--out", str(out), "--device", "cpu", "--no-progress", "--min-score", "0.999",
            "--anonymize", "blur"]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert "no space left" in line and str(out) in line
    assert "2 of 6 input(s) are done" in line, line
    assert line.endswith(f"dsfd detect {photos} --out {out} --anonymize blur --resume"), line
    named = Path(line.split("could not write ", 1)[1].split(";", 1)[0])
    assert named.parent == out and named.name == "p02.png", line  # the third photo's picture
    # no partial or temporary file is left taking space
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], sorted(out.rglob("*"))
    assert not (out / "p02.png").exists()

    monkeypatch.undo()  # space freed
    assert cli.main(args[:-2] + ["--anonymize", "blur", "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert "6 image(s)" in stdout and "2 already done" in stdout, stdout
    assert sorted(p.name for p in out.glob("*.png")) == [f"p{i:02d}.png" for i in range(6)]


def test_injected_enospc_on_the_summary_names_it(tmp_path, monkeypatch, capsys):
    """The error the issue saw: every photo written, then summary.json does not fit."""
    photos = _photos(tmp_path / "photos", 2, 32)
    out = tmp_path / "out"
    real = outputs.atomic_write_bytes

    def full_on_summary(path, data):
        if Path(path).name == "summary.json":
            with outputs.naming_full_disk(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", full_on_summary)
    code = cli.main(["detect", str(photos), "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"could not write {out / 'summary.json'}" in err and "2 of 2 input(s) are done" in err, err


def _can_mount_tmpfs(where: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


def test_real_600k_tmpfs(tmp_path):
    mnt = tmp_path / f"small_{uuid.uuid4().hex[:6]}"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("needs root and permission to mount a tmpfs")
    try:
        photos = _photos(tmp_path / "photos", 8, 150)  # ~68 kB per picture: about 8 fit in 600 kB, with the rest not
        cmd = [sys.executable, "-m", "dsfd", "detect", str(photos), "--out", str(mnt / "out"), "--device", "cpu",
               "--no-progress", "--min-score", "0.999", "--anonymize", "pixelate"]  # copies stay incompressible noise
        # fill most of the disk first, as a user's other files would
        (mnt / "other").write_bytes(b"\0" * 300_000)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
        line = r.stderr.strip()
        assert len(line.splitlines()) == 1 and "no space left" in line and "of 8 input(s) are done" in line, line
        assert line.endswith("--anonymize pixelate --resume"), line
        done = int(line.split(" of 8 input(s)")[0].rsplit(" ", 1)[1])
        assert 0 < done < 8
        (mnt / "other").unlink()  # free the space
        r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        assert f"{done} already done" in r.stdout and "8 image(s)" in r.stdout, r.stdout
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
