"""The paper's ablation switches (FEM, PAL, FSSD, IAM's data-anchor-sampling and matching) and ``dsfd anchors``.

Each switch is checked for what it changes: parameters and state_dict keys,
anchors, the shots a forward returns, the loss terms, the crops sampled and
the anchors matched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dsfd import ops
from dsfd.data import TrainTransform
from dsfd.losses import MATCHING_PRESETS, MultiBoxLoss, ProgressiveAnchorLoss, compensate_matches
from dsfd.models import build_model
from dsfd.ops import reference as ref
from dsfd.training import TrainConfig, Trainer, load_checkpoint
from dsfd.training.anchor_stats import anchor_stats, match_faces

# --------------------------------------------------------------------------- network switches


def _keys(model: torch.nn.Module, prefix: str) -> list:
    return [k for k in model.state_dict() if k.startswith(prefix)]


def _nparams(model: torch.nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


@pytest.mark.parametrize("backbone", ["tiny", "vgg16"])
def test_switches_remove_exactly_their_modules(backbone):
    kw = {"width_mult": 0.125} if backbone == "vgg16" else {}
    full = build_model("paper", backbone, **kw)
    no_fem = build_model("paper", backbone, fem=False, **kw)
    no_pal = build_model("paper", backbone, pal=False, **kw)
    fssd = build_model("paper", backbone, fssd=True, **kw)
    # the full network is the default and records no switch
    assert "fem" not in full.config and "pal" not in full.config
    assert build_model("paper", backbone, fem=True, pal=True, **kw).config == full.config
    assert full.shots == (1, 2) and no_fem.shots == (1, 2) and no_pal.shots == (2,) and fssd.shots == (2,)
    fem_params = _nparams(full, "fem.")
    head1_params = _nparams(full, "first_shot_head.")
    assert fem_params > 0 and head1_params > 0
    assert not _keys(no_fem, "fem.") and _nparams(no_fem) == _nparams(full) - fem_params - _nparams(full, "enhanced_norms.")
    assert not _keys(no_pal, "first_shot_head.") and no_pal.first_shot_anchors is None
    # without the first shot, the source L2Norms (VGG) have no user unless the FEM is off too
    assert _nparams(no_pal) == _nparams(full) - head1_params - _nparams(full, "source_norms.")
    assert not _keys(fssd, "fem.") and not _keys(fssd, "first_shot_head.")
    assert _nparams(fssd) == _nparams(full) - fem_params - head1_params - _nparams(full, "enhanced_norms.")
    if backbone == "vgg16":  # FSSD keeps L2Norm on the backbone maps it predicts from
        assert _keys(fssd, "source_norms.") and not _keys(fssd, "enhanced_norms.")
    assert fssd.config["fem"] is False and fssd.config["pal"] is False
    for m in (no_fem, no_pal, fssd):  # the config rebuilds the same architecture
        again = build_model(**m.config)
        again.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="fssd"):
        build_model("paper", backbone, fssd=True, fem=True, **kw)


def test_switched_forward_uses_the_right_features_and_anchors():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 128)
    no_fem = build_model("paper", "tiny", fem=False).eval()
    out = no_fem(x, shots=(1, 2))
    feats = no_fem.backbone(x)
    # without the FEM, the second shot's head reads the backbone maps directly
    loc, conf = no_fem.second_shot_head(feats)
    assert torch.allclose(out.second.loc, loc) and torch.allclose(out.second.conf, conf)
    # PAL's anchors: the first shot's are half the second's
    assert torch.allclose(out.first.anchors[:, 2:] * 2, out.second.anchors[:, 2:])
    no_pal = build_model("paper", "tiny", pal=False).train()
    o = no_pal(x)
    assert o.first is None and o.second is not None
    # the one shot has the regular anchors (16..512 px): the smallest is 16 px wide / sqrt(1.5)
    w_px = o.second.anchors[:, 2] * 128
    assert w_px.min().item() == pytest.approx(16 / 1.5 ** 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="no first shot"):
        no_pal(x, shots=(1, 2))
    # the test-time path is the same for every variant
    for m in (no_pal, build_model("paper", "tiny", fssd=True)):
        scores, boxes = m.predict(x)
        assert scores.shape == boxes.shape[:2] == (2, o.second.anchors.shape[0])


def test_anchor_aspect_switch_makes_square_anchors():
    m = build_model("paper", "tiny", aspect_ratio=1.0)
    out = m.train()(torch.randn(1, 3, 64, 64))
    assert torch.allclose(out.second.anchors[:, 2], out.second.anchors[:, 3])
    assert m.config["aspect_ratio"] == 1.0
    assert TrainConfig(anchor_aspect=1.0).model_switches() == {"aspect_ratio": 1.0}
    assert TrainConfig().model_switches() == {}


# --------------------------------------------------------------------------- loss terms


def _shot(A: int, B: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat([torch.rand(A, 2, generator=g), torch.rand(A, 2, generator=g) * 0.3 + 0.02], 1)
    return torch.randn(B, A, 4, generator=g), torch.randn(B, A, 2, generator=g), anchors


GT = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], [[0.2, 0.3, 0.6, 0.7], [0, 0, 0, 0]]])
COUNTS = torch.tensor([2, 1])


def test_single_shot_loss_is_the_second_shot_term_alone():
    first, second = _shot(400, seed=1), _shot(400, seed=2)
    crit = ProgressiveAnchorLoss(lambda_=0.5)
    total, parts = crit(None, second, GT, COUNTS)
    assert set(parts) == {"second_loss_l", "second_loss_c", "second_num_pos", "total"}
    one = crit.shot_loss(*second, GT, COUNTS)
    assert torch.allclose(total, 0.5 * (one["loss_l"] + one["loss_c"]))
    both, parts2 = crit(first, second, GT, COUNTS)
    f = crit.shot_loss(*first, GT, COUNTS)
    assert torch.allclose(both, f["loss_l"] + f["loss_c"] + total)  # PAL adds exactly the first-shot term
    with pytest.raises(ValueError):
        crit(None, None, GT, COUNTS)


def test_global_normalisation_with_one_rank_is_the_plain_loss():
    first, second = _shot(300, seed=3), _shot(300, seed=4)
    crit = ProgressiveAnchorLoss(lambda_=0.7)
    t0, p0 = crit(first, second, GT, COUNTS)
    # a 2-rank world where the other rank had exactly the same positives: each rank's loss is
    # rescaled by W * N_r / N = 1 and the parts are halved contributions
    t1, p1 = crit(first, second, GT, COUNTS, world_size=2, all_reduce=lambda t: t.mul_(2))
    assert torch.allclose(t1, t0)
    assert torch.allclose(p1["total"] * 2, p0["total"]) and torch.allclose(p1["first_loss_c"] * 2, p0["first_loss_c"])
    with pytest.raises(ValueError, match="all_reduce"):
        crit(first, second, GT, COUNTS, world_size=2)


def test_matching_presets_set_thresholds_and_compensation():
    assert MATCHING_PRESETS["iam"][0] == 0.4 and MATCHING_PRESETS["s3fd"][:2] == (0.35, 6)
    loss = MultiBoxLoss(matching="s3fd")
    assert loss.iou_threshold == 0.35 and loss.compensation == 6
    assert MultiBoxLoss(matching="ssd", iou_threshold=0.45).iou_threshold == 0.45
    assert MultiBoxLoss().iou_threshold == 0.4 and MultiBoxLoss().compensation == 0
    with pytest.raises(ValueError, match="matching"):
        MultiBoxLoss(matching="atss")
    # a higher threshold never matches more anchors
    _, _, anchors = _shot(2000, seed=5)
    n = {m: int((MultiBoxLoss(matching=m).targets(anchors, GT, COUNTS)[0] > 0).sum()) for m in ("ssd", "iam")}
    assert n["ssd"] <= n["iam"] and n["iam"] > 0


def _brute_compensation(anchors, gts, labels, matched, n_min, min_iou):
    """Face by face, in face order (ties between faces resolved by IoU afterwards)."""
    iou = ref.box_iou(gts, ref.anchors_to_corners(anchors))
    want = {}
    for g in range(gts.shape[0]):
        have = int(((labels > 0) & (matched == g)).sum())
        if have >= n_min:
            continue
        order = torch.argsort(iou[g], descending=True, stable=True)[: n_min + int(torch.bincount(matched[labels > 0], minlength=gts.shape[0]).max())]
        picked = [int(a) for a in order if labels[a] == 0 and iou[g, a] >= min_iou][: n_min - have]
        for a in picked:
            if a not in want or iou[g, a] > iou[want[a], a]:
                want[a] = g
    return want


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compensation_matches_a_face_by_face_reference(seed):
    g = torch.Generator().manual_seed(seed)
    A = 600
    anchors = torch.cat([torch.rand(A, 2, generator=g), torch.rand(A, 2, generator=g) * 0.2 + 0.01], 1)
    G = 5
    c = torch.rand(1, G, 2, generator=g) * 0.8 + 0.1
    s = torch.rand(1, G, 2, generator=g) * 0.1 + 0.01  # mostly small faces: few plain matches
    gt = torch.cat([c - s / 2, c + s / 2], -1)
    counts = torch.tensor([G])
    labels, matched, loc = ops.match_anchors(anchors, gt, counts, 0.35, 0.2)
    new_l, new_m, new_loc = compensate_matches(anchors, gt, counts, labels, matched, loc, 6, 0.1)
    # existing positives and ignored anchors are kept
    assert torch.equal(new_l[labels != 0], labels[labels != 0])
    assert torch.equal(new_m[labels > 0], matched[labels > 0])
    added = ((new_l > 0) & (labels == 0))[0].nonzero().flatten().tolist()
    want = _brute_compensation(anchors, gt[0], labels[0], matched[0], 6, 0.1)
    assert sorted(added) == sorted(want) and len(added) > 0
    for a in added:
        assert int(new_m[0, a]) == want[a]
    enc = ref.encode_boxes(gt[0, new_m[0, added]], anchors[added])
    assert torch.allclose(new_loc[0, added], enc, atol=1e-5)
    assert torch.equal(new_loc[labels > 0], loc[labels > 0])
    # no face ends above the target through compensation
    before = torch.bincount(matched[0][labels[0] > 0], minlength=G)
    after = torch.bincount(new_m[0][new_l[0] > 0], minlength=G)
    assert bool((after[before < 6] <= 6).all()) and torch.equal(after[before >= 6], before[before >= 6])


def test_compensation_is_off_and_identity_when_not_needed():
    _, _, anchors = _shot(500, seed=7)
    labels, matched, loc = ops.match_anchors(anchors, GT, COUNTS, 0.4)
    out = compensate_matches(anchors, GT, COUNTS, labels, matched, loc, 0)
    assert out[0] is labels
    empty = compensate_matches(anchors, GT, torch.tensor([0, 0]), labels, matched, loc, 6)
    assert torch.equal(empty[0], labels) and torch.equal(empty[2], loc)


# --------------------------------------------------------------------------- data-anchor-sampling


def test_das_probability_switch_changes_the_crops():
    rng_img = np.random.default_rng(0)
    img = rng_img.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    boxes = np.array([[50, 60, 90, 110], [200, 100, 260, 180]], dtype=np.float64)

    def branches(p):
        tf = TrainTransform(size=128, das_prob=p, photometric=False)
        return [tf(img, boxes, np.random.default_rng(i), return_info=True)[2].branch for i in range(60)]

    assert "das" not in branches(0.0)
    b = branches(0.4)
    assert 10 <= b.count("das") <= 40  # 2/5 of 60 = 24
    assert set(branches(1.0)) <= {"das", "fallback"}


# --------------------------------------------------------------------------- the trainer and CLI


def test_cli_switches_reach_the_config():
    import argparse

    from dsfd.training.cli import add_parser, config_from_args

    sub = argparse.ArgumentParser().add_subparsers()
    p = add_parser(sub)
    cfg = config_from_args(p.parse_args(["--fssd", "--no-data-anchor-sampling", "--matching", "s3fd"]))
    assert (cfg.fem, cfg.pal, cfg.das_prob, cfg.matching) == (False, False, 0.0, "s3fd")
    cfg = config_from_args(p.parse_args(["--no-pal", "--das-prob", "0.25", "--match-iou", "0.45"]))
    assert (cfg.fem, cfg.pal, cfg.das_prob, cfg.match_iou) == (True, False, 0.25, 0.45)
    cfg = config_from_args(p.parse_args([]))
    assert (cfg.fem, cfg.pal, cfg.das_prob, cfg.matching, cfg.anchor_aspect) == (True, True, 0.4, "iam", 1.5)
    for bad in (dict(das_prob=1.5), dict(matching="x"), dict(match_iou=0.0), dict(anchor_aspect=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_trainer_builds_and_trains_each_variant(tmp_path):
    from test_data import make_wider_tree

    data = make_wider_tree(tmp_path / "data", n_images=4, size=(128, 160), seed=4)
    common = dict(data=str(data), backbone="tiny", size=128, batch_size=2, iters=2, workers=0, val_every=0,
                  ckpt_every=0, progress=False, amp="none", log_every=1)
    tr = Trainer(TrainConfig(out=str(tmp_path / "full"), **common))
    full_params = sum(p.numel() for p in tr.model.parameters())
    tr.train()
    bb = {k: v.clone() for k, v in tr.model.backbone.state_dict().items()}
    tr.save_checkpoint("x.pt")
    tr = Trainer(TrainConfig(out=str(tmp_path / "fssd"), fem=False, pal=False, das_prob=0.0, matching="s3fd",
                             init_backbone=str(tmp_path / "full" / "x.pt"), **common))
    assert tr.model.shots == (2,) and tr.model.fem is None
    assert tr.criterion.shot_loss.compensation == 6 and tr.criterion.shot_loss.iou_threshold == 0.35
    assert tr.train_dataset.transform.das_prob == 0.0
    assert sum(p.numel() for p in tr.model.parameters()) < full_params
    # only the backbone came from the checkpoint
    for k, v in tr.model.backbone.state_dict().items():
        assert torch.equal(v, bb[k]), k
    tr.train()
    logs = [json.loads(line) for line in (tmp_path / "fssd" / "log.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["type"] == "train"]
    assert len(train) == 2 and all(r["first_loss_c"] == 0 and r["second_loss_c"] > 0 for r in train)
    start = [r for r in logs if r["type"] == "start"][0]
    assert start["config"]["fem"] is False and start["args"]["matching"] == "s3fd"
    ck = load_checkpoint(tmp_path / "fssd" / "last.pt")
    assert ck["config"]["pal"] is False
    with pytest.raises(Exception, match="backbone"):  # a different backbone cannot be loaded
        Trainer(TrainConfig(out=str(tmp_path / "bad"), init_backbone=str(tmp_path / "full" / "x.pt"),
                            **{**common, "backbone": "lite"}))


# --------------------------------------------------------------------------- dsfd anchors


def test_match_faces_counts_each_faces_positives():
    # anchors: a grid of 16-px squares every 4 px over a 64-px image; a 20-px face overlaps
    # some at IoU 0.64 and some at 0.41 (between the IAM and SSD thresholds)
    from dsfd.models.anchors import generate_anchors

    anchors = generate_anchors((64, 64), [(16, 16)], [16.0], [4.0], aspect_ratio=1.0)
    face = torch.tensor([[22 / 64, 22 / 64, 42 / 64, 42 / 64]])
    iam = match_faces(anchors, face, MultiBoxLoss(matching="iam"))
    ssd = match_faces(anchors, face, MultiBoxLoss(matching="ssd"))
    iou = ref.box_iou(face, ref.anchors_to_corners(anchors))[0]
    assert iam[0] == int((iou >= 0.4).sum()) and ssd[0] == int((iou >= 0.5).sum()) and ssd[0] < iam[0]


class _FakeWider:
    """``load(i)`` like :class:`dsfd.data.WiderFaceDataset`: random images with a few faces."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, i: int):
        if i == 2:
            return None  # a bad image is skipped and counted
        rng = np.random.default_rng(i)
        img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        xy = rng.uniform(0, 200, (3, 2))
        wh = rng.uniform(12, 90, (3, 2))
        return img, np.concatenate([xy, xy + wh], 1)


