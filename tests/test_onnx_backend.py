"""``Detector(backend="onnxruntime")``, the int8 export and ``--backend`` on the CLIs (issue #32).

Both backends share the detector's canvas, padding, decoding and NMS; only
the network's arithmetic differs. For float32 they must keep the same boxes
on real photos: the same number, paired boxes within ``BOX_ATOL_PX`` pixels
and scores within ``SCORE_ATOL`` (float32 noise of two runtimes; measured
differences are 1e-4 px and 1e-6 in score). int8 is checked for running and
reproducing, not for accuracy (its WIDER AP is measured by
``benchmarks/ort_backends.py``; docs/speed.md).

Tests that need onnxruntime (and onnx, for exporting) skip with the reason
when they are absent; the missing-package error is tested without it.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cv2

from dsfd.data_paths import wider_root
from dsfd.inference import Detector
from dsfd.models import build_model, calibrate_random_model

try:
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    HAVE_ORT = True
except ImportError:
    HAVE_ORT = False

needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="the onnxruntime backend needs onnx and onnxruntime "
                               "(pip install 'dsfd[export]'; CI installs them via scripts/env.sh)")

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "dsfd" / "assets" / "grace_hopper.jpg"
#: float32 agreement of the two backends on the same photo (paired boxes, pixels; scores).
BOX_ATOL_PX = 1e-2
SCORE_ATOL = 1e-4


def _val_photos(n):
    photos = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    return photos[:: max(1, len(photos) // n)][:n]


def _same_boxes(a, b):
    from dsfd.export import match_detections

    m = match_detections(np.concatenate([np.zeros((len(a), 1), np.float32), a], 1),
                         np.concatenate([np.zeros((len(b), 1), np.float32), b], 1))
    assert m["count"][0] == m["count"][1] > 0, m
    assert m["max_box_diff_px"] < BOX_ATOL_PX and m["max_score_diff"] < SCORE_ATOL, m
    return m


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    grace = cv2.imread(str(ASSET))
    return calibrate_random_model(build_model("paper", "tiny"), [grace]).eval()


@pytest.fixture(scope="module")
def default_pair():
    return (Detector(device="cpu", dtype=torch.float32),
            Detector(backend="onnxruntime") if HAVE_ORT else None)


# --------------------------------------------------------------------------- float32: the same boxes


@needs_ort
def test_backends_agree_on_the_packaged_photo(default_pair):
    ref, ort_det = default_pair
    assert ort_det.backend == "onnxruntime" and ort_det.precision == "float32"
    assert ort_det.display_score == ref.display_score
    _same_boxes(ref.detect(str(ASSET), min_score=None), ort_det.detect(str(ASSET), min_score=None))
    _same_boxes(ref.detect(str(ASSET)), ort_det.detect(str(ASSET)))  # the drawn faces too


@needs_ort
def test_backends_agree_on_wider_val_photos(default_pair):
    photos = _val_photos(3)
    if not photos:
        pytest.skip(f"no WIDER FACE val photos under {wider_root()} (the shared data is not here)")
    ref, ort_det = default_pair
    for p in photos:
        img = cv2.imread(str(p))
        _same_boxes(ref(img), ort_det(img))


@needs_ort
def test_backends_agree_on_padded_batches_and_accuracy_mode(tiny):
    """Different sizes in one batch (padding mask from the meta-device copy) and the multi-scale protocol."""
    ref = Detector(model=tiny, device="cpu", dtype=torch.float32)
    ort_det = Detector(model=tiny, backend="onnxruntime")
    grace = cv2.imread(str(ASSET))
    images = [cv2.resize(grace, (160, 192)), cv2.resize(grace[100:400, 50:450], (120, 90)), grace[:20, :24]]
    for a, b in zip(ref.detect_batch(images, min_score=None), ort_det.detect_batch(images, min_score=None)):
        _same_boxes(a, b)
    small = cv2.resize(grace, (96, 112))
    _same_boxes(ref.detect(small, min_score=None, accuracy_mode=True),
                ort_det.detect(small, min_score=None, accuracy_mode=True))
    fixed = Detector(model=tiny, backend="onnxruntime", input_size=128)
    ref_fixed = Detector(model=tiny, device="cpu", dtype=torch.float32, input_size=128)
    _same_boxes(ref_fixed.detect(images[0], min_score=None), fixed.detect(images[0], min_score=None))


@needs_ort
def test_onnx_file_as_weights(tiny, tmp_path):
    from dsfd.export import export_onnx

    tiny.display_score, tiny.hide_score = 0.37, 0.21
    try:
        path = export_onnx(tmp_path / "tiny_raw.onnx", model=tiny, outputs="raw", sample_size=(64, 64))
    finally:
        del tiny.display_score, tiny.hide_score
    from_file = Detector(backend="onnxruntime", weights=str(path))
    assert from_file.display_score == pytest.approx(0.37)  # from the file's metadata
    assert from_file.hide_score == pytest.approx(0.21)
    assert from_file.model.config["backbone"] == "tiny" and from_file.weights == str(path)
    assert "backend=onnxruntime" in repr(from_file)
    img = cv2.resize(cv2.imread(str(ASSET)), (144, 176))
    _same_boxes(Detector(model=tiny, device="cpu", dtype=torch.float32).detect(img, min_score=None),
                from_file.detect(img, min_score=None))
    # the float [B, 3, H, W] layout runs too
    fpath = export_onnx(tmp_path / "tiny_float.onnx", model=tiny, outputs="raw", input_format="float",
                        sample_size=(64, 64))
    _same_boxes(from_file.detect(img, min_score=None),
                Detector(backend="onnxruntime", weights=fpath).detect(img, min_score=None))


@needs_ort
def test_bad_combinations_are_clear_errors(tiny, tmp_path):
    from dsfd.export import export_onnx

    raw = export_onnx(tmp_path / "r.onnx", model=tiny, outputs="raw", sample_size=(64, 64))
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        Detector(weights=str(raw))  # an .onnx file on the torch backend
    boxes = export_onnx(tmp_path / "b.onnx", model=tiny, outputs="boxes", sample_size=(64, 64))
    with pytest.raises(ValueError, match="--outputs raw"):
        Detector(backend="onnxruntime", weights=str(boxes))
    with pytest.raises(ValueError, match="backend must be one of"):
        Detector(model=tiny, backend="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        Detector(model=tiny, backend="onnxruntime", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="CPU"):
        Detector(model=tiny, backend="onnxruntime", device="cuda")
    with pytest.raises(FileNotFoundError):
        Detector(backend="onnxruntime", weights=str(tmp_path / "missing.onnx"))


@needs_ort
def test_threads_follow_torch(tiny):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        det = Detector(model=tiny, backend="onnxruntime")
        assert det._ort.threads == 1
    finally:
        torch.set_num_threads(before)
    img = cv2.resize(cv2.imread(str(ASSET)), (96, 112))
    ref = det.detect(img, min_score=None)
    det._ort = det._ort.rebuilt(threads=2, spinning=False)  # the same graph, other session options
    assert det._ort.threads == 2 and det._ort.spinning is False
    _same_boxes(ref, det.detect(img, min_score=None))


# --------------------------------------------------------------------------- int8


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("calibration")
    grace = cv2.imread(str(ASSET))
    for i, (w, h) in enumerate([(240, 288), (200, 160), (320, 256)]):
        cv2.imwrite(str(d / f"photo{i}.jpg"), cv2.resize(grace[i * 40:], (w, h)))
    return d


@needs_ort
def test_int8_export_runs_and_reproduces(tiny, tmp_path, calibration_dir):
    from dsfd.export import export_onnx, onnx_metadata, quantize_int8

    raw = export_onnx(tmp_path / "raw.onnx", model=tiny, outputs="raw", sample_size=(64, 64))
    a = quantize_int8(raw, tmp_path / "a_int8.onnx", [calibration_dir])
    b = quantize_int8(raw, tmp_path / "b_int8.onnx", [calibration_dir])
    q = onnx_metadata(a)["quantization"]
    assert q["format"] == "QDQ" and q["calibration_photos"] == ["photo0.jpg", "photo1.jpg", "photo2.jpg"]
    from dsfd.export.quantize import float_nodes

    head = float_nodes(onnx.load(str(raw)), ["head"])
    assert head and set(head) <= set(q["float_nodes"])  # the last head convolutions stay float
    model = onnx.load(str(a))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    det_a = Detector(backend="onnxruntime", weights=str(a))
    det_b = Detector(backend="onnxruntime", weights=str(b))
    assert det_a.precision == "int8" and "precision=int8" in repr(det_a)
    img = cv2.resize(cv2.imread(str(ASSET)), (160, 192))
    out_a, out_b = det_a.detect(img, min_score=None), det_b.detect(img, min_score=None)
    assert len(out_a) > 0 and np.array_equal(out_a, out_b)  # same photos, same recipe: the same file's results
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(a, tmp_path / "c.onnx", [calibration_dir])
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(raw, tmp_path / "c.onnx", [calibration_dir], calibration="kl")


@needs_ort
def test_cli_export_int8_one_command(tmp_path, calibration_dir, capsys):
    from dsfd.cli import main

    out = tmp_path / "dsfd_int8.onnx"
    assert main(["export", str(out), "--int8", "--calibration", str(calibration_dir), "--verify",
                 "--sample-size", "64", "64"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "int8 (QDQ)" in text and '"ok": true' in text
    assert not list(tmp_path.glob("*.tmp.onnx"))  # the float32 intermediate is removed
    assert main(["export", str(tmp_path / "x.onnx"), "--int8", "--nms"]) == 2
    assert "--int8 writes the raw graph" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "x.onnx"), "--calibration", str(calibration_dir)]) == 2


def test_default_calibration_photos_are_training_photos():
    from dsfd.export.quantize import default_calibration_photos

    root = wider_root()
    if not (root / "WIDER_train" / "images").is_dir():
        pytest.skip(f"no WIDER FACE training photos under {root} (the shared data is not here)")
    photos = default_calibration_photos()
    assert 0 < len(photos) <= 32 and len(set(photos)) == len(photos)
    assert all("WIDER_train" in p.parts for p in photos) and not any("WIDER_val" in p.parts for p in photos)


def test_default_calibration_without_data_is_a_clear_error(tmp_path):
    from dsfd.export.quantize import default_calibration_photos

    with pytest.raises(FileNotFoundError, match="--calibration"):
        default_calibration_photos(root=tmp_path)


# --------------------------------------------------------------------------- without onnxruntime


def test_missing_onnxruntime_is_one_line_naming_the_extra(tiny, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ImportError) as err:
        Detector(model=tiny, backend="onnxruntime")
    msg = str(err.value)
    assert "\n" not in msg and "dsfd[export]" in msg and "onnxruntime" in msg
    from dsfd.cli import main

    assert main(["detect", str(ASSET), "--backend", "onnxruntime", "--out", "/nonexistent/never-written"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("dsfd detect: error: ") and "dsfd[export]" in lines[-1]


# --------------------------------------------------------------------------- the CLIs


@needs_ort
def test_cli_detect_backend(tmp_path, capsys):
    from dsfd.cli import main

    img = tmp_path / "in" / "grace.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), cv2.resize(cv2.imread(str(ASSET)), (300, 360)))
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert main(["detect", str(img), "--out", str(out), "--backend", backend, "--dtype", "float32",
                     "--no-draw", "--no-progress", "--output-format", "wider", "--min-score", "0.3"]) == 0
        outs[backend] = (out / "grace.txt").read_text().splitlines()
    assert "(ONNX Runtime)" in capsys.readouterr().out
    ref = np.loadtxt(outs["torch"][2:], ndmin=2)
    got = np.loadtxt(outs["onnxruntime"][2:], ndmin=2)
    assert ref.shape == got.shape and len(ref) > 0 and np.abs(ref - got).max() < 1e-2


def test_cli_eval_passes_the_backend(tmp_path, monkeypatch):
    import json
    import types

    from dsfd.cli import main
    from dsfd.evaluation.wider import SETTINGS, WiderGroundTruth, save_wider_ground_truth

    gt = WiderGroundTruth(events=["0--Ev"], names=["a"], boxes=[np.array([[10.0, 10.0, 10.0, 10.0]])],
                          keep={s: [np.array([0])] for s in SETTINGS})
    save_wider_ground_truth(gt, tmp_path / "ground_truth")
    (tmp_path / "WIDER_val" / "images" / "0--Ev").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "WIDER_val" / "images" / "0--Ev" / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    calls = []

    def load_detector(weights, accuracy_mode=False, dtype="auto", **options):
        calls.append((weights, options))
        return lambda img: np.array([[10.0, 10.0, 20.0, 20.0, 0.9]])

    fake = types.ModuleType("dsfd.inference")
    fake.load_detector = load_detector
    monkeypatch.setitem(sys.modules, "dsfd.inference", fake)
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        assert main(["eval", "--weights", "w.onnx", "--data", str(tmp_path), "--out", str(out), "--no-progress",
                     "--no-plots", "--backend", backend]) == 0
        assert json.loads((out / "ap.json").read_text())["ap"]["easy"] == 1.0
    assert calls == [("w.onnx", {}), ("w.onnx", {"backend": "onnxruntime"})]
