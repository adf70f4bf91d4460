"""Restorer overhead: wall time per image vs the bare UNet calls it makes.

For ODEdit (paper settings, a preset) and SDEdit, on the ``celeba64`` UNet (random
weights are fine for timing) at 64x64: time ``restore`` on a batch, then time the
same number of bare ``unet(x, t)`` calls on the same batch, and report the ratio
total / bare. The target is an overhead under 5 %.

    python benchmarks/bench_restore.py [--preset light] [--batch-size 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from odedit.models import UNetEps
from odedit.restorers import ODEdit, ODEditConfig, SDEdit, SDEditConfig
from odedit.schedule import NoiseSchedule
from odedit.unets import build_unet


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_calls(unet, x, n: int, device) -> float:
    t = torch.full((x.shape[0],), 500, device=device, dtype=torch.long)
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            unet(x, t, return_dict=False)
    sync(device)
    return time.perf_counter() - start


def timed_restore(restorer, images, device) -> float:
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(images.shape[0])]
    sync(device)
    start = time.perf_counter()
    restorer.restore(images, generator=gens)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="celeba64")
    ap.add_argument("--preset", default="light")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    unet = build_unet(args.config, 64).to(device=device, dtype=dtype).eval().requires_grad_(False)
    model = UNetEps(unet, NoiseSchedule.linear())
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    images = torch.rand(args.batch_size, 3, 64, 64, device=device)
    x_bare = torch.randn(args.batch_size, 3, 64, 64, device=device, dtype=dtype)
    bare_calls(unet, x_bare, 3, device)  # warm-up

    restorers = {
        f"ODEdit {args.preset}": ODEdit(model, ODEditConfig.from_preset(args.preset, steps=args.steps)),
        f"SDEdit s={args.strength}": SDEdit(model, SDEditConfig(steps=args.steps, strength=args.strength)),
    }
    print(f"# {args.config}: {params:.1f} M parameters, batch {args.batch_size}, {device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print("| method | NFE | s/image | bare UNet s/image | ratio total/bare |")
    print("|---|---|---|---|---|")
    for name, restorer in restorers.items():
        nfe = restorer.config.nfe
        total = bare = 0.0
        for _ in range(args.repeats):  # interleave to share any background load fairly
            total += timed_restore(restorer, images, device)
            bare += bare_calls(unet, x_bare, nfe, device)
        n = args.repeats * args.batch_size
        print(f"| {name} | {nfe} | {total / n:.2f} | {bare / n:.2f} | {total / bare:.3f} |", flush=True)


if __name__ == "__main__":
    main()
