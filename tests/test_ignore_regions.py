"""Ignore regions end to end: readers -> TrainTransform -> collate -> loss (issue #30).

Faces a crop drops (too small, or centre outside but partly inside), WIDER's
invalid-flagged faces, faces below ``min_face`` and COCO crowds must be
neither faces nor background: the anchors on them are never mined as
negatives.
"""

import cv2
import numpy as np
import pytest
import torch

from dsfd.data import (
    FaceDataset,
    TrainTransform,
    WiderFaceDataset,
    collate_detection,
    collate_ignore_regions,
    parse_wider_annotations,
    read_yolo,
    sample_rng,
)
from dsfd.losses import MultiBoxLoss, ProgressiveAnchorLoss
from dsfd.models.anchors import generate_anchors
from dsfd.ops import reference as ref

from conftest import cpu_and_cuda


def write_gt(path, entries):
    lines = []
    for rel, rows in entries:
        lines += [rel, str(len(rows))]
        if not rows:
            lines.append("0 0 0 0 0 0 0 0 0 0 ")
        lines += [" ".join(str(v) for v in r) + " " for r in rows]
    path.write_text("\n".join(lines) + "\n")


def crowd_image(size=256):
    """A gray image with one big face (kept) and tiny faces of 5-7 px (dropped at scale 1)."""
    img = np.full((size, size, 3), 90, np.uint8)
    faces = np.array([[100, 100, 160, 170]], np.float32)
    tiny = np.array([[20, 20, 27, 27], [40, 200, 46, 206], [210, 30, 215, 36], [220, 220, 227, 226]], np.float32)
    for x1, y1, x2, y2 in np.concatenate([faces, tiny]).astype(int):
        img[y1:y2, x1:x2] = 200
    return img, faces, tiny


def whole_image_transform(size=256, flip=0.0):
    # SSD crops of the whole short side only: the output is the image at scale 1
    return TrainTransform(size=size, das_prob=0.0, photometric=False, flip_prob=flip, crop_scale=(1.0, 1.0))


# ----------------------------------------------------------------------------- transform
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_dropped_faces_become_ignore_regions(flip):
    img, faces, tiny = crowd_image()
    t = whole_image_transform(flip=flip)
    boxes_all = np.concatenate([faces, tiny])
    out, boxes, ignore, info = t(img, boxes_all, np.random.default_rng(0), return_info=True, ignore=np.zeros((0, 4)))
    assert info.crop == (0.0, 0.0, 256.0, 256.0) and info.kept.tolist() == [0]
    expected = tiny / 256.0
    if flip:
        expected = np.stack([1 - expected[:, 2], expected[:, 1], 1 - expected[:, 0], expected[:, 3]], 1)
    np.testing.assert_allclose(ignore.numpy(), expected, rtol=0, atol=1e-6)
    # the same random stream and outputs with and without ignore regions
    out2, boxes2, info2 = t(img, boxes_all, np.random.default_rng(0), return_info=True)
    assert torch.equal(out, out2) and torch.equal(boxes, boxes2) and info2.crop == info.crop


def test_given_regions_and_cut_faces_are_clipped_to_the_crop():
    img = np.zeros((200, 300, 3), np.uint8)
    faces = np.array([[10, 10, 60, 60], [90, 150, 130, 199]], np.float32)
    given = np.array([[250, 0, 300, 40], [0, 100, 5, 120]], np.float32)
    t = TrainTransform(size=100, das_prob=0.0, photometric=False, flip_prob=0.0)
    seen_cut = False
    for seed in range(30):
        out, boxes, ignore, info = t(img, faces, np.random.default_rng(seed), return_info=True, ignore=given)
        x0, y0, side, _ = info.crop
        dropped = [i for i in range(len(faces)) if i not in info.kept.tolist()]
        regions = np.concatenate([given, faces[dropped]])
        clipped = np.stack([np.maximum(regions[:, 0], x0), np.maximum(regions[:, 1], y0),
                            np.minimum(regions[:, 2], x0 + side), np.minimum(regions[:, 3], y0 + side)], 1)
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        expected = (clipped[inside] - [x0, y0, x0, y0]) / side
        np.testing.assert_allclose(ignore.numpy(), expected, rtol=0, atol=1e-6)
        ig = ignore.numpy()
        assert ((ig >= 0) & (ig <= 1)).all() and (ig[:, 2] > ig[:, 0]).all() and (ig[:, 3] > ig[:, 1]).all()
        seen_cut |= any(inside[len(given):])
    assert seen_cut  # some crop cut a face whose centre it missed


