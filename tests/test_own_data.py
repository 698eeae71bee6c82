"""The worked example of docs/own_data.md, end to end on real photos (issue #25).

A small data set is made from WIDER FACE training photos and written in COCO
form (faces plus a ``person`` category to filter out) and in YOLO form; the
packaged default model is fine-tuned a few iterations on both at once, from
``--weights default`` (architecture from the checkpoint, whatever backbone it
has), scored with pycocotools on each form, exported to ONNX and run by
``dsfd detect``. Plus: architecture-from-checkpoint for every backbone,
conflicting flags, ``--freeze-backbone``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dsfd.cli import main
from dsfd.constants import BACKBONES
from dsfd.data import WiderFaceDataset, write_coco, write_yolo
from dsfd.data_paths import wider_root
from dsfd.models import build_model, checkpoint_architecture, load_weights
from dsfd.training import TrainConfig, load_checkpoint
from dsfd.training.model_setup import build_training_model

WIDER = wider_root()
needs_wider = pytest.mark.skipif(
    not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file(),
    reason=f"WIDER FACE training data not found under {WIDER} (set DSFD_WIDER_ROOT)",
)


def _iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """Photos with 1-3 faces of 40 px or more, as COCO (+ a person category) and as YOLO."""
    if not (WIDER / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file():
        pytest.skip(f"WIDER FACE training data not found under {WIDER} (set DSFD_WIDER_ROOT)")
    root = tmp_path_factory.mktemp("own")
    wider = WiderFaceDataset(WIDER, "train")
    pick = [i for i, a in enumerate(wider.annotations)
            if 1 <= len(a.boxes) <= 3 and (a.boxes[:, 2:] - a.boxes[:, :2]).min() >= 40][:6]
    assert len(pick) == 6
    coco = write_coco(wider, root / "coco" / "faces.json", image_paths="absolute", indices=pick)
    data = json.loads(coco.read_text())
    data["categories"].append({"id": 2, "name": "person"})
    for a in list(data["annotations"]):  # a "person" box around every face: must not be read as a face
        x, y, w, h = a["bbox"]
        data["annotations"].append({**a, "id": a["id"] + 1000, "category_id": 2, "bbox": [x - w, y, 3 * w, 4 * h]})
    coco.write_text(json.dumps(data))
    yolo = write_yolo(wider, root / "yolo", images="link", indices=pick)
    faces = {wider.annotations[i].path: wider.load(i)[1] for i in pick}
    return {"root": root, "coco": coco, "yolo": yolo, "faces": faces, "n_faces": sum(len(f) for f in faces.values())}


def test_worked_example_fine_tune_evaluate_export_detect(own_data, tmp_path, capsys):
    root, coco, yolo = own_data["root"], own_data["coco"], own_data["yolo"]
    run = tmp_path / "ft"
    # 1. fine-tune the packaged default model on both forms at once (a few iterations at a small size)
    assert main(["train", "--data", str(coco), "--data", str(yolo), "--weights", "default", "--iters", "3",
                 "--lr", "1e-4", "--warmup-iters", "1", "--size", "160", "--batch-size", "2", "--workers", "0",
                 "--val-every", "0", "--log-every", "1", "--no-progress", "--out", str(run)]) == 0
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    n = own_data["n_faces"]
    assert start["data_roots"] == [
        {"root": str(coco), "format": "coco", "images": 6, "boxes": n, "skipped": {}},
        {"root": str(yolo), "format": "yolo", "images": 6, "boxes": n, "skipped": {}},
    ]
    default_arch = checkpoint_architecture("default")
    assert {k: start["config"][k] for k in default_arch} == default_arch  # whatever backbone default has
    assert load_checkpoint(run / "last.pt")["data"]["roots"] == start["data_roots"]
    tuned_model, base_model = load_weights(run / "final.pt"), load_weights("default")
    assert tuned_model.state_dict().keys() == base_model.state_dict().keys()
    tuned, base = dict(tuned_model.named_parameters()), dict(base_model.named_parameters())
    moved = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any(k.startswith("backbone.") for k in moved) and any(k.startswith("second_shot_head.") for k in moved)
    # the whole network was trained, a little, from the default weights (3 steps at lr 1e-4)
    assert max((tuned[k] - base[k]).abs().max().item() for k in moved) < 0.01

    # 2. COCO metrics through pycocotools, on the COCO form and on the YOLO form of the same faces
    pytest.importorskip("pycocotools")
    results = {}
    for name, data in (("coco", coco), ("yolo", yolo)):
        out = tmp_path / f"eval_{name}"
        assert main(["eval", "--weights", str(run / "final.pt"), "--data", str(data), "--out", str(out),
                     "--no-progress"]) == 0
        results[name] = json.loads((out / "coco_eval.json").read_text())
        assert results[name]["num_faces"] == n and results[name]["num_images"] == 6
        assert (out / "pr_coco.png").stat().st_size > 0
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert results["coco"][k] == pytest.approx(results["yolo"][k], abs=1e-3), k
    assert results["coco"]["AP50"] > 0.5 and results["coco"]["AR100"] > 0.4  # large faces: the model finds them
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(tmp_path / "eval_coco" / "coco_ground_truth.json"))
    ev = COCOeval(gt, gt.loadRes(str(tmp_path / "eval_coco" / "coco_results.json")), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert [results["coco"][k] for k in ("AP", "AP50", "AR100")] == pytest.approx([ev.stats[i] for i in (0, 1, 8)])

    # 3. ONNX export of the fine-tuned weights, checked in ONNX Runtime against PyTorch
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "faces.onnx"
    assert main(["export", str(onnx_path), "--weights", str(run / "final.pt"), "--verify"]) == 0
    assert onnx_path.stat().st_size > 1_000_000

    # 4. dsfd detect with the fine-tuned weights finds the annotated faces of a photo
    path, faces = next(iter(own_data["faces"].items()))
    photo = WIDER / "WIDER_train" / "images" / path
    capsys.readouterr()
    assert main(["detect", str(photo), "--weights", str(run / "final.pt"), "--out", str(tmp_path / "det"),
                 "--no-draw", "--no-progress"]) == 0
    dets = json.loads((tmp_path / "det" / (Path(path).stem + ".json")).read_text())["detections"]
    assert any(_iou(d["box"], f) >= 0.5 for d in dets for f in faces.tolist())


def test_fine_tune_flags_and_errors(own_data, tmp_path, capsys):
    coco = own_data["coco"]
    common = ["train", "--data", str(coco), "--weights", "default", "--iters", "2", "--size", "160",
              "--batch-size", "2", "--workers", "0", "--val-every", "0", "--no-progress"]
    # --freeze-backbone: the backbone (and its BatchNorm statistics) stays the default's, the rest trains
    assert main(common + ["--freeze-backbone", "--lr", "1e-3", "--out", str(tmp_path / "frozen")]) == 0
    tuned, base = load_weights(tmp_path / "frozen" / "final.pt").state_dict(), load_weights("default").state_dict()
    for k in base:
        if k.startswith("backbone."):
            assert torch.equal(tuned[k], base[k]), k
    assert any(not torch.equal(tuned[k], base[k]) for k in base if not k.startswith("backbone."))
    # a CLI error is a message and exit 2, never a traceback
    other = next(b for b in BACKBONES if b != checkpoint_architecture("default")["backbone"])
    capsys.readouterr()
    for extra, msg in ((["--backbone", other], f"--backbone {other} (the weights are"),
                       (["--no-fem"], "--no-fem (the weights have fem=True)"),
                       (["--pretrained", str(coco)], "exclude each other"),
                       (["--category", "dog"], "category 'dog' is not in")):
        assert main(common + extra + ["--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dsfd train: error: ") and msg in err and "Traceback" not in err, err
    assert main(["train", "--data", str(coco), "--weights", "no-such-weights", "--out", str(tmp_path / "bad")]) == 2
    assert "no-such-weights" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "last.pt").exists()


@needs_wider
def test_issue_command_fine_tunes_default_on_wider(tmp_path):
    """``dsfd train --data ../shared/data/widerface --weights default`` (was a CheckpointError traceback)."""
    assert main(["train", "--data", str(WIDER), "--weights", "default", "--iters", "1", "--size", "160",
                 "--batch-size", "2", "--train-images", "2", "--workers", "0", "--val-every", "0",
                 "--no-progress", "--out", str(tmp_path)]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["backbone"] == checkpoint_architecture("default")["backbone"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_architecture_comes_from_the_checkpoint_for_every_backbone(backbone, tmp_path):
    kw = {} if backbone in ("mobilenet0.25", "mobilenetv2") else {"width_mult": 0.125}
    if backbone == "mobilenetv2":
        pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = build_model("paper", backbone, fem_norm=True, **kw)
    path = tmp_path / "ck.pt"
    torch.save({"model": model.state_dict(), "config": dict(model.config)}, path)
    arch = checkpoint_architecture(path)
    assert arch["network"] == "paper" and arch["backbone"] == backbone and arch["fem_norm"] is True
    built, frozen = build_training_model(TrainConfig(init_weights=str(path)))
    assert built.training and built.config == model.config and not frozen
    own = built.state_dict()
    assert own.keys() == model.state_dict().keys()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    # the architecture is the checkpoint's: flags that say otherwise are refused, naming them
    with pytest.raises(ValueError, match=r"--width-mult 0.5 \(the weights have"):
        build_training_model(TrainConfig(init_weights=str(path), width_mult=0.5))
