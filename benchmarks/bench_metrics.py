"""Timing of the pixel metrics on random images (CPU by default).

    PYTHONPATH=src python benchmarks/bench_metrics.py --n 64 --size 64 [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from odedit import metrics as M


def _time(label: str, fn, repeat: int) -> None:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    print(f"{label:<40s} {(time.perf_counter() - t0) / repeat * 1e3:9.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.n, 3, a.size, a.size, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    xd, yd = x.to(a.device), y.to(a.device)
    print(f"{a.n} images 3x{a.size}x{a.size} on {a.device}, torch threads {torch.get_num_threads()}")
    _time("psnr", lambda: M.psnr(xd, yd), a.repeat)
    _time("ssim", lambda: M.ssim(xd, yd), a.repeat)
    _time("laplacian_descriptors (one set)", lambda: M.laplacian_descriptors(x, 0), a.repeat)
    da, db = M.laplacian_descriptors(x, 0), M.laplacian_descriptors(y, 1)
    _time("swd_from_descriptors (4x128 dirs)", lambda: M.swd_from_descriptors(da, db, 0), a.repeat)
    f = np.random.default_rng(0).standard_normal((4096, 2048))
    m1, s1 = M.gaussian_stats(f[:2048])
    m2, s2 = M.gaussian_stats(f[2048:] + 0.1)
    _time("frechet_distance D=2048 (eigh)", lambda: M.frechet_distance(m1, s1, m2, s2), 1)


if __name__ == "__main__":
    main()
