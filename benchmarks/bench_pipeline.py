"""Where the time of `odedit bench` goes besides model calls, in one run.

A micro UNet (2 levels, 8/16 channels, ~42 k parameters) makes the model calls cheap, so
what is left is the benchmark's own work: corrupting, writing PNGs and records, PSNR/SSIM
per image (the restore loop), and the tables (SWD per set, results.csv, summary.md, grid).

Reported, all from the same run:

* restore loop: wall time vs the sum of the per-image method seconds the records hold
  (the methods' own time) -> loop overhead ratio;
* tables, cold: SWD of every set computed (one thread vs all cores, same values);
* tables, warm: a rerun with nothing new (the SWD cache hit), i.e. what each extra stage of a
  staged run costs for the sets it already has.

    python benchmarks/bench_pipeline.py --data ../shared/data/celeba64/val.zip [--limit 200]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from odedit.bench import SWD_CACHE_DIR, BenchSettings, build_methods, run_benchmark
from odedit.unets import save_model


def micro_model(path: Path) -> Path:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return save_model(unet, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="clean images (folder or zip), e.g. celeba64/val.zip")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline."))
    try:
        model = micro_model(tmp / "model")
        methods = build_methods(["source", "odedit", "sdedit"], presets=["medium", "light"],
                                odedit_overrides=dict(steps=5, langevin_steps=1), sdedit_steps=5,
                                strengths=[0.3, 0.5, 0.7], ablations=True)
        settings = BenchSettings(data=args.data, output=str(tmp / "out"), model=str(model), methods=methods,
                                 limit=args.limit, batch_size=args.batch_size, device="cpu", progress=False)

        import odedit.bench.protocol as B  # where run_benchmark looks `aggregate` up
        import odedit.metrics as M

        real_agg = B.aggregate
        timings: dict[str, float] = {}

        def timed_aggregate(*a, **k):
            t0 = time.perf_counter()
            try:
                return real_agg(*a, **k)
            finally:
                timings["tables"] = time.perf_counter() - t0

        B.aggregate = timed_aggregate
        t0 = time.perf_counter()
        run_benchmark(settings)
        total = time.perf_counter() - t0
        loop = total - timings["tables"]
        method_s = 0.0
        for f in glob.glob(str(tmp / "out" / "records" / "*" / "*.json")):
            rec = json.loads(Path(f).read_text())
            method_s += float(rec.get("seconds") or 0.0)
        cold_all = timings["tables"]

        # the same tables with one thread for the SWD, from an empty cache
        shutil.rmtree(tmp / "out" / "records" / SWD_CACHE_DIR)
        real_swd = M.swd_from_descriptors
        M.swd_from_descriptors = lambda *a, **k: real_swd(*a, **dict(k, workers=1))
        run_benchmark(settings)
        cold_one = timings["tables"]
        M.swd_from_descriptors = real_swd
        run_benchmark(settings)  # nothing new: cached SWD
        warm = timings["tables"]
        B.aggregate = real_agg

        n_sets = len(methods)
        print(f"{args.limit} images x {n_sets} methods (micro UNet, {os.cpu_count()} cores, "
              f"torch threads {torch.get_num_threads()})")
        print("| part | seconds | note |")
        print("|---|---|---|")
        print(f"| restore loop | {loop:.1f} | methods' own time {method_s:.1f} s: loop / methods = "
              f"{loop / max(method_s, 1e-9):.3f} |")
        print(f"| tables, cold, SWD 1 thread | {cold_one:.1f} | {n_sets} sets |")
        print(f"| tables, cold, SWD all cores | {cold_all:.1f} | ratio {cold_one / max(cold_all, 1e-9):.2f}x |")
        print(f"| tables, warm (SWD cached) | {warm:.1f} | a staged rerun's cost for sets already done |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
