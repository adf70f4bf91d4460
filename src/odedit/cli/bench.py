"""``odedit bench``: measure fidelity and realism of ODEdit vs SDEdit (paper Table 1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from odedit.cli.common import (
    CLIError,
    add_compile_arg,
    add_device_args,
    add_odedit_override_args,
    float_list,
    prepare_outdir,
    ranged,
    resolve_device,
    sigterm_as_interrupt,
)

DESCRIPTION = """\
Benchmark restoration methods on degraded faces, as in Table 1 of the ODEdit paper.

Each clean image of --data (a folder or a .zip of images, brought to the model's
resolution) gets one random corruption at --severity, seeded by --seed and the file
name (or the degraded images come from a `odedit corrupt` folder: --manifest). Every
method restores every degraded image; `source` is the degraded image itself.

Metrics: PSNR, SSIM (and LPIPS with the optional extra odedit[metrics] and its
weights; ID, the identity similarity, with the extra odedit[identity]) of each restored
image against its clean image; SWD (and FID) of each restored set against a reference set (--reference, default: the clean images of the
benchmark). Outputs in -o DIR: results.csv, summary.md, grid.png, bench.json and the
images. A rerun with the same settings resumes (finished images are skipped); other
settings in the same DIR are an error unless --overwrite. Several GPUs:
`accelerate launch -m odedit.cli.bench ...` splits the images between processes.

