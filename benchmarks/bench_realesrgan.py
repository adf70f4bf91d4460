"""Time per face of the Real-ESRGAN x4plus upsampler (64 px -> 256 px) against Lanczos.

    OMP_NUM_THREADS=1 python benchmarks/bench_realesrgan.py [--threads 1] [--reps 3] [-o out.json]

Rows: Lanczos (x4), Real-ESRGAN float32, and Real-ESRGAN under bf16 autocast where this CPU has
bf16 hardware (:func:`odedit.devices.cpu_has_fast_bf16`); each at batch 1 and 8, in ms per face
(median of ``--reps`` calls after one warm-up). The bf16 row also gives its PSNR against the
float32 output on the same faces (how much bf16 changes the picture). Faces are 64 px crops of
the CelebA-HQ samples in ``shared/data/samples`` when present, else a smooth synthetic image.
Needs ``odedit[upscale]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from odedit.devices import cpu_has_fast_bf16
from odedit.realesrgan import RealESRGANUpsampler
from odedit.upsample import LanczosUpsampler

SAMPLES = ("../shared/data/samples/celebahq-1024", "/work/shared/data/samples/celebahq-1024")


def faces_64(n: int) -> list[np.ndarray]:
    from PIL import Image

    for folder in SAMPLES:
        files = sorted(Path(folder).glob("*.png"))
        if files:
            return [np.asarray(Image.open(files[i % len(files)]).convert("RGB").resize((64, 64), Image.LANCZOS))
                    for i in range(n)]
    yy, xx = np.mgrid[0:64, 0:64] / 64
    img = np.stack([0.5 + 0.35 * np.sin(6 * xx + yy), 0.5 + 0.3 * np.cos(5 * yy), 0.2 + 0.6 * xx * yy], -1)
    return [np.round(img * 255).astype(np.uint8)] * n


def time_per_face(up, faces, reps: int) -> tuple[float, list[np.ndarray]]:
    out = up.upsample(faces, 4)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        up.upsample(faces, 4)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / len(faces), out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-o", "--output", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    fp32 = RealESRGANUpsampler.load()
    load_s = time.perf_counter() - t
    variants = [("lanczos", LanczosUpsampler()), ("realesrgan fp32", fp32)]
    bf16 = cpu_has_fast_bf16()
    if bf16:
        variants.append(("realesrgan bf16 autocast", RealESRGANUpsampler(net=fp32.net, dtype=torch.bfloat16)))

    rows, ref = [], {}
    for batch in (1, 8):
        faces = faces_64(batch)
        for name, up in variants:
            ms, out = time_per_face(up, faces, args.reps if batch == 1 else max(1, args.reps - 1))
            if name == "realesrgan fp32":
                ref[batch] = out
            vs = statistics.mean(psnr(o, r) for o, r in zip(out, ref[batch])) if "bf16" in name else None
            rows.append({"upsampler": name, "batch": batch, "ms_per_face": round(ms, 1),
                         "psnr_vs_fp32_db": None if vs is None else round(vs, 2)})

    print(f"Real-ESRGAN x4plus, 64 px faces -> 256 px, CPU, {args.threads} thread(s), torch {torch.__version__}; "
          f"weights load {load_s:.2f} s; bf16 hardware: {bf16}")
    print(f"{'upsampler':<26} {'batch':>5} {'ms/face':>9} {'PSNR vs fp32':>13}")
    for r in rows:
        extra = "" if r["psnr_vs_fp32_db"] is None else f"{r['psnr_vs_fp32_db']:.2f} dB"
        print(f"{r['upsampler']:<26} {r['batch']:>5} {r['ms_per_face']:>9.1f} {extra:>13}")
    if args.output:
        Path(args.output).write_text(json.dumps({"threads": args.threads, "load_s": load_s, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
