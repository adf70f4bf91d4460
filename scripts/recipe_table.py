"""Rows of the recipe-study table (docs/training.md) from runs scored by scripts/recipe_run.sh.

For each candidate NAME: the run's exported model (images seen, training seconds), its log.jsonl
(images per second), and the scores in SCORES/NAME (denoising.json, quality/quality.json,
bench/bench.json when present). Prints one markdown row per candidate and, with --copy DIR,
copies the score files to DIR/recipe_<tag>_<NAME>_*.json for the docs.

Usage: python scripts/recipe_table.py r1u r2 r3 [--runs DIR] [--scores DIR] [--copy docs/data --tag s11]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def row(name: str, runs: Path, scores: Path) -> tuple[str, dict]:
    info = _json(runs / name / "model" / "odedit_train.json") or {}
    log = [json.loads(line) for line in (runs / name / "log.jsonl").read_text().splitlines() if line.strip()]
    ips = sum(r["images_per_s"] for r in log[1:]) / max(1, len(log) - 1) if log else float("nan")
    den = _json(scores / name / "denoising.json")
    ratios = {r["t"]: r["ratio"] for r in den["models"][0]["rows"]} if den else {}
    qual = _json(scores / name / "quality" / "quality.json")
    swd = qual["swd_samples_val"]["mean"] if qual else float("nan")
    floor = qual["swd_train_val"]["mean"] if qual else float("nan")
    fmt = lambda t, d: f"{ratios[t]:.{d}f}" if t in ratios else "-"  # noqa: E731
    cells = [name, f"{info.get('images_seen', 0):,}", f"{ips:.1f}", fmt(10, 3), fmt(100, 3), fmt(250, 4),
             fmt(500, 4), fmt(750, 4), f"{swd:.1f}"]
    return "| " + " | ".join(cells) + " |", dict(name=name, info=info, images_per_s=ips, ratios=ratios,
                                                 swd=swd, floor=floor)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--runs", type=Path, default=Path.home() / ".cache/odedit/runs/study")
    ap.add_argument("--scores", type=Path, default=Path.home() / ".cache/odedit/score/study")
    ap.add_argument("--copy", type=Path, default=None)
    ap.add_argument("--tag", default="s11")
    args = ap.parse_args()
    print("| recipe | images seen | img/s | t = 10 | 100 | 250 | 500 | 750 | SWD |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.names:
        line, data = row(name, args.runs, args.scores)
        print(line)
        if args.copy:
            args.copy.mkdir(parents=True, exist_ok=True)
            for src, suffix in (("denoising.json", "denoising"), ("quality/quality.json", "quality")):
                if (args.scores / name / src).is_file():
                    shutil.copyfile(args.scores / name / src, args.copy / f"recipe_{args.tag}_{name}_{suffix}.json")
            (args.copy / f"recipe_{args.tag}_{name}_run.json").write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
