"""ONNX export checked with ONNX Runtime (and OpenCV's DNN module) against PyTorch.

Skipped with a reason when onnx / onnxruntime are not installed
(``pip install onnx onnxruntime``; CI installs them via scripts/env.sh).
Networks: the packaged default model, a random-weight paper network and a
random-weight released network (tiny backbones, CPU, small photos).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need the onnx package (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="ONNX parity tests need onnxruntime (pip install onnxruntime)")

import cv2  # noqa: E402

import dsfd  # noqa: E402
from dsfd.data_paths import wider_root  # noqa: E402
from dsfd.export import OnnxDetector, export_onnx, match_detections, onnx_metadata  # noqa: E402
from dsfd.inference import Detector  # noqa: E402
from dsfd.models import calibrate_random_model  # noqa: E402
from dsfd.models import build_model, fem, load_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "dsfd" / "assets" / "grace_hopper.jpg"
# Export sample size; the photos below have other sizes, so every check also checks dynamic H / W.
SAMPLE = (320, 416)
MEAN = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
RTOL = 1e-4


def _photos():
    """Two real photos of two different sizes (neither is the export sample size)."""
    grace = cv2.imread(str(ASSET))
    out = [cv2.resize(grace, (208, 244), interpolation=cv2.INTER_AREA)]  # 244 x 208
    wider = sorted((wider_root() / "WIDER_val" / "images").glob("*/*.jpg"))
    if wider:
        img = cv2.imread(str(wider[0]))
        out.append(cv2.resize(img, (352, round(352 * img.shape[0] / img.shape[1])), interpolation=cv2.INTER_AREA))
    else:  # the WIDER photos are not here: a crop of the packaged photo at another size
        out.append(cv2.resize(grace[100:500, 50:450], (288, 224), interpolation=cv2.INTER_AREA))
    assert out[0].shape[:2] != out[1].shape[:2] and all(o.shape[:2] != SAMPLE for o in out)
    return out


PHOTOS = _photos()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _normalised(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() - MEAN


def _face(model, x):
    out = model(x)
    shot = out.second if hasattr(out, "second") else out.face
    return shot.loc, shot.conf, shot.anchors


def _rel(a, b):
    """``max |a - b| / max |b|``: the relative error of a whole output."""
    a = np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a, np.float64)
    b = np.asarray(b.numpy() if isinstance(b, torch.Tensor) else b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- models and files


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    paper = build_model("paper", "tiny")
    released = build_model("released", "tiny")
    return {
        "default": load_weights("default").eval(),
        # calibrated on the test photos: finite, spread-out scores like a trained detector's
        "paper": calibrate_random_model(paper, PHOTOS).eval(),
        "released": calibrate_random_model(released, PHOTOS).eval(),
    }


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name, outputs, input_format="uint8"):
        key = (name, outputs, input_format)
        if key not in cache:
            cache[key] = export_onnx(root / f"{name}_{outputs}_{input_format}.onnx", model=models[name],
                                     outputs=outputs, input_format=input_format, sample_size=SAMPLE)
        return cache[key]

    return get


# --------------------------------------------------------------------------- raw outputs


@pytest.mark.parametrize("name", ["default", "paper", "released"])
def test_raw_outputs_match_pytorch(name, models, exported):
    model = models[name]
    sess = _session(exported(name, "raw"))
    for img in PHOTOS:
        loc, conf, anchors = sess.run(None, {"images": img[None]})
        with torch.no_grad():
            rloc, rconf, ranchors = _face(model, _normalised(img))
        assert loc.shape == tuple(rloc.shape) and conf.shape == tuple(rconf.shape)
        assert _rel(loc, rloc) < RTOL and _rel(conf, rconf) < RTOL, (img.shape, _rel(loc, rloc), _rel(conf, rconf))
        # anchors are computed in the graph from the traced sizes, in float64 like the Python generator
        np.testing.assert_array_equal(anchors, ranchors.numpy())


def test_released_anchors_are_clipped(models, exported):
    """The released network clamps its anchors to [0, 1]; at a small input the 512 px anchors are clamped."""
    sess = _session(exported("released", "raw"))
    img = cv2.resize(PHOTOS[0], (96, 80))
    _, _, anchors = sess.run(None, {"images": img[None]})
    with torch.no_grad():
        ref = _face(models["released"], _normalised(img))[2].numpy()
    np.testing.assert_array_equal(anchors, ref)
    assert anchors.max() == 1.0 and anchors.min() >= 0.0


def test_dynamic_batch_gives_per_image_results(exported):
    sess = _session(exported("default", "raw"))
    img = PHOTOS[1]
    batch = np.stack([img, np.ascontiguousarray(img[:, ::-1])])
    loc_b, conf_b, _ = sess.run(None, {"images": batch})
    for i in range(2):
        loc_1, conf_1, _ = sess.run(None, {"images": batch[i : i + 1]})
        assert _rel(loc_b[i], loc_1[0]) < RTOL and _rel(conf_b[i], conf_1[0]) < RTOL


def test_float_nchw_input_matches_uint8(exported):
    a = _session(exported("default", "boxes"))
    b = _session(exported("default", "boxes", "float"))
    img = PHOTOS[0]
    boxes_u8, scores_u8 = a.run(None, {"images": img[None]})
    blob = cv2.dnn.blobFromImage(img)  # float32 [1, 3, H, W], BGR, no scaling / mean: the float layout
    boxes_f, scores_f = b.run(None, {"images": blob})
    np.testing.assert_allclose(boxes_f, boxes_u8, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores_f, scores_u8, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- boxes and NMS


@pytest.mark.parametrize("name", ["default", "paper"])
def test_boxes_match_pytorch_decoding(name, models, exported):
    from dsfd.models import decode_predictions

    sess = _session(exported(name, "boxes"))
    for img in PHOTOS:
        boxes, scores = sess.run(None, {"images": img[None]})
        with torch.no_grad():
            loc, conf, anchors = _face(models[name], _normalised(img))
            rscores, rboxes = decode_predictions(loc, conf, anchors)
        h, w = img.shape[:2]
        rboxes = rboxes * torch.tensor([w, h, w, h])
        assert _rel(boxes, rboxes) < RTOL and _rel(scores, rscores) < RTOL


def _torchvision_postprocess(boxes, scores, size, score_threshold=0.01, iou_threshold=0.3, pre_nms_top_k=5000,
                            max_keep=750):
    """The PyTorch side: the detector's post-processing with torchvision.ops.nms, one image."""
    torchvision = pytest.importorskip("torchvision")
    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    order = torch.sort(s, descending=True, stable=True).indices[:pre_nms_top_k]
    order = order[s[order] > score_threshold]
    keep_idx = order[torchvision.ops.nms(b[order], s[order], iou_threshold)][:max_keep]
    h, w = size
    kb = b[keep_idx].clone()
    kb[:, 0::2] = kb[:, 0::2].clamp(0, w)
    kb[:, 1::2] = kb[:, 1::2].clamp(0, h)
    return torch.cat([kb, s[keep_idx, None]], 1).numpy()


