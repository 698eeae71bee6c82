"""WIDER FACE evaluation: protocol, file formats, reference APs, CLI."""

from __future__ import annotations

import json
import math
import shutil
import sys
import types
import warnings

import numpy as np
import pytest

from dsfd.data_paths import fixtures_root, repo_root, wider_root
from dsfd.evaluation.wider import (
    SETTINGS,
    WiderGroundTruth,
    evaluate_wider,
    load_wider_ground_truth,
    normalize_scores,
    save_wider_ground_truth,
    voc_ap,
)
from dsfd.io import (
    format_prediction_file,
    read_prediction_file,
    read_prediction_folder,
    write_prediction_file,
    write_prediction_folder,
)

GT_DIR = wider_root() / "ground_truth"
FIXTURES = fixtures_root()
PRED_ROOT = FIXTURES / "wider_eval_predictions"
DETECTORS = ["yunet", "retinaface_mnet", "mtcnn"]

needs_gt = pytest.mark.skipif(
    not (GT_DIR / "wider_face_val.mat").is_file(),
    reason=f"WIDER FACE ground truth not found at {GT_DIR} (set DSFD_WIDER_ROOT)",
)
needs_fixtures = pytest.mark.skipif(
    not (PRED_ROOT / "reference_ap.tsv").is_file() or not (GT_DIR / "wider_face_val.mat").is_file(),
    reason=f"WIDER prediction fixtures ({PRED_ROOT}, set DSFD_FIXTURES_ROOT) or ground truth ({GT_DIR}, "
    "set DSFD_WIDER_ROOT) not found",
)


def _reference_aps():
    rows = (PRED_ROOT / "reference_ap.tsv").read_text().split("\n")
    header = rows[0].split("\t")
    out = {}
    for row in rows[1:]:
        if row.strip():
            vals = row.split("\t")
            out[vals[0]] = {k: float(v) for k, v in zip(header[1:], vals[1:])}
    return out


@pytest.fixture(scope="module")
def shared_gt():
    return load_wider_ground_truth(GT_DIR)


def _gt(images, keep):
    """images: list of (event, name, boxes xywh); keep: {setting: list of index lists}."""
    return WiderGroundTruth(
        events=[e for e, _, _ in images],
        names=[n for _, n, _ in images],
        boxes=[np.asarray(b, dtype=float).reshape(-1, 4) for _, _, b in images],
        keep={s: [np.asarray(k, dtype=int) for k in keep[s]] for s in SETTINGS},
    )


def _hand_gt():
    # image a: three 10x10 faces, the middle one only counts in "hard"; image b: one 20x20 face
    a = [[0, 0, 9, 9], [20, 0, 9, 9], [40, 0, 9, 9]]
    b = [[0, 0, 19, 19]]
    easy = [[0, 2], [0]]
    return _gt(
        [("0--Ev", "a", a), ("1--Ev", "b", b)],
        {"easy": easy, "medium": easy, "hard": [[0, 1, 2], [0]]},
    )


# ---------------------------------------------------------------------------
# a plain loop version of the protocol, written from the description of the
# official tool (one prediction, one box, one threshold at a time)
# ---------------------------------------------------------------------------


