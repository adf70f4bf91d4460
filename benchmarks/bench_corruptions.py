"""Benchmark of odedit.corruptions: time to corrupt 1,000 64x64 images.

Usage: python benchmarks/bench_corruptions.py [--n 1000] [--size 64] [--severity 4]
       [--batch 1000] [--per-image 50] [--seed 0] [--celeba-zip PATH]

Reports (1) the headline number, ``corrupt_random`` over N images at the given severity
(batched: one call per ``--batch`` images; and one call per image), and (2) for each
corruption, the time per image when corrupting a batch of N images and when corrupting
``--per-image`` images one call at a time. Images are CelebA-64 faces if the zip is found
(../shared/data/celeba64/val.zip), else a synthetic picture. Single-threaded NumPy/SciPy
is what is measured; set OMP_NUM_THREADS etc. as you like.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from odedit.corruptions import CORRUPTIONS, corrupt, corrupt_random  # noqa: E402


def load_images(n: int, size: int, zip_path: Path) -> tuple[np.ndarray, str]:
    from PIL import Image

    if zip_path.exists():
        with zipfile.ZipFile(zip_path) as z:
            names = sorted(x for x in z.namelist() if x.lower().endswith(".jpg"))
            imgs = []
            for i in range(n):
                im = Image.open(io.BytesIO(z.read(names[i % len(names)]))).convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.LANCZOS)
                imgs.append(np.asarray(im, dtype=np.uint8))
        return np.stack(imgs), f"CelebA-64 val ({zip_path.name})"
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.3 + 0.5 * xx, 0.2 + 0.5 * yy, 0.5 + 0.2 * np.sin(8 * xx)], -1)
    imgs = [np.clip((base + g.normal(0, 0.03, base.shape)) * 255, 0, 255).astype(np.uint8) for _ in range(n)]
    return np.stack(imgs), "synthetic"


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--severity", type=int, default=4)
    p.add_argument("--batch", type=int, default=1000, help="images per corrupt_random call (batched run)")
    p.add_argument("--per-image", type=int, default=50, help="images for the one-call-per-image timings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--celeba-zip", type=Path, default=ROOT.parent / "shared/data/celeba64/val.zip")
    args = p.parse_args(argv)

    images, source = load_images(args.n, args.size, args.celeba_zip)
    print(f"images: {args.n} x {args.size}x{args.size} ({source}); severity {args.severity}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    corrupt_random(images[:4], args.severity, np.random.default_rng(0))  # warm-up (imports, caches)

    rng = np.random.default_rng(args.seed)
    names: list[str] = []

    def batched():
        for i in range(0, args.n, args.batch):
            _, nm = corrupt_random(images[i : i + args.batch], args.severity, rng.spawn(1)[0])
            names.extend(nm)

    t_batched = timed(batched)

    def one_by_one():
        for i in range(args.n):
            corrupt_random(images[i], args.severity, np.random.default_rng([args.seed, i]))

    t_single = timed(one_by_one)
    counts = {n: names.count(n) for n in CORRUPTIONS}
    print()
    print(f"corrupt_random, {args.n} images, severity {args.severity}:")
    print(f"  batched ({args.batch}/call): {t_batched:8.2f} s  ({1000 * t_batched / args.n:6.2f} ms/image)")
    print(f"  one call per image:   {t_single:8.2f} s  ({1000 * t_single / args.n:6.2f} ms/image)")
    print()
    print(f"per corruption, severity {args.severity} (ms per image):")
    print(f"  {'corruption':28s} {'batch of ' + str(args.n):>14s} {'1 per call':>12s} {'drawn':>6s}")
    total = 0.0
    for name in CORRUPTIONS:
        g = np.random.default_rng(1)
        tb = timed(lambda: corrupt(images, name, args.severity, g)) / args.n
        k = min(args.per_image, args.n)
        ts = timed(lambda: [corrupt(images[i], name, args.severity, g) for i in range(k)]) / k
        total += tb
        print(f"  {name:28s} {1000 * tb:14.3f} {1000 * ts:12.3f} {counts[name]:6d}")
    print(f"  {'mean over corruptions':28s} {1000 * total / len(CORRUPTIONS):14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