Method names: source, odedit-<preset>[-<changed setting>...], sdedit-<strength>,
sdedit-<strength>-nfe<N> (NFE-matched), <name>-oracle-best<N> (--best-of; uses the
ground truth). See docs/benchmark.md.
"""


def str_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark ODEdit vs SDEdit on degraded faces (PSNR, SSIM, LPIPS, SWD, FID, ID)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="PATH", help="clean images: a folder or a .zip of images")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="model folder (diffusers layout) or hub id; default: the embedded face prior",
    )
    _add_image_args(p)
    _add_method_args(p)
    _add_metric_args(p)
    _add_run_args(p)
    p.set_defaults(run=run)


def _add_image_args(p) -> None:
    """The "images and degradation" flags."""
    d = p.add_argument_group("images and degradation")
    d.add_argument("--limit", type=ranged(int, 1), default=None, metavar="N", help="first N images (by name)")
    d.add_argument(
        "--severity",
        type=ranged(int, 1, 5),
        default=None,
        help="corruption severity 1-5 (default 4, as the paper)",
    )
    d.add_argument(
        "--corruptions",
        type=str_list,
        default=None,
        metavar="LIST",
        help="draw the corruption from these names only (default: all 21)",
    )
    d.add_argument(
        "--manifest",
        default=None,
        metavar="CSV",
        help="manifest.csv written by `odedit corrupt`: degraded images from its folder, clean ones from "
        "--data matched by file stem",
    )
    d.add_argument("--seed", type=ranged(int, 0), default=0, help="base seed of corruptions and restorations")
    d.add_argument("--fit", choices=("stretch", "crop"), default="stretch", help="how to make images square")


def _add_method_args(p) -> None:
    """The "methods" flags."""
    m = p.add_argument_group("methods")
    m.add_argument(
        "--methods",
        type=str_list,
        default=("source", "odedit", "sdedit"),
        metavar="LIST",
        help="subset of source,odedit,sdedit (default: all three)",
    )
    m.add_argument(
        "--presets",
        type=str_list,
        default=None,
        metavar="LIST",
        help="ODEdit presets, each a method: light,medium,heavy = the paper's settings with 100/200/300 Langevin updates; "
        "fast = 80 model calls (default: restore's default preset, fast)",
    )
    m.add_argument(
        "--steps", type=ranged(int, 1, 1000), default=None,
        help="ODE steps N of both methods, 1-1000 (default 100; SDEdit's unless --sdedit-steps)",
    )
    m.add_argument(
        "--sdedit-steps", type=ranged(int, 1, 1000), default=None, metavar="N",
        help="SDEdit's grid size when it should differ from --steps (e.g. a 20-step ODEdit solver "
        "against SDEdit on the paper's 100-step grid)",
    )
    m.add_argument(
        "--step-size",
        type=float_list,
        default=None,
        metavar="LIST",
        help="epsilon; a list (e.g. 1e-6,1e-5) makes one method per value (default 4e-5; the paper's is 1e-6)",
    )
    add_odedit_override_args(m)
    m.add_argument(
        "--strengths",
        type=float_list,
        default=(0.5,),
        metavar="LIST",
        help="SDEdit strengths in (0, 1], each its own method (default 0.5)",
    )
    m.add_argument("--eta", type=ranged(float, 0.0, 1.0), default=1.0, help="SDEdit eta (default 1 = DDPM)")
    m.add_argument(
        "--match-nfe",
        action="store_true",
        help="add SDEdit at each strength with the model calls of each ODEdit preset (same start t0 as the "
        "strength, NFE evenly spaced timesteps down to 0, at most t0+1)",
    )
    m.add_argument(
        "--ablations",
        action="store_true",
        help="add the standard ablations of the first preset: no Langevin, lowest level only, step sizes "
        "1e-6/1e-5/1e-4, x0 clipping toggled, NFE-matched SDEdit",
    )
    m.add_argument(
        "--best-of",
        type=ranged(int, 1, 64),
        default=1,
        metavar="N",
        help="also report an ORACLE variant keeping the best PSNR of N samples against the clean image "
        "(uses the ground truth; default 1 = none)",
    )


def _add_metric_args(p) -> None:
    """The "metrics" flags."""
    q = p.add_argument_group("metrics")
    q.add_argument(
        "--reference",
        default=None,
        metavar="PATH",
        help="realism reference set for SWD/FID (folder or .zip); default: the clean images of the benchmark",
    )
    q.add_argument("--reference-limit", type=ranged(int, 2), default=None, metavar="N", help="first N reference images")
    q.add_argument(
        "--download-weights",
        action="store_true",
        help="let LPIPS/FID download their pretrained weights if not cached (default: never download)",
    )
    q.add_argument("--grid-images", type=ranged(int, 0, 64), default=8, metavar="N", help="columns of grid.png")


def _add_run_args(p) -> None:
    """The "run" flags."""
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=ranged(int, 1, 4096), default=16, help="images per batch, 1-4096 (default 16)")
    add_device_args(r)
    add_compile_arg(r)
    r.add_argument("--overwrite", action="store_true", help="discard an existing benchmark in DIR")
    r.add_argument("--quiet", action="store_true", help="no progress bar")


def build_methods_from_args(args: argparse.Namespace):
    from odedit.bench import build_methods

    overrides = {
        "steps": args.steps,
        "levels": args.levels,
        "langevin_steps": args.langevin_steps,
        "temperature": args.temperature,
        "invert_to": args.invert_to,
        "clip_inversion_x0": args.clip_inversion or None,
        "decode_threshold": args.decode_threshold,
        "solver": args.solver,
        "inversion_iters": args.inversion_iters,
    }
    if args.levels is not None and not args.levels:
        raise CLIError("--levels is empty")
    for s in args.strengths:
        if not 0 < s <= 1:
            raise CLIError(f"--strengths: {s} is out of range (0, 1]")
    for e in args.step_size or ():
        if not e >= 0:
            raise CLIError(f"--step-size: {e} must be >= 0")
    return build_methods(
        methods=args.methods,
        presets=args.presets,
        odedit_overrides=overrides,
        step_sizes=args.step_size,
        strengths=args.strengths,
        sdedit_steps=args.sdedit_steps or args.steps,
        eta=args.eta,
        ablations=args.ablations,
        match_nfe=args.match_nfe,
        best_of=args.best_of,
    )


def run(args: argparse.Namespace) -> int:
    from odedit.bench import BenchError, BenchSettings, run_benchmark
    from odedit.imageio import ImageError
    from odedit.models import ModelLoadError

    if args.manifest and (args.severity is not None or args.corruptions is not None):
        raise CLIError("--severity and --corruptions do not apply with --manifest (the manifest says how each "
                       "image was degraded)")
    try:
        methods = build_methods_from_args(args)
    except BenchError as err:
        raise CLIError(str(err)) from None
    prepare_outdir(args.output)
    if args.device != "auto":
        resolve_device(args.device)  # a clear error if e.g. CUDA is missing
    settings = BenchSettings(
        data=args.data,
        output=str(args.output),
        methods=methods,
        model=args.model,
        limit=args.limit,
        severity=4 if args.severity is None else args.severity,
        corruptions=args.corruptions,
        seed=args.seed,
        manifest=args.manifest,
        reference=args.reference,
        reference_limit=args.reference_limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        fit=args.fit,
        grid_images=args.grid_images,
        allow_download=args.download_weights,
        overwrite=args.overwrite,
        progress=not args.quiet,
        command=list(sys.argv),
    )
    try:
        with sigterm_as_interrupt():
            stats = run_benchmark(settings)
    except (BenchError, ModelLoadError, ImageError) as err:
        raise CLIError(str(err)) from None
    if stats.summary is not None:
        share = f" (process 0 of {stats.processes})" if stats.processes > 1 else ""
        print(
            f"benchmarked {stats.images} image(s) x {len(stats.methods)} method(s): {stats.processed} "
            f"image-method pair(s) computed now{share}, {stats.skipped} already done; {stats.wall_seconds:.1f} s. "
            f"Table: {Path(stats.output) / 'summary.md'}",
            file=sys.stderr,
        )
        for name, e in stats.summary["methods"].items():
            ident = f"ID {e['identity'][0]:.3f}  " if e.get("identity") else ""
            print(f"  {name:<32} PSNR {e['psnr'][0]:7.2f}  SSIM {e['ssim'][0]:.3f}  {ident}SWD {e['swd']:7.2f}  "
                  f"NFE {e['nfe']}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m odedit.cli.bench ...`` (e.g. under ``accelerate launch -m odedit.cli.bench``)."""
    parser = argparse.ArgumentParser(prog="odedit")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.run(args) or 0)
    except CLIError as err:
        print(f"odedit bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("odedit bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
