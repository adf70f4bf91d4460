"""Do restorations stay bit-identical across a refactor? SHA-256 of seeded outputs.

    python benchmarks/check_bit_identical.py                # check against the reference
    python benchmarks/check_bit_identical.py --write        # (re)write the reference
    python benchmarks/check_bit_identical.py --only light-ddim sdedit-0.5

A small deterministic model (the ``tiny`` UNet at 16x16 from ``torch.manual_seed(0)``, with
the linear DDPM schedule; and the same network behind a random rank-8 Gaussian base,
:class:`odedit.models.GaussianResidualEps`) restores a fixed batch of seeded random images
with ODEdit (every preset; solvers ddim and dpm++2m; fixed-point inversion 0 and 1;
x0 clipping in inversion and decode thresholding on and off; edge cases of the level
loop) and SDEdit, in float32 and bfloat16. Each output (model space, before any clamp) is
hashed with SHA-256; the hashes of the code before a refactor are the reference
(``benchmarks/data/bit_identical_reference.json``), and every later run must reproduce
them exactly.

Bitwise results depend on the kernels: the reference records the torch version and the
CPU capability it was made with, and a check elsewhere reports the difference instead of
failing (``tests/test_bit_identical.py`` skips there). One intra-op thread throughout.
Runtime: ~20 s on one busy core; the test runs a few cheap cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "bit_identical_reference.json"
SIZE = 16
BATCH = 2
IMAGE_SEED = 2024
RESTORE_SEEDS = (11, 12)


def environment() -> dict:
    """What bitwise float results depend on (besides the code)."""
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def build_models() -> dict:
    """{"unet": UNetEps, "gaussian": GaussianResidualEps, "unet-bf16": UNetEps in bfloat16}."""
    from odedit.gaussian import GaussianBase
    from odedit.models import GaussianResidualEps, UNetEps
    from odedit.schedule import NoiseSchedule
    from odedit.unets import build_unet

    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=SIZE).eval()
    net = UNetEps(unet, NoiseSchedule.linear())
    g = torch.Generator().manual_seed(1)
    dim, rank = 3 * SIZE * SIZE, 8
    basis, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g))
    eigvals = torch.linspace(2.0, 0.2, rank)
    mean = 0.3 * torch.randn(dim, generator=g)
    base = GaussianBase(mean, basis.contiguous(), eigvals, 0.05, (3, SIZE, SIZE))
    torch.manual_seed(0)
    unet16 = build_unet("tiny", sample_size=SIZE).eval().to(torch.bfloat16)
    return {
        "unet": net,
        "gaussian": GaussianResidualEps(net, base),
        "unet-bf16": UNetEps(unet16, NoiseSchedule.linear()),
    }


def images() -> torch.Tensor:
    """(BATCH, 3, SIZE, SIZE) float32 in model space [-1, 1]: seeded smooth faces-like noise."""
    g = torch.Generator().manual_seed(IMAGE_SEED)
    low = torch.rand(BATCH, 3, 4, 4, generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (smooth + 0.2 * torch.randn(BATCH, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)


def cases() -> dict[str, tuple[str, Callable[[], object]]]:
    """name -> (model key, config factory). Names are stable: they key the reference."""
    from odedit.restorers import PRESETS, ODEditConfig, SDEditConfig

    out: dict[str, tuple[str, Callable[[], object]]] = {}

    def od(name, model="unet", preset="light", **kw):
        out[name] = (model, lambda: ODEditConfig.from_preset(preset, **kw))

    # every preset with its own Langevin budget, on a 10-level grid (fast: its own 20 levels)
    for p in PRESETS:
        steps = None if p == "fast" else 10
        for solver in ("ddim", "dpm++2m"):
            od(f"{p}-{solver}", preset=p, steps=steps, solver=solver)
        od(f"{p}-ddim-fp1", preset=p, steps=steps, solver="ddim", inversion_iters=1)
    # the options on a small budget: solver x fixed point x clip x threshold
    small = dict(steps=10, langevin_steps=3)
    for solver in ("ddim", "dpm++2m"):
        for clip in (False, True):
            for thr in (None, 0.9):
                tag = f"{solver}{'-clip' if clip else ''}{'-thr' if thr else ''}"
                od(f"k3-{tag}", solver=solver, clip_inversion_x0=clip, decode_threshold=thr, **small)
                if solver == "ddim" and not clip:
                    od(f"k3-{tag}-fp1", solver=solver, decode_threshold=thr, inversion_iters=1, **small)
    od("k3-ddim-fp2", solver="ddim", inversion_iters=2, **small)
    # edge cases of the level loop
    od("edge-top6", invert_to=6, levels=(0, 3, 6), **small)
    od("edge-top6-dpm", invert_to=6, levels=(2, 5), solver="dpm++2m", **small)
    od("edge-level0-only", levels=(0,), **small)
    od("edge-top-only", levels=(9,), **small)
    od("edge-top-only-dpm", levels=(9,), solver="dpm++2m", **small)
    od("edge-nolangevin", steps=10, langevin_steps=0)
    od("edge-nolangevin-dpm", steps=10, langevin_steps=0, solver="dpm++2m")
    od("edge-steps1", steps=1, levels=(0,), langevin_steps=2)
    od("edge-steps1-dpm", steps=1, levels=(0,), langevin_steps=2, solver="dpm++2m")
    od("edge-dpm-long-segment", steps=40, levels=(0, 30), langevin_steps=2, solver="dpm++2m")
    od("edge-T0-eps0", temperature=0.0, step_size=0.0, **small)
    # the Gaussian-residual prior and bfloat16
    for model in ("gaussian", "unet-bf16"):
        for solver in ("ddim", "dpm++2m"):
            od(f"{model}-k3-{solver}", model=model, solver=solver, **small)
        od(f"{model}-k3-ddim-fp1", model=model, inversion_iters=1, **small)
    # SDEdit
    for model in ("unet", "gaussian", "unet-bf16"):
        prefix = "" if model == "unet" else f"{model}-"
        out[f"{prefix}sdedit-0.5"] = (model, lambda: SDEditConfig(steps=10, strength=0.5))
    out["sdedit-eta0"] = ("unet", lambda: SDEditConfig(steps=10, strength=0.7, eta=0.0))
    out["sdedit-calls7"] = ("unet", lambda: SDEditConfig(steps=100, strength=0.3, calls=7))
    out["sdedit-1.0"] = ("unet", lambda: SDEditConfig(steps=10, strength=1.0))
    return out


# Cheap cases the test suite checks (a few seconds in all).
QUICK = (
    "k3-ddim", "k3-dpm++2m-clip-thr", "k3-ddim-thr-fp1", "edge-top6-dpm", "edge-steps1",
    "gaussian-k3-dpm++2m", "unet-bf16-k3-ddim", "sdedit-0.5", "gaussian-sdedit-0.5",
)
API_CASES = ("k3-ddim", "sdedit-0.5")  # also run through the classes' restore_with_status


def digest(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def run_case(name: str, models: dict, table: dict) -> dict[str, str]:
    """{name: sha256} for the function output, plus {name + "@api": ...} for API_CASES."""
    from odedit.restorers import ODEdit, ODEditConfig, SDEdit, odedit, sdedit
    from odedit.rng import generators_for

    key, make = table[name]
    model, config = models[key], make()
    fn = odedit if isinstance(config, ODEditConfig) else sdedit
    with torch.no_grad():
        out = {name: digest(fn(model, images(), config, generators_for(RESTORE_SEEDS)))}
        if name in API_CASES:
            cls = ODEdit if isinstance(config, ODEditConfig) else SDEdit
            unit = (images() + 1) / 2
            res, diverged = cls(model, config).restore_with_status(unit, generator=generators_for(RESTORE_SEEDS))
            out[name + "@api"] = digest(torch.cat([res.flatten(), diverged.float()]))
    return out


def compute(names=None) -> dict[str, str]:
    torch.set_num_threads(1)
    table = cases()
    models = build_models()
    result: dict[str, str] = {}
    for name in names or table:
        result.update(run_case(name, models, table))
    return result


def load_reference(path: Path = REFERENCE) -> dict:
    return json.loads(path.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="write the reference instead of checking it")
    ap.add_argument("--only", nargs="+", default=None, metavar="CASE", help="these cases only")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    args = ap.parse_args(argv)
    hashes = compute(args.only)
    if args.write:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        doc = {"environment": environment(), "batch": BATCH, "size": SIZE, "restore_seeds": list(RESTORE_SEEDS),
               "hashes": hashes}
        args.reference.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(hashes)} hashes to {args.reference}")
        return 0
    ref = load_reference(args.reference)
    if ref["environment"] != environment():
        print(f"note: reference made with {ref['environment']}, this is {environment()}: "
              "bitwise differences may come from the kernels, not the code", file=sys.stderr)
    bad = [n for n, h in hashes.items() if ref["hashes"].get(n) != h]
    for n in bad:
        print(f"DIFFERS: {n}", file=sys.stderr)
    print(f"{len(hashes) - len(bad)}/{len(hashes)} outputs bit-identical to the reference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
