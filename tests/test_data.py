"""WIDER FACE reader, DSFD augmentation and collation."""

import logging
import math

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dsfd.data import (
    BGR_MEAN,
    EpochRandomSampler,
    EvalTransform,
    TrainTransform,
    WiderFaceDataset,
    collate_detection,
    parse_wider_annotations,
    photometric_distort,
    sample_rng,
)
from dsfd.data_paths import wider_root
from dsfd.io import ImageError, read_image, to_bgr_uint8

WIDER = wider_root()
HAVE_WIDER = (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file()
needs_wider = pytest.mark.skipif(
    not HAVE_WIDER, reason=f"WIDER FACE not found at {WIDER} (set DSFD_WIDER_ROOT)"
)
MEAN = np.array(BGR_MEAN, dtype=np.float32)


# ----------------------------------------------------------------------------- helpers
def synthetic_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def synthetic_boxes(h, w, n, seed=0, min_side=4, max_side=200):
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(min_side), np.log(max_side), n))
    bw = np.minimum(side, w - 1)
    bh = np.minimum(side * rng.uniform(0.8, 1.4, n), h - 1)
    x1 = rng.uniform(0, w - bw)
    y1 = rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)


def to_uint8_image(t):
    """Transform output (mean-subtracted CHW) -> HWC float BGR."""
    return t.numpy().transpose(1, 2, 0) + MEAN


def assert_valid_output(img, boxes, info, size):
    assert img.shape == (3, size, size) and img.dtype == torch.float32
    assert torch.isfinite(img).all()
    px = to_uint8_image(img)
    assert px.min() >= -1e-3 and px.max() <= 255 + 1e-3
    b = boxes.numpy()
    assert b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 4
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (b >= 0).all() and (b <= 1).all()
    area_px = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) * size * size
    # The filter is "area > t^2" with t the threshold of the accepted round.
    assert (area_px > info.min_face ** 2 * (1 - 1e-4)).all()
    assert info.min_face in (8.0, 4.0)
    assert len(info.kept) == len(b)


def write_gt(path, entries):
    """entries: list of (relpath, rows) with rows a list of 10-number lists or raw strings."""
    lines = []
    for rel, rows in entries:
        lines.append(rel)
        lines.append(str(len(rows)))
        if not rows:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
        for r in rows:
            lines.append(r if isinstance(r, str) else " ".join(str(v) for v in r) + " ")
    path.write_text("\n".join(lines) + "\n")


def make_wider_tree(root, n_images=6, size=(120, 160), seed=0):
    """A tiny WIDER-layout folder with good images only."""
    img_dir = root / "WIDER_train" / "images" / "0--Test"
    img_dir.mkdir(parents=True)
    (root / "wider_face_split").mkdir()
    entries = []
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        rel = f"0--Test/img_{i}.jpg"
        cv2.imwrite(str(root / "WIDER_train" / "images" / rel), synthetic_image(*size, seed=i))
        rows = []
        for _ in range(3):
            x, y = rng.integers(0, size[1] - 40), rng.integers(0, size[0] - 40)
            rows.append([x, y, rng.integers(12, 40), rng.integers(12, 40), 0, 0, 0, 0, 0, 0])
        entries.append((rel, rows))
    write_gt(root / "wider_face_split" / "wider_face_train_bbx_gt.txt", entries)
    return root


# ----------------------------------------------------------------------------- parsing / reading
def test_parse_filters_and_counts(tmp_path):
    gt = tmp_path / "gt.txt"
    write_gt(
        gt,
        [
            ("a/1.jpg", [[10, 20, 30, 40, 0, 0, 0, 0, 0, 0],  # kept
                         [5, 5, 0, 10, 0, 0, 0, 0, 0, 0],     # degenerate (w = 0)
                         [5, 5, 10, -3, 0, 0, 0, 0, 0, 0],    # degenerate (h < 0)
                         [1, 2, 30, 30, 2, 0, 0, 1, 0, 0],    # invalid flag
                         [1, 2, 3, 0.5, 0, 0, 0, 0, 0, 0],    # degenerate? no: h>0 but small
                         "x y z w"]),                          # malformed
            ("a/2.jpg", []),                                   # count 0 + zero line
            ("a/3.jpg", [[0, 0, 8, 9]]),                       # only 4 numbers: kept
        ],
    )
    # count 0 without its zero line must parse too
    gt.write_text(gt.read_text() + "a/4.jpg\n0\na/5.jpg\n1\n1 1 4 4 0 0 0 0 0 0\n")
    anns, stats = parse_wider_annotations(gt, min_face=1.0)
    assert [a.path for a in anns] == ["a/1.jpg", "a/2.jpg", "a/3.jpg", "a/4.jpg", "a/5.jpg"]
    np.testing.assert_allclose(anns[0].boxes, [[10, 20, 40, 60]])
    assert anns[1].boxes.shape == (0, 4) and anns[3].boxes.shape == (0, 4)
    np.testing.assert_allclose(anns[2].boxes, [[0, 0, 8, 9]])
    assert stats == dict(images=5, boxes_read=8, kept=3, invalid=1, degenerate=2, small=1, malformed=1)
    assert anns[0].boxes.dtype == np.float32


