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
    read_image_bgr8,
    sample_rng,
    to_bgr8,
)
from dsfd.data_paths import wider_root

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


def test_to_bgr8_conversion_rules():
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    out = to_bgr8(gray)
    assert out.shape == (1, 3, 3) and out.dtype == np.uint8 and (out == gray[..., None]).all()
    g16 = np.array([[0, 257, 65535, 128]], dtype=np.uint16)
    assert to_bgr8(g16)[0, :, 0].tolist() == [0, 1, 255, 0]
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 7
    assert (to_bgr8(bgra)[..., 0] == 200).all() and to_bgr8(bgra).shape == (2, 2, 3)
    f = np.array([[[0.0, 0.5, 2.0]]], dtype=np.float32)
    assert to_bgr8(f).tolist() == [[[0, 128, 255]]]


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
    assert read_image_bgr8(d / "missing.jpg")[0] is None


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
