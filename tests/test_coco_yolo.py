"""Your own faces: the COCO and YOLO readers, format detection, bad annotations, mixing roots, COCO metrics.

Synthetic images (written here) for the readers and every bad-annotation
case; real WIDER FACE training images for the round trip WIDER -> COCO /
YOLO -> back (skipped without the data).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dsfd.constants import BGR_MEAN
from dsfd.data import (
    AnnotationError,
    DataSource,
    EvalTransform,
    FaceDataset,
    TrainTransform,
    WiderFaceDataset,
    build_dataset,
    detect_format,
    has_split,
    read_coco,
    read_yolo,
    write_coco,
    write_yolo,
)
from dsfd.data.yolo import _yaml_names, yolo_split_dirs
from dsfd.data_paths import wider_root

WIDER = wider_root()
needs_wider = pytest.mark.skipif(
    not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file(),
    reason=f"WIDER FACE training data not found under {WIDER} (set DSFD_WIDER_ROOT)",
)


def _image(path: Path, h: int = 120, w: int = 160, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _coco(path: Path, images, annotations, categories=({"id": 1, "name": "face"},)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations),
                                "categories": list(categories)}))
    return path


def _ann(i, image_id, bbox, cat=1, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


# ----------------------------------------------------------------------------- round trip on real images
@needs_wider
def test_round_trip_wider_to_coco_and_yolo_and_back(tmp_path):
    wider = WiderFaceDataset(WIDER, "train")
    src = wider.sources[0]
    first = DataSource(str(WIDER), "wider", src.image_dir, src.records[:6], {})
    ds = FaceDataset([first], paint_ignore=False)
    write_coco(ds, tmp_path / "coco" / "faces.json")
    write_yolo(ds, tmp_path / "yolo", images="link")
    # WIDER's invalid-flagged faces travel as COCO crowd regions (compared unpainted here)
    assert sum(len(r.ignore) for r in first.records) > 0
    coco = build_dataset(tmp_path / "coco" / "faces.json", images=src.image_dir, paint_ignore=False)
    assert [len(r.ignore) for r in coco.annotations] == [len(r.ignore) for r in first.records]
    yolo = build_dataset(tmp_path / "yolo")
    assert type(coco) is FaceDataset and coco.root_counts[0]["format"] == "coco"
    assert yolo.root_counts[0]["format"] == "yolo"
    n_boxes = 0
    by_path = {r.path: i for i, r in enumerate(yolo.annotations)}
    assert sorted(by_path) == sorted(r.path for r in first.records)
    for i, rec in enumerate(first.records):
        img, boxes = ds.load(i)
        assert len(boxes) > 0
        n_boxes += len(boxes)
        img_c, boxes_c = coco.load(i)  # COCO keeps the order; boxes are exact (JSON floats)
        assert coco.annotations[i].path == rec.path and np.array_equal(img, img_c)
        assert np.array_equal(boxes_c, boxes)
        img_y, boxes_y = yolo.load(by_path[rec.path])  # YOLO: fractions of the size, sorted by path
        assert np.array_equal(img, img_y)
        np.testing.assert_allclose(boxes_y, boxes, rtol=0, atol=1e-3)
    assert coco.root_counts[0]["boxes"] == yolo.root_counts[0]["boxes"] == n_boxes
    # and back: YOLO -> COCO gives the YOLO boxes again
    write_coco(yolo, tmp_path / "back.json", image_paths="absolute")
    back = build_dataset(tmp_path / "back.json")
    for i in range(len(yolo)):
        assert np.array_equal(back.load(i)[1], yolo.load(i)[1])
    # the same images and boxes give the same training samples, augmentation included
    tf = TrainTransform(size=160)
    wider_first = FaceDataset([first], transform=tf, seed=5)
    coco_t = build_dataset(tmp_path / "coco" / "faces.json", images=src.image_dir, transform=tf, seed=5)
    for i in range(len(coco_t)):
        a, b = wider_first[(i, 2)], coco_t[(i, 2)]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (3, 160, 160)


# ----------------------------------------------------------------------------- format detection
def test_detect_format_and_the_format_override(tmp_path):
    from test_data import make_wider_tree

    wider = make_wider_tree(tmp_path / "wider", n_images=2)
    _image(tmp_path / "c" / "a.jpg")
    coco = _coco(tmp_path / "c" / "faces.json", [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 120}],
                 [_ann(1, 1, [10, 10, 30, 30])])
    _image(tmp_path / "rf" / "a.jpg")
    _coco(tmp_path / "rf" / "_annotations.coco.json", [{"id": 1, "file_name": "a.jpg"}], [])
    _image(tmp_path / "y" / "images" / "a.jpg")
    (tmp_path / "y" / "labels").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert detect_format(wider) == "wider"
    assert detect_format(coco) == "coco"
    assert detect_format(tmp_path / "rf") == "coco"
    assert detect_format(tmp_path / "y") == "yolo"
    with pytest.raises(ValueError, match="no known format"):
        detect_format(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="data not found"):
        detect_format(tmp_path / "nothing")
    assert len(build_dataset(tmp_path / "rf")) == 1
    # --format overrides the detection (here wrongly: the YOLO reader finds no images/ in a WIDER folder)
    with pytest.raises(FileNotFoundError, match="not a YOLO dataset folder"):
        build_dataset(wider, format="yolo")
    with pytest.raises(ValueError, match="unknown data format"):
        build_dataset(wider, format="voc")
    assert type(build_dataset(wider)) is WiderFaceDataset


def test_yolo_layouts_splits_and_names(tmp_path):
    # Ultralytics: images/<split>, labels/<split>; "val" also finds "valid"
    u = tmp_path / "u"
    _image(u / "images" / "train" / "a.jpg")
    _image(u / "images" / "valid" / "b.jpg")
    (u / "labels" / "train").mkdir(parents=True)
    (u / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    assert yolo_split_dirs(u, "val") == (u / "images" / "valid", u / "labels" / "valid")
    assert has_split(u, "val") and not has_split(u, "test")
    assert [r.path for r in read_yolo(u, "train").records] == ["a.jpg"]
    with pytest.raises(FileNotFoundError, match="no 'test' split .found: train, valid"):
        read_yolo(u, "test")
    # Roboflow: <split>/images, <split>/labels
    r = tmp_path / "r"
    _image(r / "train" / "images" / "a.jpg")
    (r / "train" / "labels").mkdir(parents=True)
    assert yolo_split_dirs(r, "train") == (r / "train" / "images", r / "train" / "labels")
    # one split: the whole images/ folder, whatever the split, but it is no validation split
    s = tmp_path / "s"
    _image(s / "images" / "sub" / "a.png")
    (s / "labels" / "sub").mkdir(parents=True)
    (s / "labels" / "sub" / "a.txt").write_text("# comment\n\n0 0.5 0.5 0.5 0.5\n")
    ds = build_dataset(s, "val")
    assert [r.path for r in ds.annotations] == ["sub/a.png"] and len(ds.load(0)[1]) == 1
    assert not has_split(s, "val")
    # names: the forms of data.yaml, without a YAML library
    assert _yaml_names("names: ['person', \"face\"]\n") == ["person", "face"]
    assert _yaml_names("path: x\nnames:\n  0: person\n  1: face  # faces\nnc: 2\n") == ["person", "face"]
    assert _yaml_names("names:\n- person\n- face\n") == ["person", "face"]
    assert _yaml_names("names: {0: person, 1: face}\n") == ["person", "face"]


def test_yolo_class_filter(tmp_path):
    root = tmp_path / "y"
    _image(root / "images" / "a.jpg", 100, 200)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.25 0.5 0.1 0.2\n1 0.75 0.5 0.2 0.4\n")
    (root / "data.yaml").write_text("names: [person, face]\n")
    ds = build_dataset(root)  # default: the class named face (id 1)
    np.testing.assert_allclose(ds.load(0)[1], [[130, 30, 170, 70]], atol=1e-4)
    assert ds.stats["other_category"] == 1 and ds.sources[0].categories == ["face"]
    ds = build_dataset(root, category="0")
    np.testing.assert_allclose(ds.load(0)[1], [[40, 40, 60, 60]], atol=1e-4)
    assert ds.sources[0].categories == ["person"]
    (root / "data.yaml").write_text("names: [person, car]\n")
    with pytest.raises(ValueError, match="none is named 'face'.*--category"):
        build_dataset(root)
    (root / "data.yaml").unlink()  # no names: every class is a face, or --category ids
    assert len(build_dataset(root).load(0)[1]) == 2
    assert len(build_dataset(root, category=["1"]).load(0)[1]) == 1


# ----------------------------------------------------------------------------- COCO specifics
def test_coco_categories_crowd_and_image_folder(tmp_path):
    # CVAT's layout: annotations/instances_default.json + images/
    _image(tmp_path / "images" / "a.jpg", 120, 160)
    _image(tmp_path / "images" / "b.jpg", 120, 160, seed=1)
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "Face"}]
    ims = [{"id": 10, "file_name": "a.jpg", "width": 160, "height": 120},
           {"id": 11, "file_name": "b.jpg", "width": 160, "height": 120}]
    anns = [_ann(1, 10, [10, 20, 30, 40], cat=2), _ann(2, 10, [0, 0, 100, 100], cat=1),
            _ann(3, 11, [50, 50, 40, 40], cat=2, crowd=1), _ann(4, 11, [140, 100, 40, 40], cat=2)]
    path = _coco(tmp_path / "annotations" / "instances_default.json", ims, anns, cats)
    src = read_coco(path)
    assert src.image_dir == tmp_path / "images" and src.categories == ["Face"]
    a, b = src.records
    assert (a.image_id, b.image_id) == (10, 11)
    np.testing.assert_array_equal(a.boxes, [[10, 20, 40, 60]])
    np.testing.assert_array_equal(b.ignore, [[50, 50, 90, 90]])
    assert src.stats["other_category"] == 1 and src.stats["ignore_regions"] == 1 and src.stats["clipped"] == 1
    ds = FaceDataset([src])
    _, boxes, ignore = ds.read(1)
    np.testing.assert_array_equal(boxes, [[140, 100, 160, 120]])  # clipped to the 160x120 image
    # training paints the ignore region with the mean; evaluation reads the pixels as they are
    painted, _ = ds.load(1)
    raw = cv2.imread(str(tmp_path / "images" / "b.jpg"))
    assert (painted[50:90, 50:90] == np.round(BGR_MEAN).astype(np.uint8)).all()
    assert np.array_equal(painted[:50], raw[:50]) and np.array_equal(ds.read(1)[0], raw)
    assert np.array_equal(FaceDataset([src], paint_ignore=False).load(1)[0], raw)
    # category by name or id; an ambiguous file needs one
    assert len(read_coco(path, category="person").records[0].boxes) == 1
    assert read_coco(path, category=1).categories == ["person"]
    with pytest.raises(ValueError, match="category 'cat' is not in"):
        read_coco(path, category="cat")
    cats2 = [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    with pytest.raises(ValueError, match="2 categories .*none is named 'face'"):
        read_coco(_coco(tmp_path / "annotations" / "two.json", ims, anns, cats2))
    with pytest.raises(FileNotFoundError, match="--images"):
        read_coco(_coco(tmp_path / "elsewhere" / "x.json", [{"id": 1, "file_name": "zzz.jpg"}], []))


# ----------------------------------------------------------------------------- bad annotations
def _bad_coco(tmp_path: Path) -> Path:
    _image(tmp_path / "images" / "a.jpg", 120, 160)
    _image(tmp_path / "images" / "b.jpg", 120, 160, seed=1)
    ims = [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 120},
           {"id": 2, "file_name": "missing.jpg", "width": 160, "height": 120},
           {"id": 3, "file_name": "b.jpg", "width": 160, "height": 120}]
    anns = [
        _ann(1, 1, [10, 10, 20, 20]),       # good
        _ann(2, 1, [170, 10, 20, 20]),      # outside the 160 x 120 image
        _ann(3, 1, [10, 10, -5, 20]),       # negative width
        _ann(4, 3, [10, 10, 20, 0]),        # zero height
        _ann(5, 3, [10, "ten", 20, 20]),    # non-numeric
        _ann(6, 3, [10, 10, 20, 20], cat=7),  # no such category
        _ann(7, 99, [10, 10, 20, 20]),      # no such image
        _ann(8, 3, [10, 10, 20]),           # three values
        _ann(9, 3, [30, 30, 40, 40]),       # good
    ]
    return _coco(tmp_path / "bad.json", ims, anns)


COCO_EXPECTED = [
    ("images[1].file_name", "missing_image", "missing.jpg does not exist"),
    ("annotations[1].bbox", "outside_image", "does not overlap the 160x120 image"),
    ("annotations[2].bbox", "degenerate", "width -5"),
    ("annotations[3].bbox", "degenerate", "height 0"),
    ("annotations[4].bbox[1]", "non_numeric", "'ten' is not a finite number"),
    ("annotations[5].category_id", "class_out_of_range", "category_id 7 is not one of the categories"),
    ("annotations[6].image_id", "unknown_image", "image_id 99"),
    ("annotations[7].bbox", "malformed", "bbox must be [x, y, width, height]"),
]


def test_coco_bad_annotations_reported_skipped_counted_or_strict(tmp_path):
    path = _bad_coco(tmp_path)
    ds = build_dataset(path)
    got = [(p.location, p.reason, p.detail) for p in ds.problems]
    assert len(got) == len(COCO_EXPECTED)
    for (loc, reason, detail), (e_loc, e_reason, e_detail) in zip(got, COCO_EXPECTED):
        assert loc == f"{path}:{e_loc}" and reason == e_reason and e_detail in detail, (loc, reason, detail)
    # the run goes on with the good items: the missing image is left out, the good boxes kept
    assert [r.path for r in ds.annotations] == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(ds.load(0)[1], [[10, 10, 30, 30]])
    np.testing.assert_array_equal(ds.load(1)[1], [[30, 30, 70, 70]])
    skipped = {"missing_image": 1, "outside_image": 1, "degenerate": 2, "non_numeric": 1,
               "class_out_of_range": 1, "malformed": 1, "unknown_image": 1}
    assert ds.root_counts[0]["skipped"] == skipped and ds.root_counts[0]["boxes"] == 2
    assert all(ds.stats[k] == v for k, v in skipped.items())
    # strict: the first problem stops the run
    with pytest.raises(AnnotationError) as e:
        build_dataset(path, strict=True)
    assert e.value.problem.location == f"{path}:images[1].file_name" and e.value.problem.reason == "missing_image"


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_truncated_coco_json_names_line_and_column(tmp_path, cut):
    path = _bad_coco(tmp_path)
    text = json.dumps(json.loads(path.read_text()), indent=1)
    path.write_text(text[: int(len(text) * cut)])
    line = text[: int(len(text) * cut)].count("\n") + 1
    for strict in (False, True):  # nothing left to continue with: fatal either way
        with pytest.raises(AnnotationError) as e:
            read_coco(path, strict=strict)
        p = e.value.problem
        assert p.reason == "invalid_json" and p.location.startswith(f"{path}:{line}:") and "truncated" in p.detail
    path.write_text("[1, 2]")
    with pytest.raises(AnnotationError, match="not a COCO dictionary"):
        read_coco(path)


def _bad_yolo(tmp_path: Path) -> Path:
    root = tmp_path / "y"
    _image(root / "images" / "a.jpg", 100, 200)
    _image(root / "images" / "b.jpg", 100, 200, seed=1)
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("face\nhand\n")
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"          # 1 good
        "0 1.5 0.5 0.2 0.2\n"          # 2 outside
        "0 0.5 0.5 -0.1 0.2\n"         # 3 negative width
        "0 0.5 0.5 0.2 0\n"            # 4 zero height
        "0 0.5 abc 0.2 0.2\n"          # 5 non-numeric
        "2 0.5 0.5 0.2 0.2\n"          # 6 class 2 of 2 classes
        "0 0.5 0.5 0.2\n"              # 7 four fields
        "1 0.5 0.5 0.2 0.2\n"          # 8 a hand: not a face, no problem
    )
    (root / "labels" / "b.txt").write_text("x 0.5 0.5 0.2 0.2\n0 0.25 0.25 0.1 0.2\n")
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # no image
    return root


def test_yolo_bad_annotations_reported_skipped_counted_or_strict(tmp_path):
    root = _bad_yolo(tmp_path)
    a, b, ghost = (root / "labels" / n for n in ("a.txt", "b.txt", "ghost.txt"))
    expected = [
        (f"{ghost}", "missing_image", "no image ghost.* in"),
        (f"{a}:2", "outside_image", "does not overlap the image"),
        (f"{a}:3", "degenerate", "width -0.1"),
        (f"{a}:4", "degenerate", "height 0"),
        (f"{a}:5", "non_numeric", "field 3 'abc' is not a finite number"),
        (f"{a}:6", "class_out_of_range", "class id 2 is not in 0..1 (face, hand)"),
        (f"{a}:7", "malformed", "expected 5 fields"),
        (f"{b}:1", "non_numeric", "class id 'x' is not a number"),
    ]
    ds = build_dataset(root)
    got = [(p.location, p.reason, p.detail) for p in ds.problems]
    assert len(got) == len(expected)
    for (loc, reason, detail), (e_loc, e_reason, e_detail) in zip(got, expected):
        assert loc == e_loc and reason == e_reason and e_detail in detail, (loc, reason, detail)
    np.testing.assert_allclose(ds.load(0)[1], [[80, 30, 120, 70]], atol=1e-4)
    np.testing.assert_allclose(ds.load(1)[1], [[40, 15, 60, 35]], atol=1e-4)
    assert ds.root_counts[0]["skipped"] == {"missing_image": 1, "outside_image": 1, "degenerate": 2,
                                            "non_numeric": 2, "class_out_of_range": 1, "malformed": 1}
    assert ds.stats["other_category"] == 1 and ds.stats["boxes_read"] == 10 and ds.root_counts[0]["boxes"] == 2
    with pytest.raises(AnnotationError) as e:
        build_dataset(root, strict=True)
    assert (e.value.problem.location, e.value.problem.reason) == (str(ghost), "missing_image")
    ghost.unlink()
    with pytest.raises(AnnotationError, match=f"{a}:2: outside_image: .*fractions of the image size"):
        build_dataset(root, strict=True)


def test_train_cli_reports_bad_annotations_and_strict_exits_2(tmp_path, capsys):
    from dsfd.cli import main

    path = _bad_coco(tmp_path)
    out = tmp_path / "run"
    common = ["train", "--data", str(path), "--backbone", "tiny", "--size", "128", "--batch-size", "2",
              "--iters", "1", "--workers", "0", "--val-every", "0", "--no-progress", "--dtype", "float32", "--out", str(out)]
    assert main(common + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert f"dsfd train: error: {path}:images[1].file_name: missing_image:" in err and "Traceback" not in err
    assert not (out / "last.pt").exists()
    assert main(common) == 0
    listed = (out / "data_problems.txt").read_text().splitlines()
    assert [ln.split(": ")[0] for ln in listed] == [f"{path}:{loc}" for loc, _, _ in COCO_EXPECTED]
    start = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()][0]
    assert start["data_roots"][0]["skipped"]["degenerate"] == 2 and start["data_roots"][0]["images"] == 2


# ----------------------------------------------------------------------------- several roots, several formats
def test_mixed_roots_of_three_formats(tmp_path):
    from test_data import make_wider_tree

    wider = make_wider_tree(tmp_path / "wider", n_images=3, size=(128, 160), seed=1)
    _image(tmp_path / "c" / "a.jpg", 128, 160)
    coco = _coco(tmp_path / "c" / "faces.json", [{"id": 5, "file_name": "a.jpg", "width": 160, "height": 128}],
                 [_ann(1, 5, [10, 10, 40, 40]), _ann(2, 5, [80, 40, 30, 30])])
    root = tmp_path / "y"
    for i in range(2):
        _image(root / "images" / f"{i}.jpg", 128, 160, seed=i)
    (root / "labels").mkdir()
    (root / "labels" / "0.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    ds = build_dataset([coco, wider, root], transform=EvalTransform(size=128), seed=1)
    assert len(ds) == 6 and type(ds) is FaceDataset
    assert [c["images"] for c in ds.root_counts] == [1, 3, 2] and [c["boxes"] for c in ds.root_counts] == [2, 9, 1]
    assert [c.get("format") for c in ds.root_counts] == ["coco", None, "yolo"]  # WIDER's record as before
    roots = [ds[i][2]["root"] for i in range(6)]
    assert roots == [str(coco)] + [str(wider)] * 3 + [str(root)] * 2
    for i in range(6):
        img, boxes, meta = ds[i]
        assert img.shape == (3, 128, 128) and img.dtype == torch.float32 and boxes.dtype == torch.float32
    assert len(ds[5][1]) == 0  # an image without a label file has no faces
    np.testing.assert_allclose(ds[0][1].numpy(), [[10 / 160, 10 / 128, 50 / 160, 50 / 128],
                                                  [80 / 160, 40 / 128, 110 / 160, 70 / 128]], rtol=1e-6)
    with pytest.raises(ValueError, match="--images .*exactly one COCO root"):
        build_dataset([wider, root], images=tmp_path)
    with pytest.raises(ValueError, match="--category"):
        build_dataset(wider, category="face")


# ----------------------------------------------------------------------------- COCO metrics
def test_coco_metrics_through_pycocotools_with_crowd_regions(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from dsfd.evaluation import coco_detections, coco_ground_truth, evaluate_coco

    faces = np.array([[10, 10, 50, 60], [100, 20, 140, 70]], np.float32)
    crowd = np.array([[0, 100, 60, 150]], np.float32)
    gt = coco_ground_truth([{"id": 3, "file_name": "a.jpg", "width": 200, "height": 160, "faces": faces,
                             "ignore": crowd}])
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]
    assert gt["annotations"][0]["bbox"] == [10, 10, 40, 50]
    hits = np.array([[10, 10, 50, 60, 0.9], [100, 20, 140, 70, 0.8]])
    on_crowd = np.array([[5, 105, 55, 145, 0.95]])
    perfect = evaluate_coco(gt, coco_detections(3, hits))
    assert perfect.stats["AP"] == pytest.approx(1.0) and perfect.stats["AR100"] == pytest.approx(1.0)
    # a detection inside the crowd region is ignored, not a false positive ...
    assert evaluate_coco(gt, coco_detections(3, np.vstack([on_crowd, hits]))).stats["AP"] == pytest.approx(1.0)
    # ... which it is without the region
    gt_plain = coco_ground_truth([{"id": 3, "file_name": "a.jpg", "width": 200, "height": 160, "faces": faces}])
    fp = evaluate_coco(gt_plain, coco_detections(3, np.vstack([on_crowd, hits])))
    assert fp.stats["AP"] < 0.9 and fp.num_ignore == 0
    # the numbers are pycocotools' own: the same files scored directly
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = coco_detections(3, np.vstack([on_crowd, hits[:1], [[120, 30, 180, 90, 0.7]]]))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    ours = evaluate_coco(gt, dets)
    g = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(g, g.loadRes(str(tmp_path / "dt.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [ours.stats[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100")] == pytest.approx(
        [ev.stats[i] for i in (0, 1, 2, 6, 7, 8)])
    assert 0 < ours.stats["AP50"] < 1 and "Average Precision" in ours.summary
    precision, recall = ours.pr_curves["IoU 0.50"]
    assert recall.shape == (101,) and np.nanmax(precision) == pytest.approx(1.0)
    nothing = evaluate_coco(gt, [])
    assert nothing.stats["AP"] == 0.0 and nothing.num_faces == 2


def test_eval_cli_scores_coco_results_and_rejects_bad_usage(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    from dsfd.cli import main

    _image(tmp_path / "img" / "a.jpg", 120, 160)
    path = _coco(tmp_path / "faces.json", [{"id": 7, "file_name": "a.jpg", "width": 160, "height": 120}],
                 [_ann(1, 7, [10, 10, 40, 50]), _ann(2, 7, [90, 20, 40, 40])])
    results = tmp_path / "dets.json"
    results.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [10, 10, 40, 50], "score": 0.9},
                                   {"image_id": 7, "category_id": 1, "bbox": [0, 60, 30, 30], "score": 0.95}]))
    out = tmp_path / "ev"
    assert main(["eval", "--data", str(path), "--images", str(tmp_path / "img"), "--coco-results", str(results),
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "coco_eval.json").read_text())
    # one of two faces found, after a false positive with a higher score: AR 0.5, AP50 0.5 x 0.5 interpolated
    assert res["AR100"] == pytest.approx(0.5) and res["format"] == "coco" and res["num_faces"] == 2
    assert 0.2 < res["AP50"] < 0.5 and (out / "pr_coco.png").stat().st_size > 0
    assert json.loads((out / "coco_ground_truth.json").read_text())["images"][0]["id"] == 7
    capsys.readouterr()
    for bad, msg in ((["--coco-results", str(results)], "--out DIR is needed"),
                     (["--out", str(out)], "give --weights W"),
                     (["--out", str(out), "--coco-results", str(results), "--category", "cat"], "category 'cat'"),
                     (["--out", str(out), "--weights", "default", "--coco-results", str(results)], "one of them")):
        assert main(["eval", "--data", str(path), "--images", str(tmp_path / "img")] + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("dsfd eval: error: ") and msg in err and "Traceback" not in err


def test_training_validates_on_a_yolo_val_split(tmp_path):
    from dsfd.training import TrainConfig, Trainer

    root = tmp_path / "y"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _image(root / "images" / split / f"{i}.jpg", 128, 160, seed=i)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{i}.txt").write_text("0 0.5 0.5 0.3 0.4\n")
    (root / "data.yaml").write_text("names:\n  0: face\n")
    cfg = TrainConfig(data=str(root), out=str(tmp_path / "run"), backbone="tiny", size=128, batch_size=2, iters=1,
                      workers=0, val_every=1, ckpt_every=0, progress=False, amp="none", category=["face"])
    tr = Trainer(cfg)
    assert [r.path for r in tr.train_dataset.annotations] == ["0.jpg", "1.jpg", "2.jpg"]
    assert tr.val_dataset.sources[0].image_dir == root / "images" / "val" and len(tr.val_dataset) == 2
    tr.train()
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [r for r in log if r["type"] == "val"]
    assert len(val) == 1 and val[0]["images"] == 2 and val[0]["second_num_pos"] > 0


def test_image_size_disagreeing_with_the_annotation_is_reported(tmp_path, caplog):
    _image(tmp_path / "images" / "a.jpg", 120, 160)
    path = _coco(tmp_path / "faces.json", [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 160}],
                 [_ann(1, 1, [10, 100, 20, 40])])
    ds = build_dataset(path)
    with caplog.at_level("WARNING", logger="dsfd.data.dataset"):
        _, boxes = ds.load(0)
        ds.load(0)
    warned = [r for r in caplog.records if "but its annotation says 120x160" in r.getMessage()]
    assert len(warned) == 1 and "is 160x120" in warned[0].getMessage()  # once per image
    np.testing.assert_array_equal(boxes, [[10, 100, 30, 120]])  # clipped to the real 160x120 pixels
