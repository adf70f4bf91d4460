"""The comparison grid of docs/results.md from a finished `odedit bench` folder.

Rows: the given methods (degraded first, clean last, as `odedit bench`'s own grid.png);
columns: images chosen to cover the corruption families (the first image of each family in
name order, then the next ones), so one figure shows noise, blur, weather, digital and masks.

    python scripts/results_figure.py ~/.cache/odedit/results/main docs/img/results_grid.png \\
        --rows degraded,odedit-light-steps20-eps1e-05-dpmpp2m:ODEdit light,sdedit-0.5:SDEdit 0.5,clean
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from odedit.bench import label_rows
from odedit.imageio import save_png_atomic

from results_tables import FAMILIES, FAMILY_OF  # one grouping for the tables and the figure


def family(corruption: str) -> str:
    return FAMILY_OF[corruption]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--rows", required=True, help="comma list of folder[:label] under images/")
    ap.add_argument("--columns", type=int, default=10)
    args = ap.parse_args()
    with open(args.bench / "images" / "degraded" / "manifest.csv", newline="") as f:
        manifest = sorted(csv.DictReader(f), key=lambda r: r["file"])
    by_family: dict[str, list[str]] = {fam: [] for fam in FAMILIES}
    for row in manifest:
        by_family[family(row["corruption"])].append(row["file"])
    keys: list[str] = []
    while len(keys) < args.columns and any(by_family.values()):
        for fam in FAMILIES:  # round robin over the families
            if by_family[fam] and len(keys) < args.columns:
                keys.append(by_family[fam].pop(0))
    rows = [r.partition(":") for r in args.rows.split(",")]
    pad = 2
    tiles = []
    for folder, _, _ in rows:
        ims = [np.asarray(Image.open(args.bench / "images" / folder / k).convert("RGB")) for k in keys]
        tiles.append(ims)
    tile = tiles[0][0].shape[0]
    h = len(rows) * (tile + pad) + pad
    w = len(keys) * (tile + pad) + pad
    grid = np.full((h, w, 3), 255, np.uint8)
    for r, ims in enumerate(tiles):
        for c, im in enumerate(ims):
            y, x = pad + r * (tile + pad), pad + c * (tile + pad)
            grid[y : y + tile, x : x + tile] = im
    labels = [label or folder for folder, _, label in rows]
    out = label_rows(grid, labels, tile, pad)
    save_png_atomic(args.output, out)
    print(f"{args.output}: {len(rows)} rows x {len(keys)} images ({', '.join(keys)})")


if __name__ == "__main__":
    main()
