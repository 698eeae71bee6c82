"""torch.hub: hubconf.py loads with torch.hub.load(<repo dir>, ..., source="local").

One test copies the package without its compiled extension (as torch.hub's
GitHub download has it) and checks, in a fresh interpreter, that the
detector falls back to the plain-PyTorch ops and detects the same faces.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dsfd

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "dsfd" / "assets" / "grace_hopper.jpg"


def _load(entry, **kw):
    return torch.hub.load(str(REPO), entry, source="local", **kw)


def test_hubconf_entry_points_and_dependencies():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dsfd_hubconf", REPO / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert {"torch", "numpy", "cv2"} <= set(mod.dependencies)
    assert all(importlib.util.find_spec(d) for d in mod.dependencies)
    for name in ("dsfd", "dsfd_model", "dsfd_released_resnet152"):
        assert callable(getattr(mod, name)) and getattr(mod, name).__doc__  # torch.hub.help shows the docstring


def test_hub_detector_equals_the_package_detector():
    det = _load("dsfd", device="cpu", dtype=torch.float32, max_size=256)
    assert isinstance(det, dsfd.Detector) and not det.random_weights
    ref = dsfd.Detector(device="cpu", dtype=torch.float32, max_size=256)
    with pytest.warns(UserWarning, match="downscaled"):
        a = det.detect(str(ASSET))
    with pytest.warns(UserWarning, match="downscaled"):
        b = ref.detect(str(ASSET))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_hub_model_entry():
    model = _load("dsfd_model")
    assert isinstance(model, dsfd.models.DSFD) and not model.training
    random_model = _load("dsfd_model", pretrained=False, network="released", backbone="tiny")
    assert isinstance(random_model, dsfd.models.ReleasedDSFD)


def test_hub_random_detector():
    det = _load("dsfd", pretrained=False, backbone="tiny", device="cpu")
    assert det.model.config["backbone"] == "tiny"
    assert det.detect(np.zeros((64, 64, 3), np.uint8)).shape[1] == 5


_CHILD = r"""
import json, sys, torch
# a development install's import hook (pip install -e .) would find the built dsfd._C of the
# main checkout for the copy too; a torch.hub user without dsfd installed has no such hook
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
repo = sys.argv[1]
det = torch.hub.load(repo, "dsfd", source="local", device="cpu", dtype=torch.float32, max_size=256)
import dsfd, dsfd.extension
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    faces = det.detect(sys.argv[2])
print(json.dumps({"file": dsfd.__file__, "has_ops": dsfd.extension._has_ops(), "faces": faces.tolist()}))
"""


def test_hub_without_the_compiled_extension(tmp_path):
    """A checkout without dsfd._C (what torch.hub downloads): plain-PyTorch ops, same detections."""
    repo = tmp_path / "dsfd_checkout"
    shutil.copytree(REPO / "dsfd", repo / "dsfd", ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "__pycache__"))
    shutil.copy(REPO / "hubconf.py", repo / "hubconf.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(repo), str(ASSET)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(repo)) and out["has_ops"] is False
    ref = dsfd.Detector(device="cpu", dtype=torch.float32, max_size=256)
    with pytest.warns(UserWarning, match="downscaled"):
        expected = ref.detect(str(ASSET))
    got = np.asarray(out["faces"], np.float32).reshape(-1, 5)
    assert got.shape == expected.shape
    # the same set of boxes (near-equal scores may be listed in another order)
    from dsfd.export import match_detections

    m = match_detections(np.insert(got, 0, 0, axis=1), np.insert(expected, 0, 0, axis=1))
    assert m["max_box_diff_px"] < 1e-2 and m["max_score_diff"] < 1e-5, m
