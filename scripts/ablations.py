"""Re-run the paper's ablations on a small budget: train each switch setting, evaluate, tabulate.

Every variant is the same small network (the default model's backbone,
started from the default model's backbone weights: the stand-in for the
paper's ImageNet start; ``--backbone`` picks another; the committed table was
measured with the ``lite`` default of 2026-12-01), the
same data, schedule and seed; only the ablation switches differ. Runs go one
after another into ``--runs`` (each resumable: rerunning the script continues
an interrupted run and skips finished ones), each followed by a one-pass
WIDER val evaluation. The results land in ``--json``; ``--table`` prints the
table of docs/training.md (measured deltas next to the paper's).

    python scripts/ablations.py --runs /work/runs/ablations --iters 400
    python scripts/ablations.py --runs /work/runs/ablations --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]

#: name -> (``dsfd train`` switches, what it is). In run order: the most informative first.
VARIANTS: Dict[str, List[str]] = {
    "full": [],                                   # FSSD + FEM + PAL + IAM (the paper's DSFD)
    "fssd": ["--fssd"],                           # one shot on the backbone maps
    "no_pal": ["--no-pal"],                       # FSSD + FEM (one shot on the FEM output)
    "no_das": ["--no-data-anchor-sampling"],      # IAM's data side off
    "full_seed1": ["--seed", "1"],                # the noise floor (also: --seed 1 for every variant)
    "s3fd_matching": ["--matching", "s3fd"],      # IAM's matching replaced by S3FD's
    "no_fem": ["--no-fem"],                       # plain dual shot (no FEM); last: the least central
}

DESCRIPTIONS = {
    "full": "full DSFD (FEM + PAL + IAM)",
    "fssd": "FSSD baseline (no FEM, no PAL)",
    "no_pal": "FSSD + FEM (no PAL)",
    "no_das": "DSFD without data-anchor-sampling",
    "full_seed1": "full DSFD, seed 1",
    "s3fd_matching": "DSFD with S3FD matching (IoU 0.35 + compensation)",
    "no_fem": "DSFD without FEM (plain dual shot)",
}

#: The paper's deltas (WIDER val easy / medium / hard, points), for the table.
PAPER = {
    "FEM (FSSD -> FSSD+FEM, VGG16)": ("fssd", "no_pal", (0.4, 1.2, 5.5)),
    "PAL (FSSD+FEM -> +PAL, Res50)": ("no_pal", "full", (0.3, 0.3, 0.6)),
    "IAM data-anchor-sampling (Res101)": ("no_das", "full", (0.3, 0.1, 0.3)),
    "IAM matching (S3FD -> IAM)": ("s3fd_matching", "full", None),
    "FEM in the dual shot": ("no_fem", "full", None),
    "seed (noise floor)": ("full_seed1", "full", None),
}


def run_name(variant: str, seed: int) -> str:
    """Folder of one run: the variant's name for seed 0, ``<variant>_s<seed>`` otherwise."""
    if seed == 0:
        return variant
    return "full_seed1" if (variant, seed) == ("full", 1) else f"{variant}_s{seed}"