def test_zoom_out_crops_keep_the_image_inside():
    h, w = 120, 200
    img = np.full((h, w, 3), 255, np.uint8)
    faces = np.array([[80, 40, 120, 80]], np.float32)
    t = TrainTransform(size=128, das_prob=0.0, photometric=False, flip_prob=0.0, crop_scale=(1.5, 2.0))
    sides = []
    for seed in range(40):
        out, boxes, info = t(img, faces, np.random.default_rng(seed), return_info=True)
        x0, y0, side, _ = info.crop
        sides.append(side)
        assert side == h or 1.5 * h - 1 <= side <= 2.0 * h  # the short side (1 in 5) or the range
        for lo, extent in ((x0, w), (y0, h)):
            if side >= extent:  # the image inside the crop along that axis
                assert lo <= 0 and lo + side >= extent
            else:
                assert 0 <= lo and lo + side <= extent
        np.testing.assert_allclose(boxes.numpy()[0] * side + [x0, y0, x0, y0], faces[0], atol=1e-3)
        # mean-filled outside the image: exactly 0 after the mean subtraction
        if y0 < 0:
            top = int(round(-y0 * 128 / side))
            if top > 1:
                assert bool((out[:, : top - 1] == 0).all())
    assert max(sides) > h  # zoom-out crops happen
    with pytest.raises(ValueError, match="crop_scale"):
        TrainTransform(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop_scale"):
        TrainTransform(crop_scale=(1.0, 0.5))


def test_default_crop_scale_keeps_the_old_crops():
    img = np.zeros((200, 300, 3), np.uint8)
    faces = np.array([[10, 10, 60, 60], [90, 150, 130, 199]], np.float32)
    new = TrainTransform(size=128, photometric=False)
    for seed in range(20):
        _, _, info = new(img, faces, np.random.default_rng(seed), return_info=True)
        x0, y0, side, _ = info.crop
        if info.branch == "ssd":  # the SSD rule before crop_scale: U(0.3, 1) of the short side, inside
            assert 60 <= side <= 200 and 0 <= x0 <= 300 - side and 0 <= y0 <= 200 - side


# ----------------------------------------------------------------------------- readers and dataset
def test_wider_reader_keeps_invalid_and_small_faces_as_ignore(tmp_path):
    gt = tmp_path / "gt.txt"
    write_gt(gt, [("a/1.jpg", [[10, 20, 30, 40, 0, 0, 0, 0, 0, 0],  # kept
                               [1, 2, 30, 30, 2, 0, 0, 1, 0, 0],  # invalid-flagged: ignore
                               [50, 50, 3, 2, 0, 0, 0, 0, 0, 0],  # small (min_face 4): ignore
                               [5, 5, 0, 10, 0, 0, 0, 0, 0, 0],  # degenerate: nothing
                               [5, 5, 0, 10, 0, 0, 0, 1, 0, 0]])])  # invalid and degenerate: nothing
    anns, stats = parse_wider_annotations(gt, min_face=4.0)
    np.testing.assert_allclose(anns[0].boxes, [[10, 20, 40, 60]])
    np.testing.assert_allclose(anns[0].ignore, [[1, 2, 31, 32], [50, 50, 53, 52]])
    assert stats["invalid"] == 2 and stats["small"] == 1 and stats["kept"] == 1


def make_wider_root(root, rows, size=(120, 160)):
    (root / "WIDER_train" / "images" / "0--T").mkdir(parents=True)
    (root / "wider_face_split").mkdir()
    img = np.full((*size, 3), 30, np.uint8)
    cv2.imwrite(str(root / "WIDER_train" / "images" / "0--T" / "a.png"), img)
    write_gt(root / "wider_face_split" / "wider_face_train_bbx_gt.txt", [("0--T/a.png", rows)])
    return root


def test_dataset_passes_regions_to_the_transform_and_paints_nothing(tmp_path):
    root = make_wider_root(tmp_path / "w", [[20, 20, 60, 60, 0, 0, 0, 0, 0, 0], [90, 30, 40, 40, 0, 0, 0, 1, 0, 0]])
    t = TrainTransform(size=160, das_prob=0.0, photometric=False, flip_prob=0.0, crop_scale=(1.0, 1.0))
    ds = WiderFaceDataset(root=root, transform=t, seed=0)
    img, boxes, meta = ds[0]
    # the dataset's crop (a 120 px square), re-derived from the sample's random stream
    info = t(*ds.load(0), sample_rng(0, 0, 0), return_info=True)[-1]
    x0, y0, side, _ = info.crop
    assert side == 120 and y0 == 0
    # the invalid face (90..130, 30..70) is an ignore region, clipped to the crop
    ign = meta["ignore"].numpy()
    assert ign.shape == (1, 4)
    np.testing.assert_allclose(ign[0] * side + [x0, y0, x0, y0], [max(90, x0), 30, min(130, x0 + side), 70],
                               atol=1e-3)
    # and its pixels are not painted: the whole output is the image's gray
    assert float((img + torch.tensor([104.0, 117.0, 123.0])[:, None, None]).sub(30).abs().max()) < 1e-3
    # collate: padded regions per image
    batch = collate_detection([ds[0], (img, boxes, {"ignore": torch.zeros(0, 4)}), (img, boxes, {})])
    regions, counts = collate_ignore_regions(batch[3])
    assert regions.shape == (3, 1, 4) and counts.tolist() == [1, 0, 0]
    assert torch.equal(regions[0, 0], meta["ignore"][0]) and bool((regions[1:] == 0).all())
    assert collate_ignore_regions([{}, {}])[0].shape == (2, 0, 4)


def test_yolo_faces_below_min_face_become_ignore_regions(tmp_path):
    root = tmp_path / "y"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((100, 200, 3), np.uint8))
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.01 0.02\n")  # 40x40 and 2x2 px
    ds = FaceDataset([read_yolo(root, "train")], min_face=4.0)
    _, boxes, ign = ds.read(0)
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70]], atol=1e-4)
    np.testing.assert_allclose(ign, [[19, 9, 21, 11]], atol=1e-4)


