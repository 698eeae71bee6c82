"""The hiding threshold (issue #31, item 1): faces hidden by size, the area cost, the choice, and its use.

``hiding_curve`` on a photo made here (hand-computed numbers), on the shared
YuNet predictions (the issue's own figures), ``choose_hide_threshold``,
``Detector.hide_score`` from a checkpoint's config (and its fallback), and
``dsfd detect --anonymize`` hiding from it unless ``--min-score`` is given,
saying which threshold it used.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from dsfd.data_paths import fixtures_root, repo_root, wider_root
from dsfd.evaluation.display import (HidingCurve, choose_hide_threshold, face_hide_scores, hiding_curve,
                                     wider_hiding_ground_truth)
from dsfd.inference.anonymize import grown_boxes

PHOTO = repo_root() / "dsfd" / "assets" / "grace_hopper.jpg"


def _xywh(x1, y1, x2, y2, s):
    return [x1, y1, x2 - x1, y2 - y1, s]


def test_curve_on_a_photo_made_here():
    H, W = 100, 200
    face_a = [10, 10, 40, 40]  # 30 px: band 20-40
    face_b = [100, 50, 112, 62]  # 12 px: band 10-20
    invalid = [150, 0, 170, 20]  # an invalid-flagged face: hiding it costs nothing
    photos = {"e/p.jpg": (np.array([face_a, face_b], float), np.array([face_a, face_b, invalid], float), (H, W))}
    preds = {"p": np.array([_xywh(*face_a, 0.9),
                            _xywh(100, 50, 106, 62, 0.4),  # half of face_b's width (+ margin: 0.6 of it)
                            _xywh(100, 50, 112, 62, 0.2),  # all of face_b
                            _xywh(150, 70, 170, 90, 0.3)])}  # a false positive on the background
    curve = hiding_curve(preds, photos, margin=0.2, thresholds=np.array([0.1, 0.25, 0.5, 0.95]))
    assert curve.faces == {"10-20": 1, "20-40": 1, ">=40": 0, ">=10": 2}
    assert curve.hidden["20-40"].tolist() == [1, 1, 1, 0]
    assert curve.hidden["10-20"].tolist() == [1, 0, 0, 0]  # the half box at 0.4, grown, covers 8 of 12 columns < 0.8
    assert curve.hidden[">=10"].tolist() == [1, 0.5, 0.5, 0]
    # the cost: grown boxes' pixels outside every face box (the invalid one included), over all such pixels
    inside = np.zeros((H, W), bool)
    for x1, y1, x2, y2 in (face_a, face_b, invalid):
        inside[y1:y2, x1:x2] = True

    def cost(boxes):
        m = np.zeros((H, W), bool)
        for x1, y1, x2, y2 in grown_boxes(np.array([b + [1] for b in boxes], float), W, H, 0.2):
            m[y1:y2, x1:x2] = True
        return (m & ~inside).sum() / (~inside).sum()

    expect = [cost([face_a, [100, 50, 106, 62], face_b, [150, 70, 170, 90]]),
              cost([face_a, [100, 50, 106, 62], [150, 70, 170, 90]]), cost([face_a]), 0.0]
    assert curve.cost == pytest.approx(expect)
    assert choose_hide_threshold(curve, max_cost=expect[1] + 1e-9) == 0.25
    assert choose_hide_threshold(curve, max_cost=1.0) == 0.1
    assert choose_hide_threshold(curve, max_cost=-1) == 0.95  # none meets it: the highest
    at = curve.at(0.25)
    assert at["hidden"][">=10"] == 0.5 and at["cost"] == pytest.approx(expect[1])


def test_face_hide_scores_is_the_cover_quantile():
    m = np.full((10, 10), -1.0, np.float32)
    m[:, :5] = 0.9
    m[:, 5:8] = 0.4  # 80% of the face under scores >= 0.4
    s = face_hide_scores(m, np.array([[0, 0, 10, 10]]), cover=0.8)
    assert s.tolist() == pytest.approx([0.4])
    assert face_hide_scores(m, np.array([[0, 0, 10, 10]]), cover=0.5).tolist() == pytest.approx([0.9])
    assert face_hide_scores(m, np.array([[8, 0, 10, 10]]), cover=0.8).tolist() == [-1.0]


@pytest.mark.skipif(not (fixtures_root() / "wider_eval_predictions" / "yunet").is_dir()
                    or not (wider_root() / "wider_face_split").is_dir(), reason="needs ../shared data and fixtures")
def test_yunet_figures_of_the_issue():
    """The measuring rule of issue #31 reproduces its YuNet row: hidden 0.790 / 0.880 / 0.926 / 0.825."""
    from dsfd.io import read_prediction_folder

    photos = wider_hiding_ground_truth()
    preds, _ = read_prediction_folder(fixtures_root() / "wider_eval_predictions" / "yunet")
    r = hiding_curve(preds, photos).at(0.5)
    assert len(photos) == 145 and r["faces"][">=10"] == 2783
    assert [r["hidden"][b] for b in ("10-20", "20-40", ">=40", ">=10")] == pytest.approx(
        [0.790, 0.880, 0.926, 0.825], abs=0.01)
    assert 0 < r["cost"] < 0.1


def _checkpoint(tmp_path, **extra):
    ck = torch.load(repo_root() / "dsfd" / "weights" / "default.pth", map_location="cpu", weights_only=True)
    cfg = {k: v for k, v in ck["config"].items() if k != "hide_score"}
    cfg.update(extra)
    path = tmp_path / f"model_{'_'.join(extra) or 'plain'}.pth"
    torch.save({"model": ck["model"], "config": cfg}, path)
    return path


def test_detector_hide_score_and_its_fallback(tmp_path):
    import dsfd

    d = dsfd.Detector(_checkpoint(tmp_path, display_score=0.6, hide_score=0.15), device="cpu")
    assert (d.display_score, d.hide_score) == (0.6, 0.15)
    d = dsfd.Detector(_checkpoint(tmp_path, display_score=0.6), device="cpu")
    assert d.hide_score == d.display_score == 0.6


def test_anonymize_hides_from_hide_score_unless_min_score(tmp_path):
    weights = _checkpoint(tmp_path, display_score=0.6, hide_score=0.07)

    def run(out, *extra):
        r = subprocess.run([sys.executable, "-m", "dsfd", "detect", str(PHOTO), "--weights", str(weights),
                            "--out", str(tmp_path / out), "--device", "cpu", "--no-progress", *extra],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        return r.stdout, json.loads((tmp_path / out / "summary.json").read_text()), \
            json.loads((tmp_path / out / "grace_hopper.json").read_text())

    out, summary, record = run("hide", "--anonymize", "blur")
    assert summary["face_score_threshold"] == 0.07 and summary["face_score_threshold_from"].startswith("hide_score")
    assert record["hidden_min_score"] == 0.07 and record["min_score"] == 0.07
    assert all(d["score"] >= 0.07 for d in record["detections"])
    assert "hidden, score >= 0.07 (hide_score)" in out, out
    out, summary, record = run("given", "--anonymize", "blur", "--min-score", "0.5")
    assert summary["face_score_threshold"] == 0.5 and summary["face_score_threshold_from"] == "--min-score"
    assert record["hidden_min_score"] == 0.5
    out, summary, record = run("drawn")
    assert summary["face_score_threshold"] == 0.6 and summary["face_score_threshold_from"].startswith("display_score")
    assert "hidden_min_score" not in record
