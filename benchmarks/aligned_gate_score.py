"""What `odedit restore --faces aligned` makes of a benchmark's restorations: the gate of
`odedit.faces.finish_aligned` (session 13) applied to an `odedit bench` folder's restored 64 px
crops, scored against the clean faces like the bench scores the methods.

`odedit bench` measures the method itself (the restored crop as it is). `odedit restore` on an
aligned crop then keeps the restoration's change only where the crop's noise explains it
(`--low-band`), and matches its mean colour (`--match-colour`). This script applies exactly that
function (`finish_aligned`, with the degraded crop as the input) to each restored image in
BENCH/images/METHOD, for each gate mode, and prints markdown: PSNR / SSIM (mean +- SE), the paired
difference to the degraded source, SWD of the set against the clean faces (the bench's own
settings and seeds), and PSNR by corruption family; --json keeps every image's PSNR and SSIM too,
so two runs (e.g. two step sizes) can be compared image by image. No model is run (seconds on a CPU).

    python benchmarks/aligned_gate_score.py ~/.cache/odedit/table1_s13 odedit-light-eps1e-05 \
        --json docs/data/aligned_gate_s13.json --save odedit-light-eps1e-05-gated
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from results_tables import FAMILIES, FAMILY_OF  # noqa: E402

# (label, finish_aligned keyword arguments); "restored" is the bench's own image.
VARIANTS = {
    "restored (the method, `--fidelity 0 --no-match-colour`)": dict(fidelity=0.0, match_colour=False),
    "gate local + colour (`odedit restore` default)": dict(low_band="local", match_colour=True),
    "gate local, no colour match": dict(low_band="local", match_colour=False),
    "gate global + colour": dict(low_band="global", match_colour=True),
    "colour match only (`--low-band off`)": dict(low_band="off", match_colour=True),
}


def _unit(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255.0


def _stats(v: np.ndarray) -> tuple[float, float]:
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main(argv=None) -> int:
    from odedit.bench.records import Layout
    from odedit.bench.report import swd_descriptors, swd_of_descriptors
    from odedit.faces import finish_aligned, plan_photo
    from odedit.metrics import psnr, ssim

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", type=Path, help="an `odedit bench` output folder")
    ap.add_argument("method", help="the restored images' folder under BENCH/images")
    ap.add_argument("--seed", type=int, default=0, help="SWD seed (the bench's --seed)")
    ap.add_argument("--limit", type=int, help="only the first N restored images by name")
    ap.add_argument("--json", type=Path, help="also write every number here")
    ap.add_argument("--save", metavar="FOLDER", help="also write the default's images to BENCH/images/FOLDER "
                    "(for scripts/results_figure.py; the bench itself never reads them)")
    args = ap.parse_args(argv)

    records = sorted((args.bench / "records" / args.method).glob("*.json"))[: args.limit]
    if not records:
        raise SystemExit(f"no records in {args.bench / 'records' / args.method}")
    meta = [json.loads(p.read_text()) for p in records]
    keys = [m["image"] for m in meta]
    lay = Layout(args.bench)
    clean, degraded, restored = (lay.load_images(f, keys) for f in ("clean", "degraded", args.method))
    rows: dict[str, dict] = {"source": {"img": list(degraded)}}
    for label, kw in VARIANTS.items():
        out = []
        for deg, res in zip(degraded, restored):
            job = plan_photo(deg, deg.shape[0], lambda i: 0, faces_mode="aligned")
            out.append(finish_aligned(job, res, **kw)[0])
        rows[label] = {"img": out}
    if args.save:
        from odedit.imageio import save_png_atomic

        default = rows[next(k for k in VARIANTS if "default" in k)]["img"]
        (args.bench / "images" / args.save).mkdir(parents=True, exist_ok=True)
        for key, img in zip(keys, default):
            save_png_atomic(lay.image(args.save, key), img)
    ref = swd_descriptors(np.stack(list(clean)), args.seed, reference=True)
    for row in rows.values():
        row["psnr"] = np.array([float(psnr(_unit(a), _unit(c))) for a, c in zip(row["img"], clean)])
        row["ssim"] = np.array([float(ssim(_unit(a), _unit(c))) for a, c in zip(row["img"], clean)])
        row["swd"] = swd_of_descriptors(swd_descriptors(np.stack(row["img"]), args.seed), ref, args.seed)["mean"]
    src = rows["source"]
    fams = [FAMILY_OF[m["corruption"]] for m in meta]
    report = {"bench": str(args.bench), "method": args.method, "n": len(keys), "images": keys, "families": fams,
              "rows": {}}
    print(f"{len(keys)} faces of {args.bench} ({args.method})\n")
    print("| output | PSNR | SSIM | SWD | ΔPSNR (paired) | ΔSSIM (paired) | " + " | ".join(FAMILIES) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(FAMILIES))
    for label, row in rows.items():
        dp, ds = _stats(row["psnr"] - src["psnr"]), _stats(row["ssim"] - src["ssim"])
        fam = {f: float(np.mean([p for p, g in zip(row["psnr"], fams) if g == f])) for f in FAMILIES if f in fams}
        report["rows"][label] = {"psnr": _stats(row["psnr"]), "ssim": _stats(row["ssim"]), "swd": row["swd"],
                                 "dpsnr": dp, "dssim": ds, "family_psnr": fam,
                                 "per_image": {"psnr": [round(float(v), 4) for v in row["psnr"]],
                                               "ssim": [round(float(v), 5) for v in row["ssim"]]}}
        print(f"| {label} | {row['psnr'].mean():.2f} ± {_stats(row['psnr'])[1]:.2f} | {row['ssim'].mean():.3f} | "
              f"{row['swd']:.1f} | {dp[0]:+.2f} ± {dp[1]:.2f} | {ds[0]:+.3f} ± {ds[1]:.3f} | "
              + " | ".join(f"{fam[f]:.2f}" for f in FAMILIES if f in fam) + " |")
    print("\nfamilies (n): " + ", ".join(f"{f} ({fams.count(f)})" for f in FAMILIES))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
