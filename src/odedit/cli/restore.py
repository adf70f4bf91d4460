"""``odedit restore``: restore image files with ODEdit or SDEdit."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from odedit.cli.common import (
    CLIError,
    add_device_args,
    add_odedit_override_args,
    prepare_outdir,
    ranged,
    resolve_device,
    torch_dtype,
    write_json_atomic,
)

SIDECAR = "restore.json"

DESCRIPTION = """\
Restore degraded face images with a diffusion prior.

ODEdit (default) maps each image to the diffusion latent with the DDIM ODE (no noise),
then refines the latent with Langevin steps at a few levels while decoding (Algorithm 1
of the ODEdit paper). SDEdit injects noise to a level (--strength) and denoises
stochastically. More Langevin updates (--preset heavy) = more realism, less fidelity.

Inputs: files and/or folders (folders: the images directly inside). Any Pillow-readable
image and mode is accepted: RGBA is composited over white, greyscale and 16-bit images
become 8-bit RGB. Images are resized to the model's square resolution (--fit stretch:
whole frame, Lanczos; --fit crop: central square first). Outputs are PNGs with the same
base names at the model's resolution, or at the input's size with --keep-size. The
resolved settings, model and per-image seeds are saved to OUTDIR/restore.json.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore images (ODEdit or SDEdit)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument("--method", choices=("odedit", "sdedit"), default="odedit", help="default: odedit")
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="model folder (diffusers save_pretrained layout) or hub id; default: the embedded face prior",
    )
    g = p.add_argument_group("ODEdit settings (defaults: paper section 4.1)")
    g.add_argument(
        "--preset",
        choices=("light", "medium", "heavy"),
        default="medium",
        help="Langevin updates in total: light 100, medium 200, heavy 300 (default: medium)",
    )
    g.add_argument("--steps", type=ranged(int, 1, 1000), default=None, help="DDIM steps N (default 100)")
    g.add_argument("--step-size", type=ranged(float, 0.0), default=None, help="epsilon (default 1e-6)")
    add_odedit_override_args(g)
    s = p.add_argument_group("SDEdit settings")
    s.add_argument(
        "--strength",
        type=ranged(float, 0.0, 1.0, lo_open=True),
        default=0.5,
        help="noise level t0 as a fraction of the diffusion, in (0, 1] (default 0.5)",
    )
    s.add_argument("--eta", type=ranged(float, 0.0, 1.0), default=1.0, help="1 = DDPM noise (default)")
    r = p.add_argument_group("run")
    r.add_argument("--seed", type=ranged(int, 0), default=0, help="base seed (default 0)")
    r.add_argument("--batch-size", type=ranged(int, 1, 4096), default=8, help="images per batch (default 8)")
    add_device_args(r)
    r.add_argument("--fit", choices=("stretch", "crop"), default="stretch", help="how to make inputs square")
    r.add_argument("--keep-size", action="store_true", help="resize outputs back to the input size")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The frozen restorer config described by the flags (ValueError if inconsistent)."""
    from odedit.restorers import ODEditConfig, SDEditConfig

    if args.method == "odedit":
        return ODEditConfig.from_preset(
            args.preset,
            steps=args.steps,
            levels=args.levels,
            langevin_steps=args.langevin_steps,
            step_size=args.step_size,
            temperature=args.temperature,
            invert_to=args.invert_to,
            clip_inversion_x0=args.clip_inversion or None,
            decode_threshold=args.decode_threshold,
            solver=args.solver,
            inversion_iters=args.inversion_iters,
        )
    return SDEditConfig(steps=args.steps or 100, strength=args.strength, eta=args.eta)


def image_seed(base_seed: int, name: str) -> int:
    """See :func:`odedit.rng.restore_seed`."""
    from odedit.rng import restore_seed

    return restore_seed(base_seed, name)


def _load_sidecar(path: Path) -> dict:
    import json

    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CLIError(f"{path} exists but is not valid JSON; move it away or pick another output folder")
    return data if isinstance(data, dict) else {}


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from odedit import __version__
    from odedit.imageio import ImageError, fit_square, list_images, load_image_uint8, save_png_atomic
    from odedit.imageio import uint8_to_unit, unfit_square, unit_to_uint8
    from odedit.models import ModelLoadError, load_model, model_identity
    from odedit.restorers import ODEdit, SDEdit

    # 1. Validate everything cheap before loading the model.
    try:
        config = build_config(args)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        files = list_images(args.inputs)
    except (FileNotFoundError, ImageError) as err:
        raise CLIError(str(err)) from None
    outdir = prepare_outdir(args.output)
    out_names: dict[str, Path] = {}
    failures: list[tuple[str, str]] = []
    jobs: list[tuple[Path, Path]] = []
    for f in files:
        name = f.stem + ".png"
        if name in out_names:
            failures.append((str(f), f"{f}: output name {name} already taken by {out_names[name]}"))
            continue
        out_names[name] = f
        jobs.append((f, outdir / name))
    existing = [str(o) for _, o in jobs if o.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CLIError(f"outputs exist: {', '.join(existing[:3])}{more}; pass --overwrite to replace them")

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    try:
        model = load_model(args.model, device=device, dtype=dtype)
    except ModelLoadError as err:
        raise CLIError(str(err)) from None
    restorer = (ODEdit if args.method == "odedit" else SDEdit)(model, config)
    size = model.sample_size

    # 2. Sidecar: settings of this run + per-image seeds, merged with earlier runs' entries.
    sidecar_path = outdir / SIDECAR
    sidecar = _load_sidecar(sidecar_path)
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{args.seed}"
    sidecar.setdefault("runs", {})[run_id] = {
        "odedit_version": __version__,
        "method": args.method,
        "config": config.to_dict(),
        "model": model_identity(args.model),
        "image_size": size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "dtype_requested": args.dtype,
        "base_seed": args.seed,
        "fit": args.fit,
        "keep_size": args.keep_size,
        "command": sys.argv,
    }
    images_meta = sidecar.setdefault("images", {})

    # 3. Restore batch by batch; a bad file is reported and skipped.
    nfe = config.nfe
    show = not args.quiet
    done = 0
    bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not show, file=sys.stderr)
    pending: list[tuple[Path, Path, np.ndarray, int]] = []

    def flush() -> None:
        nonlocal done
        if not pending:
            return
        batch = np.stack([fit_square(img, size, args.fit) for _, _, img, _ in pending])
        seeds = [s for *_, s in pending]
        gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        steps = tqdm(total=nfe, desc="model calls", leave=False, disable=not show, file=sys.stderr)
        out = restorer.restore(uint8_to_unit(batch), generator=gens, callback=steps.update)
        steps.close()
        for (src, dst, original, seed), result in zip(pending, unit_to_uint8(out)):
            if args.keep_size:
                result = unfit_square(result, original, args.fit)
            save_png_atomic(dst, result)
            images_meta[dst.name] = {
                "input": str(src),
                "seed": seed,
                "run": run_id,
                "input_size": [int(original.shape[1]), int(original.shape[0])],
                "output_size": [int(result.shape[1]), int(result.shape[0])],
            }
            done += 1
        bar.update(len(pending))
        pending.clear()
        write_json_atomic(sidecar_path, sidecar)

    for src, dst in jobs:
        try:
            image = load_image_uint8(src)
        except ImageError as err:
            failures.append((str(src), str(err)))
            bar.update(1)
            continue
        pending.append((src, dst, image, image_seed(args.seed, src.name)))
        if len(pending) == args.batch_size:
            flush()
    flush()
    bar.close()
    sidecar["runs"][run_id]["failures"] = [{"input": f, "error": e} for f, e in failures]
    write_json_atomic(sidecar_path, sidecar)

    print(f"restored {done} image(s) into {outdir} ({args.method}, {nfe} model calls per image)", file=sys.stderr)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for _, e in failures:
            print(f"  {e}", file=sys.stderr)
        return 1
    return 0