# ----------------------------------------------------------------------------- loss
def crowd_batch(device):
    img, faces, tiny = crowd_image()
    t = whole_image_transform()
    out, boxes, ignore = t(img, np.concatenate([faces, tiny]), np.random.default_rng(0), ignore=np.zeros((0, 4)))
    anchors = generate_anchors((256, 256), [(64, 64), (32, 32), (16, 16), (8, 8)], [16, 32, 64, 128], [4, 8, 16, 32])
    A = anchors.shape[0]
    on_dropped = (ref.box_iou(ignore, ref.anchors_to_corners(anchors)) >= 0.1).any(0)
    assert int(on_dropped.sum()) >= 8  # the 16 px anchors around each tiny face
    # logits: "face" on the dropped faces' anchors (the hardest negatives there are), background elsewhere
    conf = torch.zeros(1, A, 2)
    conf[0, :, 0] = 2.0
    conf[0, on_dropped] = torch.tensor([-6.0, 6.0])
    loc = torch.zeros(1, A, 4)
    return (loc.to(device), conf.to(device), anchors.to(device), boxes[None].to(device),
            torch.tensor([len(boxes)], device=device), ignore[None].to(device),
            torch.tensor([len(ignore)], device=device), on_dropped)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("use_ref", [False, True])
def test_an_anchor_on_a_dropped_face_is_never_a_mined_negative(device, use_ref):
    loc, conf, anchors, gt, counts, ignore, icounts, on_dropped = crowd_batch(device)
    crit = MultiBoxLoss(use_reference_ops=use_ref)
    labels = crit.targets(anchors, gt, counts, ignore, icounts)[0].cpu()
    assert bool((labels[0, on_dropped] == -1).all())
    assert int((labels == 1).sum()) > 0 and bool((labels[0, ~on_dropped] >= 0).all())
    conf = conf.requires_grad_()
    out = crit(loc, conf, anchors, gt, counts, ignore, icounts)
    (gc,) = torch.autograd.grad(out["loss_c"], (conf,))
    assert bool((gc[0, on_dropped.to(device)] == 0).all())  # never trained as background
    # without the regions the same anchors are the first negatives mined (the test can fail)
    plain = MultiBoxLoss(use_reference_ops=use_ref, ignore_iou=None)
    out2 = plain(loc, conf, anchors, gt, counts, ignore, icounts)
    (gc2,) = torch.autograd.grad(out2["loss_c"], (conf,))
    plain_labels = plain.targets(anchors, gt, counts)[0][0].cpu()
    mined = (gc2[0].abs().sum(-1) > 0).cpu() & (plain_labels == 0)
    assert int(mined.sum()) == 3 * int((plain_labels == 1).sum()) and bool(on_dropped[mined].all())
    # PAL passes them to both shots
    pal = ProgressiveAnchorLoss(use_reference_ops=use_ref)
    total, _ = pal((loc, conf, anchors), (loc, conf, anchors), gt, counts, ignore_boxes=ignore, ignore_counts=icounts)
    (gp,) = torch.autograd.grad(total, (conf,))
    assert bool((gp[0, on_dropped.to(device)] == 0).all())


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_min_negatives_teaches_photos_without_faces(device):
    loc, conf, anchors, gt, counts, ignore, icounts, _ = crowd_batch(device)
    empty_gt = torch.zeros(1, 0, 4, device=device)
    zero = torch.zeros(1, dtype=torch.long, device=device)
    conf = conf.requires_grad_()
    assert float(MultiBoxLoss()(loc, conf, anchors, empty_gt, zero)["loss_c"].detach()) == 0.0
    out = MultiBoxLoss(min_negatives=64)(loc, conf, anchors, empty_gt, zero)
    (gc,) = torch.autograd.grad(out["loss_c"], (conf,))
    assert float(out["loss_c"].detach()) > 0 and int((gc[0].abs().sum(-1) > 0).sum()) == 64
    with pytest.raises(ValueError, match="min_negatives"):
        MultiBoxLoss(min_negatives=-1)
    with pytest.raises(ValueError, match="ignore_iou"):
        MultiBoxLoss(ignore_iou=0.0)


