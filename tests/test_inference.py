"""Tests of dsfd.inference: the Detector API, batching, accuracy mode, bad inputs, box voting, the CLI.

Everything runs the tiny paper network (1/8 widths), randomly initialised
and calibrated (:func:`calibrate_random_model`) so that its outputs are
finite and spread out; detections are meaningless but have realistic
numbers and shapes. Real photographs come from the shared WIDER FACE folder
(``dsfd.data_paths.wider_root()``); tests that need them are skipped without it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import torch

import dsfd
from dsfd.cli import main as cli_main
from dsfd.data_paths import wider_root
from dsfd.inference import Detector, draw_detections, load_detector, max_test_scale, wider_test_passes
from dsfd.inference.multiscale import size_filter_mask
from dsfd.io import ImageError, read_image, to_bgr_uint8
from dsfd.models import RandomWeightsWarning, build_model, calibrate_random_model
from dsfd.ops import reference as ref

CUDA = torch.cuda.is_available()
VAL_IMAGES = wider_root() / "WIDER_val" / "images"


def _val_files() -> List[Path]:
    return sorted(VAL_IMAGES.glob("*/*.jpg")) if VAL_IMAGES.is_dir() else []


needs_wider = pytest.mark.skipif(
    not _val_files(), reason=f"WIDER FACE val images not found under {VAL_IMAGES} (set DSFD_WIDER_ROOT)"
)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return calibrate_random_model(build_model("paper", "tiny").eval())


@pytest.fixture(scope="module")
def detector(tiny_model):
    return Detector(model=tiny_model, device="cpu")


@pytest.fixture(scope="module")
def photos() -> List[np.ndarray]:
    """Three real photographs, downscaled to about 512 px wide (different heights)."""
    files = _val_files()
    if not files:
        pytest.skip(f"WIDER FACE val images not found under {VAL_IMAGES} (set DSFD_WIDER_ROOT)")
    out = []
    for f in files[:3]:
        img = cv2.imread(str(f))
        out.append(cv2.resize(img, (512, round(img.shape[0] * 512 / img.shape[1])), interpolation=cv2.INTER_AREA))
    assert len({im.shape for im in out}) > 1, "want different sizes"
    return out


def _check_dets(d: np.ndarray, h: int, w: int, max_keep: int = 750) -> None:
    assert d.dtype == np.float32 and d.ndim == 2 and d.shape[1] == 5
    assert len(d) <= max_keep
    assert np.isfinite(d).all()
    assert (d[:, 0] >= 0).all() and (d[:, 1] >= 0).all()
    assert (d[:, 2] <= w).all() and (d[:, 3] <= h).all()
    assert (d[:, 2] > d[:, 0]).all() and (d[:, 3] > d[:, 1]).all()
    assert (np.diff(d[:, 4]) <= 1e-6).all(), "sorted by decreasing score"


def _assert_same_detections(a: np.ndarray, b: np.ndarray, atol: float = 2e-3, allow_empty: bool = False) -> None:
    """Equal up to float noise; rows with (nearly) tied scores may come in either order.

    Two empty results are equal only with ``allow_empty`` (a comparison of nothing proves nothing).
    """
    assert a.shape == b.shape
    if len(a) == 0:
        assert allow_empty, "no detections to compare"
        return
    np.testing.assert_allclose(a[:, 4], b[:, 4], atol=1e-5)
    diff = np.abs(a[:, None, :] - b[None, :, :]).max(-1)  # [K, K] max-abs difference of rows
    assert diff.min(1).max() <= atol + 1e-4 * np.abs(a).max(), "a row of a has no equal in b"
    assert diff.min(0).max() <= atol + 1e-4 * np.abs(a).max(), "a row of b has no equal in a"


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ref.box_iou(torch.from_numpy(a[:, :4]).double(), torch.from_numpy(b[:, :4]).double()).numpy()


def _assert_top_boxes_agree(a: np.ndarray, b: np.ndarray, top: int = 50, iou: float = 0.9, min_agree: int = 45,
                            score_atol: float = 0.02) -> None:
    """Loose comparison of two detectors' outputs on one image (different precision, device or canvas).

    ``a``'s ``top`` best boxes scoring >= 0.5 (there must be ``top`` of them) are looked up in ``b``:
    at least ``min_agree`` have a box of ``b`` at IoU > ``iou`` whose score is within ``score_atol``.
    Near-equal scores may change which box of a cluster NMS keeps, hence not all of them.
    """
    first = a[a[:, 4] >= 0.5][:top]
    assert len(first) == top and len(b) > 0, (len(first), len(b))
    overlap = _iou(first, b)
    close = (overlap > iou) & (np.abs(first[:, 4:5] - b[None, :, 4]) <= score_atol)
    agree = int(close.any(1).sum())
    assert agree >= min_agree, (agree, overlap.max(1).min())


# --------------------------------------------------------------------------- API


@needs_wider
def test_detect_shapes_and_coordinates(detector, photos):
    for img in photos[:2]:
        d = detector.detect(img)
        _check_dets(d, *img.shape[:2])
        assert len(d) > 0
        assert (d[:, 4] > detector.postprocess.score_threshold).all()
        shown = detector.detect(img, min_score=0.5)
        assert (shown[:, 4] >= 0.5).all() and len(shown) == int((d[:, 4] >= 0.5).sum())


@needs_wider
def test_detect_accepts_paths_rgb_and_callable(detector, photos, tmp_path):
    img = photos[0]
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), img)
    d = detector.detect(img)
    np.testing.assert_allclose(detector.detect(str(p)), d, atol=1e-4)
    np.testing.assert_allclose(detector.detect(img[:, :, ::-1], color="rgb"), d, atol=1e-4)
    np.testing.assert_allclose(detector(img), d, atol=1e-4)


@needs_wider
def test_batch_equals_single_same_size(detector, photos):
    """Same-size images need no padding: the batch sees exactly the single-image inputs."""
    crops = [im[:320, :448] for im in photos]
    batch = detector.detect_batch(crops)
    for im, b in zip(crops, batch):
        _assert_same_detections(b, detector.detect(im))


@needs_wider
def test_batch_equals_single_letterbox(tiny_model, photos):
    """With a fixed input size every image gets the same canvas alone and in a batch."""
    det = Detector(model=tiny_model, device="cpu", input_size=(384, 448))
    imgs = photos + [photos[0][:200, :300]]
    batch = det.detect_batch(imgs)
    for im, b in zip(imgs, batch):
        _check_dets(b, *im.shape[:2])
        _assert_same_detections(b, det.detect(im))


@needs_wider
def test_batch_different_sizes_native(detector, photos):
    """Top-left placement: boxes stay in their own image; results are close to the single path.

    The padding of the smaller images changes the features near their bottom and
    right edges, and a random network's NMS is chaotic (hundreds of near-equal
    scores), so the check is by overlap: each image has at least 20 single-image
    boxes scoring >= 0.5, and of the first 100 of them at least 80% have a batch
    box at IoU >= 0.5 (measured: 99-100%).
    """
    h0, w0 = photos[0].shape[:2]
    # the first image is the largest in both directions, the others are smaller ones
    imgs = [photos[0], photos[1][: min(300, h0 - 10), :400], photos[2][: h0 - 6, : w0 - 40]]
    batch = detector.detect_batch(imgs)
    assert len(batch) == 3
    for im, b in zip(imgs, batch):
        h, w = im.shape[:2]
        _check_dets(b, h, w)
        s = detector.detect(im)
        top = s[s[:, 4] >= 0.5][:100]
        assert len(top) >= 20 and len(b) > 0, (len(top), len(b))
        matched = (_iou(top, b).max(1) >= 0.5).mean()
        assert matched >= 0.8, matched
    # the largest image needs no padding: exactly its single-image result
    _assert_same_detections(batch[0], detector.detect(imgs[0]))


def test_detect_batch_empty_and_type_errors(detector):
    assert detector.detect_batch([]) == []
    with pytest.raises(TypeError):
        detector.detect_batch("image.jpg")


def test_max_size_downscales_and_maps_back(tiny_model):
    det = Detector(model=tiny_model, device="cpu", max_size=256)
    img = np.full((3000, 4000, 3), 40, np.uint8)
    cv2.rectangle(img, (1000, 800), (2200, 2400), (200, 180, 160), -1)
    cv2.circle(img, (3000, 1500), 500, (20, 220, 90), -1)
    with pytest.warns(UserWarning, match="downscaled to 256x192"):
        d = det.detect(img)
    _check_dets(d, 3000, 4000)
    # the same as detecting on the downscaled image and scaling the boxes by 4000 / 256 = 3000 / 192
    small = cv2.resize(img, (256, 192), interpolation=cv2.INTER_AREA)
    expected = det.detect(small)
    expected[:, :4] *= 3000 / 192
    assert len(d) > 0
    _assert_same_detections(d, expected, atol=0.05)


def test_no_weights_warns_and_options_validated(tiny_model, monkeypatch):
    import dsfd.models.default_model as default_model

    with pytest.warns(RandomWeightsWarning, match="meaningless"):  # an architecture the default is not
        det = Detector(network="released", backbone="tiny", device="cpu")
    assert det.random_weights and det.model.config["network"] == "released"
    monkeypatch.setattr(default_model, "default_weights_path", lambda: None)
    with pytest.warns(RandomWeightsWarning, match="meaningless"):  # no default file at all
        det = Detector(backbone="tiny", device="cpu")
    assert det.random_weights
    with pytest.raises(ValueError, match="float16"):
        Detector(model=tiny_model, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match="GPU-only"):
        Detector(model=tiny_model, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="GPU-only"):
        Detector(model=tiny_model, device="cpu", compile=True)
    with pytest.raises(ValueError, match="score_threshold"):
        Detector(model=tiny_model, device="cpu", score_threshold=2.0)
    with pytest.raises(FileNotFoundError):
        Detector("/nonexistent/weights.pth", device="cpu")


# Hand-drawn face box of the packaged photo (forehead under the cap to chin).
GRACE_HOPPER = Path(dsfd.__file__).resolve().parent / "assets" / "grace_hopper.jpg"
GRACE_HOPPER_FACE = np.array([180.0, 120.0, 355.0, 330.0])


def _box_iou1(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_default_model_ships_and_finds_the_face():
    path = dsfd.models.default_weights_path()
    assert path is not None, "dsfd/weights/default.pth is missing"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size <= 25 * 2**20 and meta["bytes"] == path.stat().st_size
    assert {"command", "hardware", "args"} <= set(meta["training"]) and "evaluation" in meta
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        det = Detector(device="cpu")  # full size, automatic precision: what `dsfd detect` does
    assert not det.random_weights and det.weights == str(path)
    assert meta["config"]["backbone"] == "mobilenet0.25" and meta["training"]["data_roots"][1]["images"] == 1202
    # started from the RetinaFace MobileNet-0.25 body: the file is named with its sha256
    init = meta["earlier_stages"][0]["pretrained"]
    assert len(init["sha256"]) == 64 and init["file"].endswith("mobilenet0.25_Final.pth")
    assert (path.parent / "NOTICE.md").is_file()  # the MIT notice of the weights it started from
    # the drawing threshold comes from the PR curve and is what the detector draws from
    assert 0.05 <= det.display_score == meta["config"]["display_score"] == meta["drawing"]["threshold"] < 0.95
    dets = det.detect(str(GRACE_HOPPER))
    assert len(dets) > 0
    best = dets[int(np.argmax(dets[:, 4]))]
    assert best[4] >= 0.9 and _box_iou1(best[:4], GRACE_HOPPER_FACE) > 0.7, best
    # one drawn box: nothing else (the glasses, the collar) reaches the drawing threshold
    assert (dets[:, 4] >= det.display_score).sum() == 1, dets[dets[:, 4] >= det.display_score]
    # nothing outside the face: every box above 0.3 is centred inside it
    confident = dets[dets[:, 4] > 0.3]
    cx, cy = (confident[:, 0] + confident[:, 2]) / 2, (confident[:, 1] + confident[:, 3]) / 2
    x1, y1, x2, y2 = GRACE_HOPPER_FACE
    assert ((cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)).all(), confident


def test_cli_detect_packaged_photo_with_default_model(tmp_path):
    out = tmp_path / "det"
    assert cli_main(["detect", str(GRACE_HOPPER), "--out", str(out), "--no-progress"]) == 0  # the README's main command
    rec = json.loads((out / "grace_hopper.json").read_text())
    assert (rec["width"], rec["height"]) == (512, 600)
    assert any(_box_iou1(np.array(d["box"]), GRACE_HOPPER_FACE) > 0.5 for d in rec["detections"])
    drawn = cv2.imread(str(out / "grace_hopper.jpg"))
    assert drawn is not None and drawn.shape == (600, 512, 3)
    assert not np.array_equal(drawn, cv2.imread(str(GRACE_HOPPER)))  # boxes were drawn


def test_cli_filters_before_nms_at_the_drawing_floor_with_the_same_boxes(tmp_path):
    """dsfd detect lifts the pre-NMS threshold to the lowest score it keeps: the same boxes, fewer to sort."""
    outs = {}
    for name, extra in (("floor", []), ("all", ["--score-threshold", "0.001"])):
        out = tmp_path / name
        assert cli_main(["detect", str(GRACE_HOPPER), "--out", str(out), "--no-progress", "--no-draw", "--min-score",
                         "0.05", *extra]) == 0
        outs[name] = json.loads((out / "grace_hopper.json").read_text())["detections"]
        summary = json.loads((out / "summary.json").read_text())
        expected = "score_threshold=0.049999" if name == "floor" else "score_threshold=0.001"
        assert expected in summary["detector"], summary["detector"]
    assert len(outs["floor"]) >= 2 and outs["floor"] == outs["all"]


def test_load_detector_contract(tmp_path, tiny_model):
    """The ``dsfd eval --weights`` contract: BGR uint8 in, [K, 5] array out."""
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict(), "config": tiny_model.config}, ckpt)
    det = load_detector(str(ckpt), accuracy_mode=False, device="cpu")
    assert not det.random_weights
    img = np.full((96, 128, 3), 90, np.uint8)
    cv2.circle(img, (60, 50), 25, (40, 160, 220), -1)
    out = det(img)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape[1] == 5
    plain = Detector(model=tiny_model, device="cpu")
    np.testing.assert_allclose(out, plain.detect(img, min_score=None), atol=1e-4)
    # detect() draws from the model's threshold by default (filtered before NMS: the same boxes)
    shown = plain.detect(img)
    assert len(shown) < len(out) and (shown[:, 4] >= plain.display_score).all()
    np.testing.assert_allclose(shown, out[out[:, 4] >= plain.display_score], atol=1e-4)
    with pytest.raises(ValueError, match="display"):
        plain.detect(img, min_score="draw")


# --------------------------------------------------------------------------- bad inputs


def test_image_conversions():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert to_bgr_uint8(rgb) is rgb
    np.testing.assert_array_equal(to_bgr_uint8(rgb, "rgb"), rgb[:, :, ::-1])
    gray = rgb[:, :, 0]
    for g in (gray, gray[:, :, None]):
        out = to_bgr_uint8(g)
        assert out.shape == (20, 30, 3) and (out == gray[:, :, None]).all()
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], 2)
    np.testing.assert_array_equal(to_bgr_uint8(rgba), rgb)
    np.testing.assert_array_equal(to_bgr_uint8(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(to_bgr_uint8(rgb / 255.0), rgb)
    np.testing.assert_array_equal(to_bgr_uint8(torch.from_numpy(rgb)), rgb)
    assert to_bgr_uint8(rgb[:, ::-1]).flags.c_contiguous


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "None"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 5, 2), np.uint8), "2 channels"),
        (np.zeros((3, 5, 5), np.uint8), "channels"),
        (np.zeros((2, 5, 5, 3), np.uint8), r"\[H, W\]"),
        (np.zeros((5, 5, 3), np.int32), "dtype int32"),
        (np.zeros((5, 5, 3), bool), "dtype bool"),
        (np.full((5, 5, 3), 200.0), r"float images must lie in \[0, 1\]"),
        (np.full((5, 5, 3), np.nan), "NaN"),
        ("not an array", "not a numeric image"),
    ],
)
def test_bad_arrays_raise_clear_errors(detector, bad, match):
    with pytest.raises(ValueError, match=match):
        detector.detect(bad) if not isinstance(bad, str) else to_bgr_uint8(bad)


def test_bad_files_raise_clear_errors(detector, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    (tmp_path / "text.png").write_text("hello")
    for name, match in [("empty.jpg", "empty"), ("corrupt.jpg", "cannot decode"), ("text.png", "cannot decode"),
                        ("missing.jpg", "not found")]:
        with pytest.raises(ImageError, match=match):
            detector.detect(str(tmp_path / name))
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path)


def test_odd_images_are_handled(detector, tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), img[:, :, 0])
    cv2.imwrite(str(tmp_path / "a.png"), np.concatenate([img, np.full((48, 64, 1), 255, np.uint8)], 2))
    cv2.imwrite(str(tmp_path / "d.png"), img.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), img)
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), img)
    assert read_image(tmp_path / "g.png").shape == (48, 64, 3)
    for name in ("g.png", "a.png", "d.png"):
        _check_dets(detector.detect(str(tmp_path / name)), 48, 64)
    for shape in [(1, 1, 3), (1, 500, 3), (7, 3, 3)]:  # padded up to the minimum input size
        _check_dets(detector.detect(np.full(shape, 128, np.uint8)), *shape[:2])
    _check_dets(detector.detect(np.random.default_rng(2).random((40, 50))), 40, 50)  # float gray in [0, 1]


def test_draw_detections():
    img = np.zeros((50, 60, 3), np.uint8)
    dets = np.array([[5, 5, 30, 40, 0.9], [10, 10, 20, 20, 0.1]], np.float32)
    out = draw_detections(img, dets, min_score=0.5)
    assert out.shape == img.shape and out.any() and not img.any()
    assert not draw_detections(img, dets, min_score=0.95).any()


def test_draw_detections_labels_only_boxes_wide_enough_in_auto():
    img = np.zeros((120, 200, 3), np.uint8)
    narrow = np.array([[40, 60, 50, 72, 0.9]], np.float32)  # 10 px wide: narrower than "0.90"
    wide = np.array([[40, 60, 120, 110, 0.9]], np.float32)
    above = (slice(40, 59), slice(0, 200))  # the rows where a label above the box would go
    assert not draw_detections(img, narrow)[above].any()  # auto: the box only
    assert draw_detections(img, narrow, show_scores=True)[above].any()
    assert draw_detections(img, wide)[above].any()
    assert not draw_detections(img, wide, show_scores=False)[above].any()
    with pytest.raises(ValueError, match="show_scores"):
        draw_detections(img, wide, show_scores="yes")


# --------------------------------------------------------------------------- accuracy mode


def test_wider_test_passes_match_released_protocol():
    passes = wider_test_passes(768, 1024)  # max scale capped at 3
    assert max_test_scale(768, 1024) == 3.0
    assert [p.scale for p in passes] == [1, 1, 0.5, 0.75, 2, 1.5, 3, 0.25, 1.25, 1.75, 2.25]
    assert [p.flip for p in passes] == [False, True] + [False] * 9
    assert [p.keep for p in passes] == [None, None, "large", "large", "small", "small", "small", "large",
                                        "small", "small", "small"]
    # a large image: shrink below 1, no enlarging passes above the cap
    h, w = 4000, 6000
    cap = max_test_scale(h, w)
    assert cap == pytest.approx((0x7FFFFFFF / 200 / (h * w)) ** 0.5)
    passes = wider_test_passes(h, w)
    assert passes[0].scale == pytest.approx(cap) and passes[1].flip
    assert passes[2].scale == pytest.approx(0.5 * cap) and passes[2].keep == "large"
    assert passes[3].scale == pytest.approx((0.5 * cap + cap) / 2) and passes[3].keep == "large"
    assert [p.scale for p in passes[4:]] == [0.25]
    # between 1 and 2: enlarge to the cap, small faces only
    p = wider_test_passes(1800, 1900)
    c = max_test_scale(1800, 1900)
    assert 1.75 < c < 2
    assert [q.scale for q in p] == [1, 1, 0.5, 0.75, pytest.approx(c), 1.5, 0.25, 1.25, 1.75]
    assert p[4].keep == p[5].keep == "small"


def test_size_filter_uses_plus_one():
    b = torch.tensor([[0, 0, 29, 10], [0, 0, 30, 10], [0, 0, 98, 200], [0, 0, 99, 200]], dtype=torch.float32)
    assert size_filter_mask(b, "large").tolist() == [False, True, True, True]
    assert size_filter_mask(b, "small").tolist() == [True, True, True, False]
    assert size_filter_mask(b, None).all()


@needs_wider
def test_accuracy_mode_small_image(tiny_model, photos):
    img = cv2.resize(photos[0], (160, 120), interpolation=cv2.INTER_AREA)
    det = Detector(model=tiny_model, device="cpu")
    d = det.detect(img, accuracy_mode=True, min_score=None)
    _check_dets(d, 120, 160)
    assert 0 < len(d) <= 750
    np.testing.assert_allclose(det.detect_multiscale(img), d, atol=1e-4)
    # no detections in any pass (the released bbox_vote crashes here): empty result
    none = Detector(model=tiny_model, device="cpu", score_threshold=1.0, accuracy_mode=True)
    out = none.detect(img)
    assert out.shape == (0, 5) and out.dtype == np.float32
    assert [x.shape for x in none.detect_batch([img, img[:50, :70]])] == [(0, 5), (0, 5)]


def _released_protocol(det: Detector, image: np.ndarray) -> np.ndarray:
    """An independent numpy port of the released ``widerface_val.py`` flow around ``det`` (one pass = detect)."""

    def detect_face(img, shrink):
        x = img if shrink == 1 else cv2.resize(img, None, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_LINEAR)
        d = det.detect(x, min_score=None).astype(np.float64)
        d[:, :4] /= shrink
        return d

    def flip_test(img, shrink):
        f = detect_face(cv2.flip(img, 1), shrink)
        t = f.copy()
        t[:, 0], t[:, 2] = img.shape[1] - f[:, 2], img.shape[1] - f[:, 0]
        return t

    def longer_gt30(d):
        return d[np.maximum(d[:, 2] - d[:, 0] + 1, d[:, 3] - d[:, 1] + 1) > 30]

    def shorter_lt100(d):
        return d[np.minimum(d[:, 2] - d[:, 0] + 1, d[:, 3] - d[:, 1] + 1) < 100]

    max_s = min(3, (0x7FFFFFFF / 200.0 / (image.shape[0] * image.shape[1])) ** 0.5)
    shrink = min(max_s, 1)
    det0, det1 = detect_face(image, shrink), flip_test(image, shrink)
    st = 0.5 if max_s >= 0.75 else 0.5 * max_s
    det_s = detect_face(image, st)
    if max_s > 0.75:
        det_s = np.vstack((det_s, detect_face(image, 0.75)))
    det_s = longer_gt30(det_s)
    bt = min(2, max_s) if max_s > 1 else (st + max_s) / 2
    det_b = detect_face(image, bt)
    if max_s > 1.5:
        det_b = np.vstack((det_b, detect_face(image, 1.5)))
    if max_s > 2:
        bt *= 2
        while bt < max_s:
            det_b = np.vstack((det_b, detect_face(image, bt)))
            bt *= 2
        det_b = np.vstack((det_b, detect_face(image, max_s)))
    det_b = shorter_lt100(det_b) if bt > 1 else longer_gt30(det_b)
    det_p = longer_gt30(detect_face(image, 0.25))
    for s in (1.25, 1.75, 2.25):
        if s <= max_s:
            t = detect_face(image, s)
            det_p = np.vstack((det_p, shorter_lt100(t) if s > 1 else longer_gt30(t)))
    allb = np.vstack((det0, det1, det_s, det_b, det_p))
    vb, vs = ref.box_voting(torch.from_numpy(allb[:, :4]), torch.from_numpy(allb[:, 4]), 0.3, 750)
    return np.concatenate([vb.numpy(), vs.numpy()[:, None]], 1).astype(np.float32)


@needs_wider
def test_accuracy_mode_matches_released_flow(tiny_model, photos):
    """Scales, flip mapping, per-pass filters and voting agree with a direct port of the released code."""
    img = cv2.resize(photos[1], (128, 96), interpolation=cv2.INTER_AREA)
    det = Detector(model=tiny_model, device="cpu", clip=False)
    ours = det.detect_multiscale(img)
    theirs = _released_protocol(det, img)
    assert len(ours) > 0
    _assert_same_detections(ours, theirs, atol=1e-3)


# --------------------------------------------------------------------------- box voting


def _cluster_boxes(n: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(1, n // 8), 2, generator=g) * 400
    idx = torch.randint(0, centres.shape[0], (n,), generator=g)
    c = centres[idx] + torch.randn(n, 2, generator=g) * 4
    wh = 20 + torch.rand(n, 2, generator=g) * 30
    return torch.cat([c - wh / 2, c + wh / 2], 1), torch.rand(n, generator=g)


@pytest.mark.parametrize("n", [0, 1, 2, 300])
def test_box_voting_matches_reference(n):
    boxes, scores = _cluster_boxes(n, seed=n)
    rb, rs = ref.box_voting(boxes, scores, 0.3, 750)
    vb, vs = dsfd.ops.box_voting(boxes, scores, 0.3, 750)  # what accuracy mode calls
    assert vb.shape == rb.shape and vs.shape == rs.shape
    torch.testing.assert_close(vb, rb, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(vs, rs)
    if n == 1:
        assert vb.shape == (0, 4)  # a lone box gets no vote and is dropped
    if dsfd.ops.compiled_available():
        cb, cs = dsfd.ops.compiled.box_voting(boxes, scores, 0.3, 750)
        torch.testing.assert_close(cb, rb, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(cs, rs)


# --------------------------------------------------------------------------- CLI


def test_cli_detect_folder_with_bad_files(tmp_path, photos_or_synthetic):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    good = photos_or_synthetic
    cv2.imwrite(str(src / "real1.jpg"), good[0])
    cv2.imwrite(str(src / "sub" / "real2.png"), good[1])
    cv2.imwrite(str(src / "gray.png"), cv2.cvtColor(good[0], cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(src / "rgba.png"), cv2.cvtColor(good[0], cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(src / "deep.png"), good[0].astype(np.uint16) * 257)
    cv2.imwrite(str(src / "one.png"), np.zeros((1, 1, 3), np.uint8))
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (src / "empty.png").write_bytes(b"")
    (src / "readme.txt").write_text("not an image")
    vw = cv2.VideoWriter(str(src / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for _ in range(3):
        vw.write(cv2.resize(good[0], (96, 64)))
    vw.release()
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["detect", str(src), str(tmp_path / "missing.jpg"), "--out", str(out), "--backbone", "tiny",
                         "--random", "--device", "cpu", "--batch-size", "3", "--no-progress", "--min-score", "0.3"])
    assert code == 1  # some inputs skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["video_frames"] == 3 and summary["ignored_files"] == 1
    skipped = {Path(s["path"]).name for s in summary["skipped"]}
    assert skipped == {"corrupt.jpg", "empty.png", "missing.jpg"}
    for stem in ("real1", "sub/real2", "gray", "rgba", "deep", "one"):
        rec = json.loads((out / f"{stem}.json").read_text())
        assert {"image", "width", "height", "detections"} <= set(rec)
        assert all(d["score"] >= 0.3 for d in rec["detections"])
    assert (out / "real1.jpg").is_file() and (out / "sub" / "real2.png").is_file()
    lines = (out / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == [0, 1, 2]
    assert (out / "clip.mp4").is_file()


def test_cli_wider_format(tmp_path, photos_or_synthetic):
    src = tmp_path / "images" / "0--Parade"
    src.mkdir(parents=True)
    cv2.imwrite(str(src / "a.jpg"), photos_or_synthetic[0])
    out = tmp_path / "preds"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["detect", str(tmp_path / "images"), "--out", str(out), "--backbone", "tiny", "--random",
                         "--device", "cpu", "--output-format", "wider", "--no-draw", "--no-progress"])
    assert code == 0
    lines = (out / "0--Parade" / "a.txt").read_text().splitlines()
    assert lines[0] == "0--Parade/a.jpg" and int(lines[1]) == len(lines) - 2
    assert not (out / "0--Parade" / "a.jpg").exists()
    x, y, w, h, s = (float(v) for v in lines[2].split())
    assert w > 0 and h > 0 and 0 < s <= 1


def test_cli_no_inputs(tmp_path):
    assert cli_main(["detect", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2


@pytest.fixture(scope="module")
def photos_or_synthetic() -> List[np.ndarray]:
    """Two small real photographs (synthetic stand-ins without the data set)."""
    files = _val_files()
    if files:
        return [cv2.resize(cv2.imread(str(f)), (256, 192), interpolation=cv2.INTER_AREA) for f in files[:2]]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (192, 256, 3), dtype=np.uint8) for _ in range(2)]


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu_and_graphs_match_eager(tiny_model, photos_or_synthetic):
    import copy

    imgs = [im[:160, :224] for im in photos_or_synthetic]
    cpu = Detector(model=copy.deepcopy(tiny_model), device="cpu", dtype=torch.float32)
    gpu = Detector(model=copy.deepcopy(tiny_model), device="cuda", dtype=torch.float32)
    graphs = Detector(model=copy.deepcopy(tiny_model), device="cuda", cuda_graphs=True, input_size=(192, 256))
    eager = Detector(model=copy.deepcopy(tiny_model), device="cuda", input_size=(192, 256))
    # CPU vs CUDA, both float32 (cuDNN may still use TF32, about fp16's precision): the 50 best CPU
    # boxes reappear on the GPU (at least 45 of them at IoU > 0.9, score within 0.02)
    for a, b in zip(cpu.detect_batch(imgs), gpu.detect_batch(imgs)):
        _assert_top_boxes_agree(a, b)
    for _ in range(2):  # capture, then replay
        for a, b in zip(eager.detect_batch(imgs), graphs.detect_batch(imgs)):
            _assert_same_detections(a, b)
    assert graphs.cuda_graphs and len(graphs._graphs) == 1
    # fp16 and bf16 autocast against the float32 GPU result, the same criterion (CPU bf16 vs fp32
    # on this model and these inputs: 49-50 of 50 at IoU > 0.9, scores within 0.003)
    full = gpu.detect_batch(imgs)
    for dtype in (torch.float16, torch.bfloat16):
        half = Detector(model=copy.deepcopy(tiny_model), device="cuda", dtype=dtype)
        for im, d, f in zip(imgs, half.detect_batch(imgs), full):
            _check_dets(d, *im.shape[:2])
            _assert_top_boxes_agree(f, d)


def test_detector_never_changes_the_callers_network():
    """Issue #33: evaluating during training must not stop the training (mode, gradients, weights, dtype)."""
    from dsfd.models import build_model

    net = build_model("paper", "tiny", fem_norm=True).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for dtype in (torch.float32, torch.bfloat16):
        for fold in (True, False):
            det = Detector(model=net, dtype=dtype, device="cpu", fold_batchnorm=fold)
            det.detect(np.full((64, 80, 3), 100, np.uint8), min_score=None)
            assert det.model is not net and not det.model.training
    assert net.training and all(m.training for m in net.modules())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in net.parameters())
    assert net.fem.has_norm  # its FEM BatchNorms are not folded away
    after = net.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_detect_cli_rejects_meaningless_arguments(tmp_path, capsys):
    """Issue #33: an empty path, a random network nobody asked for, --max-size 0."""
    from dsfd.cli import main as cli_main

    img = tmp_path / "a.jpg"
    cv2.imwrite(str(img), np.full((40, 50, 3), 100, np.uint8))
    def exit_code(argv):
        try:
            return cli_main(argv)
        except SystemExit as e:  # a usage error found by the parser (the shared types of dsfd.cli_options)
            return e.code

    for argv, msg in ((["detect", ""], "empty path"),
                      (["detect", str(img), "--weights", " "], "empty value"),
                      (["detect", str(img), "--backbone", "resnet152"], "--random"),
                      (["detect", str(img), "--max-size", "0"], "must be >= 32"),
                      (["detect", str(img), "--random", "--weights", "default"], "exclude")):
        assert exit_code(argv + ["--out", str(tmp_path / "o")]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists()


def test_detect_never_reads_its_own_output(tmp_path):
    from dsfd.inference.runner import collect_inputs

    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.jpg"), np.full((40, 50, 3), 100, np.uint8))
    out = tmp_path / "detections"
    out.mkdir()
    cv2.imwrite(str(out / "a.jpg"), np.full((40, 50, 3), 100, np.uint8))  # a previous run's annotated copy
    items, skipped, _ = collect_inputs([tmp_path], exclude=out)
    assert [i.path.name for i in items] == ["a.jpg"] and items[0].path.parent.name == "photos"
    items, skipped, _ = collect_inputs([out], exclude=out)
    assert items == [] and "--out" in skipped[0]["reason"]
    assert len(collect_inputs([tmp_path])[0]) == 2  # without exclude both are found
