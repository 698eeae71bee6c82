"""FDDB evaluation: rasterised overlaps, bipartite matching, ROC, files, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsfd.evaluation.fddb import (
    _image_curve,
    box_to_ellipse,
    evaluate_fddb,
    fddb_overlaps,
    read_fddb_detections,
    read_fddb_file,
    read_fddb_folds,
    read_fddb_image_list,
    write_fddb_detections,
)


def _mask_ellipse(e, shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ra, rb, a, cx, cy = e[:5]
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(a) - dy * np.sin(a)) / ra  # along (cos a, -sin a) in image coordinates
    v = (dx * np.sin(a) + dy * np.cos(a)) / rb
    return u * u + v * v <= 1 + 1e-9  # boundary lattice points count as inside


def _mask_rect(b, shape):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y, w, h = b[:4]
    return (xx >= x) & (xx <= x + w) & (yy >= y) & (yy <= y + h)


def _mask_iou(m1, m2):
    u = (m1 | m2).sum()
    return (m1 & m2).sum() / u if u else 0.0


def _bbox_of_ellipse(e):
    ra, rb, a, cx, cy = e[:5]
    ex = math.hypot(ra * math.cos(a), rb * math.sin(a))
    ey = math.hypot(ra * math.sin(a), rb * math.cos(a))
    return [cx - ex, cy - ey, 2 * ex, 2 * ey]


def test_overlaps_equal_brute_force_masks():
    rng = np.random.default_rng(0)
    shape = (300, 300)  # every region lies inside, so no clipping happens
    for _ in range(30):
        e, e2 = (rng.uniform([5, 5, -3, 60, 60], [40, 40, 3, 240, 240]) for _ in range(2))
        r = rng.uniform([40, 40, 2, 2], [200, 200, 60, 60])
        me = _mask_ellipse(e, shape)
        assert fddb_overlaps(e[None], r[None], "rect")[0, 0] == pytest.approx(
            _mask_iou(me, _mask_rect(r, shape)), abs=1e-12)
        assert fddb_overlaps(e[None], e2[None], "ellipse")[0, 0] == pytest.approx(
            _mask_iou(me, _mask_ellipse(e2, shape)), abs=1e-12)


def test_overlaps_clip_to_image():
    # an ellipse half outside the left border; a rectangle covering its inside half
    e = np.array([[30.0, 20.0, np.pi / 2, 0.0, 50.0]])
    r = np.array([[0.0, 20.0, 20.0, 60.0]])
    shape = (100, 100)
    clipped = fddb_overlaps(e, r, "rect", image_size=shape)[0, 0]
    assert clipped == pytest.approx(_mask_iou(_mask_ellipse(e[0], shape), _mask_rect(r[0], shape)), abs=1e-12)
    assert clipped > fddb_overlaps(e, r, "rect")[0, 0] + 0.2


def test_overlap_matrix_shapes_and_far_boxes():
    e = np.array([[20.0, 15.0, 1.4, 50.0, 50.0], [20.0, 15.0, 1.4, 150.0, 50.0]])
    d = np.array([[35, 30, 30, 40, 0.9], [500, 500, 10, 10, 0.5], [135, 30, 30, 40, 0.1]], float)
    ov = fddb_overlaps(e, d, "rect")
    assert ov.shape == (2, 3)
    assert ov[0, 0] > 0.5 and ov[1, 2] > 0.5
    assert ov[0, 1] == ov[1, 1] == ov[0, 2] == ov[1, 0] == 0.0
    assert fddb_overlaps(e, np.zeros((0, 5)), "rect").shape == (2, 0)


def _ellipses(n, rng):
    cx = 60 + 120 * np.arange(n)
    return np.stack([rng.uniform(30, 40, n), rng.uniform(20, 28, n), rng.uniform(1.2, 1.9, n),
                     cx, rng.uniform(60, 80, n)], axis=1)


def test_perfect_ellipse_detections():
    rng = np.random.default_rng(1)
    ann = {f"img{i}": _ellipses(3, rng) for i in range(4)}
    dets = {k: np.hstack([v, np.linspace(0.9, 0.5, len(v))[:, None]]) for k, v in ann.items()}
    res = evaluate_fddb(ann, dets, "ellipse")
    assert res.num_faces == 12
    assert res.false_positives.max() == 0
    assert res.tpr_at(0, "discrete") == 1.0
    assert res.tpr_at(0, "continuous") == pytest.approx(1.0)


def test_rectangles_around_ellipses():
    # bounding boxes of upright ellipses: overlap ~ pi/4, a discrete hit
    rng = np.random.default_rng(2)
    ann = {f"img{i}": _ellipses(2, rng) * [1, 1, 0, 1, 1] + [0, 0, np.pi / 2, 0, 0] for i in range(3)}
    dets = {k: np.array([_bbox_of_ellipse(e) + [0.8] for e in v]) for k, v in ann.items()}
    res = evaluate_fddb(ann, dets, "rect")
    assert res.tpr_at(0, "discrete") == 1.0
    assert res.tpr_at(0, "continuous") == pytest.approx(math.pi / 4, abs=0.03)
    # box_to_ellipse of those boxes gives back the ellipses (inscribed rule)
    back = {k: box_to_ellipse(v) for k, v in dets.items()}
    res2 = evaluate_fddb(ann, back, "ellipse")
    assert res2.tpr_at(0, "continuous") > 0.97 and res2.tpr_at(0, "discrete") == 1.0
    np.testing.assert_allclose(back["img0"][:, :5], ann["img0"], atol=1e-9)
    np.testing.assert_allclose(back["img0"][:, 5], 0.8)


def test_shift_lowers_continuous_score():
    ann = {"a": np.array([[40.0, 30.0, np.pi / 2, 100.0, 100.0]])}
    box = np.array(_bbox_of_ellipse(ann["a"][0]))
    cont, disc = [], []
    for shift in [0, 5, 10, 20, 40, 80]:
        d = {"a": np.array([list(box + [shift, 0, 0, 0]) + [0.9]])}
        r = evaluate_fddb(ann, d, "rect")
        cont.append(r.tpr_at(1000, "continuous"))
        disc.append(r.tpr_at(1000, "discrete"))
    assert all(a > b for a, b in zip(cont, cont[1:]))
    assert disc[0] == 1.0 and disc[-1] == 0.0
    # continuous score sums matched overlaps also below 0.5 (official tool); discrete needs > 0.5
    r = evaluate_fddb(ann, {"a": np.array([list(box + [40, 0, 0, 0]) + [0.9]])}, "rect")
    assert 0.0 < r.tpr_at(1000, "continuous") < 0.5 and r.tpr_at(1000, "discrete") == 0.0
    assert r.false_positives[-1] == 1


def test_false_positives_on_the_x_axis():
    rng = np.random.default_rng(3)
    ann = {"a": _ellipses(2, rng), "b": _ellipses(1, rng)}
    good = {k: np.hstack([v, np.full((len(v), 1), 0.5)]) for k, v in ann.items()}
    far = np.array([[30, 20, 1.5, 900 + 100 * i, 900, s] for i, s in enumerate([0.9, 0.8, 0.3, 0.2])])
    dets = {"a": np.vstack([good["a"], far[:2]]), "b": np.vstack([good["b"], far[2:]])}
    res = evaluate_fddb(ann, dets, "ellipse")
    np.testing.assert_array_equal(res.thresholds, [0.9, 0.8, 0.5, 0.3, 0.2])
    np.testing.assert_array_equal(res.false_positives, [1, 2, 2, 3, 4])
    np.testing.assert_array_equal(res.true_positives_discrete, [0, 0, 3, 3, 3])
    assert res.tpr_at(1) == 0.0 and res.tpr_at(2) == 1.0 and res.tpr_at(1000) == 1.0
    d = json.loads(res.to_json())
    assert d["tpr_at_1000_fp"]["discrete"] == 1.0 and d["num_faces"] == 3 and d["num_detections"] == 7


def test_matching_is_maximum_weight_and_redone_per_threshold():
    # ann x det overlaps; det 0 scores higher.  Alone it matches ann 0 (0.9);
    # with det 1 the best matching pairs det 0-ann 1 and det 1-ann 0 (0.6 + 0.6 > 0.9).
    ov = np.array([[0.9, 0.6], [0.6, 0.0]])
    s, ndet, tpc, tpd = _image_curve(ov, np.array([0.8, 0.4]))
    np.testing.assert_array_equal(s, [0.8, 0.4])
    np.testing.assert_array_equal(ndet, [1, 2])
    np.testing.assert_allclose(tpc, [0.9, 1.2])
    np.testing.assert_array_equal(tpd, [1, 2])
    # equal scores form one threshold; a detection touching nothing keeps the matching
    s, ndet, tpc, tpd = _image_curve(np.array([[0.7, 0.0, 0.55]]), np.array([0.5, 0.5, 0.1]))
    np.testing.assert_array_equal(s, [0.5, 0.1])
    np.testing.assert_array_equal(ndet, [2, 3])
    np.testing.assert_allclose(tpc, [0.7, 0.7])
    np.testing.assert_array_equal(tpd, [1, 1])


def test_missing_images_and_empty(tmp_path):
    rng = np.random.default_rng(4)
    ann = {"a": _ellipses(2, rng), "b": _ellipses(1, rng)}
    with pytest.warns(UserWarning, match="without detections"):
        res = evaluate_fddb(ann, {"a": np.hstack([ann["a"], [[0.9], [0.8]]])}, "ellipse")
    assert res.missing == ["b"] and res.num_faces == 3
    assert res.tpr_at(0) == pytest.approx(2 / 3)
    with pytest.warns(UserWarning):
        res = evaluate_fddb(ann, {}, "rect")
    assert res.tpr_at(1000) == 0.0 and len(res.thresholds) == 0


def test_files_roundtrip_and_evaluate_from_paths(tmp_path):
    rng = np.random.default_rng(5)
    folds = tmp_path / "FDDB-folds"
    folds.mkdir()
    ann = {"2002/08/11/big/img_591": _ellipses(2, rng), "2002/08/26/big/img_265": _ellipses(1, rng)}
    text = ""
    for name, el in ann.items():
        text += f"{name}\n{len(el)}\n" + "".join(" ".join(f"{v:.6f}" for v in e) + "  1\n" for e in el)
    (folds / "FDDB-fold-01-ellipseList.txt").write_text(text)
    (folds / "FDDB-fold-01.txt").write_text("\n".join(ann) + "\n")
    assert read_fddb_image_list(folds) == list(ann)
    back = read_fddb_folds(folds)
    assert list(back) == list(ann)
    np.testing.assert_allclose(back["2002/08/11/big/img_591"], ann["2002/08/11/big/img_591"], atol=1e-6)
    assert read_fddb_file(folds / "FDDB-fold-01-ellipseList.txt", columns=6)["2002/08/26/big/img_265"][0, 5] == 1
    # rectangle detections written like the released DSFD fddb_test.py (x1 y1 x2 y2 in, x y w h out)
    dets_xyxy = {}
    for name, el in ann.items():
        b = np.array([_bbox_of_ellipse(e) for e in el])
        dets_xyxy[name] = np.hstack([b[:, :2], b[:, :2] + b[:, 2:], np.full((len(b), 1), 0.7)])
    det_file = write_fddb_detections(tmp_path / "dets" / "fold-01-out.txt", dets_xyxy,
                                     image_list=list(ann) + ["none"])
    lines = det_file.read_text().splitlines()
    assert lines[0] == "2002/08/11/big/img_591" and lines[1] == "2" and lines[-2:] == ["none", "0"]
    x1, y1, x2, y2, _ = dets_xyxy["2002/08/11/big/img_591"][0]
    assert lines[2].split()[:4] == [f"{math.floor(x1):.1f}", f"{math.floor(y1):.1f}",
                                    f"{math.ceil(x2 - x1 + 1):.1f}", f"{math.ceil(y2 - y1 + 1):.1f}"]
    dets = read_fddb_detections(tmp_path / "dets")
    assert set(dets) == set(ann) | {"none"} and dets["none"].shape == (0, 5)
    res = evaluate_fddb(folds, tmp_path / "dets", "rect")
    assert res.extra == ["none"]
    assert res.tpr_at(0) == 1.0 and 0.7 < res.tpr_at(0, "continuous") < 0.85
    prefix = tmp_path / "roc" / "x_"
    disc, cont = res.write_roc_files(prefix)
    assert disc.read_text().split()[:2] == ["1", "0"] and cont.is_file()


def test_cli_fddb(tmp_path):
    from dsfd.cli import main

    rng = np.random.default_rng(6)
    folds = tmp_path / "FDDB-folds"
    folds.mkdir()
    ann = {"img_a": _ellipses(2, rng), "img_b": _ellipses(1, rng)}
    (folds / "FDDB-fold-01-ellipseList.txt").write_text("".join(
        f"{n}\n{len(el)}\n" + "".join(" ".join(map(str, e)) + " 1\n" for e in el) for n, el in ann.items()))
    det = tmp_path / "dets.txt"
    det.write_text("".join(
        f"{n}\n{len(el)}\n" + "".join(" ".join(map(str, e)) + " 0.9\n" for e in el) for n, el in ann.items()))
    out = tmp_path / "out"
    code = main(["eval", "--fddb-folds", str(folds), "--fddb-detections", str(det), "--fddb-det-format", "ellipse",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    data = json.loads((out / "fddb.json").read_text())
    assert data["tpr_at_1000_fp"]["discrete"] == 1.0 and data["num_faces"] == 3
    assert (out / "fddb_roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fddb_DiscROC.txt").is_file()
