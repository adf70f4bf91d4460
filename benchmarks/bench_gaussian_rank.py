"""Choose the rank k of the Gaussian base by measurement: denoising per level, forward cost, size.

    python benchmarks/bench_gaussian_rank.py --train ../shared/data/celeba64/train.zip \
        --val ../shared/data/celeba64/val.zip --ranks 64,128,256,512,768,1024 -o gaussian_rank.json

One randomized SVD of the training faces and their mirror images (rank max(ranks)) is truncated
to each k (the dropped variance joins the isotropic rest). For each k: the x0-MSE ratio of the
Gaussian's exact denoiser at t = 10/100/250/500/750 on the first -n val faces
(:mod:`odedit.prior_eval`'s protocol, the same noise for every k), the time of one eps call at
batch 16 next to the shipped network's, and the fp16 size of the basis.
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
from odedit.gaussian import fit_ppca
from odedit.imageio import uint8_to_unit, unit_to_model
from odedit.prior_eval import DEFAULT_LEVELS, denoising_errors
from odedit.schedule import NoiseSchedule


class _GaussOnly:
    """A Gaussian base seen through the eps contract (for prior_eval)."""

    def __init__(self, base, schedule):
        self.base, self.schedule = base, schedule
        self.sample_size, self.in_channels = base.shape[1], base.shape[0]

    def __call__(self, x, t):
        return self.base.eps(x, self.schedule.alpha_bar_at(int(t)))


def _time_call(fn, x, reps=20) -> float:
    fn(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(x)
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--ranks", default="64,128,256,512,768,1024")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--no-flip", action="store_true", help="fit on the training faces only (no mirror copies)")
    ap.add_argument("--save", type=Path, default=None, help="also save the largest fit here (a gaussian/ folder)")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    ranks = sorted(int(r) for r in args.ranks.split(","))
    schedule = NoiseSchedule.linear()

    t0 = time.perf_counter()
    train = unit_to_model(uint8_to_unit(load_dataset(args.train).images))
    if not args.no_flip:
        train = torch.cat([train, train.flip(-1)])
    val = unit_to_model(uint8_to_unit(load_dataset(args.val, limit=args.n).images))
    print(f"data: {train.shape[0]} training images (with mirrors: {not args.no_flip}), {val.shape[0]} val; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    full = fit_ppca(train, ranks[-1], generator=torch.Generator().manual_seed(0))
    fit_s = time.perf_counter() - t0
    print(f"fit rank {ranks[-1]}: {fit_s:.0f} s; s2 = {full.residual_var:.3e}", flush=True)
    del train
    if args.save:
        full.save(args.save)

    from odedit.models import load_model

    net = load_model(None)
    xb = torch.randn(16, 3, 64, 64)
    with torch.no_grad():
        net_s = _time_call(lambda x: net(x, 500), xb, reps=5)
    rows = []
    for k in ranks:
        base = full.truncated(k)
        model = _GaussOnly(base, schedule)
        with torch.no_grad():
            errs = denoising_errors(model, val, DEFAULT_LEVELS, torch.Generator().manual_seed(0))
            call_s = _time_call(lambda x: base.eps(x, 0.5), xb)
        row = dict(
            rank=k, residual_var=base.residual_var, ratios={r["t"]: round(r["ratio"], 5) for r in errs},
            eps_ms_batch16=round(call_s * 1e3, 2), net_ms_batch16=round(net_s * 1e3, 1),
            size_mb_fp16=round((base.basis.numel() * 2 + base.mean.numel() * 4) / 1e6, 1),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.output:
        payload = dict(train=str(args.train), val=str(args.val), n=int(val.shape[0]), flip=not args.no_flip,
                       fit_seconds=round(fit_s, 1), rows=rows)
        write_text_atomic(args.output, json.dumps(payload, indent=2) + "\n")  # short temp name, any output name
    return 0


if __name__ == "__main__":
    sys.exit(main())