# ----------------------------------------------------------------------------- trainer
def test_trainer_feeds_the_regions_to_the_loss(tmp_path, monkeypatch):
    from dsfd.training import TrainConfig, Trainer

    # one image: a 40 px face and three invalid-flagged faces; crops keep the image whole (scale 1)
    root = make_wider_root(tmp_path / "w", [[20, 20, 40, 40, 0, 0, 0, 0, 0, 0]]
                           + [[70 + 25 * k, 60, 20, 20, 0, 0, 0, 1, 0, 0] for k in range(3)])
    kw = dict(data=str(root), out=str(tmp_path / "run"), backbone="tiny", size=128, batch_size=1, iters=1,
              workers=0, val_every=0, ckpt_every=0, progress=False, amp="none", crop_scale=(1.0, 1.0),
              das_prob=0.0)
    tr = Trainer(TrainConfig(**kw))
    batch = collate_detection([tr.train_dataset[item] for item in tr.sampler_probe.batch(0)])
    regions, counts = tr.ignore_regions(batch)
    assert counts.tolist() == [3] and regions.shape == (1, 3, 4)
    seen = {}
    orig = MultiBoxLoss.targets

    def spy(self, anchors, gt_boxes, gt_counts, ignore_boxes=None, ignore_counts=None):
        seen["counts"] = None if ignore_counts is None else ignore_counts.tolist()
        labels, loc_t = orig(self, anchors, gt_boxes, gt_counts, ignore_boxes, ignore_counts)
        seen["ignored"] = int((labels == -1).sum())
        return labels, loc_t

    monkeypatch.setattr(MultiBoxLoss, "targets", spy)
    tr.forward_loss(batch)
    assert seen["counts"] == [3] and seen["ignored"] > 0
    off = Trainer(TrainConfig(**{**kw, "ignore_iou": 0.0, "out": str(tmp_path / "off")}))
    assert off.ignore_regions(batch) == (None, None)
    seen.clear()
    off.forward_loss(batch)
    assert seen["counts"] is None and seen["ignored"] == 0
    with pytest.raises(ValueError, match="ignore_iou"):
        TrainConfig(**{**kw, "ignore_iou": 1.5})
    with pytest.raises(ValueError, match="crop_scale"):
        TrainConfig(**{**kw, "crop_scale": (0.5, 0.2)})


