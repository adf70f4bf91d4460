"""Rewrite the tables of a staged `odedit bench` folder over EVERY method it holds.

Each `odedit bench` invocation writes results.csv / summary.md / grid.png for the methods
of that invocation only. A folder built in stages (ablations, then more strengths, then
other grids: settings no single command line can combine) is summarised here: the method
specs come back from bench.json, the per-image records from records/, and
`odedit.bench.report.aggregate` writes the tables (SWD values come from its content cache,
so only sets never measured cost anything).

    python scripts/results_report.py ~/.cache/odedit/results/main [--limit 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from odedit.bench import METHOD_KINDS, Layout, MethodSpec, aggregate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--limit", type=int, default=None, help="first N images by name (default: all recorded)")
    ap.add_argument("--skip-incomplete", action="store_true",
                    help="leave out methods that lack some image (a stage still running) instead of stopping")
    args = ap.parse_args()
    out = args.folder.expanduser()
    meta = json.loads((out / "bench.json").read_text())
    methods = [MethodSpec.from_dict(n, d) for n, d in meta["methods"].items()]
    # source first, then the restoration methods in the order of their table (ODEdit, SDEdit), each in name order
    methods.sort(key=lambda m: (METHOD_KINDS.index(m.kind), m.name))
    lay = Layout(out)
    keys = sorted(p.stem for p in (out / "records" / "degraded").glob("*.json"))[: args.limit]
    for m in methods:
        if _roundtrip(m.identity()["config"]) != _roundtrip(meta["methods"][m.name]["config"]):
            raise SystemExit(f"{m.name}: the rebuilt config differs from bench.json's")
    incomplete = [m.name for m in methods if not all(lay.done(m.name, k) for k in keys)]
    if incomplete and args.skip_incomplete:
        print(f"left out (not every image done): {', '.join(incomplete)}")
        methods = [m for m in methods if m.name not in incomplete]
    elif incomplete:
        raise SystemExit(f"not every image is done for: {', '.join(incomplete)} (pass --limit)")
    s = meta["settings"]
    header = {"data": s["data"], "model": f"{s['model']} ({meta['image_size']}x{meta['image_size']})",
              "corruption": f"one random corruption per image at severity {s['severity']}" if s.get("severity")
              else "from the manifest", "seed": s["seed"], "dtype": s["dtype"],
              "methods": "every method recorded in bench.json (scripts/results_report.py)"}
    summary = aggregate(out, keys, methods, seed=int(s["seed"]), header=header)
    print(f"{out}: {len(keys)} images x {len(methods)} methods -> summary.md, results.csv, grid.png")
    return summary


def _roundtrip(obj):
    return json.loads(json.dumps(obj))


if __name__ == "__main__":
    main()