def test_training_images_follow_the_one_conversion_rule_set():
    """The data set reads through dsfd.io: the same conversions (and rejections) as inference."""
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    out = to_bgr_uint8(gray)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8 and (out == gray[..., None]).all()
    g16 = np.array([[0, 257, 65535, 128]], dtype=np.uint16)
    assert to_bgr_uint8(g16)[0, :, 0].tolist() == [0, 1, 255, 0]
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 7
    assert (to_bgr_uint8(bgra)[..., 0] == 200).all() and to_bgr_uint8(bgra).shape == (2, 2, 3)
    f = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    assert to_bgr_uint8(f).tolist() == [[[0, 128, 255]]]
    with pytest.raises(ImageError, match=r"must lie in \[0, 1\]"):  # no silent clipping of out-of-range floats
        to_bgr_uint8(np.array([[[0.0, 0.5, 2.0]]], dtype=np.float32))


def test_dataset_bad_images_and_formats(tmp_path, caplog):
    root = tmp_path
    d = root / "WIDER_train" / "images" / "9--X"
    d.mkdir(parents=True)
    (root / "wider_face_split").mkdir()
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(d / "good.jpg"), good)
    cv2.imwrite(str(d / "gray.png"), good[..., 0])
    cv2.imwrite(str(d / "rgba.png"), np.dstack([good, np.full((60, 80), 9, np.uint8)]))
    cv2.imwrite(str(d / "deep.png"), good.astype(np.uint16) * 257)
    data = (d / "good.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "junk.jpg").write_bytes(b"not an image at all")
    row = [10, 10, 20, 20, 0, 0, 0, 0, 0, 0]
    outside = [70, 50, 30, 30, 0, 0, 0, 0, 0, 0]  # clipped to 10x10: kept
    far = [200, 200, 30, 30, 0, 0, 0, 0, 0, 0]   # entirely outside: dropped
    names = ["trunc.jpg", "good.jpg", "gray.png", "missing.jpg", "empty.jpg", "rgba.png", "junk.jpg", "deep.png",
             "missing2.jpg"]
    write_gt(root / "wider_face_split" / "wider_face_train_bbx_gt.txt",
             [(f"9--X/{n}", [row, outside, far]) for n in names])
    with caplog.at_level(logging.INFO, logger="dsfd.data.wider"):
        ds = WiderFaceDataset(root=root, split="train")
    assert any("9 images" in r.getMessage() for r in caplog.records)
    got = [ds[i] for i in range(len(ds))]
    # bad images fall back to the next loadable one, deterministically (wrapping around)
    used = [m["index"] for _, _, m in got]
    assert used == [1, 1, 2, 5, 5, 5, 7, 7, 1]
    assert [m["requested_index"] for _, _, m in got] == list(range(9))
    bad = ["trunc.jpg", "missing.jpg", "empty.jpg", "junk.jpg", "missing2.jpg"]
    assert set(ds.bad_images) == {str(d / n) for n in bad}
    assert "truncated" in ds.bad_images[str(d / "trunc.jpg")]
    assert ds.stats["bad_images"] == 5
    for img, boxes, meta in got:
        assert img.dtype == np.uint8 and img.shape == (60, 80, 3)
        np.testing.assert_allclose(boxes, [[10, 10, 30, 30], [70, 50, 80, 60]])
    assert (got[2][0] == got[2][0][..., :1]).all()  # gray replicated
    np.testing.assert_array_equal(got[5][0], good)  # alpha dropped
    np.testing.assert_array_equal(got[7][0], good)  # 16-bit -> 8-bit
    assert ds.stats["outside"] == 4  # one per loaded image (good, gray, rgba, deep)
    with pytest.raises(ImageError, match="not found"):
        read_image(d / "missing.jpg")


def test_dataset_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="DSFD_WIDER_ROOT"):
        WiderFaceDataset(root=tmp_path / "nope")


