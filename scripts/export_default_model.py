"""Packages a trained checkpoint as the default model (dsfd/weights/default.pth).

Keeps only what inference needs ({"model": state_dict, "config": model config}),
with the FEM BatchNorms of a ``--fem-norm`` run folded into their convs (so the
file is the plain paper architecture), optionally in float16, and writes
dsfd/weights/default.json recording how the weights were made (training command, data, iterations, hardware, date, and the
evaluation numbers passed in).

    python scripts/export_default_model.py RUN_DIR/final.pt --log RUN_DIR/log.jsonl \
        --eval-json EVAL_DIR/ap.json --predictions EVAL_DIR/predictions [--stage-log EARLIER/log.jsonl] [--fp16]

``--predictions`` (the WIDER prediction folder ``dsfd eval`` wrote for the
val subset) chooses the model's drawing threshold: the raw score with the best
F1 of the boxes a plain ``dsfd detect`` keeps against *all* valid WIDER faces
(the hard list; ``--display-setting medium`` was the rule before 2026-12-07,
which left almost every small face below the threshold)
(:mod:`dsfd.evaluation.display`); it is stored in the checkpoint's config
(``display_score``, what ``Detector`` and ``dsfd detect`` draw from) with the
precision and recall there. The same folder chooses the model's *hiding*
threshold (``hide_score``, what ``dsfd detect --anonymize`` hides from): the
lowest threshold whose area cost -- the share of the photos' pixels outside
every face box that the anonymiser hides, boxes grown by its 0.2 margin --
stays within ``--hide-max-cost`` (0.10), so that as many faces as that cost
allows are hidden (:func:`dsfd.evaluation.display.choose_hide_threshold`);
it is recorded with the faces hidden by size there. The pretrained file a
run started from (``--pretrained``) is recorded with its sha256.

``--update`` re-chooses the hiding threshold of an already exported file
(the CHECKPOINT argument is that file) and stores it in place, in its config
and in its ``.json`` record, without touching the weights or the drawing
threshold (``--display-score`` sets that too)::

    dsfd eval --weights default --predictions runs/val_preds --out runs/val_eval --no-plots
    python scripts/export_default_model.py dsfd/weights/default.pth --update --predictions runs/val_preds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dsfd.models  # noqa: E402
from dsfd.hub import file_sha256  # noqa: E402


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def _hardware(start: dict) -> dict:
    """Where the run trained (its start record has the device; the CPU is read here: export on the same host)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"device": start.get("device"), "world_size": start.get("world_size"), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__}


def _train_command(run_args: dict) -> str:
    """The ``dsfd train`` command line of a run's arguments (non-default ones only)."""
    from dsfd.training import TrainConfig

    defaults = TrainConfig()
    parts = ["dsfd train"]
    for k, v in run_args.items():
        if k in ("resume", "stop_at", "progress") or v == getattr(defaults, k, object()):
            continue
        flag = "--lambda" if k == "lambda_" else "--" + ("weights" if k == "init_weights" else k.replace("_", "-"))
        if v is True:
            parts.append(flag)
        elif isinstance(v, list) and k == "data":
            parts.extend(f"{flag} {d}" for d in v)
        elif isinstance(v, list):
            parts.append(f"{flag} {','.join(map(str, v))}")
        else:
            parts.append(f"{flag} {v}")
    return " ".join(parts)


def _training_record(log: str) -> dict:
    """What one training run did, from its log.jsonl (the last start holds the final arguments)."""
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    starts = [r for r in rows if r.get("type") == "start"]
    start = starts[-1] if starts else {}
    train = [r for r in rows if r.get("type") == "train"]
    val = [r for r in rows if r.get("type") == "val"]
    run_args = start.get("args") or {}
    record = {
        "args": run_args,
        "command": _train_command(run_args),
        "data_roots": start.get("data_roots"),
        "starts": [{"iter": r.get("iter"), "iters": (r.get("args") or {}).get("iters"),
                    "lr_steps": (r.get("args") or {}).get("lr_steps"), "time": _iso(r["time"])}
                   for r in starts],
        "amp": start.get("amp"),
        "channels_last": start.get("channels_last"),
        "hardware": start.get("hardware") or _hardware(start),
        "wall_seconds": (rows[-1]["time"] - rows[0]["time"]) if rows else None,
        "started": _iso(rows[0]["time"]) if rows else None,
        "finished": _iso(rows[-1]["time"]) if rows else None,
        "iterations": train[-1]["iter"] if train else None,
        "images_per_s": (sum(r["images_per_s"] for r in train) / len(train)) if train else None,
        "first_train_loss": train[0]["total"] if train else None,
        "last_train_loss": train[-1]["total"] if train else None,
        "val_loss": [{"iter": r["iter"], "total": r["total"]} for r in val],
    }
    init = run_args.get("backbone_weights")
    if init:
        record["pretrained"] = {"spec": init}
        if os.path.isfile(init):
            record["pretrained"].update({"file": os.path.basename(init), "sha256": file_sha256(init),
                                         "bytes": os.path.getsize(init)})
    if run_args.get("init_weights"):
        record["initialised_from"] = run_args["init_weights"]
    return record


