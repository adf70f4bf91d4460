"""Invert-then-decode round trips of real faces: PSNR against model calls, per solver.

    python benchmarks/bench_solvers.py --val val.zip -n 16 [--model DIR] [--nfe 10,20,50,100]
                                       [--dtype float32] [-o round_trip.json]

For each ODE solver (DDIM = eq. 8; DPM-Solver++(2M); DDIM with J fixed-point inversion
refinements) and each grid size N, a face is inverted to the top of the N-step grid and
decoded back, without Langevin; the table gives the PSNR (dB) of the result against the
face and the model calls (NFE) the round trip took. A perfect ODE solver round-trips
exactly, so this isolates the solvers' discretisation error (the paper's stated
limitation of inversion). Also times one model call at batch 1/8/32 in the given dtype.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from odedit.atomic import write_text_atomic
from odedit.data import load_dataset
from odedit.devices import resolve_dtype
from odedit.imageio import uint8_to_unit, unit_to_model
from odedit.metrics import psnr
from odedit.models import load_model, model_identity
from odedit.ode import ddim_invert_path_fixed_point
from odedit.schedule import timestep_grid
from odedit.solvers import solver_path


def round_trip(model, x0, solver: str, steps: int, iters: int) -> torch.Tensor:
    grid = timestep_grid(model.schedule.num_train_timesteps, steps)
    up, down = [-1, *grid], [*grid[::-1], -1]
    if iters:
        z = ddim_invert_path_fixed_point(model, x0, up, iters)
    else:
        z = solver_path(solver, model, x0, up)
    return solver_path(solver, model, z, down)


def call_ms(model, batch: int, reps: int) -> float:
    x = torch.randn(batch, model.in_channels, model.sample_size, model.sample_size)
    model(x, 500)  # warm-up (kernel selection)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x, 500)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded prior)")
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--nfe", default="10,20,50,100", help="grid sizes N (round trip = 2N calls, x(2+J)/2 with J)")
    ap.add_argument("--iters", type=int, default=1, help="fixed-point refinements J of the fp row (default 1)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--timing-reps", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args(argv)
    model = load_model(args.model, device="cpu", dtype=resolve_dtype(args.dtype))
    ds = load_dataset(args.val, resolution=int(model.sample_size), limit=args.n)
    x0 = unit_to_model(uint8_to_unit(ds.images))
    rows = []
    with torch.no_grad():
        timing = {b: round(call_ms(model, b, args.timing_reps), 1) for b in (1, 8, 32)}
        print(f"ms per model call ({args.dtype}): " + ", ".join(f"batch {b}: {v} ({v / b:.1f}/img)" for b, v in timing.items()))
        for steps in (int(v) for v in args.nfe.split(",")):
            variants = [("ddim", 0), ("dpm++2m", 0)] + ([("ddim", args.iters)] if args.iters else [])
            for solver, iters in variants:
                t0 = time.perf_counter()
                out = round_trip(model, x0, solver, steps, iters)
                sec = time.perf_counter() - t0
                unit = lambda x: ((x.float() + 1) / 2).clamp(0, 1)  # noqa: E731
                p = psnr(unit(out), unit(x0))
                name = solver if not iters else f"ddim+fp{iters}"
                rows.append(dict(solver=name, steps=steps, nfe=steps * (2 + iters), psnr_mean=float(p.mean()),
                                 psnr_min=float(p.min()), seconds=round(sec, 1)))
                print(f"{name:10s} N={steps:4d} NFE={steps * (2 + iters):4d}  PSNR {float(p.mean()):6.2f} dB "
                      f"(min {float(p.min()):.2f})  {sec:.0f} s", flush=True)
    if args.output:
        payload = dict(model=model_identity(args.model), n=len(x0), dtype=args.dtype, call_ms=timing, rows=rows)
        write_text_atomic(args.output, json.dumps(payload, indent=2) + "\n")  # short temp name, any output name
    return 0


if __name__ == "__main__":
    sys.exit(main())
