"""README figure: a whole degraded portrait restored with face detection + paste-back.

Runs the project's own commands (``odedit corrupt`` at 384 px, then ``odedit restore --faces
auto``) on one CelebA-HQ portrait and tiles degraded | restored | clean side by side.

Usage: python scripts/make_photo_figure.py [--image ../shared/data/samples/celebahq-1024/00234.png]
       [--out docs/img/whole_photo.jpg] [restore flags after --]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from odedit.imageio import fit_square, load_image_uint8, make_grid


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", type=Path, default=Path("../shared/data/samples/celebahq-1024/00234.png"))
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--corruption", default="gaussian_noise")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("docs/img/whole_photo.jpg"))
    ap.add_argument("restore_flags", nargs="*", default=[], help="extra `odedit restore` flags (default: its defaults)")
    args = ap.parse_args()
    odedit = [sys.executable, "-m", "odedit.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([*odedit, "corrupt", str(args.image), "-o", str(tmp / "deg"), "--corruption", args.corruption,
                        "--severity", str(args.severity), "--seed", "0", "--size", str(args.size)], check=True)
        subprocess.run([*odedit, "restore", str(tmp / "deg"), "-o", str(tmp / "res"), "--faces", "auto", "--quiet",
                        *args.restore_flags], check=True)
        name = args.image.stem + ".png"
        deg = load_image_uint8(tmp / "deg" / name)
        res = load_image_uint8(tmp / "res" / name)
    clean = fit_square(load_image_uint8(args.image), args.size, "stretch")
    grid = make_grid(np.stack([deg, res, clean]), 3, pad=4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out, quality=88)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