def _display_threshold(predictions: str, setting: str = "hard", min_precision: Optional[float] = 0.85) -> dict:
    """The drawing threshold from a WIDER prediction folder of the val subset: the lowest threshold whose
    drawn precision against ``setting``'s faces reaches ``min_precision`` (the most faces at that precision;
    ``None`` or unreachable: the highest F1), with the drawn precision / recall at it against the medium and
    the hard (all valid faces) lists."""
    from dsfd.evaluation import choose_display_threshold, drawn_precision_recall, load_wider_ground_truth
    from dsfd.io import read_prediction_folder

    preds, _ = read_prediction_folder(predictions)
    gt = load_wider_ground_truth()
    curve = drawn_precision_recall(preds, gt, setting)
    t = choose_display_threshold(curve, min_precision)
    lists = {s: drawn_precision_recall(preds, gt, s).at(t) for s in ("medium", "hard")}
    how = (f"the lowest t whose boxes scoring >= t reach precision {min_precision} (else the highest F1)"
           if min_precision is not None else "the highest F1 of the boxes scoring >= t")
    return {"rule": f"{how} against the WIDER {setting} faces of the val subset "
                    "(IoU 0.5; boxes on unlisted faces count neither way)",
            **curve.at(t),
            "at_threshold": lists,
            "curve": [{"threshold": float(x), "precision": round(float(p), 4), "recall": round(float(r), 4)}
                      for x, p, r in zip(curve.thresholds, curve.precision, curve.recall)]}


def _hide_threshold(predictions: str, max_cost: float) -> dict:
    """The hiding threshold from a WIDER prediction folder of the val subset (lowest with area cost <= max_cost)."""
    from dsfd.evaluation.display import choose_hide_threshold, hiding_curve, wider_hiding_ground_truth
    from dsfd.io import read_prediction_folder

    preds, _ = read_prediction_folder(predictions)
    curve = hiding_curve(preds, wider_hiding_ground_truth())
    t = choose_hide_threshold(curve, max_cost)
    return {"rule": f"lowest threshold whose area cost (share of the photos' pixels outside every WIDER face box "
                    f"hidden by the boxes scoring >= t, grown by the anonymiser's margin {curve.margin:g}) is <= "
                    f"{max_cost:g} on the val subset; a face counts as hidden when >= {curve.cover:g} of its box "
                    f"is covered; sizes by the shorter side of the box",
            "max_cost": max_cost, **curve.at(t),
            "curve": [{"threshold": float(x), "cost": round(float(c), 4),
                       **{b: round(float(v[k]), 4) for b, v in curve.hidden.items()}}
                      for k, (x, c) in enumerate(zip(curve.thresholds, curve.cost))]}


