"""Sample quality of a face prior: a sample grid and sliced Wasserstein distances.

    python scripts/prior_quality.py --model runs/prior/model --val val.zip --train train.zip \
        -n 2000 --steps 100 -o out/prior_quality [--device cuda --batch-size 500]

Writes to ``-o DIR``:

* ``samples.png``: the first ``--grid`` (64) samples (seeds ``--seed`` ...);
* ``quality.json``: SWD (x 1e3, Laplacian-pyramid 7x7 patches, Karras et al. 2018;
  :func:`odedit.metrics.swd`) of the ``n`` DDIM samples against the first ``n`` val
  images, and of the first ``n`` train images against the same val images (the
  floor: what a perfect model of the training set would score), per pyramid level
  and averaged, with the settings, the model's identity and the timings.

The same seed is used for the patch positions and directions of both comparisons.
Needs no downloaded weights, unlike FID.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from odedit.data import load_dataset
from odedit.devices import resolve_device, resolve_dtype
from odedit.imageio import make_grid, save_png_atomic
from odedit.metrics import swd
from odedit.models import load_model, model_identity
from odedit.sampling import default_ncols, sample_chunks, sample_seeds


def _images(path: Path, n: int, resolution: int) -> np.ndarray:
    """The first n images (by name) of a folder or zip as uint8 (n, H, W, 3)."""
    ds = load_dataset(path, resolution=resolution, limit=n)
    images = np.asarray(ds.images)
    if len(images) < n:
        raise SystemExit(f"{path}: only {len(images)} readable images, {n} asked for")
    return images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the embedded prior)")
    ap.add_argument("--val", type=Path, required=True, help="held-out images (folder or zip)")
    ap.add_argument("--train", type=Path, default=None, help="training images, for the floor (optional)")
    ap.add_argument("-n", type=int, default=2000, help="samples and images per set (default 2000)")
    ap.add_argument("--steps", type=int, default=100, help="DDIM steps per sample (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first sample and of the SWD (default 0)")
    ap.add_argument("--solver", default="ddim", choices=("ddim", "dpm++2m"), help="ODE solver (default ddim)")
    ap.add_argument("--grid", type=int, default=64, help="samples in samples.png (default 64)")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.n < 2 or args.steps < 1 or args.batch_size < 1 or args.grid < 0:
        ap.error("-n must be >= 2, --steps and --batch-size >= 1, --grid >= 0")

    device = resolve_device(args.device)
    model = load_model(args.model, device=device, dtype=resolve_dtype(args.dtype))
    resolution = int(model.sample_size)
    args.output.mkdir(parents=True, exist_ok=True)
    # the image sets first: a wrong path fails before the expensive sampling
    val = _images(args.val, args.n, resolution)
    train = None if args.train is None else _images(args.train, args.n, resolution)

    # 1. Samples: one CPU generator per sample (seed, seed+1, ...), as `odedit sample`. The
    #    grid is written as soon as its samples exist, so a run cut off later still leaves it.
    t0 = time.perf_counter()
    seeds = sample_seeds(args.seed, args.n)
    chunks: list[np.ndarray] = []
    for chunk in sample_chunks(model, seeds, args.steps, args.batch_size, solver=args.solver):
        before = sum(len(c) for c in chunks)
        chunks.append(chunk)
        if before < min(args.grid, args.n) <= before + len(chunk):
            grid = np.concatenate(chunks)[: args.grid]
            save_png_atomic(args.output / "samples.png", make_grid(grid, default_ncols(len(grid))))
    samples = np.concatenate(chunks)
    sample_seconds = time.perf_counter() - t0

    # 2. SWD of samples vs val, and train vs val (floor), with the same seed.
    t1 = time.perf_counter()
    result = dict(
        model=model_identity(args.model),
        n=args.n,
        steps=args.steps,
        solver=args.solver,
        seed=args.seed,
        dtype=args.dtype,
        device=str(device),
        val=str(args.val),
        train=None if args.train is None else str(args.train),
        sample_seconds=round(sample_seconds, 1),
        swd_samples_val=swd(samples, val, np.random.default_rng(args.seed)),
    )
    if train is not None:
        result["swd_train_val"] = swd(train, val, np.random.default_rng(args.seed))
    result["swd_seconds"] = round(time.perf_counter() - t1, 1)
    tmp = args.output / "quality.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.output / "quality.json")
    floor = result.get("swd_train_val", {}).get("mean")
    print(
        f"SWD x1e3 samples-val {result['swd_samples_val']['mean']:.2f}"
        + ("" if floor is None else f", train-val (floor) {floor:.2f}")
        + f"; {args.n} samples in {sample_seconds:.0f} s -> {args.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