@needs_wider
def test_real_dataset_reads():
    ds = WiderFaceDataset(split="train")
    s = ds.stats
    assert s["images"] == len(ds) > 0
    assert s["kept"] + s["invalid"] + s["degenerate"] + s["small"] + s["malformed"] == s["boxes_read"]
    img, boxes, meta = ds[0]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    h, w = img.shape[:2]
    assert boxes.dtype == np.float32 and (boxes[:, 2] > boxes[:, 0]).all()
    assert (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
    assert meta["path"].endswith(".jpg") and meta["orig_size"] == (h, w)


# ----------------------------------------------------------------------------- augmentation
def test_photometric_range_and_effect():
    img = synthetic_image(32, 48, seed=3)
    changed = 0
    for s in range(60):
        out = photometric_distort(img, np.random.default_rng(s))
        assert out.dtype == np.float32 and out.shape == img.shape
        assert out.min() >= 0 and out.max() <= 255
        changed += not np.allclose(out, img)
    assert changed >= 40  # nothing happens with probability 1/32
    # extreme inputs stay in range
    for v in (0, 255):
        out = photometric_distort(np.full((4, 4, 3), v, np.uint8), np.random.default_rng(1))
        assert out.min() >= 0 and out.max() <= 255


# Photometric steps, one at a time, with a fixed generator. photometric_distort draws
# u = rng.random(12) up front: u[0] < .5 brightness (delta u[1] * 64 - 32), u[2] < .5
# contrast first, u[3] < .5 contrast (gain 0.5 + u[4]), u[5] < .5 saturation (factor
# 0.5 + u[6]), u[7] < .5 hue (shift u[8] * 36 - 18 degrees), u[9] < .5 channel swap
# (permutation u[10]). The expected effects below use an HSV written here from the
# textbook formulas, not OpenCV's.
STEP_FLAGS = {"brightness": 0, "contrast": 3, "saturation": 5, "hue": 7, "swap": 9}
SWAPS = [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]]  # the five non-identity channel orders


def seed_with(steps, contrast_first=None, where=lambda u: True):
    """The first seed whose 12 draws switch on exactly ``steps`` (and satisfy ``where``); returns (seed, u)."""
    for seed in range(100000):
        u = np.random.default_rng(seed).random(12)
        if all((u[i] < 0.5) == (name in steps) for name, i in STEP_FLAGS.items()) and where(u):
            if contrast_first is None or (u[2] < 0.5) == contrast_first:
                return seed, u
    raise AssertionError("no such seed")


def bgr_to_hsv(img):
    """float BGR [..., 3] in 0..255 -> H (degrees, [0, 360)), S ([0, 1]), V (0..255), float64."""
    b, g, r = (img[..., i].astype(np.float64) for i in range(3))
    v = np.maximum(np.maximum(r, g), b)
    c = v - np.minimum(np.minimum(r, g), b)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0.0)
    cc = np.where(c > 0, c, 1)
    h = np.where(v == r, 60 * (g - b) / cc, np.where(v == g, 60 * ((b - r) / cc + 2), 60 * ((r - g) / cc + 4)))
    return np.where(c > 0, np.mod(h, 360.0), 0.0), s, v


def hsv_to_bgr(h, s, v):
    c = v * s
    hp = np.mod(h, 360.0) / 60.0
    x = c * (1 - np.abs(np.mod(hp, 2) - 1))
    z = np.zeros_like(c)
    sector = np.minimum(hp.astype(int), 5)
    rgb = np.select(
        [sector[..., None] == k for k in range(6)],
        [np.stack(t, -1) for t in ((c, x, z), (x, c, z), (z, c, x), (z, x, c), (x, z, c), (c, z, x))],
    )
    return (rgb + (v - c)[..., None])[..., ::-1]


def colour_image(v_lo=80, v_hi=200):
    """16x16 colours with S in [0.3, 0.8] and V in [v_lo, v_hi] (hue well defined)."""
    rng = np.random.default_rng(0)
    h = rng.uniform(0, 360, (16, 16))
    s = rng.uniform(0.3, 0.8, (16, 16))
    v = rng.uniform(v_lo, v_hi, (16, 16))
    return np.round(hsv_to_bgr(h, s, v)).astype(np.uint8)


