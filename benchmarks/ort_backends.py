"""WIDER AP and drawn precision / recall of the packaged model on each backend: torch fp32 / bf16, ONNX Runtime fp32 / int8.

Every path runs the same command a user types, on the shared WIDER FACE val
subset (145 photos of events 0-1, full size, one pass)::

    dsfd eval --weights W --backend torch       --dtype float32  ...   # torch-fp32
    dsfd eval --weights W --backend torch       --dtype bfloat16 ...   # torch-bf16
    dsfd eval --weights W --backend onnxruntime ...                    # ort-fp32 (PyTorch weights exported once)
    dsfd export <work>/dsfd_int8.onnx --int8 --weights W                # the int8 file, one command
    dsfd eval --weights <work>/dsfd_int8.onnx --backend onnxruntime ... # ort-int8

then scores the boxes each path draws (at the model's own drawing threshold)
against the WIDER *medium* faces, as ``benchmarks/drawn_boxes.py`` does.
Not a timing benchmark (time per photo: ``benchmarks/yunet_compare.py
--backend ...``). Results merge into the JSON by path, so a run of some paths
(``--paths ort-fp32 ort-int8``) keeps the others'; each entry records its
date and the weights' SHA-256, the file the CPU (model name, VNNI / AMX
flags), the library versions and the commands.

    python benchmarks/ort_backends.py [--weights default] [--paths torch-fp32 torch-bf16 ort-fp32 ort-int8]
                                      [--out benchmarks/results/ort_backends_vm.json]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-int8")


def cpu_info() -> Dict[str, Any]:
    """lscpu's model name and the int8 / bf16 instruction flags of this CPU."""
    flags: List[str] = []
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", "x86_64"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
    return {"model_name": model, "cores": os.cpu_count(), "flags": {k: k in flags for k in wanted},
            "vnni": "avx512_vnni" in flags or "avx_vnni" in flags, "amx": "amx_int8" in flags}


def versions() -> Dict[str, Any]:
    out: Dict[str, Any] = {"python": platform.python_version()}
    for mod in ("torch", "onnxruntime", "onnx", "numpy", "cv2", "dsfd"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            out[mod] = None
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def weights_sha256(weights: str) -> Optional[str]:
    from dsfd.models import default_weights_path

    path = Path(default_weights_path()) if weights == "default" else Path(weights)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dsfd_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "dsfd", *args]


def run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def drawn(pred_dir: Path, threshold: float, setting: str = "medium") -> Dict[str, Any]:
    from dsfd.evaluation import drawn_precision_recall, load_wider_ground_truth
    from dsfd.io import read_prediction_folder

    preds, _ = read_prediction_folder(pred_dir)
    return drawn_precision_recall(preds, load_wider_ground_truth(), setting).at(threshold)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="default", help="PyTorch weights (default: the packaged default model)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--data", default=None, help="WIDER FACE root (default: dsfd's, ../shared/data/widerface)")
    p.add_argument("--work", default=str(ROOT / "runs" / "ort_backends"), help="predictions and the int8 file")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ort_backends_vm.json"))
    args = p.parse_args(argv)
    from dsfd.data_paths import wider_root
    from dsfd.models import load_weights

    data = args.data or str(wider_root())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    display = float(getattr(load_weights(args.weights), "display_score", None) or 0.5)
    out = Path(args.out)
    result: Dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    result.update({"benchmark": "ort_backends", "data": "WIDER FACE val subset (events 0-1), full size, one pass",
                   "drawn_setting": "medium", "hardware": cpu_info(), "versions": versions()})
    rows = result.setdefault("results", {})
    sha = weights_sha256(args.weights)
    for name in args.paths:
        commands: List[str] = []
        weights = args.weights
        backend = "onnxruntime" if name.startswith("ort") else "torch"
        extra: List[str] = []
        if name == "ort-int8":
            weights = str(work / "dsfd_int8.onnx")
            cmd = dsfd_cmd("export", weights, "--int8", "--weights", args.weights)
            run(cmd)
            commands.append(" ".join(["dsfd", *cmd[3:]]))
        elif name.startswith("torch"):
            extra = ["--dtype", "float32" if name == "torch-fp32" else "bfloat16"]
        cmd = dsfd_cmd("eval", "--weights", weights, "--backend", backend, *extra, "--data", data,
                       "--out", str(work / name), "--no-progress", "--no-plots")
        run(cmd)
        commands.append(" ".join(["dsfd", *cmd[3:]]))
        ap = json.loads((work / name / "ap.json").read_text())["ap"]
        rows[name] = {"ap": {k: round(float(v), 4) for k, v in ap.items()},
                      "drawn": drawn(work / name / "predictions", display), "display_score": display,
                      "weights": args.weights, "weights_sha256": sha, "commands": commands,
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        r = rows[name]
        print(f"{name:11s} AP {r['ap']['easy']:.4f} / {r['ap']['medium']:.4f} / {r['ap']['hard']:.4f}   drawn "
              f"P {r['drawn']['precision']:.3f} R {r['drawn']['recall']:.3f}", flush=True)
    ref = rows.get("torch-fp32")
    if ref is not None:
        for name, r in rows.items():
            if name != "torch-fp32" and r.get("weights_sha256") == ref.get("weights_sha256"):
                r["ap_minus_torch_fp32"] = {k: round(r["ap"][k] - ref["ap"][k], 4) for k in ref["ap"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
