"""Training throughput (images/second) of ``odedit.training.train`` vs a bare training step.

On the ``celeba64`` UNet (17.3 M parameters) at 64x64, batch 32, fp32 by default:

* bare:  UNet forward + MSE + backward + AdamW step on random tensors (the floor);
* train: the full loop of :func:`odedit.training.train` (accelerate, data gather and
  flips, noising, gradient clipping, AdamW, EMA update, logging) on 64 synthetic
  images, timed from its per-step log after ``--warmup`` steps.

The overhead column is train / bare - 1. Other processes sharing the CPU make
absolute numbers noisy; the table prints the load average next to them.

    python benchmarks/bench_train.py [--config celeba64] [--batch-size 32] [--steps 2] [--warmup 1]
                                     [--device cpu|cuda] [--mixed-precision no|bf16|fp16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from odedit.training import TrainConfig, train
from odedit.unets import build_unet


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_images_per_s(config: str, res: int, batch: int, steps: int, warmup: int, device, amp_dtype) -> float:
    torch.manual_seed(0)
    unet = build_unet(config, res).to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, res, res, device=device)
    noise = torch.randn_like(x)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = unet(x, t, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def train_images_per_s(config: str, res: int, batch: int, steps: int, warmup: int, device, mp: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(64):
            Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(data / f"{i}.png")
        cfg = TrainConfig(
            data=str(data),
            out=str(Path(tmp) / "run"),
            config=config,
            resolution=res,
            batch_size=batch,
            steps=warmup + steps,
            log_every=1,
            sample_every=0,
            checkpoint_every=0,
            checkpoint_minutes=0,
            mixed_precision=mp,
            cpu=device.type == "cpu",
            progress=False,
            warmup_steps=1,
        )
        result = train(cfg, log=lambda _m: None)
    # Per-step times from the log (elapsed_s is cumulative training time, pauses excluded).
    elapsed = [0.0] + [r["elapsed_s"] for r in result.records]
    per_step = [b - a for a, b in zip(elapsed[:-1], elapsed[1:])][warmup:]
    return batch / statistics.median(per_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="celeba64")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "bf16", "fp16"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    load0 = os.getloadavg()[0]
    bare = bare_images_per_s(args.config, args.resolution, args.batch_size, args.steps, args.warmup, device, amp)
    full = train_images_per_s(
        args.config, args.resolution, args.batch_size, args.steps, args.warmup, device, args.mixed_precision
    )
    load1 = os.getloadavg()[0]
    print(
        f"\n{args.config} @ {args.resolution}px, batch {args.batch_size}, {args.mixed_precision} precision, "
        f"device {device}, torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"load average {load0:.1f} -> {load1:.1f}"
    )
    print(f"{'loop':<8}{'images/s':>10}{'s/step':>10}")
    for name, ips in (("bare", bare), ("train()", full)):
        print(f"{name:<8}{ips:>10.2f}{args.batch_size / ips:>10.2f}")
    print(f"overhead of train() over the bare step: {100 * (bare / full - 1):+.1f} %")


if __name__ == "__main__":
    main()