def hue_diff(a, b):
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("sign", [-1, 1])
def test_photometric_brightness_step(sign):
    seed, u = seed_with({"brightness"}, where=lambda u: (u[1] * 64 - 32) * sign > 8)
    delta = u[1] * 64 - 32
    img = colour_image()
    out = photometric_distort(img, np.random.default_rng(seed))
    np.testing.assert_allclose(out, np.clip(img.astype(np.float64) + delta, 0, 255), atol=1e-4)
    extremes = np.array([[[0, 128, 255]]], np.uint8)
    out = photometric_distort(extremes, np.random.default_rng(seed))
    np.testing.assert_allclose(out, np.clip(extremes + delta, 0, 255), atol=1e-4)  # clipped to [0, 255]


@pytest.mark.parametrize("sign", [-1, 1])
def test_photometric_contrast_step(sign):
    seed, u = seed_with({"contrast"}, where=lambda u: (u[4] - 0.5) * sign > 0.2)  # gain < 0.8 or > 1.2
    img = colour_image()
    out = photometric_distort(img, np.random.default_rng(seed))
    np.testing.assert_allclose(out, np.clip(img * (0.5 + u[4]), 0, 255), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("sign", [-1, 1])
def test_photometric_saturation_step(sign):
    seed, u = seed_with({"saturation"}, where=lambda u: (u[6] - 0.5) * sign > 0.2)  # factor < 0.8 or > 1.2
    factor = 0.5 + u[6]
    img = colour_image()
    h0, s0, v0 = bgr_to_hsv(img)
    h1, s1, v1 = bgr_to_hsv(photometric_distort(img, np.random.default_rng(seed)))
    np.testing.assert_allclose(s1, np.minimum(s0 * factor, 1.0), atol=2e-3)
    np.testing.assert_allclose(v1, v0, atol=0.01)
    assert hue_diff(h1, h0).max() < 0.1


@pytest.mark.parametrize("sign", [-1, 1])
def test_photometric_hue_step(sign):
    seed, u = seed_with({"hue"}, where=lambda u: (u[8] * 36 - 18) * sign > 5)
    shift = u[8] * 36 - 18  # degrees
    img = colour_image()
    h0, s0, v0 = bgr_to_hsv(img)
    h1, s1, v1 = bgr_to_hsv(photometric_distort(img, np.random.default_rng(seed)))
    assert hue_diff(h1, np.mod(h0 + shift, 360)).max() < 0.1
    np.testing.assert_allclose(s1, s0, atol=1e-4)
    np.testing.assert_allclose(v1, v0, atol=0.01)


def test_photometric_channel_swap_step():
    seed, u = seed_with({"swap"})
    img = colour_image()
    out = photometric_distort(img, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, img[..., SWAPS[min(int(u[10] * 5), 4)]].astype(np.float32))


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_all_steps_in_order(contrast_first):
    """Every step on: brightness, then contrast before or after the HSV step (saturation, then hue), then the swap.

    Bright colours and a gain > 1.3 make the contrast step clip, so the order matters.
    """
    seed, u = seed_with(set(STEP_FLAGS), contrast_first=contrast_first, where=lambda u: u[4] > 0.8 and u[6] > 0.8)
    img = colour_image(150, 250).astype(np.float64)
    x = np.clip(img + (u[1] * 64 - 32), 0, 255)

    def contrast(x):
        return np.clip(x * (0.5 + u[4]), 0, 255)

    if contrast_first:
        x = contrast(x)
    h, s, v = bgr_to_hsv(x)
    x = np.clip(hsv_to_bgr(np.mod(h + u[8] * 36 - 18, 360), np.minimum(s * (0.5 + u[6]), 1), v), 0, 255)
    if not contrast_first:
        x = contrast(x)
    x = x[..., SWAPS[min(int(u[10] * 5), 4)]]
    rng = np.random.default_rng(seed)
    np.testing.assert_allclose(photometric_distort(colour_image(150, 250), rng), x, atol=0.05)
    # exactly 12 numbers were drawn
    assert rng.random() == np.random.default_rng(seed).random(13)[12]


def test_train_transform_synthetic_many():
    t = TrainTransform(size=320)
    branches = set()
    for s in range(120):
        h, w = [(300, 400), (500, 260), (200, 200)][s % 3]
        img = synthetic_image(h, w, seed=s % 5)
        boxes = synthetic_boxes(h, w, n=[0, 1, 5, 30][s % 4], seed=s)
        out, b, info = t(img, boxes, np.random.default_rng(s), return_info=True)
        assert_valid_output(out, b, info, 320)
        branches.add(info.branch)
    assert {"das", "ssd"} <= branches


@needs_wider
def test_train_transform_real_images():
    ds = WiderFaceDataset(split="train", transform=TrainTransform(size=640), seed=1)
    for i in [0, 2, 7]:
        for epoch in range(4):
            img, boxes, meta = ds[(i, epoch)]
            info_t = TrainTransform(size=640)(*ds.load(i), sample_rng(1, epoch, i), return_info=True)
            torch.testing.assert_close(img, info_t[0], rtol=0, atol=0)
            assert_valid_output(img, boxes, info_t[2], 640)


def test_determinism():
    img = synthetic_image(240, 320, seed=1)
    boxes = synthetic_boxes(240, 320, 12, seed=1)
    t = TrainTransform(size=256)
    a = t(img, boxes, sample_rng(7, 0, 3))
    b = t(img, boxes, sample_rng(7, 0, 3))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    for other in (sample_rng(8, 0, 3), sample_rng(7, 1, 3), sample_rng(7, 0, 4)):
        c = t(img, boxes, other)
        assert not torch.equal(a[0], c[0])


def test_worker_count_independence(tmp_path):
    root = make_wider_tree(tmp_path, n_images=6)
    ds = WiderFaceDataset(root=root, transform=TrainTransform(size=96), seed=3)

    def run(workers):
        sampler = EpochRandomSampler(len(ds), seed=5)
        sampler.set_epoch(2)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=collate_detection)
        return list(loader)

    a, b = run(0), run(2)
    assert len(a) == len(b) == 3
    for (ia, ga, ca, ma), (ib, gb, cb, mb) in zip(a, b):
        torch.testing.assert_close(ia, ib, rtol=0, atol=0)
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)
        assert torch.equal(ca, cb) and [m["index"] for m in ma] == [m["index"] for m in mb]


