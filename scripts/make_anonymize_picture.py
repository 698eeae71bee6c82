"""Makes the before/after picture of docs/detection.md's anonymisation section, docs/images/anonymize_crowd.jpg.

Runs exactly ``dsfd detect PHOTO --anonymize blur --out TMP`` (the packaged
default model, its hiding threshold, unless ``--weights`` / ``--min-score``)
on a crowd photo of the WIDER FACE validation set, then puts the photo
(left) and its anonymised copy (right) side by side, at most 1000 px wide
in all, as a JPEG of quality 85::

    python scripts/make_anonymize_picture.py                    # -> docs/images/anonymize_crowd.jpg
    python scripts/make_anonymize_picture.py --min-score 0.2    # a threshold of your own

The photo is ``WIDER_val/images/0--Parade/0_Parade_Parade_0_470.jpg`` under
``$DSFD_WIDER_ROOT`` (default ``../shared/data/widerface``), the README's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = "WIDER_val/images/0--Parade/0_Parade_Parade_0_470.jpg"
MAX_WIDTH = 1000
QUALITY = 85


def main(argv=None) -> int:
    from dsfd.data_paths import wider_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", default=str(wider_root() / PHOTO), help="the photo (default: WIDER val, 0--Parade)")
    p.add_argument("--weights", default=None, help="weights for dsfd detect (default: the packaged model)")
    p.add_argument("--min-score", default=None, help="hiding threshold (default: the model's hide_score)")
    p.add_argument("--method", default="blur", choices=["blur", "pixelate", "box"])
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "anonymize_crowd.jpg"))
    a = p.parse_args(argv)

    import cv2
    import numpy as np

    photo = Path(a.photo)
    if not photo.is_file():
        p.error(f"{photo} not found (set DSFD_WIDER_ROOT or pass --photo)")
    from dsfd.cli import main as dsfd_main

    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["detect", str(photo), "--out", tmp, "--no-progress", "--anonymize", a.method]
        cmd += (["--weights", a.weights] if a.weights else []) + (["--min-score", a.min_score] if a.min_score else [])
        print("running: dsfd", " ".join(cmd), flush=True)
        if dsfd_main(cmd) != 0:  # the command itself, in this process
            raise SystemExit("dsfd detect failed")
        hidden = cv2.imread(str(Path(tmp) / photo.name))
    before = cv2.imread(str(photo))
    if hidden is None or before is None or hidden.shape != before.shape:
        raise SystemExit("could not read the photo or its anonymised copy")
    gap = np.full((before.shape[0], 12, 3), 255, np.uint8)
    both = np.concatenate([before, gap, hidden], axis=1)
    scale = min(1.0, MAX_WIDTH / both.shape[1])
    both = cv2.resize(both, (round(both.shape[1] * scale), round(both.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), both, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    print(f"wrote {out} ({both.shape[1]}x{both.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