def _iou_scalar(p, g):
    px2, py2 = p[0] + p[2], p[1] + p[3]
    gx2, gy2 = g[0] + g[2], g[1] + g[3]
    iw = min(px2, gx2) - max(p[0], g[0]) + 1
    ih = min(py2, gy2) - max(p[1], g[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (px2 - p[0] + 1) * (py2 - p[1] + 1) + (gx2 - g[0] + 1) * (gy2 - g[1] + 1) - iw * ih
    return iw * ih / ua


def _loop_aps(preds, gt, thr=0.5):
    scores = [v[:, 4] for v in preds.values() if len(v)]
    lo = min([1.0] + [float(s.min()) for s in scores])
    hi = max([0.0] + [float(s.max()) for s in scores])
    aps = {}
    for setting in SETTINGS:
        pr = np.zeros((1000, 2))
        count = 0
        for i, name in enumerate(gt.names):
            keep = gt.keep[setting][i]
            count += len(keep)
            g = gt.boxes[i]
            p = preds.get(name)
            if p is None or len(p) == 0 or len(g) == 0:
                continue
            p = p[np.argsort(-p[:, 4], kind="stable")]
            s = (p[:, 4] - lo) / (hi - lo)
            kept = np.zeros(len(g), bool)
            kept[keep] = True
            state = np.zeros(len(g))
            proposal = np.ones(len(p))
            recall_after = np.zeros(len(p))
            for h in range(len(p)):
                ious = [_iou_scalar(p[h], g[j]) for j in range(len(g))]
                j = int(np.argmax(ious))
                if ious[j] >= thr:
                    if not kept[j]:
                        state[j] = -1
                        proposal[h] = -1
                    elif state[j] == 0:
                        state[j] = 1
                recall_after[h] = np.sum(state == 1)
            for t in range(1000):
                above = np.flatnonzero(s >= 1 - (t + 1) / 1000)
                if len(above):
                    r = above[-1]
                    pr[t, 0] += np.sum(proposal[: r + 1] == 1)
                    pr[t, 1] += recall_after[r]
        with np.errstate(invalid="ignore", divide="ignore"):
            prec = pr[:, 1] / pr[:, 0]
        rec = pr[:, 1] / count
        mrec = [0.0] + list(rec) + [1.0]
        mpre = [0.0] + [0.0 if math.isnan(v) else v for v in prec] + [0.0]
        for k in range(len(mpre) - 1, 0, -1):
            mpre[k - 1] = max(mpre[k - 1], mpre[k])
        aps[setting] = sum((mrec[k + 1] - mrec[k]) * mpre[k + 1]
                           for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k])
    return aps


def _random_case(seed):
    rng = np.random.default_rng(seed)
    images, keep = [], {s: [] for s in SETTINGS}
    preds = {}
    for i in range(6):
        n = int(rng.integers(1, 12))
        xy = rng.integers(0, 200, (n, 2))
        wh = rng.integers(4, 40, (n, 2))
        boxes = np.hstack([xy, wh]).astype(float)
        images.append((f"{i % 2}--Ev", f"img{i}", boxes))
        hard = np.flatnonzero(rng.random(n) < 0.8)
        medium = hard[rng.random(len(hard)) < 0.6]
        easy = medium[rng.random(len(medium)) < 0.6]
        for s, k in zip(SETTINGS, (easy, medium, hard)):
            keep[s].append(k)
        if i == 5:
            continue  # an image without predictions
        m = int(rng.integers(0, 25))
        src = boxes[rng.integers(0, n, m)] + rng.normal(0, 3, (m, 4))  # hits, near misses, duplicates
        noise = np.hstack([rng.uniform(0, 200, (5, 2)), rng.uniform(4, 40, (5, 2))])
        sc = np.round(rng.random(m + 5), 2)  # ties on purpose
        preds[f"img{i}"] = np.hstack([np.vstack([src, noise]), sc[:, None]])
    # images are grouped by event for the .mat writer
    order = sorted(range(len(images)), key=lambda k: images[k][0])
    images = [images[k] for k in order]
    keep = {s: [keep[s][k] for k in order] for s in SETTINGS}
    return _gt(images, keep), preds


# ---------------------------------------------------------------------------
# protocol
# ---------------------------------------------------------------------------


def test_hand_built_case():
    gt = _hand_gt()
    preds = {
        # a: p1 hits face 0, p2 duplicates it, p3 hits face 1 (ignored in easy/medium)
        "a": np.array([[0, 0, 9, 9, 1.0], [0, 0, 9, 9, 0.8], [20, 0, 9, 9, 0.6]]),
        # b: p4 far away (false positive), p5 hits the face
        "b": np.array([[100, 100, 10, 10, 0.4], [0, 0, 19, 19, 0.2]]),
    }
    res = evaluate_wider(preds, gt)
    # easy/medium (3 faces): TP, FP, ignored, FP, TP -> (R, P) = (1/3, 1), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2)
    # envelope: 1 up to recall 1/3, 1/2 up to 2/3 -> AP = 1/3 * 1 + 1/3 * 1/2
    assert res.ap["easy"] == pytest.approx(0.5, abs=1e-12)
    assert res.ap["medium"] == pytest.approx(0.5, abs=1e-12)
    # hard (4 faces): TP, FP, TP, FP, TP -> (1/4, 1), (1/4, 1/2), (2/4, 2/3), (2/4, 2/4), (3/4, 3/5)
    assert res.ap["hard"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 3 / 5, abs=1e-12)
    assert res.num_faces == {"easy": 3, "medium": 3, "hard": 4}
    prec, rec = res.pr_curves["hard"]
    assert prec.shape == rec.shape == (1000,)
    assert rec[-1] == pytest.approx(0.75) and prec[-1] == pytest.approx(3 / 5)
    assert res.ap == pytest.approx(_loop_aps(preds, gt))


def test_ignored_face_does_not_change_precision():
    gt = _hand_gt()
    base = {"a": np.array([[0, 0, 9, 9, 0.9]]), "b": np.array([[0, 0, 19, 19, 0.5]])}
    extra = {"a": np.vstack([base["a"], [[20, 0, 9, 9, 0.95]]]), "b": base["b"]}  # hits the hard-only face
    r0, r1 = evaluate_wider(base, gt), evaluate_wider(extra, gt)
    assert r0.ap["easy"] == pytest.approx(2 / 3)  # 2 of 3 faces, precision 1
    assert r1.ap["easy"] == pytest.approx(r0.ap["easy"])
    assert r1.ap["hard"] > r0.ap["hard"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_vectorised_equals_loop_version(seed):
    gt, preds = _random_case(seed)
    with pytest.warns(UserWarning, match="1 of 6 images have no predictions"):
        res = evaluate_wider(preds, gt)
    ref = _loop_aps(preds, gt)
    for s in SETTINGS:
        assert res.ap[s] == pytest.approx(ref[s], abs=1e-12), s
    assert res.missing == ["1--Ev/img5"]


def test_gt_as_predictions_synthetic():
    gt, _ = _random_case(7)
    rng = np.random.default_rng(7)
    preds = {n: np.hstack([b, rng.random((len(b), 1))]) for n, b in zip(gt.names, gt.boxes)}
    res = evaluate_wider(preds, gt)
    assert res.ap == {s: pytest.approx(1.0, abs=1e-12) for s in SETTINGS}


@needs_gt
def test_gt_as_predictions_shared_subset(shared_gt):
    res = evaluate_wider(shared_gt.as_predictions(), shared_gt)
    assert len(shared_gt) == 145
    assert res.ap == {s: pytest.approx(1.0, abs=1e-12) for s in SETTINGS}
    assert res.missing == []


def test_empty_predictions_give_zero():
    gt = _hand_gt()
    with pytest.warns(UserWarning, match="2 of 2 images have no predictions"):
        res = evaluate_wider({}, gt)
    assert res.ap == {s: 0.0 for s in SETTINGS}
    assert res.missing == ["0--Ev/a", "1--Ev/b"]
    # empty arrays: no warning about missing images, still AP 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate_wider({"a": np.zeros((0, 5)), "b": []}, gt)
    assert res.ap == {s: 0.0 for s in SETTINGS}


def test_equal_scores_deviation_from_port():
    # the port divides by zero here (NaN scores, AP 0); we treat every score as 1.0
    gt = _hand_gt()
    assert normalize_scores(np.array([0.7, 0.7])) == (0.7, 0.7)
    assert normalize_scores(np.array([2.0, 5.0])) == (1.0, 5.0)  # official running min starts at 1
    assert normalize_scores(np.array([0.2, 0.6])) == (0.2, 0.6)
    res = evaluate_wider({n: np.hstack([b, np.full((len(b), 1), 0.7)]) for n, b in zip(gt.names, gt.boxes)}, gt)
    assert res.ap == {s: pytest.approx(1.0) for s in SETTINGS}
    # a single prediction: also a constant score set
    with pytest.warns(UserWarning, match="no predictions"):
        res = evaluate_wider({"b": np.array([[0, 0, 19, 19, 0.3]])}, gt)
    assert res.ap["easy"] == pytest.approx(1 / 3)


def test_image_without_gt_is_skipped_like_the_port():
    gt = _gt(
        [("0--Ev", "a", [[0, 0, 9, 9]]), ("0--Ev", "empty", np.zeros((0, 4)))],
        {s: [[0], []] for s in SETTINGS},
    )
    preds = {"a": np.array([[0, 0, 9, 9, 0.5]])}
    with_fp = dict(preds, empty=np.array([[5, 5, 10, 10, 0.9], [50, 5, 10, 10, 0.1]]))
    with pytest.warns(UserWarning, match="no predictions"):
        without_fp = evaluate_wider(preds, gt)
    assert evaluate_wider(with_fp, gt).ap == without_fp.ap == {s: 1.0 for s in SETTINGS}


def test_no_positives_gives_nan_and_null_json():
    gt = _gt([("0--Ev", "a", [[0, 0, 9, 9]])], {"easy": [[]], "medium": [[0]], "hard": [[0]]})
    res = evaluate_wider({"a": np.array([[0, 0, 9, 9, 0.5]])}, gt)
    assert math.isnan(res.ap["easy"]) and res.ap["hard"] == 1.0
    d = json.loads(res.to_json())
    assert d["ap"]["easy"] is None and d["ap"]["hard"] == 1.0
    assert "nan" in res.table()


def test_iou_threshold_and_plus_one_convention():
    # gt 0..9 (10 px), prediction 5..14: +1 convention IoU = 5*10 / (100 + 100 - 50) = 1/3
    gt = _gt([("0--Ev", "a", [[0, 0, 9, 9]])], {s: [[0]] for s in SETTINGS})
    preds = {"a": np.array([[5, 0, 9, 9, 0.5]])}
    assert evaluate_wider(preds, gt).ap["easy"] == 0.0
    assert evaluate_wider(preds, gt, iou_threshold=1 / 3 - 1e-9).ap["easy"] == 1.0
    assert evaluate_wider(preds, gt, iou_threshold=1 / 3 + 1e-9).ap["easy"] == 0.0


def test_iou_exactly_at_threshold_is_a_match():
    """``IoU >= threshold`` matches: exact IoUs of 1/2 (the default) and 1/3 in the ``+1`` convention."""
    gt = _gt([("0--Ev", "a", [[0, 0, 9, 9]])], {s: [[0]] for s in SETTINGS})  # 10 x 10 px
    # 0..4 x 0..9: 5 x 10 px inside the face: IoU 50 / 100 = 0.5 exactly
    # (plus a far-away false positive of lower score, so that the loop version's normalisation is defined)
    half = {"a": np.array([[0, 0, 4, 9, 0.5], [100, 100, 9, 9, 0.1]])}
    assert _iou_scalar(half["a"][0], gt.boxes[0][0]) == 0.5
    assert evaluate_wider(half, gt).ap == {s: 1.0 for s in SETTINGS}
    assert _loop_aps(half, gt) == {s: 1.0 for s in SETTINGS}
    assert evaluate_wider(half, gt, iou_threshold=float(np.nextafter(0.5, 1))).ap["easy"] == 0.0
    # 5..14 x 0..9: IoU 50 / 150, the same float as 1 / 3
    third = {"a": np.array([[5, 0, 9, 9, 0.5]])}
    assert _iou_scalar(third["a"][0], gt.boxes[0][0]) == 1 / 3
    assert evaluate_wider(third, gt, iou_threshold=1 / 3).ap["easy"] == 1.0
    assert evaluate_wider(third, gt, iou_threshold=float(np.nextafter(1 / 3, 1))).ap["easy"] == 0.0
    # at the threshold a duplicate is still a (false positive) match of the same face, not a miss
    two = {"a": np.array([[0, 0, 9, 9, 0.9], [0, 0, 4, 9, 0.5]])}
    res = evaluate_wider(two, gt)
    prec, rec = res.pr_curves["easy"]
    assert rec[-1] == 1.0 and prec[-1] == 0.5 and res.ap["easy"] == 1.0


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def test_write_prediction_file_rounding_and_roundtrip(tmp_path):
    boxes = np.array([[10.4, 20.6, 30.2, 40.1], [1.5, 2.5, 3.0, 4.0]])
    scores = np.array([0.25, 0.9])
    p = write_prediction_file(tmp_path / "0--Ev" / "x.txt", "0--Ev/x.jpg", boxes, scores)
    lines = p.read_text().splitlines()
    assert lines[:2] == ["0--Ev/x.jpg", "2"]
    # sorted by score; released DSFD rounding: floor(x1) floor(y1) ceil(x2-x1+1) ceil(y2-y1+1)
    assert lines[2] == "1.0 2.0 3.0 3.0 0.900000"
    assert lines[3] == "10.0 20.0 21.0 21.0 0.250000"
    name, arr, problems = read_prediction_file(p)
    assert name == "x" and problems == []
    np.testing.assert_array_equal(arr, [[1, 2, 3, 3, 0.9], [10, 20, 21, 21, 0.25]])
    p2 = write_prediction_file(tmp_path / "y.txt", "y", np.hstack([boxes, scores[:, None]]), plus_one=False)
    assert p2.read_text().splitlines()[3] == "10.0 20.0 20.0 20.0 0.250000"
    p3 = write_prediction_file(tmp_path / "z.txt", "z", [[10.4, 20.6, 19.8, 19.5, 0.5]], box_format="xywh")
    assert p3.read_text().splitlines()[2] == "10.0 20.0 21.0 21.0 0.500000"
    p4 = write_prediction_file(tmp_path / "e.txt", "e", np.zeros((0, 4)), np.zeros(0))
    assert p4.read_text() == "e\n0\n"
    assert format_prediction_file("0--Ev/x.jpg", boxes, scores) == p.read_text()  # the writer writes exactly this


def test_tolerant_reading_and_missing_files(tmp_path):
    gt = _hand_gt()
    d = tmp_path / "preds"
    (d / "0--Ev").mkdir(parents=True)
    # count says 3 but 2 boxes, blank lines, an extra column, an unreadable line
    (d / "0--Ev" / "a.txt").write_text("0--Ev/a.jpg\n3\n0 0 9 9 0.9 extra\n\nbad line\n40 0 9 9 0.8\n\n\n")
    # image b has no file at all
    with pytest.warns(UserWarning):
        res = evaluate_wider(d, gt)
    assert res.missing == ["1--Ev/b"]
    assert any("line 2 says 3 boxes, 2 box lines read" in w for w in res.warnings)
    assert any("unreadable box line" in w for w in res.warnings)
    # a's two faces found (precision 1), b's face missed: AP = 2/3 on easy
    assert res.ap["easy"] == pytest.approx(2 / 3)
    preds, problems = read_prediction_folder(d)
    assert problems and list(preds) == ["a"] and preds["a"].shape == (2, 5)
    # every problem names its file and line
    a_txt = d / "0--Ev" / "a.txt"
    assert f"{a_txt}:2: line 2 says 3 boxes, 2 box lines read" in problems
    assert f"{a_txt}:5: unreadable box line 'bad line'" in problems


def test_malformed_files_are_reported_by_file_and_line_not_missing(tmp_path, capsys):
    from dsfd.cli import main

    gt = _hand_gt()
    d = tmp_path / "preds"
    (d / "0--Ev").mkdir(parents=True)
    (d / "1--Ev").mkdir(parents=True)
    # a: line 1 names another image (the file name decides, as in both official tools)
    (d / "0--Ev" / "a.txt").write_text("0--Ev/b.jpg\n2\n0 0 9 9 0.9\n40 0 9 9 0.8\n")
    # b: not a text file at all
    (d / "1--Ev" / "b.txt").write_bytes(b"\xff\xfe\x00binary\x9c")
    with pytest.warns(UserWarning, match="problem"):
        res = evaluate_wider(d, gt)
    assert res.missing == []
    a_txt, b_txt = d / "0--Ev" / "a.txt", d / "1--Ev" / "b.txt"
    assert any(w.startswith(f"{a_txt}:1: names image '0--Ev/b.jpg'") for w in res.warnings)
    assert any(w.startswith(f"{b_txt}:1: cannot read as a text file") for w in res.warnings)
    assert res.ap["easy"] == pytest.approx(2 / 3)  # a's boxes count for a, b has none
    save_wider_ground_truth(gt, tmp_path / "gt")
    code = main(["eval", "--predictions", str(d), "--ground-truth", str(tmp_path / "gt"), "--out",
                 str(tmp_path / "o"), "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"{a_txt}:1: names image" in err and f"{b_txt}:1: cannot read" in err
    assert "have no predictions" not in err


@needs_fixtures
def test_missing_files_in_fixture_folder(tmp_path, shared_gt):
    src = PRED_ROOT / "mtcnn"
    dst = tmp_path / "mtcnn"
    shutil.copytree(src, dst)
    removed = sorted((dst / "0--Parade").glob("*.txt"))[:5]
    for f in removed:
        f.unlink()
    with pytest.warns(UserWarning, match="5 of 145 images have no predictions"):
        res = evaluate_wider(dst, shared_gt)
    assert sorted(res.missing) == sorted(f"0--Parade/{f.stem}" for f in removed)
    full, _ = read_prediction_folder(src)
    for f in removed:
        full.pop(f.stem)
    with pytest.warns(UserWarning):
        ref = evaluate_wider(full, shared_gt)
    assert res.ap == ref.ap
    assert all(res.ap[s] < _reference_aps()["mtcnn"][s] for s in SETTINGS)


def test_ground_truth_mat_roundtrip(tmp_path):
    gt, preds = _random_case(3)
    save_wider_ground_truth(gt, tmp_path / "gt")
    back = load_wider_ground_truth(tmp_path / "gt")
    assert back.names == gt.names and back.events == gt.events
    for s in SETTINGS:
        for k1, k2 in zip(back.keep[s], gt.keep[s]):
            np.testing.assert_array_equal(k1, k2)
    for b1, b2 in zip(back.boxes, gt.boxes):
        np.testing.assert_array_equal(b1, b2)
    with pytest.warns(UserWarning, match="1 of 6"):
        from_mat = evaluate_wider(preds, tmp_path / "gt")
    with pytest.warns(UserWarning, match="1 of 6"):
        assert from_mat.ap == evaluate_wider(preds, gt).ap


def test_prediction_dir_roundtrip(tmp_path):
    gt, preds = _random_case(5)
    # integer boxes survive the floor/ceil rounding when written as xywh without the +1
    preds = {k: np.hstack([np.round(v[:, :4]), v[:, 4:]]) for k, v in preds.items()}
    write_prediction_folder(tmp_path, preds, dict(zip(gt.names, gt.events)), box_format="xywh", plus_one=False)
    assert (tmp_path / "0--Ev" / "img0.txt").is_file()
    with pytest.warns(UserWarning, match="1 of 6"):
        a = evaluate_wider(tmp_path, gt)
    with pytest.warns(UserWarning, match="1 of 6"):
        b = evaluate_wider(preds, gt)
    assert a.ap == pytest.approx(b.ap, abs=1e-12)


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------


@needs_fixtures
@pytest.mark.parametrize("detector", DETECTORS)
def test_reproduces_reference_ap(detector, shared_gt):
    ref = _reference_aps()[detector]
    res = evaluate_wider(PRED_ROOT / detector, shared_gt)
    assert res.missing == [] and res.warnings == []
    for s in SETTINGS:
        assert res.ap[s] == pytest.approx(ref[s], abs=1e-4), (detector, s, res.ap[s], ref[s])


def test_voc_ap_simple():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)
    assert voc_ap(np.array([0.0, 0.0]), np.array([np.nan, np.nan])) == 0.0


def test_wider_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DSFD_WIDER_ROOT", str(tmp_path))
    assert wider_root() == tmp_path.resolve()
    monkeypatch.delenv("DSFD_WIDER_ROOT")
    assert wider_root() == (repo_root() / ".." / "shared" / "data" / "widerface").resolve()


def test_fixtures_root_env(monkeypatch, tmp_path):
    """One fixtures setting for every test, found like the data: DSFD_FIXTURES_ROOT or ../shared/fixtures."""
    monkeypatch.setenv("DSFD_FIXTURES_ROOT", str(tmp_path))
    assert fixtures_root() == tmp_path.resolve()
    monkeypatch.delenv("DSFD_FIXTURES_ROOT")
    assert fixtures_root() == (repo_root() / ".." / "shared" / "fixtures").resolve()


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


@needs_fixtures
def test_cli_end_to_end(tmp_path, capsys):
    from dsfd.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--predictions", str(PRED_ROOT / "mtcnn"), "--ground-truth", str(GT_DIR),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "ap.json").read_text())
    ref = _reference_aps()["mtcnn"]
    for s in SETTINGS:
        assert data["ap"][s] == pytest.approx(ref[s], abs=1e-4)
        png = out / f"pr_{s}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["num_missing"] == 0
    printed = capsys.readouterr().out
    assert "hard" in printed and f"{ref['hard']:.4f}" in printed


def test_cli_errors(capsys, monkeypatch, tmp_path):
    from dsfd.cli import main

    assert main(["eval"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    # running the detector without dsfd.inference: clear error
    gt = _hand_gt()
    save_wider_ground_truth(gt, tmp_path / "ground_truth")
    monkeypatch.setitem(sys.modules, "dsfd.inference", None)
    code = main(["eval", "--weights", "w.pth", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "dsfd.inference" in capsys.readouterr().err


def test_cli_runs_detector(tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from dsfd.cli import main

    gt = _gt(
        [("0--Ev", "a", [[10, 10, 20, 20]]), ("1--Ev", "b", [[10, 10, 20, 20]])],
        {s: [[0], [0]] for s in SETTINGS},
    )
    save_wider_ground_truth(gt, tmp_path / "ground_truth")
    for ev, name in zip(gt.events, gt.names):
        (tmp_path / "WIDER_val" / "images" / ev).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "WIDER_val" / "images" / ev / f"{name}.jpg"), np.zeros((48, 64, 3), np.uint8))
    calls = []

    def load_detector(weights, accuracy_mode=False, dtype="auto"):  # the contract: dsfd eval passes --dtype
        calls.append((weights, accuracy_mode, dtype))
        return lambda img: np.array([[10.0, 10.0, 30.0, 30.0, 0.9], [0.0, 30.0, 8.0, 40.0, 0.1]])

    fake = types.ModuleType("dsfd.inference")
    fake.load_detector = load_detector
    monkeypatch.setitem(sys.modules, "dsfd.inference", fake)
    out = tmp_path / "out"
    code = main(["eval", "--weights", "w.pth", "--data", str(tmp_path), "--out", str(out), "--accuracy-mode",
                 "--no-progress", "--no-plots"])
    assert code == 0
    assert calls == [("w.pth", True, "auto")]
    assert (out / "predictions" / "0--Ev" / "a.txt").read_text().splitlines()[2] == "10.0 10.0 21.0 21.0 0.900000"
    data = json.loads((out / "ap.json").read_text())
    assert data["ap"] == {s: 1.0 for s in SETTINGS}
    # --device reaches the detector (issue #33: every command takes --device)
    devices = []
    fake.load_detector = lambda weights, accuracy_mode=False, dtype="auto", device=None: (
        devices.append(device) or (lambda img: np.zeros((0, 5))))
    assert main(["eval", "--weights", "w.pth", "--data", str(tmp_path), "--out", str(tmp_path / "o2"), "--device",
                 "cpu", "--no-progress", "--no-plots"]) == 0
    assert devices == ["cpu"]


# --------------------------------------------------------------------------- drawn boxes


def test_drawn_precision_recall_counts_hits_duplicates_misses_and_ignored_boxes():
    from dsfd.evaluation import choose_display_threshold, drawn_precision_recall

    # image a: faces 0 and 1 listed, face 2 not (e.g. a hard face when scoring medium)
    gt = WiderGroundTruth(
        events=["e", "e"], names=["a", "b"],
        boxes=[np.array([[0, 0, 20, 20], [100, 100, 20, 20], [200, 200, 20, 20]]), np.array([[0, 0, 30, 30]])],
        keep={"easy": [np.array([0]), np.array([0])], "medium": [np.array([0, 1]), np.array([0])],
              "hard": [np.array([0, 1, 2]), np.array([0])]},
    )
    preds = {
        "a": np.array([
            [0, 0, 20, 20, 0.9],      # face 0: true positive
            [1, 1, 20, 20, 0.8],      # face 0 again: a duplicate, false positive
            [200, 200, 20, 20, 0.7],  # unlisted face 2: ignored
            [400, 400, 20, 20, 0.6],  # nothing there: false positive
            [100, 100, 20, 20, 0.3],  # face 1: true positive, low score
        ]),
        "b": np.zeros((0, 5)),  # face of b missed
    }
    curve = drawn_precision_recall(preds, gt, "medium")
    assert curve.num_faces == 3
    at = curve.at(0.5)  # boxes 0.9, 0.8, 0.6 count (0.7 ignored): 1 hit of 3 counted, 1 of 3 faces
    assert (at["true_positives"], at["counted_boxes"]) == (1, 3)
    assert at["precision"] == pytest.approx(1 / 3) and at["recall"] == pytest.approx(1 / 3)
    at = curve.at(0.3)
    assert (at["true_positives"], at["counted_boxes"]) == (2, 4)
    assert curve.at(0.95)["counted_boxes"] == 0 and curve.at(0.95)["precision"] == 1.0
    # the hard setting lists face 2: the 0.7 box becomes a hit instead of ignored
    assert drawn_precision_recall(preds, gt, "hard").at(0.5)["true_positives"] == 2
    # the threshold with the highest F1 (0.3: P 0.5, R 0.67), or the lowest reaching a precision
    assert choose_display_threshold(curve) == pytest.approx(0.3)
    assert choose_display_threshold(curve, min_precision=0.9) == pytest.approx(0.81)
    with pytest.raises(ValueError, match="setting"):
        drawn_precision_recall(preds, gt, "tiny")