def test_flip_known_box():
    img = np.zeros((200, 200, 3), np.uint8)
    img[50:90, 20:60] = 255  # the "face": x 20..60, y 50..90
    box = np.array([[20, 50, 60, 90]], np.float32)
    t_flip = TrainTransform(size=200, das_prob=0.0, photometric=False, flip_prob=1.0)
    t_keep = TrainTransform(size=200, das_prob=0.0, photometric=False, flip_prob=0.0)
    seen = 0
    for s in range(20):
        out, b, info = t_flip(img, box, np.random.default_rng(s), return_info=True)
        out0, b0, info0 = t_keep(img, box, np.random.default_rng(s), return_info=True)
        assert info.flipped and not info0.flipped and info.crop == info0.crop
        torch.testing.assert_close(out, out0.flip(-1), rtol=0, atol=0)
        torch.testing.assert_close(b, torch.stack([1 - b0[:, 2], b0[:, 1], 1 - b0[:, 0], b0[:, 3]], 1))
        if len(b) == 0:
            continue
        x0, y0, side, _ = info.crop
        f = 200 / side
        ex = np.array([
            200 - (min(60, x0 + side) - x0) * f, (max(50, y0) - y0) * f,
            200 - (max(20, x0) - x0) * f, (min(90, y0 + side) - y0) * f,
        ]) / 200
        np.testing.assert_allclose(b[0].numpy(), ex, atol=1e-5)
        # the bright pixels are where the flipped box says
        bright = to_uint8_image(out)[..., 0] > 200
        ys, xs = np.nonzero(bright)
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / 200
        np.testing.assert_allclose(got, ex, atol=1.5 / 200 * max(1, f))
        seen += 1
    assert seen >= 5


