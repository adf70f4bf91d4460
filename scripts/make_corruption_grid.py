"""Make docs/img/corruptions_grid.png: one row per corruption, severities 1-5 + clean.

Usage: python scripts/make_corruption_grid.py [--image PATH|--celeba-zip ZIP] [--out PNG]
       [--size 64] [--seed 0]

The face is the first image of ../shared/data/celeba64/val.zip by default (64x64); a
larger picture (e.g. a CelebA-HQ PNG) is centre-cropped and resized to --size first.
Each row is labelled with the corruption name on the left.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from odedit.corruptions import CORRUPTIONS, SEVERITIES, corrupt  # noqa: E402


def load_face(args) -> np.ndarray:
    if args.image:
        img = Image.open(args.image).convert("RGB")
    else:
        with zipfile.ZipFile(args.celeba_zip) as z:
            name = sorted(n for n in z.namelist() if n.lower().endswith(".jpg"))[args.index]
            img = Image.open(io.BytesIO(z.read(name))).convert("RGB")
    w, h = img.size
    side = min(w, h)
    img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != args.size:
        img = img.resize((args.size, args.size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", help="a face picture (any size)")
    p.add_argument("--celeba-zip", default=str(ROOT.parent / "shared/data/celeba64/val.zip"))
    p.add_argument("--index", type=int, default=0, help="which image of the zip (sorted names)")
    p.add_argument("--out", default=str(ROOT / "docs/img/corruptions_grid.png"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--names", default=",".join(CORRUPTIONS), help="comma-separated corruption names")
    args = p.parse_args(argv)

    face = load_face(args)
    names = [n for n in args.names.split(",") if n]
    t, pad, label_w, head_h = args.size, 2, 150, 16
    cols = len(SEVERITIES) + 1
    grid = Image.new("RGB", (label_w + cols * (t + pad) + pad, head_h + len(names) * (t + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate([f"severity {s}" for s in SEVERITIES] + ["clean"]):
        draw.text((label_w + pad + j * (t + pad) + 2, 2), title if t >= 60 else title[-1:], fill="black")
    for i, name in enumerate(names):
        y = head_h + pad + i * (t + pad)
        draw.text((4, y + t // 2 - 6), name, fill="black")
        tiles = [corrupt(face, name, s, np.random.default_rng(args.seed)) for s in SEVERITIES] + [face]
        for j, tile in enumerate(tiles):
            grid.paste(Image.fromarray(tile), (label_w + pad + j * (t + pad), y))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, {grid.size[0]}x{grid.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