def test_anchor_stats_report(tmp_path):
    stats = anchor_stats(_FakeWider(6), size=160, samples=2, progress=False)
    assert stats["images"] == 5 and stats["skipped_images"] == 1
    s = stats["settings"]
    assert set(s) == {f"{a}/{m}" for a in ("ssd_crops", "iam_das") for m in ("iam", "s3fd", "ssd")}
    for key, v in s.items():
        assert v["faces"] > 0 and sum(v["histogram"]) == v["faces"]
        assert sum(b["faces"] for b in v["by_scale"].values()) == v["faces"]
        assert 0 <= v["share_unmatched"] <= 1
    for a in ("ssd_crops", "iam_das"):  # same faces, looser matching: more anchors per face
        assert s[f"{a}/ssd"]["faces"] == s[f"{a}/iam"]["faces"] == s[f"{a}/s3fd"]["faces"]
        assert s[f"{a}/ssd"]["mean_matched"] <= s[f"{a}/iam"]["mean_matched"] <= s[f"{a}/s3fd"]["mean_matched"]
        # every face gets at least its forced anchor, unless it overlaps no anchor at all
        assert s[f"{a}/iam"]["histogram"][0] <= s[f"{a}/iam"]["faces"] * 0.05


def test_cli_anchors_writes_json_and_plot(tmp_path):
    from test_data import make_wider_tree

    from dsfd.cli import main

    data = make_wider_tree(tmp_path / "data", n_images=3, size=(128, 160), seed=5)
    out = tmp_path / "anchors"
    assert main(["anchors", "--data", str(data), "--size", "128", "--out", str(out), "--no-progress"]) == 0
    stats = json.loads((out / "anchor_stats.json").read_text())
    assert stats["images"] == 3 and stats["data"] == [str(data)]
    assert (out / "anchor_stats.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="does not exist"):
        main(["anchors", "--data", str(tmp_path / "nope"), "--out", str(out)])