def test_data_anchor_sampling_distribution():
    h, w = 700, 1000
    faces = np.array([[50, 50, 60, 60], [100, 300, 124, 324], [400, 100, 450, 150],
                      [600, 300, 700, 400], [200, 400, 400, 600], [650, 20, 950, 320]], np.float32)
    sides = np.sqrt((faces[:, 2] - faces[:, 0]) * (faces[:, 3] - faces[:, 1]))
    img = np.full((h, w, 3), 128, np.uint8)
    anchors_all = np.array([16, 32, 64, 128, 256, 512])
    for jitter, factor in ((1.0, 2.0), (0.0, 1.1)):
        t = TrainTransform(size=640, das_prob=1.0, photometric=False, das_scale_jitter=jitter)
        near, used, total = 0, [], 0
        for s in range(150):
            out, b, info = t(img, faces, np.random.default_rng(s), return_info=True)
            assert info.branch == "das"
            A, k = info.anchor, info.face_index
            used.append(A)
            # anchor rule: up to the smallest anchor >= s (at least 32)
            allowed = anchors_all[: max(1, int(np.searchsorted(anchors_all, sides[k]))) + 1]
            assert A in allowed
            total += 1
            if k in info.kept:
                bb = b[list(info.kept).index(k)].numpy() * 640
                size_out = math.sqrt((bb[2] - bb[0]) * (bb[3] - bb[1]))
                near += A / factor <= size_out <= A * factor
        assert near / total > 0.8, (jitter, near, total)
        assert len(set(used)) >= 5
        # every face size after resize is within a factor 2 of some anchor
    t = TrainTransform(size=320, das_prob=1.0, photometric=False)
    assert t.anchor_sizes.max() == 256
    for s in range(20):
        _, _, info = t(img, faces, np.random.default_rng(s), return_info=True)
        assert info.anchor <= 256


# ----------------------------------------------------------------------------- augmentation geometry
#
# Known bright squares on a black image: after a transform every output box
# must be its face clipped to the crop (by hand, from CropInfo) and must sit
# on the bright pixels of that face in the output image. Photometric
# distortion is off so "bright" stays bright; the mean-filled padding
# (104, 117, 123) is darker than the 50% level used below.


def squares_image(h, w, squares):
    """Black ``h x w`` image with white squares ``x1, y1, x2, y2`` (pixels x1..x2-1); returns (image, boxes)."""
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in squares:
        img[y1:y2, x1:x2] = 255
    return img, np.array(squares, np.float32)


def expected_boxes(faces, info, size, min_face):
    """The documented box rule, by hand: survivors (centre strictly inside the crop, output area
    ``> min_face**2``), clipped, in crop units, mirrored when flipped. Returns (kept indices, boxes)."""
    x0, y0, side, side_y = info.crop
    assert side == side_y  # square crops
    f = faces.astype(np.float64)
    cx, cy = (f[:, 0] + f[:, 2]) / 2, (f[:, 1] + f[:, 3]) / 2
    clipped = np.stack([np.maximum(f[:, 0], x0), np.maximum(f[:, 1], y0),
                        np.minimum(f[:, 2], x0 + side), np.minimum(f[:, 3], y0 + side)], 1)
    wh = np.clip(clipped[:, 2:] - clipped[:, :2], 0, None) * (size / side)
    keep = (cx > x0) & (cx < x0 + side) & (cy > y0) & (cy < y0 + side) & (wh[:, 0] * wh[:, 1] > min_face ** 2)
    idx = np.flatnonzero(keep)
    b = (clipped[idx] - np.array([x0, y0, x0, y0])) / side
    if info.flipped:
        b = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], 1)
    return idx, b


def assert_boxes_on_squares(out, boxes, info, faces, size):
    """The output boxes are the hand-computed ones and each one frames the bright pixels under it."""
    idx, want = expected_boxes(faces, info, size, info.min_face)
    np.testing.assert_array_equal(info.kept, idx)
    np.testing.assert_allclose(boxes.numpy(), want, atol=1e-6)
    bright = (to_uint8_image(out) > 127.5).all(-1)  # white (255) vs black (0) and the mean fill
    f = size / info.crop[2]  # output pixels per input pixel
    tol = 1.0 + 0.5 * max(1.0, f)  # resize rounding (half a pixel) plus interpolation blur at the edges
    margin = int(math.ceil(2 + f))
    for b in boxes.numpy() * size:
        wx0, wy0 = max(0, int(b[0]) - margin), max(0, int(b[1]) - margin)
        wx1, wy1 = min(size, int(math.ceil(b[2])) + margin), min(size, int(math.ceil(b[3])) + margin)
        ys, xs = np.nonzero(bright[wy0:wy1, wx0:wx1])
        assert len(xs), f"no bright pixels under box {b} (crop {info.crop}, flipped {info.flipped})"
        got = np.array([xs.min() + wx0, ys.min() + wy0, xs.max() + 1 + wx0, ys.max() + 1 + wy0])
        assert np.abs(got - b).max() <= tol, (got, b, info)