@pytest.mark.parametrize("name", ["default", "paper", "released"])
def test_onnx_nms_matches_pytorch_postprocessing(name, exported):
    """ONNX NonMaxSuppression (with top-k, score threshold, keep-k, clipping) = torchvision on the same boxes."""
    boxes_sess = _session(exported(name, "boxes"))
    det_sess = _session(exported(name, "detections"))
    for img in PHOTOS:
        batch = np.stack([img, np.ascontiguousarray(img[::-1])])  # two images: per-image NMS
        (dets,) = det_sess.run(None, {"images": batch})
        boxes, scores = boxes_sess.run(None, {"images": batch})
        assert dets.shape[1] == 6 and np.all(np.diff(dets[:, 0]) >= 0)  # grouped by image
        for i in range(2):
            got = dets[dets[:, 0] == i][:, 1:]
            assert np.all(np.diff(got[:, 4]) <= 0)  # decreasing score within an image
            ref = _torchvision_postprocess(boxes[i], scores[i], img.shape[:2])
            assert 0 < len(ref) and got.shape == ref.shape
            # the same boxes: identical selection, identical values (same decoded inputs)
            np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], ref[np.lexsort(ref.T[::-1])])


@pytest.mark.parametrize("name", ["default", "paper", "released"])
def test_detections_match_detector(name, models, exported):
    """End to end: ONNX Runtime's final boxes are dsfd.Detector's (PyTorch, fp32) for the same photo."""
    det_sess = _session(exported(name, "detections"))
    detector = Detector(model=models[name], device="cpu", dtype=torch.float32)
    for img in PHOTOS:
        (dets,) = det_sess.run(None, {"images": img[None]})
        ref = detector.detect(img, min_score=None)
        dets = dets[(dets[:, 3] > dets[:, 1]) & (dets[:, 4] > dets[:, 2])]  # the detector drops clipped-away boxes
        ref6 = np.concatenate([np.zeros((len(ref), 1), np.float32), ref], 1)
        m = match_detections(dets, ref6)
        assert m["count"][0] == m["count"][1] > 0, m
        # float32 noise of two runtimes (measured: <= 6e-4 px, <= 1.2e-5 in score)
        assert m["max_box_diff_px"] < 1e-2 and m["max_score_diff"] < 1e-4, m


