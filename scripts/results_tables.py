"""Tables of docs/results.md from finished `odedit bench` folders (reads results.csv only).

For every method: PSNR and SSIM as mean +/- standard error over the images, the *paired*
difference to a reference method on the same images (mean +/- SE of the per-image
difference: much tighter than comparing two means, because the images are shared), SWD of
the set, NFE and seconds per image. Several folders can be combined: a method is named
``<label>:<method>`` when it comes from a folder given as ``label=DIR``.

    python scripts/results_tables.py main=~/.cache/odedit/results/main \\
        seed1=~/.cache/odedit/results/seed1 --reference main:source --json docs/data/results.json

Prints markdown to stdout; ``--json`` also writes every number it printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path


# ImageNet-C's own grouping (Hendrycks & Dietterich 2019) plus the two masks.
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "spatter", "brightness"),
    "digital": ("contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression"),
    "masking": ("masking_random_color", "masking_vline_random_color"),
}
FAMILY_OF = {c: fam for fam, cs in FAMILIES.items() for c in cs}


def load(folder: Path) -> dict:
    """{method: {"img": {image: {metric: value, "corruption": c}}, "set": {metric: value}}}."""
    out: dict = defaultdict(lambda: {"img": defaultdict(dict), "set": {}})
    with open(folder / "results.csv", newline="") as f:
        for row in csv.DictReader(f):
            m = out[row["method"]]
            v = float(row["value"]) if row["value"] not in ("", "n/a") else float("nan")
            if row["image"] == "*":
                m["set"][row["metric"]] = v
            else:
                m["img"][row["image"]][row["metric"]] = v
                m["img"][row["image"]]["corruption"] = row["corruption"]
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mu = sum(values) / n
    if n < 2:
        return mu, float("nan")
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return mu, math.sqrt(var / n)


def cap(v: float) -> float:
    return 100.0 if math.isinf(v) else v  # the benchmark's PSNR_CAP convention


def summarize(name: str, m: dict, ref: dict | None, keys: list[str]) -> dict:
    row = {"method": name, "n": len(keys)}
    for metric in ("psnr", "ssim"):
        vals = [cap(m["img"][k][metric]) for k in keys]
        row[metric] = mean_se(vals)
        if ref is not None:
            row[f"d_{metric}"] = mean_se([cap(m["img"][k][metric]) - cap(ref["img"][k][metric]) for k in keys])
    row["nfe"] = mean_se([m["img"][k]["nfe"] for k in keys])[0]
    row["seconds"] = mean_se([m["img"][k]["seconds"] for k in keys])[0]
    row["swd"] = m["set"].get("swd", float("nan"))
    row["swd_levels"] = {k[4:]: v for k, v in m["set"].items() if k.startswith("swd_")}  # per pyramid level
    return row


def fmt(ms: tuple[float, float], digits: int, sign: bool = False) -> str:
    mu, se = ms
    s = f"{mu:+.{digits}f}" if sign else f"{mu:.{digits}f}"
    return s if math.isnan(se) else f"{s} ± {se:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", help="label=DIR (a finished odedit bench folder)")
    ap.add_argument("--reference", default=None, help="label:method the paired differences are taken against")
    ap.add_argument("--methods", default=None,
                    help="comma list of folder-label:method[=row label] in the order to print (default: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    methods: dict[str, dict] = {}
    for spec in args.folders:
        label, _, folder = spec.partition("=")
        for name, m in load(Path(folder).expanduser()).items():
            methods[f"{label}:{name}"] = m
    items = [m.partition("=") for m in args.methods.split(",")] if args.methods else [(m, "", "") for m in methods]
    order = [name for name, _, _ in items]
    labels = {name: (label or name) for name, _, label in items}
    missing = [n for n in order + ([args.reference] if args.reference else []) if n not in methods]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}; have: {', '.join(methods)}")
    ref = methods[args.reference] if args.reference else None
    # the images every printed method (and the reference) has: paired comparisons only
    common = set.intersection(*(set(methods[n]["img"]) for n in order + ([args.reference] if ref else [])))
    keys = sorted(common)
    rows = [summarize(n, methods[n], ref, keys) for n in order]
    for r in rows:
        r["label"] = labels[r["method"]]

    res = sorted({r for row in rows for r in row["swd_levels"]}, key=int, reverse=True)
    head = ("| method | NFE | s / image | PSNR ↑ | SSIM ↑ | SWD ↓ |" + "".join(f" SWD {r} px |" for r in res)
            + (" ΔPSNR (paired) | ΔSSIM (paired) |" if ref else ""))
    print(f"{len(keys)} images" + (f"; differences against {args.reference}, same images" if ref else ""))
    print()
    print(head)
    print("|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|")
    for r in rows:
        line = (f"| {r['label']} | {r['nfe']:.0f} | {r['seconds']:.2f} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 3)} "
                f"| {r['swd']:.1f} |" + "".join(f" {r['swd_levels'].get(x, float('nan')):.1f} |" for x in res))
        if ref:
            line += f" {fmt(r['d_psnr'], 2, True)} | {fmt(r['d_ssim'], 3, True)} |"
        print(line)

    # per corruption family, then per corruption: PSNR / SSIM means over its images
    first = methods[order[0]]
    per_c = {}
    for metric, digits in (("psnr", 2), ("ssim", 3)):
        for title, group in (("family", lambda c: FAMILY_OF.get(c, c)), ("corruption", lambda c: c)):
            by: dict[str, list[str]] = defaultdict(list)
            for k in keys:
                by[group(first["img"][k]["corruption"])].append(k)
            print()
            print(f"{metric.upper()} by {title}")
            print()
            print(f"| {title} | n | " + " | ".join(r["label"] for r in rows) + " |")
            print("|" + "|".join("---" for _ in range(len(rows) + 2)) + "|")
            for c in sorted(by, key=lambda c: (list(FAMILIES).index(c) if c in FAMILIES else 99, c)):
                ks = by[c]
                vals = [mean_se([cap(methods[n]["img"][k][metric]) for k in ks])[0] for n in order]
                per_c.setdefault(f"{title}:{c}", {"n": len(ks)})[metric] = dict(zip(order, vals))
                print(f"| {c} | {len(ks)} | " + " | ".join(f"{v:.{digits}f}" for v in vals) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"images": keys, "reference": args.reference, "rows": rows,
                                         "per_group": per_c}, indent=1) + "\n")


if __name__ == "__main__":
    main()