def test_das_geometry_near_borders_and_crops_larger_than_the_image():
    """Data-anchor-sampling: the crop holds the sampled face, stays inside the image where it fits and
    holds the whole image where it does not (a zoom-out, padded with the mean); boxes sit on the faces."""
    h, w, size = 120, 160, 160
    img, faces = squares_image(h, w, [(2, 3, 14, 15), (140, 100, 156, 116), (70, 50, 90, 70), (100, 8, 110, 18)])
    t = TrainTransform(size=size, das_prob=1.0, photometric=False, flip_prob=0.5)
    larger_x = larger_y = inside = flipped = 0
    for seed in range(40):
        out, boxes, info = t(img, faces, np.random.default_rng(seed), return_info=True)
        assert info.branch == "das"
        x0, y0, side, _ = info.crop
        face = faces[info.face_index]
        for lo, extent, f1, f2 in ((x0, w, face[0], face[2]), (y0, h, face[1], face[3])):
            assert lo <= f1 and lo + side >= f2, (info, face)  # the sampled face is inside the crop
            if side <= extent:
                assert 0 <= lo and lo + side <= extent, info  # inside the image
            else:
                assert lo <= 0 and lo + side >= extent, info  # the whole image, padded
        larger_x += side > w and x0 < 0 and len(boxes) > 0
        larger_y += side > h and y0 < 0 and len(boxes) > 0
        inside += side <= h and len(boxes) > 0
        flipped += info.flipped
        assert_boxes_on_squares(out, boxes, info, faces, size)
        # padding left of / above the image is exactly the mean (0 after subtraction)
        f, unflipped = size / side, out.flip(-1) if info.flipped else out
        if x0 < 0 and -x0 * f >= 2:
            assert (unflipped[:, :, : int(-x0 * f) - 1] == 0).all()
        if y0 < 0 and -y0 * f >= 2:
            assert (unflipped[:, : int(-y0 * f) - 1, :] == 0).all()
    assert larger_x >= 5 and larger_y >= 5 and inside >= 5 and 5 <= flipped <= 35, (larger_x, larger_y, inside, flipped)


def test_das_face_larger_than_the_crop_is_cut_by_it():
    h, w, size = 160, 200, 128
    img, faces = squares_image(h, w, [(20, 10, 120, 110)])  # a 100 px face: anchors 16..128, side 100 / 2**U(-1, 1)
    t = TrainTransform(size=size, das_prob=1.0, photometric=False, flip_prob=0.5)
    cut = 0
    for seed in range(60):
        out, boxes, info = t(img, faces, np.random.default_rng(seed), return_info=True)
        x0, y0, side, _ = info.crop
        if info.branch == "das" and side < 100:
            cut += 1
            # the crop lies inside the face: an all-bright output, one box covering it
            assert 20 <= x0 and x0 + side <= 120 and 10 <= y0 and y0 + side <= 110, info
            assert len(boxes) == 1 and np.allclose(boxes.numpy(), [[0, 0, 1, 1]])
            assert (to_uint8_image(out) > 250).all()
        if info.branch != "fallback":
            assert_boxes_on_squares(out, boxes, info, faces, size)
    assert cut >= 3, cut


def test_ssd_crop_geometry():
    h, w, size = 200, 300, 128
    img, faces = squares_image(h, w, [(10, 10, 40, 40), (60, 20, 80, 40), (130, 90, 190, 150), (240, 150, 270, 180),
                                      (200, 30, 215, 45), (20, 140, 70, 190)])
    t = TrainTransform(size=size, das_prob=0.0, photometric=False, flip_prob=0.5)
    full = 0
    for seed in range(40):
        out, boxes, info = t(img, faces, np.random.default_rng(seed), return_info=True)
        assert info.branch == "ssd"
        x0, y0, side, _ = info.crop
        # a square inside the image, side the short side or U(0.3, 1) of it
        assert 0 <= x0 and x0 + side <= w and 0 <= y0 and y0 + side <= h, info
        assert math.floor(0.3 * h) <= side <= h and side == int(side)
        full += side == h
        assert_boxes_on_squares(out, boxes, info, faces, size)
    assert full >= 2  # the short-side crop (p = 1/5 per candidate) shows up


def test_fallback_geometry():
    """No candidate passes: the whole image, centred in a mean-filled square, threshold halved."""
    h, w, size = 100, 400, 200
    img, faces = squares_image(h, w, [(350, 35, 380, 65)])
    t = TrainTransform(size=size, das_prob=0.0, photometric=False, flip_prob=0.5, max_tries=1)
    seen = set()
    for seed in range(40):
        out, boxes, info = t(img, faces, np.random.default_rng(seed), return_info=True)
        if info.branch != "fallback":
            continue
        assert info.crop == (0.0, -150.0, 400.0, 400.0) and info.min_face == 4.0
        assert len(boxes) == 1
        assert_boxes_on_squares(out, boxes, info, faces, size)
        # the image occupies output rows 75..124 (100 px at 1/2, starting 150 px down the square),
        # the rest is the mean (0 after subtraction); no image pixel (black or white) is the mean
        assert (out[:, :75] == 0).all() and (out[:, 125:] == 0).all()
        assert (out[:, 75:125] != 0).all()
        seen.add(info.flipped)
    assert seen == {False, True}