def test_train_cli_flags_reach_the_config():
    import argparse

    from dsfd.training.cli import add_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    cfg = config_from_args(parser.parse_args(["train", "--ignore-iou", "0.2", "--min-negatives", "16",
                                              "--crop-scale", "0.3", "1.6"]))
    assert cfg.ignore_iou == 0.2 and cfg.min_negatives == 16 and cfg.crop_scale == (0.3, 1.6)
    cfg = config_from_args(parser.parse_args(["train"]))
    assert cfg.ignore_iou == 0.1 and cfg.min_negatives == 0 and cfg.crop_scale == (0.3, 1.0)


# ----------------------------------------------------------------------------- issue #33 pieces in training
def test_frozen_batchnorms_stay_frozen_under_sync_batchnorm():
    from dsfd.models import build_model
    from dsfd.training.model_setup import freeze_module, to_sync_batchnorm

    model = build_model("paper", "tiny", fem_norm=True)  # BatchNorms outside the backbone too
    frozen = freeze_module(model.backbone)
    assert frozen
    synced, frozen2 = to_sync_batchnorm(model, frozen)
    modules = set(map(id, synced.modules()))
    assert len(frozen2) == len(frozen) and all(id(m) in modules for m in frozen2)
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in frozen2)
    assert not any(id(m) in modules for m in frozen)  # the old list pointed at detached modules
    synced.train()
    for m in frozen2:
        m.eval()
    trained = [m for m in synced.modules() if isinstance(m, torch.nn.SyncBatchNorm) and m.training]
    assert trained and not any(m in frozen2 for m in trained)
    assert all(not p.requires_grad for m in frozen2 for p in m.parameters())


@pytest.mark.parametrize("argv", [["--weights", ""], ["--resume", ""], ["--data", " "], ["--pretrained", ""]])
def test_train_rejects_empty_paths(argv, capsys):
    from dsfd.cli import main

    with pytest.raises(SystemExit) as e:  # a usage error, found by the parser (dsfd.cli_options types)
        main(["train", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "empty" in err and argv[0] in err


# ----------------------------------------------------------------------------- re-opened FEM norms
def test_fem_norms_reopen_on_folded_weights(tmp_path):
    """--fem-norm on a file whose FEM norms were folded: the same network in eval mode, ~the same in train mode."""
    from dsfd.models import build_model
    from dsfd.training.model_setup import calibrate_fem_norms, reopen_fem_norms

    torch.manual_seed(0)
    trained = build_model("paper", "tiny", fem_norm=True)
    for m in trained.fem.modules():  # statistics and affines as after training, then folded like an export
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    trained.eval().fold_fem_norm()
    path = tmp_path / "folded.pth"
    torch.save({"model": trained.state_dict(), "config": trained.config}, path)
    images = torch.randn(4, 3, 96, 96) * 40
    want = trained(images)

    model = reopen_fem_norms(str(path), {"network": "paper", "backbone": "tiny"})
    assert model.fem.has_norm and model._fem_norms_to_calibrate
    got = model.eval()(images)
    torch.testing.assert_close(got.second.conf, want.second.conf, rtol=1e-4, atol=1e-4)
    n = calibrate_fem_norms(model, images)
    assert n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.fem.modules()) > 0
    assert not hasattr(model, "_fem_norms_to_calibrate")
    got = model.eval()(images)
    # the calibrated statistics are the batch's own: equal up to rounding relative to the logits' scale (~300
    # here; one logit in 6,160 once differed by 1.7e-3 relative with one thread)
    scale = float(want.second.conf.abs().max())
    torch.testing.assert_close(got.second.conf, want.second.conf, rtol=1e-3, atol=1e-3 * scale)
    # train mode on the calibration batch: every FEM norm passes its input through (batch stats = calibration)
    gaps = []
    hooks = [bn.register_forward_hook(lambda m, i, o: gaps.append(float((o - i[0]).abs().max().detach() / (i[0].abs().max().detach() + 1e-6))))
             for bn in model.fem.modules() if isinstance(bn, torch.nn.BatchNorm2d)]
    model.train()
    for m in model.backbone.modules():  # the backbone's own norms stay as they were (eval) for this check
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    model(images)
    for h in hooks:
        h.remove()
    assert gaps and max(gaps) < 1e-3
