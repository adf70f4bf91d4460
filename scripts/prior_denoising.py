"""Per-level denoising quality of one or more priors on held-out images.

    python scripts/prior_denoising.py --val val.zip -n 256 \
        --model runs/prior/model --model runs/prior/model_raw [-o denoising.json]

For each model and each level t (default 10, 100, 250, 500, 750) prints the x0 MSE of the
model's estimate (x_t - sigma_t eps) / sqrt(alpha_bar) against the clean image, next to the
MSE of doing nothing (x_t / sqrt(alpha_bar)), and their ratio (lower is better; 1 = no
better than doing nothing; :mod:`odedit.prior_eval`). Every model sees the same images and
the same noise (``--seed``), so the figures compare models directly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from odedit.atomic import write_text_atomic
from odedit.data import load_dataset
from odedit.devices import resolve_device, resolve_dtype
from odedit.imageio import uint8_to_unit, unit_to_model
from odedit.models import load_model, model_identity
from odedit.prior_eval import DEFAULT_LEVELS, denoising_errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, help="model folder or hub id (repeatable; default: embedded)")
    ap.add_argument("--val", type=Path, required=True, help="held-out images (folder or zip)")
    ap.add_argument("-n", type=int, default=256, help="first n images (default 256)")
    ap.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="timesteps (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("-o", "--output", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    try:
        levels = tuple(int(v) for v in args.levels.split(","))
    except ValueError:
        ap.error(f"--levels must be comma-separated integers, got {args.levels!r}")
    if args.n < 1 or args.batch_size < 1:
        ap.error("-n and --batch-size must be >= 1")

    device = resolve_device(args.device)
    results = []
    x0 = None
    for name in args.model or [None]:
        model = load_model(name, device=device, dtype=resolve_dtype(args.dtype))
        if x0 is None:
            ds = load_dataset(args.val, resolution=int(model.sample_size), limit=args.n)
            x0 = unit_to_model(uint8_to_unit(ds.images)).to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            rows = denoising_errors(model, x0, levels, torch.Generator().manual_seed(args.seed), args.batch_size)
        seconds = time.perf_counter() - t0
        results.append(dict(model=model_identity(name), rows=rows, seconds=round(seconds, 1)))
        print(f"{model_identity(name)}  ({seconds:.0f} s)")
        print("      t   MSE x0 (model)   MSE x_t/sqrt(ab)   ratio")
        for r in rows:
            print(f"  {r['t']:5d}   {r['mse_x0']:14.5f}   {r['mse_nothing']:16.5f}   {r['ratio']:.4f}")
    if args.output is not None:
        payload = dict(val=str(args.val), n=int(x0.shape[0]), seed=args.seed, dtype=args.dtype, levels=levels, models=results)
        write_text_atomic(args.output, json.dumps(payload, indent=2, default=str) + "\n")  # short temp name
    return 0


if __name__ == "__main__":
    sys.exit(main())