def test_flip_geometry_all_branches():
    """The flip mirrors pixels and boxes together, whatever the crop branch."""
    h, w, size = 120, 160, 160
    img, faces = squares_image(h, w, [(2, 3, 14, 15), (140, 100, 156, 116), (70, 50, 90, 70)])
    for das in (0.0, 1.0):
        t_flip = TrainTransform(size=size, das_prob=das, photometric=False, flip_prob=1.0)
        t_keep = TrainTransform(size=size, das_prob=das, photometric=False, flip_prob=0.0)
        for seed in range(10):
            out, boxes, info = t_flip(img, faces, np.random.default_rng(seed), return_info=True)
            out0, boxes0, info0 = t_keep(img, faces, np.random.default_rng(seed), return_info=True)
            assert info.flipped and not info0.flipped and info.crop == info0.crop
            torch.testing.assert_close(out, out0.flip(-1), rtol=0, atol=0)
            assert_boxes_on_squares(out, boxes, info, faces, size)
            assert_boxes_on_squares(out0, boxes0, info0, faces, size)


def test_eval_transform_and_collate():
    img = synthetic_image(100, 200, seed=2)
    boxes = np.array([[10, 20, 50, 60]], np.float32)
    et = EvalTransform(size=64)
    out, b = et(img, boxes)
    assert out.shape == (3, 64, 64)
    np.testing.assert_allclose(b.numpy(), [[0.05, 0.2, 0.25, 0.6]])
    out, _ = EvalTransform(size=None)(img, boxes)
    np.testing.assert_allclose(out.numpy().transpose(1, 2, 0), img - MEAN)

    batch = [(out, torch.tensor([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.5, 0.6]]), {"i": 0}),
             (out, np.zeros((0, 4), np.float32), {"i": 1}),
             (out, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), {"i": 2})]
    images, gt, counts, meta = collate_detection(batch)
    assert images.shape == (3, 3, 100, 200) and gt.shape == (3, 2, 4)
    assert counts.tolist() == [2, 0, 1] and counts.dtype == torch.int64
    assert (gt[1] == 0).all() and (gt[2, 1] == 0).all() and [m["i"] for m in meta] == [0, 1, 2]
    images, gt, counts, _ = collate_detection([batch[1], batch[1]])
    assert gt.shape == (2, 0, 4) and counts.tolist() == [0, 0]
    with pytest.raises(ValueError, match="one size"):
        collate_detection([batch[0], (torch.zeros(3, 5, 5), batch[0][1], {})])


def test_dataset_mixes_several_roots(tmp_path):
    a = make_wider_tree(tmp_path / "a", n_images=3, seed=1)
    b = make_wider_tree(tmp_path / "b", n_images=5, seed=2)
    ds = WiderFaceDataset([a, b], "train")
    assert len(ds) == 8
    assert ds.root_counts == [
        {"root": str(a), "images": 3, "boxes": 9},
        {"root": str(b), "images": 5, "boxes": 15},
    ]
    # indices 0-2 come from the first root, 3-7 from the second, each with its own boxes
    assert ds.image_path(2) == a / "WIDER_train" / "images" / "0--Test" / "img_2.jpg"
    assert ds.image_path(3) == b / "WIDER_train" / "images" / "0--Test" / "img_0.jpg"
    img_b0, boxes_b0, meta = ds[3]
    single_b = WiderFaceDataset(b, "train")
    img_ref, boxes_ref, _ = single_b[0]
    assert meta["path"] == str(ds.image_path(3))
    np.testing.assert_array_equal(img_b0, img_ref)
    np.testing.assert_array_equal(boxes_b0, boxes_ref)
    assert ds.stats["kept"] == 24 and ds.stats["images"] == 8
    with pytest.raises(FileNotFoundError, match="annotations not found"):
        WiderFaceDataset([a, tmp_path / "missing"], "train")
    with pytest.raises(ValueError, match="at least one"):
        WiderFaceDataset([], "train")
