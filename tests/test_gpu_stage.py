"""scripts/gpu_stage_data.py: the parts that carry training data to the GPU machine keep every image and box."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsfd.data import build_dataset
from dsfd.training.data_setup import data_counts

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_stage_data.py"


def load_stager():
    spec = importlib.util.spec_from_file_location("gpu_stage_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def noise_jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8)  # noise: ~20 KB each
    assert cv2.imwrite(str(path), img)


def make_roots(tmp: Path):
    wider = tmp / "wider_src"
    lines = []
    for i in range(7):
        name = f"0--Parade/0_Parade_{i}.jpg"
        noise_jpeg(wider / "WIDER_train" / "images" / name, i)
        n = i % 3  # 0, 1, 2 faces: an image without faces has one line of zeros
        lines += [name, str(n)] + ([f"{10 + k} 12 20 24 0 0 0 0 0 0" for k in range(n)] or ["0 0 0 0 0 0 0 0 0 0"])
    (wider / "wider_face_split").mkdir(parents=True)
    (wider / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text("\n".join(lines) + "\n")
    yolo = tmp / "yolo_src"
    for i in range(5):
        noise_jpeg(yolo / "images" / f"crowd_{i}.jpg", 100 + i)
        (yolo / "labels").mkdir(parents=True, exist_ok=True)
        if i != 3:  # an image without a label file has no faces
            (yolo / "labels" / f"crowd_{i}.txt").write_text("0 0.5 0.5 0.2 0.3\n" * (i + 1))
    (yolo / "data.yaml").write_text("names:\n  0: face\n")
    return wider, yolo


def test_parts_hold_every_image_and_box_in_readable_roots(tmp_path):
    wider, yolo = make_roots(tmp_path)
    out = tmp_path / "stage"
    stager = load_stager()
    assert stager.main([str(wider), str(yolo), "--out", str(out), "--part-mib", "0.06", "--val", "none"]) == 0
    summary = json.loads((out / "parts.json").read_text())
    parts = sorted(out.glob("p[0-9]*"))
    assert len(parts) == len(summary["parts"]) >= 3  # noise JPEGs of ~20 KB, parts of 60 KB
    for part in summary["parts"]:
        assert part["mib"] <= 0.06
    staged_roots = [r for p in parts for r in sorted(p.iterdir())]
    before = {c["root"]: c for c in data_counts(build_dataset([wider, yolo]))}
    after = data_counts(build_dataset(staged_roots))
    assert sum(c["images"] for c in after) == sum(c["images"] for c in before.values()) == 12
    assert sum(c["boxes"] for c in after) == sum(c["boxes"] for c in before.values()) == 6 + 11
    # a root split over two parts: each piece keeps its own images' split lines
    wider_pieces = [r for r in staged_roots if r.name == "wider_src"]
    assert len(wider_pieces) >= 2
    names = []
    for piece in wider_pieces:
        text = (piece / "wider_face_split" / "wider_face_train_bbx_gt.txt").read_text().split()
        listed = [t for t in text if t.endswith(".jpg")]
        assert sorted(listed) == sorted(str(p.relative_to(piece / "WIDER_train" / "images"))
                                        for p in (piece / "WIDER_train" / "images").rglob("*.jpg"))
        names += listed
    assert sorted(names) == sorted(f"0--Parade/0_Parade_{i}.jpg" for i in range(7))


def test_rerun_replaces_old_parts_and_refuses_unknown_layouts(tmp_path):
    wider, yolo = make_roots(tmp_path)
    out = tmp_path / "stage"
    stager = load_stager()
    assert stager.main([str(wider), str(yolo), "--out", str(out), "--part-mib", "0.06", "--val", "none"]) == 0
    assert stager.main([str(yolo), "--out", str(out), "--part-mib", "1", "--val", "none"]) == 0
    assert [p.name for p in sorted(out.glob("p[0-9]*"))] == ["p1"]
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit, match="neither a WIDER root"):
        stager.main([str(tmp_path / "plain"), "--out", str(out)])
    assert stager.main([str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_the_val_subset_rides_in_the_last_part(tmp_path):
    wider, yolo = make_roots(tmp_path)
    val = tmp_path / "val_src"
    noise_jpeg(val / "WIDER_val" / "images" / "0--Parade" / "0_Parade_v.jpg", 7)
    (val / "ground_truth").mkdir()
    (val / "ground_truth" / "wider_easy_val.mat").write_bytes(b"mat")
    (val / "wider_face_split").mkdir()
    (val / "wider_face_split" / "wider_face_val_bbx_gt.txt").write_text("0--Parade/0_Parade_v.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    out = tmp_path / "stage"
    assert load_stager().main([str(yolo), "--out", str(out), "--part-mib", "1", "--val", str(val)]) == 0
    parts = sorted(out.glob("p[0-9]*"))
    last = parts[-1] / "eval_widerface"
    for rel in ("WIDER_val/images/0--Parade/0_Parade_v.jpg", "ground_truth/wider_easy_val.mat",
                "wider_face_split/wider_face_val_bbx_gt.txt"):
        assert (last / rel).is_file(), rel
    summary = json.loads((out / "parts.json").read_text())
    assert summary["parts"][-1]["roots"]["eval_widerface"]["images"] == 1
