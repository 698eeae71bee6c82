#!/usr/bin/env python
"""Mutation check: do the tests notice small deliberate bugs?

Run by hand, not in CI::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/mutants.py            # every mutant
    .venv/bin/python scripts/mutants.py --list                       # names, files, tests
    .venv/bin/python scripts/mutants.py match-positive-gt wider-iou-gt
    .venv/bin/python scripts/mutants.py --keep-going                 # run each mutant's tests to the end

For each named mutant the script copies the package (``dsfd/``, with the
already built ``dsfd/_C*.so``), ``tests/`` and ``pyproject.toml`` into a
temporary folder, applies the mutant there as an exact text substitution
(each "before" text must occur exactly once, so a mutant that no longer
applies is reported instead of silently testing the unmutated code), runs
the mutant's tests with pytest from that folder (so ``import dsfd`` finds
the copy; this is checked), and reports ``KILLED`` (some test failed) or
``SURVIVED`` (all passed). The working tree is never modified. Before the
mutants, the same tests run once on an unmutated copy (``--no-baseline``
skips this): a test that fails there would "kill" every mutant.

The data and fixture folders are passed to the copy through
``DSFD_WIDER_ROOT``, ``DSFD_FDDB_ROOT`` and ``DSFD_FIXTURES_ROOT`` (their
values here, see ``dsfd/data_paths.py``), since the copy has no
``../shared`` next to it.

Only Python code is mutated: the references in ``dsfd/ops/reference.py``
define the semantics the C++/CUDA kernels are tested against, so a rule
mutated there fails the kernel-vs-reference and by-hand tests the same way a
kernel mutant would. ``--list`` also prints the matching C++ mutants, which
need a rebuild and are applied by hand (see tests/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    name: str
    file: str  # relative to the repository root
    edits: List[Tuple[str, str]]  # (before, after), each "before" exactly once in the file
    tests: List[str]  # pytest arguments, relative to the repository root
    what: str = ""
    cpp: bool = False  # needs a rebuild: listed, applied by hand only
    notes: List[str] = field(default_factory=list)


MUTANTS: List[Mutant] = [
    # ------------------------------------------------------------------ anchor matching (reference)
    Mutant(
        "match-positive-gt",
        "dsfd/ops/reference.py",
        [("pos = best_gt_iou >= iou_threshold", "pos = best_gt_iou > iou_threshold")],
        ["tests/test_ops_matching.py"],
        "match_anchors: positives at IoU > threshold instead of >=",
    ),
    Mutant(
        "match-ignore-gt",
        "dsfd/ops/reference.py",
        [("lab[(best_gt_iou >= ignore_threshold) & ~pos] = -1", "lab[(best_gt_iou > ignore_threshold) & ~pos] = -1")],
        ["tests/test_ops_matching.py"],
        "match_anchors: ignore band (t, thr) instead of [t, thr)",
    ),
    Mutant(
        "match-forced-tie-last",
        "dsfd/ops/reference.py",
        [(
            "best_anchor_iou, best_anchor = iou.max(1)  # per gt",
            "best_anchor_iou, best_anchor = iou.flip(1).max(1)  # per gt\n"
            "        best_anchor = iou.shape[1] - 1 - best_anchor",
        )],
        ["tests/test_ops_matching.py"],
        "match_anchors: a ground truth's forced anchor is the highest index among equal IoUs",
    ),
    Mutant(
        "match-gt-tie-last",
        "dsfd/ops/reference.py",
        [(
            "best_gt_iou, best_gt = iou.max(0)  # per anchor; first max on ties",
            "best_gt_iou, best_gt = iou.flip(0).max(0)  # per anchor; first max on ties\n"
            "        best_gt = iou.shape[0] - 1 - best_gt",
        )],
        ["tests/test_ops_matching.py"],
        "match_anchors: an anchor takes the highest ground-truth index among equal IoUs",
    ),
    # ------------------------------------------------------------------ loss and mining
    Mutant(
        "loss-mines-ignored",
        "dsfd/losses.py",
        [(
            "selected = mine(ce.detach(), labels, self.neg_pos_ratio)",
            "selected = mine(ce.detach(), labels.clamp(min=0), self.neg_pos_ratio)",
        )],
        ["tests/test_losses.py"],
        "MultiBoxLoss: anchors labelled -1 are mined as negatives",
    ),
    Mutant(
        "loss-counts-ignored",
        "dsfd/losses.py",
        [("pos = labels > 0\n", "pos = labels != 0\n")],
        ["tests/test_losses.py"],
        "MultiBoxLoss: anchors labelled -1 count (and train) as positives",
    ),
    Mutant(
        "ref-hnm-mines-ignored",
        "dsfd/ops/reference.py",
        [("is_neg = labels == 0", "is_neg = labels <= 0")],
        ["tests/test_ops_matching.py", "tests/test_losses.py"],
        "hard_negative_mask reference: anchors labelled -1 are mined",
    ),
    # ------------------------------------------------------------------ NMS and box voting (references)
    Mutant(
        "nms-ref-ge",
        "dsfd/ops/reference.py",
        [("suppressed |= iou_cpu[i] > iou_threshold", "suppressed |= iou_cpu[i] >= iou_threshold")],
        ["tests/test_ops_nms.py"],
        "nms reference: IoU exactly at the threshold suppresses",
    ),
    Mutant(
        "batched-nms-ref-score-ge",
        "dsfd/ops/reference.py",
        [("cand = torch.nonzero(s > score_threshold)", "cand = torch.nonzero(s >= score_threshold)")],
        ["tests/test_ops_nms.py"],
        "batched_nms reference: a score equal to the score threshold passes",
    ),
    Mutant(
        "box-voting-ref-gt",
        "dsfd/ops/reference.py",
        [("group = alive & (iou[i].cpu() >= iou_threshold)", "group = alive & (iou[i].cpu() > iou_threshold)")],
        ["tests/test_ops_box_voting.py"],
        "box_voting reference: IoU exactly at the threshold does not join the group",
    ),
    # ------------------------------------------------------------------ augmentation
    Mutant(
        "paste-at-0",
        "dsfd/data/augment.py",
        [
            (
                "ox0, ox1 = int(round((ix0 - x0) * fx)), int(round((ix1 - x0) * fx))",
                "ox0, ox1 = 0, int(round((ix1 - ix0) * fx))",
            ),
            (
                "oy0, oy1 = int(round((iy0 - y0) * fy)), int(round((iy1 - y0) * fy))",
                "oy0, oy1 = 0, int(round((iy1 - iy0) * fy))",
            ),
        ],
        ["tests/test_data.py"],
        "TrainTransform: a crop reaching outside the image (DAS zoom-out, fallback) pastes the image at offset 0",
    ),
    Mutant(
        "hue-x10-no-saturation",
        "dsfd/data/augment.py",
        [
            ("do_sat, sat = u[5] < 0.5, np.float32(0.5 + u[6])", "do_sat, sat = False, np.float32(0.5 + u[6])"),
            ("hue = u[7] < 0.5, np.float32(u[8] * 36.0 - 18.0)", "hue = u[7] < 0.5, np.float32(u[8] * 360.0 - 180.0)"),
        ],
        ["tests/test_data.py"],
        "photometric_distort: hue jitter x10 and the saturation step switched off",
    ),
    Mutant(
        "saturation-off",
        "dsfd/data/augment.py",
        [("do_sat, sat = u[5] < 0.5, np.float32(0.5 + u[6])", "do_sat, sat = False, np.float32(0.5 + u[6])")],
        ["tests/test_data.py"],
        "photometric_distort: the saturation step switched off",
    ),
    Mutant(
        "hue-x10",
        "dsfd/data/augment.py",
        [("hue = u[7] < 0.5, np.float32(u[8] * 36.0 - 18.0)", "hue = u[7] < 0.5, np.float32(u[8] * 360.0 - 180.0)")],
        ["tests/test_data.py"],
        "photometric_distort: hue jitter +-180 degrees instead of +-18",
    ),
    Mutant(
        "contrast-order-fixed",
        "dsfd/data/augment.py",
        [("contrast_first = u[2] < 0.5", "contrast_first = True")],
        ["tests/test_data.py"],
        "photometric_distort: contrast always before the HSV step",
    ),
    Mutant(
        "flip-boxes-not-swapped",
        "dsfd/data/augment.py",
        [(
            "kb = np.stack([1.0 - kb[:, 2], kb[:, 1], 1.0 - kb[:, 0], kb[:, 3]], 1)",
            "kb = np.stack([1.0 - kb[:, 0], kb[:, 1], 1.0 - kb[:, 2], kb[:, 3]], 1)",
        )],
        ["tests/test_data.py"],
        "TrainTransform: flipped boxes keep x1 and x2 in place",
    ),
    Mutant(
        "survive-centre-inclusive",
        "dsfd/data/augment.py",
        [(
            "inside = (cx > x0) & (cx < x0 + side) & (cy > y0) & (cy < y0 + side)",
            "inside = (cx >= x0) & (cx <= x0 + side) & (cy >= y0) & (cy <= y0 + side)",
        )],
        ["tests/test_data.py"],
        "TrainTransform: a face whose centre lies on the crop border survives",
    ),
    # ------------------------------------------------------------------ evaluation
    Mutant(
        "wider-iou-gt",
        "dsfd/evaluation/wider.py",
        [(
            "np.where(best_iou >= iou_threshold, best + offsets[i], -1)",
            "np.where(best_iou > iou_threshold, best + offsets[i], -1)",
        )],
        ["tests/test_eval_wider.py"],
        "WIDER evaluator: IoU exactly at the threshold is not a match",
    ),
    # ------------------------------------------------------------------ C++ (by hand, see tests/README.md)
    Mutant(
        "cpp-match-positive-gt",
        "csrc/ops/cpu/match_anchors_kernel.cpp",
        [("if (iou >= pos_thr && best_gt[r] >= 0) {", "if (iou > pos_thr && best_gt[r] >= 0) {")],
        ["tests/test_ops_matching.py"],
        "CPU match_anchors kernel: positives at IoU > threshold",
        cpp=True,
    ),
    Mutant(
        "cpp-match-ignore-gt",
        "csrc/ops/cpu/match_anchors_kernel.cpp",
        [("(has_ignore && iou >= ign_thr && best_gt[r] >= 0)", "(has_ignore && iou > ign_thr && best_gt[r] >= 0)")],
        ["tests/test_ops_matching.py"],
        "CPU match_anchors kernel: ignore band open at its lower end",
        cpp=True,
    ),
    Mutant(
        "cpp-match-forced-tie-last",
        "csrc/ops/cpu/match_anchors_kernel.cpp",
        [("if (blk_iou[slot] > m) {  // strict: lowest anchor index on ties",
          "if (blk_iou[slot] >= m) {  // strict: lowest anchor index on ties")],
        ["tests/test_ops_matching.py"],
        "CPU match_anchors kernel: forced-match ties across anchor blocks go to the later block",
        cpp=True,
    ),
    Mutant(
        "cpp-nms-ge",
        "csrc/ops/cpu/nms_cpu.h",
        [("sup[j] |= static_cast<uint8_t>(iou > thr);", "sup[j] |= static_cast<uint8_t>(iou >= thr);")],
        ["tests/test_ops_nms.py"],
        "CPU nms / batched_nms kernels: IoU exactly at the threshold suppresses",
        cpp=True,
    ),
    Mutant(
        "cpp-box-voting-gt",
        "csrc/ops/cpu/box_voting_kernel.cpp",
        [("if (!(iou >= thr)) continue;", "if (!(iou > thr)) continue;")],
        ["tests/test_ops_box_voting.py"],
        "CPU box_voting kernel: IoU exactly at the threshold does not join",
        cpp=True,
    ),
]

#: The mutants of issue #18 that survived every test before the boundary tests were added.
ISSUE_18 = ["match-ignore-gt", "match-positive-gt", "loss-mines-ignored", "paste-at-0", "hue-x10-no-saturation",
            "wider-iou-gt"]


def apply(text: str, mutant: Mutant) -> str:
    for before, after in mutant.edits:
        n = text.count(before)
        if n != 1:
            raise ValueError(f"{mutant.name}: {before!r} occurs {n} times in {mutant.file} (expected once)")
        text = text.replace(before, after)
    return text


def make_copy(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(REPO / "dsfd", dest / "dsfd", ignore=ignore)
    shutil.copytree(REPO / "tests", dest / "tests", ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")


def child_env() -> dict:
    sys.path.insert(0, str(REPO))
    from dsfd.data_paths import fddb_root, fixtures_root, wider_root

    env = dict(os.environ)
    env["DSFD_WIDER_ROOT"] = str(wider_root())
    env["DSFD_FDDB_ROOT"] = str(fddb_root())
    env["DSFD_FIXTURES_ROOT"] = str(fixtures_root())
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(root: Path, tests: List[str], env: dict, keep_going: bool, verbose: bool) -> Tuple[int, str, float]:
    check = subprocess.run(
        [sys.executable, "-c", "import dsfd, sys; sys.stdout.write(dsfd.__file__)"],
        cwd=root, env=env, capture_output=True, text=True,
    )
    if check.returncode != 0 or not Path(check.stdout).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the copy in {root} is not the dsfd that gets imported: {check.stdout}{check.stderr}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header"]
    if not keep_going:
        cmd.append("-x")
    cmd += tests
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if verbose:
        print(out)
    return proc.returncode, out, time.perf_counter() - t0


def summary_line(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    failed = [ln.split(" - ")[0] for ln in lines if ln.startswith("FAILED") or ln.startswith("ERROR")]
    last = lines[-1] if lines else ""
    return (failed[0] + "  " if failed else "") + last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: every Python mutant); 'issue18' for the "
                   "mutants of issue #18")
    p.add_argument("--list", action="store_true", help="list the mutants (including the C++ ones) and exit")
    p.add_argument("--keep-going", action="store_true", help="run all of a mutant's tests (no -x)")
    p.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    p.add_argument("-v", "--verbose", action="store_true", help="print pytest's output")
    args = p.parse_args(argv)

    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            tag = " [C++, by hand]" if m.cpp else ""
            try:
                apply((REPO / m.file).read_text(), m)
                applies = "applies"
            except ValueError as e:
                applies = f"DOES NOT APPLY: {e}"
            print(f"{m.name}{tag}\n    {m.what}\n    {m.file} ({applies}); tests: {' '.join(m.tests)}")
            for before, after in m.edits:
                print(f"    - {before}\n    + {after}")
            for n in m.notes:
                print(f"    note: {n}")
        return 0
    names = []
    for n in args.names or [m.name for m in MUTANTS if not m.cpp]:
        names.extend(ISSUE_18 if n == "issue18" else [n])
    unknown = [n for n in names if n not in by_name]
    if unknown:
        p.error(f"unknown mutant(s): {', '.join(unknown)} (see --list)")
    cpp = [n for n in names if by_name[n].cpp]
    if cpp:
        p.error(f"{', '.join(cpp)} need a rebuild of the extension: apply them by hand (tests/README.md)")
    mutants = [by_name[n] for n in names]

    env = child_env()
    results = []
    with tempfile.TemporaryDirectory(prefix="dsfd-mutants-") as tmp:
        root = Path(tmp) / "repo"
        make_copy(root)
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            rc, out, dt = run_tests(root, tests, env, True, args.verbose)
            print(f"baseline (unmutated) {' '.join(tests)}: {'ok' if rc == 0 else 'FAILED'} ({dt:.0f} s)")
            if rc != 0:
                print(out[-3000:])
                print("the tests fail without any mutant: fix that first")
                return 2
        for m in mutants:
            path = root / m.file
            original = path.read_text()
            try:
                path.write_text(apply(original, m))
                rc, out, dt = run_tests(root, m.tests, env, args.keep_going, args.verbose)
            finally:
                path.write_text(original)
            if rc == 1:
                status = "KILLED"
            elif rc == 0:
                status = "SURVIVED"
            else:
                status = f"ERROR (pytest exit {rc})"
            results.append((m, status))
            print(f"{status:9} {m.name:26} {dt:5.0f} s  {summary_line(out)}")
            sys.stdout.flush()
    survived = [m.name for m, s in results if s != "KILLED"]
    print(f"\n{len(results) - len(survived)} of {len(results)} mutants killed" +
          (f"; not killed: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
