"""``odedit sample``: draw unconditional samples from a diffusion prior (DDIM, eta = 0)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from odedit.cli.common import (
    SOLVER_CHOICES,
    CLIError,
    add_compile_arg,
    add_device_args,
    ranged,
    resolve_device,
    torch_dtype,
)

DESCRIPTION = """\
Draw samples from a diffusion model: x_T ~ N(0, I), then the deterministic DDIM ODE
(--steps model calls) down to the image. Sample i uses seed --seed + i with its own
CPU generator, so a sample is the same whatever --batch-size, and its starting noise
is the same on every device. Writes a grid PNG (-o) and optionally one PNG per sample.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="draw samples from a diffusion prior (grid PNG)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="model folder (e.g. a run's OUT/model) or hub id; default: the embedded face prior",
    )
    p.add_argument("-n", "--num", type=ranged(int, 1, 100_000), default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="GRID.png", help="grid image to write")
    p.add_argument("--steps", type=ranged(int, 1, 1000), default=100, help="DDIM steps, 1-1000 (default 100)")
    p.add_argument("--seed", type=ranged(int, 0), default=0, help="seed of the first sample (default 0)")
    p.add_argument(
        "--solver", choices=SOLVER_CHOICES, default="ddim", metavar="SOLVER",
        help="ODE solver: %(choices)s (default %(default)s; dpm++2m: DPM-Solver++(2M))"
    )
    p.add_argument("--batch-size", type=ranged(int, 1, 4096), default=16, help="samples per model call, 1-4096 (default 16)")
    p.add_argument("--ncols", type=ranged(int, 1), default=None, help="grid columns (default: near-square)")
    p.add_argument(
        "--individual", type=Path, default=None, metavar="OUTDIR", help="also write sample_NNNN.png files here"
    )
    add_device_args(p)
    add_compile_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from odedit.cli.common import prepare_outdir
    from odedit.imageio import make_grid, save_png_atomic
    from odedit.models import ModelLoadError, compile_model, load_model
    from odedit.sampling import default_ncols, sample_chunks, sample_seeds

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise CLIError(f"-o {str(output)!r}: the grid is written as PNG; give a path ending in .png")
    if output.is_dir():
        raise CLIError(f"-o {str(output)!r} is a directory; give a .png file path")
    if not output.parent.is_dir():
        prepare_outdir(output.parent)
    if args.individual is not None:
        prepare_outdir(args.individual)
    device = resolve_device(args.device)
    try:
        model = load_model(args.model, device=device, dtype=torch_dtype(args.dtype, device))
    except ModelLoadError as err:
        raise CLIError(str(err)) from None
    if args.compile:
        model = compile_model(model)

    seeds = sample_seeds(args.seed, args.num)
    t0 = time.perf_counter()
    with tqdm(
        total=args.num * args.steps, unit="img-step", desc="sampling", disable=args.quiet, file=sys.stderr
    ) as bar:
        images = np.concatenate(list(sample_chunks(model, seeds, args.steps, args.batch_size, bar.update, solver=args.solver)))
    grid = make_grid(images, args.ncols or default_ncols(len(images)))
    save_png_atomic(output, grid)
    if args.individual is not None:
        for i, img in enumerate(images):
            save_png_atomic(Path(args.individual) / f"sample_{i:04d}.png", img)
    if not args.quiet:
        dt = time.perf_counter() - t0
        print(
            f"{len(images)} samples ({args.steps} {args.solver} steps, seeds {seeds[0]}..{seeds[-1]}) in {dt:.1f} s -> {output}",
            file=sys.stderr,
        )
    return 0