def train_args(name: str, a: argparse.Namespace) -> List[str]:
    data = sum((["--data", d] for d in a.data), [])
    return [
        sys.executable, "-m", "dsfd", "train", *data,
        "--backbone", a.backbone, "--fem-norm", "--init-backbone", a.init_backbone,
        "--batch-size", str(a.batch_size), "--iters", str(a.iters), "--size", str(a.size),
        "--lr", str(a.lr), "--warmup-iters", str(max(1, a.iters // 12)), "--clip-grad", "10",
        "--workers", "1", "--val-every", "0", "--ckpt-every", "100", "--log-every", "20",
        "--no-progress", "--resume", "auto", "--out", str(Path(a.runs) / run_name(name, a.seed)),
        *VARIANTS[name], *(["--seed", str(a.seed)] if a.seed else []),
    ]


def eval_args(name: str, a: argparse.Namespace) -> List[str]:
    run = Path(a.runs) / run_name(name, a.seed)
    return [
        sys.executable, "-m", "dsfd", "eval", "--weights", str(run / "final.pt"), "--data", a.data[0],
        "--split", "val", "--out", str(run / "eval"), "--no-plots", "--no-progress",
    ]


def run_variant(name: str, a: argparse.Namespace) -> None:
    run = Path(a.runs) / run_name(name, a.seed)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / "final.pt").exists():
        t0 = time.time()
        with open(run / "train.out", "a") as log:
            subprocess.run(train_args(name, a), cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"[{name}] trained in {time.time() - t0:.0f} s", flush=True)
    if not (run / "eval" / "ap.json").exists():
        t0 = time.time()
        subprocess.run(eval_args(name, a), cwd=REPO, check=True)
        print(f"[{name}] evaluated in {time.time() - t0:.0f} s", flush=True)


def _run_record(run: Path) -> Optional[Dict[str, object]]:
    ap_file, log_file = run / "eval" / "ap.json", run / "log.jsonl"
    if not ap_file.exists():
        return None
    ap = json.loads(ap_file.read_text())["ap"]
    start = stop = None
    for line in log_file.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "start" and start is None:
            start = rec
        if rec.get("type") == "stop":
            stop = rec
    return {
        "ap": {k: round(v, 4) for k, v in ap.items()},
        "seed": (start or {}).get("args", {}).get("seed"),
        "parameters": start.get("parameters") if start else None,
        "config": start.get("config") if start else None,
        # wall time from the first start to the last stop (shared machine: not a speed measure)
        "train_wall_seconds": round(stop["time"] - start["time"]) if start and stop else None,
    }


def collect(a: argparse.Namespace) -> Dict[str, object]:
    """Every finished run, grouped by variant (seed 0 and any further seeds)."""
    results: Dict[str, object] = {}
    for name in VARIANTS:
        if name == "full_seed1":
            continue  # folded into "full" as its seed 1
        runs = []
        for seed in range(0, 10):
            r = _run_record(Path(a.runs) / run_name(name, seed))
            if r is not None:
                runs.append(r)
        if not runs:
            continue
        mean = {k: round(sum(r["ap"][k] for r in runs) / len(runs), 4) for k in ("easy", "medium", "hard")}  # type: ignore[index]
        results[name] = {"description": DESCRIPTIONS[name], "switches": VARIANTS[name], "runs": runs, "mean_ap": mean}
    return results


def table(results: Dict[str, object]) -> str:
    def ap(n: str) -> Optional[List[float]]:
        r = results.get(n)
        return None if r is None else [100 * r["mean_ap"][k] for k in ("easy", "medium", "hard")]  # type: ignore[index]

    def spread(runs: List[Dict[str, object]]) -> str:
        if len(runs) < 2:
            return "-"
        return " / ".join(
            f"{100 * (max(x['ap'][k] for x in runs) - min(x['ap'][k] for x in runs)):.1f}"  # type: ignore[index]
            for k in ("easy", "medium", "hard")
        )

    lines = ["| variant | seeds | easy | medium | hard | seed spread (max - min) |", "|---|---|---|---|---|---|"]
    for n, r in results.items():
        v = ap(n)
        runs = r["runs"]  # type: ignore[index]
        lines.append(f"| {DESCRIPTIONS[n]} | {len(runs)} | {v[0]:.1f} | {v[1]:.1f} | {v[2]:.1f} | {spread(runs)} |")
    lines += ["", "| change | measured delta (easy / medium / hard) | paper delta |", "|---|---|---|"]
    for label, (lo, hi, paper) in PAPER.items():
        if label.startswith("seed"):
            continue
        a, b = ap(lo), ap(hi)
        if a is None or b is None:
            continue
        d = " / ".join(f"{y - x:+.1f}" for x, y in zip(a, b))
        p = " / ".join(f"{x:+.1f}" for x in paper) if paper else "-"
        lines.append(f"| {label} | {d} | {p} |")
    full = results.get("full")
    if full and len(full["runs"]) > 1:  # type: ignore[index]
        lines.append(f"| noise: full DSFD, max - min over {len(full['runs'])} seeds | "  # type: ignore[index]
                     f"{spread(full['runs'])} | - |")  # type: ignore[index]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="folder for the runs")
    p.add_argument("--data", action="append", default=None,
                   help="training roots (default: ../shared/data/widerface and widerface_extra); "
                        "the first root's val split is evaluated")
    p.add_argument("--init-backbone", default=str(REPO / "dsfd" / "weights" / "default.pth"))
    p.add_argument("--backbone", default=None,
                   help="backbone of every variant (default: the --init-backbone checkpoint's own)")
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0, help="training seed (runs of seed S > 0 go to <variant>_s<S>)")
    p.add_argument("--only", nargs="*", choices=list(VARIANTS), help="run only these variants")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "ablations_vm.json"))
    p.add_argument("--table", action="store_true", help="only collect the results and print the table")
    a = p.parse_args(argv)
    shared = REPO.parent / "shared" / "data"
    a.data = a.data or [str(shared / "widerface"), str(shared / "widerface_extra")]
    if not a.table:
        if a.backbone is None:  # the checkpoint's own backbone, so that --init-backbone fits it
            from dsfd.models.checkpoint_reader import read_checkpoint

            a.backbone = (read_checkpoint(a.init_backbone)[1] or {}).get("backbone", "lite")
        for name in a.only or list(VARIANTS):
            run_variant(name, a)
    results = collect(a)
    Path(a.json).write_text(json.dumps({
        "what": "ablations on a small budget: same network, data, schedule and seed; only the switches differ",
        "date": time.strftime("%Y-%m-%d"),
        "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "budget": {"iters": a.iters, "batch_size": a.batch_size, "size": a.size, "lr": a.lr,
                   "init_backbone": os.path.relpath(a.init_backbone, REPO), "data": a.data},
        "evaluation": "WIDER FACE val subset (145 images), one full-size pass, official protocol",
        "results": results,
    }, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