def _update(args: argparse.Namespace) -> int:
    """--update: re-choose the hiding threshold of an exported file and store it in place (weights untouched)."""
    path = Path(args.checkpoint)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = dict(ckpt.get("config") or {})
    # the drawing threshold stays as exported unless --display-score or --rechoose-display says otherwise
    drawing = (_display_threshold(args.predictions, args.display_setting, args.display_min_precision or None)
               if args.predictions and args.rechoose_display and args.display_score is None else None)
    hiding = _hide_threshold(args.predictions, args.hide_max_cost) if args.predictions and args.hide_score is None else None
    if args.display_score is not None or drawing is not None:
        config["display_score"] = float(args.display_score if args.display_score is not None else drawing["threshold"])
    if args.hide_score is not None or hiding is not None:
        config["hide_score"] = float(args.hide_score if args.hide_score is not None else hiding["threshold"])
    ckpt["config"] = config
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    dsfd.models.load_weights(path)  # still loads
    record_path = path.with_suffix(".json")
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        record["config"] = config
        record["bytes"] = path.stat().st_size
        record["sha256"] = file_sha256(path)  # dsfd.hub checks the packaged file against these two
        if drawing is not None:
            record["drawing"] = drawing
        if hiding is not None:
            record["hiding"] = hiding
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"file": str(path), "display_score": config.get("display_score"),
                      "hide_score": config.get("hide_score"),
                      "hidden_at_hide_score": hiding["hidden"] if hiding else None,
                      "cost_at_hide_score": hiding["cost"] if hiding else None}))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--log", help="the run's log.jsonl (its start record holds the training arguments)")
    p.add_argument("--eval-json", help="ap.json written by `dsfd eval`")
    p.add_argument("--eval-json-accuracy-mode", help="ap.json of `dsfd eval --accuracy-mode`")
    p.add_argument("--note", action="append", default=[], help="a sentence to record (repeatable)")
    p.add_argument("--fp16", action="store_true", help="store float16 weights (half the size)")
    p.add_argument("--predictions", help="WIDER prediction folder of the val subset: chooses the drawing threshold")
    p.add_argument("--display-score", type=float, help="the drawing threshold, instead of --predictions' choice")
    p.add_argument("--hide-score", type=float, help="the hiding threshold, instead of --predictions' choice")
    p.add_argument("--hide-max-cost", type=float, default=0.10,
                   help="--predictions chooses the lowest hiding threshold whose area cost is <= this (0.10)")
    p.add_argument("--update", action="store_true",
                   help="CHECKPOINT is an exported file: re-choose its hiding threshold from --predictions (and "
                        "set --display-score if given) and store them in place")
    p.add_argument("--rechoose-display", action="store_true",
                   help="with --update: choose the drawing threshold anew from --predictions (--display-setting)")
    p.add_argument("--display-min-precision", type=float, default=0.85,
                   help="the drawing threshold is the lowest whose drawn precision reaches this (0: the highest F1)")
    p.add_argument("--display-setting", default="hard", choices=["medium", "hard"],
                   help="whose faces the drawing threshold is chosen for (hard: all valid faces)")
    p.add_argument("--previous-record", help="default.json of the shipped weights this run fine-tuned: its stages are "
                   "kept as earlier stages (read it before the export overwrites it)")
    p.add_argument("--stage-log", action="append", default=[],
                   help="log.jsonl of an earlier stage this run continued from (repeatable, oldest first)")
    p.add_argument("--out", default=str(ROOT / "dsfd" / "weights" / "default.pth"))
    args = p.parse_args()
    if args.update:
        return _update(args)

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    model = dsfd.models.load_weights(args.checkpoint).eval()  # proves the checkpoint loads
    probe = torch.randn(1, 3, 192, 160, generator=torch.Generator().manual_seed(0)) * 50
    before = model.predict(probe)
    if hasattr(model, "fold_fem_norm"):
        model.fold_fem_norm()
    after = model.predict(probe)
    fold_error = float((after[0] - before[0]).abs().max())
    if fold_error > 1e-4:
        raise SystemExit(f"folding the FEM norms changed the face scores by {fold_error:.3g}")
    config = dict(model.config)
    drawing = _display_threshold(args.predictions, args.display_setting, args.display_min_precision or None) if args.predictions else None
    if args.display_score is not None or drawing is not None:
        config["display_score"] = float(args.display_score if args.display_score is not None
                                        else drawing["threshold"])
    hiding = _hide_threshold(args.predictions, args.hide_max_cost) if args.predictions else None
    if args.hide_score is not None or hiding is not None:
        config["hide_score"] = float(args.hide_score if args.hide_score is not None else hiding["threshold"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"model": state, "config": config}, tmp)
    os.replace(tmp, out)
    shipped = dsfd.models.load_weights(out).eval()  # what users will load
    shipped_error = float((shipped.predict(probe)[0] - before[0]).abs().max())

    record = {
        "file": out.name,
        "bytes": out.stat().st_size,
        "sha256": file_sha256(out),  # dsfd.hub checks the packaged file against size and digest
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float16" if args.fp16 else "float32",
        "config": config,
        "trained_config": ckpt["config"],
        "max_score_change_on_export": shipped_error,
        "iteration": ckpt.get("iteration"),
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exported_on": {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()},
    }
    if "ema" in ckpt:  # load_weights read the run's weight average (dsfd train --ema), not its live weights
        record["weight_average"] = {"decay": (ckpt.get("args") or {}).get("ema"), "updates": ckpt.get("ema_updates")}
    if args.log:
        record["training"] = _training_record(args.log)
    earlier = []
    if args.previous_record:  # the shipped default this run continued from: its stages stay on record
        prev = json.loads(Path(args.previous_record).read_text())
        earlier += list(prev.get("earlier_stages", [])) + ([prev["training"]] if prev.get("training") else [])
        record["previous_default"] = {k: prev.get(k) for k in ("sha256", "iteration", "exported", "evaluation")}
    earlier += [_training_record(log) for log in args.stage_log]
    if earlier:
        record["earlier_stages"] = earlier
    if drawing is not None:
        record["drawing"] = drawing
    if hiding is not None:
        record["hiding"] = hiding
    if args.eval_json:
        record["evaluation"] = json.loads(Path(args.eval_json).read_text())
    if args.eval_json_accuracy_mode:
        record["evaluation_accuracy_mode"] = json.loads(Path(args.eval_json_accuracy_mode).read_text())
    if args.note:
        record["notes"] = list(args.note)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("file", "bytes", "parameters", "dtype", "iteration")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
