"""``odedit corrupt``: degrade clean images with the evaluation corruptions.

Writes each corrupted image as OUTDIR/<input stem>.png and a ``manifest.csv`` with one row
per output: ``file`` (output name), ``corruption``, ``severity``, ``seed`` and ``fraction``
(empty unless an explicit masking fraction was used). One output is reproduced alone by::

    corrupt(load_image_uint8(input), corruption, severity, np.random.default_rng(seed),
            fraction=fraction or None)

The per-image seed is derived from ``--seed`` and the output name (not the position in the
list), so adding or removing other inputs changes nothing. With ``--corruption random`` the
corruption is drawn per image from a second generator derived the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Optional

from odedit.atomic import write_text_atomic
from odedit.cli.common import CLIError, prepare_outdir, ranged

from odedit.corruption_names import CORRUPTIONS as CORRUPTION_NAMES
from odedit.corruption_names import MASKING as MASKING_NAMES

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "corruption", "severity", "seed", "fraction")


def corruption_name(text: str) -> str:
    """argparse type: a corruption name or ``random``; the error lists the valid names."""
    if text in CORRUPTION_NAMES or text == "random":
        return text
    raise argparse.ArgumentTypeError(
        f"unknown corruption {text!r}; valid names: random, {', '.join(CORRUPTION_NAMES)}"
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "corrupt",
        help="degrade images with ImageNet-C / masking corruptions (writes PNGs + manifest.csv)",
        description=(
            "Corrupt clean images with one of the 19 ImageNet-C corruptions (Hendrycks & "
            "Dietterich 2019) or the two masking corruptions, at severity 1-5, "
            "reproducibly. Writes OUTDIR/<name>.png and OUTDIR/manifest.csv "
            "(file, corruption, severity, seed, fraction)."
        ),
        epilog="corruptions: " + ", ".join(CORRUPTION_NAMES) + "; or 'random' (one drawn per image).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--outdir", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument(
        "--corruption",
        required=True,
        type=corruption_name,
        metavar="NAME",
        help="a corruption name (see below) or 'random'",
    )
    p.add_argument(
        "--severity",
        type=ranged(int, 1, 5),
        default=None,
        metavar="1-5",
        help="severity 1-5 (required, except for a masking corruption given --fraction)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    p.add_argument(
        "--fraction",
        type=ranged(float, 0.0, 1.0),
        default=None,
        metavar="F",
        help="masking corruptions: fraction of pixels/columns masked, overriding the severity's "
        "(severity 1-5 = 0.1-0.5)",
    )
    p.add_argument(
        "--size",
        type=ranged(int, 8, 4096),
        default=None,
        metavar="N",
        help="resize each image to NxN (whole frame, Lanczos) before corrupting, e.g. a model's resolution",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=run)
    return p


def derive_seed(base_seed: int, file_name: str, purpose: str = "corrupt") -> int:
    """See :func:`odedit.rng.corrupt_seed`."""
    from odedit.rng import corrupt_seed

    return corrupt_seed(base_seed, file_name, purpose)


def _read_manifest(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [dict(r) for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CLIError(f"cannot read existing {path}: {err}") from None
    return [r for r in rows if r.get("file")]


def _write_manifest_atomic(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["file"]):
        writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    write_text_atomic(path, buf.getvalue())


def run(args: argparse.Namespace) -> int:
    name = args.corruption
    masking = name in MASKING_NAMES
    if args.fraction is not None and name != "random" and not masking:
        raise CLIError(f"--fraction applies only to the masking corruptions ({', '.join(MASKING_NAMES)})")
    if args.severity is None and not (masking and args.fraction is not None):
        raise CLIError("--severity 1-5 is required")
    files, failures = _gather_inputs(args.inputs)
    outdir = _plan_outputs(files, args.outdir, args.overwrite)
    manifest_path = outdir / MANIFEST
    old_rows = _read_manifest(manifest_path)
    new_rows: list[dict] = []
    for f in files:
        row = _corrupt_file(f, args, outdir, failures)
        if row is not None:
            new_rows.append(row)
    if new_rows:
        written = {r["file"] for r in new_rows}
        rows = [r for r in old_rows if r["file"] not in written] + new_rows
        try:
            _write_manifest_atomic(manifest_path, rows)
        except OSError as err:
            raise CLIError(f"cannot write {manifest_path}: {err.strerror or err}") from None
    print(f"odedit corrupt: wrote {len(new_rows)} image(s) and {MANIFEST} to {outdir}")
    if failures:
        print(f"odedit corrupt: {len(failures)} input(s) skipped:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _gather_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Expand folders into image files, each once; a missing path or an empty folder is
    reported like a bad file. Raises CLIError when no image is left."""
    from odedit.imageio import ImageError, list_images

    failures: list[str] = []
    files: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        try:
            found = list_images([item])
        except (FileNotFoundError, ImageError) as err:
            failures.append(str(err))
            continue
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        for line in failures:
            print(f"odedit corrupt: skipped: {line}", file=sys.stderr)
        raise CLIError("no input images")
    return files, failures


