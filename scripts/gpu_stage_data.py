"""Cut training data roots into parts small enough to travel to the GPU machine, one part per device call.

The device tool sends the working tree and at most 64 MiB with each call,
and not ``../shared``; files a call leaves there that git ignores stay for
the next call while the machine is held. So the default model's data
(about 232 MB of JPEGs: WIDER train events 0-1, the extra root, the crowds)
goes over in parts, ``.gpu_train/p1``, ``.gpu_train/p2``, ..., each under
``--part-mib``. A part holds one folder per source root in that root's own
layout (a WIDER root: ``WIDER_train/images`` and the training split's
``wider_face_train_bbx_gt.txt``; a YOLO root: ``images/``, ``labels/`` and its
names file), so ``dsfd train --data`` reads every folder of every part as
it is. A root may be split over two parts; images are never re-encoded
(re-encoding these JPEGs makes them larger, measured).

    python scripts/gpu_stage_data.py                          # the default model's three roots
    python scripts/gpu_stage_data.py ROOT ... --part-mib 50 --out .gpu_train

With ``--val ROOT`` (default: the shared WIDER root when it has the val
subset) the last part also carries ``eval_widerface``: the val images, the
val split file and the official evaluation ``.mat`` files (about 18 MB), so
the run can be scored where it trained; folders named ``eval_*`` are not
training data. Prints the parts with their sizes and writes
``.gpu_train/parts.json``.
``scripts/gpu_train_default.sh`` is the command that runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_ROOTS = [SHARED / "widerface", SHARED / "widerface_extra", SHARED / "widerface_crowds"]
WIDER_SPLIT = Path("wider_face_split") / "wider_face_train_bbx_gt.txt"
YOLO_NAMES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


class Item:
    """One image and what travels with it: ``files`` (source, path in the root) and, for WIDER, its split lines."""

    def __init__(self, files: List[Tuple[Path, Path]], wider_lines: Optional[List[str]] = None) -> None:
        self.files, self.wider_lines = files, wider_lines
        self.size = sum(src.stat().st_size for src, _ in files)


def wider_items(root: Path) -> Iterator[Item]:
    lines = (root / WIDER_SPLIT).read_text().split("\n")
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        rows = max(int(lines[i + 1]), 1)  # an image without faces still has one line of zeros
        rel = Path("WIDER_train") / "images" / name
        yield Item([(root / rel, rel)], lines[i:i + 2 + rows])
        i += 2 + rows


def yolo_items(root: Path) -> Iterator[Item]:
    for img in sorted((root / "images").iterdir()):
        if not img.is_file():
            continue
        files = [(img, Path("images") / img.name)]
        label = root / "labels" / (img.stem + ".txt")
        if label.is_file():
            files.append((label, Path("labels") / label.name))
        yield Item(files)


def root_items(root: Path) -> Tuple[str, Iterator[Item]]:
    if (root / WIDER_SPLIT).is_file():
        return "wider", wider_items(root)
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo", yolo_items(root)
    raise SystemExit(f"{root}: neither a WIDER root ({WIDER_SPLIT}) nor an unsplit YOLO root (images/, labels/)")


def place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no second copy on disk when both sides share a file system
    except OSError:
        shutil.copy2(src, dst)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="*", type=Path, default=DEFAULT_ROOTS, help="training data roots (WIDER or YOLO)")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu_train")
    p.add_argument("--val", type=Path, default=SHARED / "widerface",
                   help="WIDER root whose val subset travels in the last part (eval_widerface; 'none': no val)")
    p.add_argument("--part-mib", type=float, default=52.0,
                   help="largest part (the tool's 64 MiB per call holds the working tree too: about 8 MiB)")
    args = p.parse_args(argv)
    limit = int(args.part_mib * 2**20)
    for r in args.roots:
        if not r.is_dir():
            print(f"no data root at {r}", file=sys.stderr)
            return 2
    for old in args.out.glob("p[0-9]*"):
        shutil.rmtree(old)
    args.out.mkdir(parents=True, exist_ok=True)

    parts: List[Dict[str, Dict[str, object]]] = [{}]
    sizes = [0]
    split_lines: Dict[Tuple[int, str], List[str]] = {}
    for root in args.roots:
        kind, items = root_items(root)
        name = root.name
        for item in items:
            if item.size > limit:
                print(f"{item.files[0][0]} alone is larger than a part", file=sys.stderr)
                return 2
            if sizes[-1] + item.size > limit:
                parts.append({})
                sizes.append(0)
            k = len(parts) - 1
            folder = args.out / f"p{k + 1}" / name
            entry = parts[k].setdefault(name, {"kind": kind, "images": 0, "bytes": 0})
            if not entry["images"] and kind == "yolo":
                for n in YOLO_NAMES:
                    if (root / n).is_file():
                        place(root / n, folder / n)
            for src, rel in item.files:
                place(src, folder / rel)
            if item.wider_lines is not None:
                split_lines.setdefault((k, name), []).extend(item.wider_lines)
            entry["images"] = int(entry["images"]) + 1
            entry["bytes"] = int(entry["bytes"]) + item.size
            sizes[-1] += item.size
    val = None if str(args.val) == "none" else args.val
    if val is not None and (val / "WIDER_val").is_dir() and (val / "ground_truth").is_dir():
        val_items = [f for d in ("WIDER_val", "ground_truth") for f in (val / d).rglob("*") if f.is_file()]
        val_items.append(val / "wider_face_split" / "wider_face_val_bbx_gt.txt")
        val_size = sum(f.stat().st_size for f in val_items if f.is_file())
        if sizes[-1] + val_size > limit:
            parts.append({})
            sizes.append(0)
        k = len(parts) - 1
        for f in val_items:
            if f.is_file():
                place(f, args.out / f"p{k + 1}" / "eval_widerface" / f.relative_to(val))
        parts[k]["eval_widerface"] = {"kind": "wider val (evaluation only)",
                                      "images": len(list((val / "WIDER_val").rglob("*.jpg"))), "bytes": val_size}
        sizes[-1] += val_size
    for (k, name), lines in split_lines.items():
        target = args.out / f"p{k + 1}" / name / WIDER_SPLIT
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n")
    # what really travels: every file of the part, split files and names included
    real = [sum(f.stat().st_size for f in (args.out / f"p{k + 1}").rglob("*") if f.is_file()) for k in range(len(parts))]
    summary = {"parts": [{"name": f"p{k + 1}", "mib": round(real[k] / 2**20, 2), "roots": parts[k]}
                         for k in range(len(parts))],
               "sources": [str(r) for r in args.roots]}
    (args.out / "parts.json").write_text(json.dumps(summary, indent=1) + "\n")
    for part in summary["parts"]:
        roots = ", ".join(f"{n} {e['images']} images" for n, e in part["roots"].items())
        print(f"{args.out.name}/{part['name']}: {part['mib']:.1f} MiB ({roots})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
