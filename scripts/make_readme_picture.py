"""Makes the README's picture, docs/images/detections_group.jpg.

Runs exactly ``dsfd detect PHOTO --out TMP`` on a group photo of the WIDER
FACE validation set (full size, the packaged default model unless
``--weights``), then downsizes the annotated copy to at most 900 px wide and
writes it as a JPEG of quality 85::

    python scripts/make_readme_picture.py                 # -> docs/images/detections_group.jpg
    python scripts/make_readme_picture.py --weights runs/x/final.pt --out /tmp/x.jpg

The photo is ``WIDER_val/images/0--Parade/0_Parade_Parade_0_470.jpg`` under
``$DSFD_WIDER_ROOT`` (default ``../shared/data/widerface``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = "WIDER_val/images/0--Parade/0_Parade_Parade_0_470.jpg"
MAX_WIDTH = 900
QUALITY = 85


def main(argv=None) -> int:
    from dsfd.data_paths import wider_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", default=str(wider_root() / PHOTO), help="the photo (default: WIDER val, 0--Parade)")
    p.add_argument("--weights", default=None, help="weights for dsfd detect (default: the packaged model)")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "detections_group.jpg"))
    a = p.parse_args(argv)

    import cv2

    photo = Path(a.photo)
    if not photo.is_file():
        p.error(f"{photo} not found (set DSFD_WIDER_ROOT or pass --photo)")
    from dsfd.cli import main as dsfd_main

    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["detect", str(photo), "--out", tmp, "--no-progress"] + (["--weights", a.weights] if a.weights else [])
        print("running: dsfd", " ".join(cmd), flush=True)
        if dsfd_main(cmd) != 0:  # the command itself, in this process
            raise SystemExit("dsfd detect failed")
        drawn = cv2.imread(str(Path(tmp) / photo.name))
    if drawn is None:
        raise SystemExit(f"dsfd detect wrote no picture for {photo}")
    h, w = drawn.shape[:2]
    if w > MAX_WIDTH:
        drawn = cv2.resize(drawn, (MAX_WIDTH, round(h * MAX_WIDTH / w)), interpolation=cv2.INTER_AREA)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), drawn, [cv2.IMWRITE_JPEG_QUALITY, QUALITY]):
        raise SystemExit(f"could not write {out}")
    print(f"wrote {out} ({drawn.shape[1]}x{drawn.shape[0]}, JPEG quality {QUALITY})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
