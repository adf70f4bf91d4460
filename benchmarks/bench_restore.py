"""Restorer overhead: wall time per image vs the bare UNet calls it makes.

For ODEdit (each preset on each solver grid, and the ``fast`` preset) and SDEdit, on the
shipped prior (``--model embedded``) or a UNet config with random weights (same cost): time ``restore`` on a batch, then time the
same number of bare ``unet(x, t)`` calls on the same batch, and report the ratio
total / bare. The target is an overhead under 5 %. With ``--compile`` each restorer is also run
on the ``torch.compile``d network (``odedit ... --compile``): "bare" stays the plain network, so
total / bare < 1 is the compiled speed-up; the one-off compile time is printed per batch size.

    python benchmarks/bench_restore.py [--model embedded] [--presets light,fast]
        [--grids ddim:100,dpm++2m:20] [--batch-sizes 1,16] [--device cpu] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from odedit.models import UNetEps, compile_model
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


def parse_grids(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        solver, _, steps = item.partition(":")
        out.append((solver, int(steps)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="model folder or 'embedded' (the shipped prior); default: --config with random weights")
    ap.add_argument("--config", default="celeba64")
    ap.add_argument("--presets", default="light", help="comma list; 'fast' keeps its own solver and grid")
    ap.add_argument("--grids", default="ddim:100",
                    help="solver:steps pairs for the paper presets, e.g. ddim:100,dpm++2m:20")
    ap.add_argument("--strength", type=float, default=0.5, help="SDEdit strength (0 = no SDEdit row)")
    ap.add_argument("--sdedit-steps", type=int, default=100)
    ap.add_argument("--batch-sizes", default="1", help="comma list, e.g. 1,16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time each restorer on the torch.compile'd network")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    if args.model:
        from odedit.models import load_model

        model = load_model(None if args.model == "embedded" else args.model, device=device, dtype=dtype)
        unet, label = model.unet.eval().requires_grad_(False), f"model {args.model}"
    else:
        unet = build_unet(args.config, 64).to(device=device, dtype=dtype).eval().requires_grad_(False)
        model, label = UNetEps(unet, NoiseSchedule.linear()), f"{args.config} (random weights)"
    size = model.sample_size
    params = sum(p.numel() for p in unet.parameters()) / 1e6

    restorers = {}
    for preset in args.presets.split(","):
        if preset == "fast":
            cfg = ODEditConfig.from_preset("fast")
            restorers[f"ODEdit fast ({cfg.solver}, {cfg.steps} steps)"] = ODEdit(model, cfg)
            continue
        for solver, steps in parse_grids(args.grids):
            cfg = ODEditConfig.from_preset(preset, steps=steps, solver=solver)
            restorers[f"ODEdit {preset} ({solver}, {steps} steps)"] = ODEdit(model, cfg)
    if args.strength > 0:
        restorers[f"SDEdit s={args.strength} ({args.sdedit_steps} steps)"] = SDEdit(
            model, SDEditConfig(steps=args.sdedit_steps, strength=args.strength))
    compiled = compile_model(model) if args.compile else None
    if compiled is not None:
        for name, r in list(restorers.items()):
            restorers[f"{name}, compiled"] = type(r)(compiled, r.config)

    print(f"# {label}: {params:.1f} M parameters, {size}x{size}, {device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print("| batch | method | NFE | images / s | ms / image | bare UNet ms / image | ms per call and image (bare) "
          "| total / bare |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        images = torch.rand(batch, 3, size, size, device=device)
        x_bare = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
        bare_calls(unet, x_bare, 2, device)  # warm-up
        if compiled is not None:
            sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                compiled(x_bare, 500)
                compiled(x_bare, 400)
            sync(device)
            print(f"| {batch} | (torch.compile of the network for this batch size: {time.perf_counter() - t0:.1f} s, once) "
                  "| | | | | | |", flush=True)
        for name, restorer in restorers.items():
            nfe = restorer.config.nfe
            total = bare = 0.0
            for _ in range(args.repeats):  # interleave to share any background load fairly
                total += timed_restore(restorer, images, device)
                bare += bare_calls(unet, x_bare, nfe, device)
            n = args.repeats * batch
            print(f"| {batch} | {name} | {nfe} | {n / total:.4g} | {1e3 * total / n:.4g} | {1e3 * bare / n:.4g} "
                  f"| {1e3 * bare / n / nfe:.3g} | {total / bare:.3f} |", flush=True)


if __name__ == "__main__":
    main()