def test_eager_wrapper_matches_graph(models, exported):
    """OnnxDetector also runs in PyTorch, with the same outputs as the exported graph."""
    sess = _session(exported("paper", "detections"))
    wrapper = OnnxDetector(models["paper"], outputs="detections")
    img = PHOTOS[0]
    (dets,) = sess.run(None, {"images": img[None]})
    with torch.no_grad():
        (eager,) = wrapper(torch.from_numpy(img[None]))
    m = match_detections(dets, eager.numpy())
    assert m["count"][0] == m["count"][1] and m["max_box_diff_px"] < 1e-3


# --------------------------------------------------------------------------- the file itself


def test_graph_has_only_standard_ops_and_metadata(exported):
    path = exported("default", "detections")
    m = onnx.load(str(path))
    domains = {n.domain for n in m.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    ops = {n.op_type for n in m.graph.node}
    assert "NonMaxSuppression" in ops and not any("dsfd" in op.lower() for op in ops)
    inp = m.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "images" and dims == ["batch", "height", "width", 3]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = onnx_metadata(path)
    assert meta["config"]["network"] == "paper" and meta["outputs"]["names"] == ["detections"]
    assert meta["input"]["channels"] == "BGR" and meta["outputs"]["iou_threshold"] == 0.3


def test_export_switches_the_fused_op_off_and_restores_it(models, tmp_path, monkeypatch):
    import dsfd.ops

    seen = []
    real = dsfd.ops.reference.upsample_mul

    def spy(*a, **k):
        seen.append(dsfd.ops.backend())
        return real(*a, **k)

    monkeypatch.setattr(dsfd.ops.reference, "upsample_mul", spy)
    before = dsfd.ops.backend()
    export_onnx(tmp_path / "m.onnx", model=models["default"], outputs="raw", sample_size=(64, 64))
    assert seen and all(b == "reference" for b in seen)
    assert dsfd.ops.backend() == before


def test_export_keeps_the_models_mode_and_device_dtype(tmp_path):
    model = load_weights("default").train()
    export_onnx(tmp_path / "t.onnx", model=model, outputs="raw", sample_size=(64, 64))
    assert model.training
    half = load_weights("default").to(torch.bfloat16)  # exported as float32, the model is left as it is
    path = export_onnx(tmp_path / "h.onnx", model=half, outputs="raw", sample_size=(64, 64))
    assert next(half.parameters()).dtype == torch.bfloat16
    loc, _, _ = _session(path).run(None, {"images": PHOTOS[0][None]})
    with torch.no_grad():  # the bf16-rounded weights, in float32
        ref = _face(load_weights("default").to(torch.bfloat16).float(), _normalised(PHOTOS[0]))[0]
    assert _rel(loc, ref) < RTOL


def test_export_rejects_bad_options(models, tmp_path):
    with pytest.raises(ValueError, match="outputs"):
        export_onnx(tmp_path / "x.onnx", model=models["default"], outputs="nms")
    with pytest.raises(ValueError, match="input_format"):
        export_onnx(tmp_path / "x.onnx", model=models["default"], input_format="rgb")
    with pytest.raises(ValueError, match="either weights or model"):
        export_onnx(tmp_path / "x.onnx", "default", model=models["default"])


def test_export_a_detector_and_the_top_level_name(tmp_path):
    det = Detector(device="cpu", dtype=torch.float32)
    path = dsfd.export_onnx(tmp_path / "d.onnx", model=det, outputs="raw", sample_size=(64, 64))
    assert onnx_metadata(path)["weights"].endswith("default.pth")


def test_cli_export_and_verify(tmp_path, capsys):
    from dsfd.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(out), "--weights", "default", "--nms", "--verify", "--sample-size", "96", "128"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and '"ok": true' in text and "detections" in text
    assert main(["export", str(tmp_path / "r.onnx"), "--random", "--network", "released", "--backbone", "tiny",
                 "--outputs", "raw", "--input-format", "float", "--verify", "--sample-size", "64", "64"]) == 0


def test_cli_export_reports_unknown_weights(tmp_path, capsys):
    from dsfd.cli import main

    assert main(["export", str(tmp_path / "x.onnx"), "--weights", "no-such-weights"]) == 2
    assert "known weights name" in capsys.readouterr().err


# --------------------------------------------------------------------------- OpenCV DNN


@pytest.mark.parametrize("input_format", ["float", "uint8"])
def test_opencv_dnn_runs_the_exported_file(input_format, exported):
    if not hasattr(cv2, "dnn") or int(cv2.__version__.split(".")[0]) < 5:
        pytest.skip(f"OpenCV {cv2.__version__}: the exported graph (dynamic shapes) needs OpenCV 5's DNN engine")
    path = exported("default", "boxes", input_format)
    img = PHOTOS[1]
    blob = cv2.dnn.blobFromImage(img) if input_format == "float" else img[None]
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(blob)
    boxes, scores = net.forward(["boxes", "scores"])
    ref_boxes, ref_scores = _session(path).run(None, {"images": blob})
    assert _rel(boxes, ref_boxes) < RTOL and _rel(scores, ref_scores) < RTOL