def _plan_outputs(files: list[Path], outdir_arg, overwrite: bool) -> Path:
    """The output folder, once the output names (<stem>.png) are checked: unique, never an
    input, and not already there unless ``overwrite``."""
    by_out: dict[str, list[Path]] = {}
    for f in files:
        by_out.setdefault(f"{f.stem}.png", []).append(f)
    clashes = {k: v for k, v in by_out.items() if len(v) > 1}
    if clashes:
        out_name, srcs = next(iter(clashes.items()))
        raise CLIError(
            f"{len(clashes)} output name(s) would be written twice, e.g. {out_name!r} from "
            + " and ".join(repr(str(s)) for s in srcs)
            + "; corrupt them into separate folders"
        )
    outdir = prepare_outdir(outdir_arg)
    for out_name, (src,) in by_out.items():
        if (outdir / out_name).resolve() == src.resolve():
            raise CLIError(f"output {str(outdir / out_name)!r} would replace its own input; choose another -o")
    existing = sorted(k for k in by_out if (outdir / k).exists())
    if existing and not overwrite:
        raise CLIError(
            f"{len(existing)} output file(s) already exist in {str(outdir)!r} (e.g. {existing[0]!r}); "
            "pass --overwrite to replace them"
        )
    return outdir


def _corrupt_file(f: Path, args: argparse.Namespace, outdir: Path, failures: list[str]) -> Optional[dict]:
    """Degrade one file into ``outdir/<stem>.png``: its manifest row, or None (and a line in
    ``failures``) when it cannot be read."""
    import numpy as np

    from odedit.corruptions import choose_corruption, corrupt
    from odedit.imageio import ImageError, fit_square, load_image_uint8, save_png_atomic

    out_name = f"{f.stem}.png"
    try:
        image = load_image_uint8(f)
    except ImageError as err:
        failures.append(str(err))
        return None
    if args.size is not None:
        image = fit_square(image, args.size, "stretch")
    seed = derive_seed(args.seed, out_name)
    chosen = args.corruption
    if chosen == "random":
        chosen = choose_corruption(np.random.default_rng(derive_seed(args.seed, out_name, "choice")))
    fraction = args.fraction if chosen in MASKING_NAMES else None
    out = corrupt(image, chosen, args.severity, np.random.default_rng(seed), fraction=fraction)
    try:
        save_png_atomic(outdir / out_name, out)
    except OSError as err:
        raise CLIError(f"cannot write {outdir / out_name}: {err.strerror or err}") from None
    return {
        "file": out_name,
        "corruption": chosen,
        "severity": "" if args.severity is None else str(args.severity),
        "seed": str(seed),
        "fraction": "" if fraction is None else repr(float(fraction)),
    }
