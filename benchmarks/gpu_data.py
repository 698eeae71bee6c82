"""Make the small WIDER FACE copy that travels to the GPU machine with ``benchmarks/gpu_check.sh``.

The device tool sends the working tree (at most 64 MiB) and not ``../shared``:
this writes ``.gpu_data/widerface`` (git-ignored through ``.git/info/exclude``)
with the whole val subset (images, split file, evaluation ``.mat`` files, for
``dsfd eval`` and the data tests) and the first ``--train`` training images with
their boxes (for the training tests, DDP and ``train_profile.py``): about 28 MB.

    python benchmarks/gpu_data.py [--src ../shared/data/widerface] [--train 64]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "widerface")
    p.add_argument("--dst", type=Path, default=ROOT / ".gpu_data" / "widerface")
    p.add_argument("--train", type=int, default=64, help="training images to copy (default 64)")
    args = p.parse_args(argv)
    src, dst = args.src, args.dst
    if not (src / "wider_face_split" / "wider_face_train_bbx_gt.txt").is_file():
        print(f"no WIDER FACE root at {src}", file=sys.stderr)
        return 2
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for d in ("WIDER_val", "ground_truth"):
        shutil.copytree(src / d, dst / d)
    (dst / "wider_face_split").mkdir()
    shutil.copy(src / "wider_face_split" / "wider_face_val_bbx_gt.txt", dst / "wider_face_split")
    lines = (src / "wider_face_split" / "wider_face_train_bbx_gt.txt").read_text().split("\n")
    out: List[str] = []
    i = n = 0
    while i < len(lines) and n < args.train:
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        rows = max(int(lines[i + 1]), 1)  # an image without faces still has one line of zeros
        out += lines[i : i + 2 + rows]
        i += 2 + rows
        target = dst / "WIDER_train" / "images" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "WIDER_train" / "images" / name, target)
        n += 1
    (dst / "wider_face_split" / "wider_face_train_bbx_gt.txt").write_text("\n".join(out) + "\n")
    exclude = ROOT / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu_data/" not in exclude.read_text():
        with open(exclude, "a") as f:
            f.write("/.gpu_data/\n")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"wrote {dst}: {n} training images, the val subset; {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
