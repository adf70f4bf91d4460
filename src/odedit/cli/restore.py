"""``odedit restore``: restore image files with ODEdit or SDEdit."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from odedit.cli.common import (
    LONG_RUN_CALLS,
    MAX_BATCH_SIZE,
    MAX_FACES,
    MAX_STEPS,
    METHOD_CHOICES,
    PRESET_CHOICES,
    CLIError,
    add_compile_arg,
    add_device_args,
    add_odedit_override_args,
    prepare_outdir,
    ranged,
    resolve_device,
    sigterm_as_interrupt,
    torch_dtype,
    write_json_atomic,
)

from odedit.fidelity import DEFAULT_FIDELITY, DEFAULT_MATCH_COLOUR

SIDECAR = "restore.json"

DESCRIPTION = """\
Restore degraded face images with a diffusion prior.

ODEdit (default) maps each image to the diffusion latent with the DDIM ODE (no noise),
then refines the latent with Langevin steps at a few levels while decoding (Algorithm 1
of the ODEdit paper). SDEdit injects noise to a level (--strength) and denoises
stochastically. More Langevin updates remove more noise and mask lines and smooth the
face more: with the embedded prior light is the best over all corruptions, medium on noisy
or masked faces, and heavy smooths too much on all (measured with --solver dpm++2m
--steps 20: docs/results.md).

Inputs: files and/or folders (folders: the images directly inside). Any Pillow-readable
image and mode is accepted: RGBA is composited over white, greyscale and 16-bit images
become 8-bit RGB. Images are resized to the model's square resolution (--fit stretch:
whole frame, Lanczos; --fit crop: central square first). Outputs are PNGs with the same
base names at the model's resolution, or at the input's size with --keep-size. The
resolved settings, model and per-image seeds are saved to OUTDIR/restore.json.

Whole photos (--faces auto, the default): each face is found with mediapipe's bundled
detector (pip install 'odedit[faces]'), aligned to the prior's frame by a similarity
transform from its keypoints, restored, upscaled (ODEdit+: --upsampler, Lanczos by
default) and blended back with a feathered mask of the face alone (--paste-mask): hair,
background and clothes keep their pixels; the output is the whole photo at its own size.
Inputs already at the model's size are taken as aligned crops. A photo with no face is
copied through unchanged and reported; so is one under 32 px a side, which is not
searched. Faces beyond --max-faces are counted and reported. --faces aligned restores
every input as an aligned crop (the behaviour above). A line per photo says how many faces
were found, their sizes, the upscaling and the stages run (not with --quiet).
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
    p.add_argument("--method", choices=METHOD_CHOICES, default="odedit", metavar="METHOD",
                   help="%(choices)s (default: %(default)s)")
    p.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="model folder (diffusers save_pretrained layout) or hub id; default: the embedded face prior",
    )
    g = p.add_argument_group("ODEdit settings (defaults: paper section 4.1, except the step size)")
    g.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default=None,
        metavar="PRESET",
        help="%(choices)s. light/medium/heavy: the paper's grid and levels with 100/200/300 Langevin updates in total "
        "(300/400/500 model calls); fast: DPM-Solver++(2M), 20 steps, 40 updates (80 model calls; as good "
        "as light on 20 DPM++ steps, docs/performance.md); medium removes more noise and mask lines and smooths more; "
        "flags below override single settings (default: light)",
    )
    g.add_argument(
        "--steps", type=ranged(int, 1, MAX_STEPS), default=None, help=f"DDIM steps N, 1-{MAX_STEPS} (default 100)"
    )
    g.add_argument("--step-size", type=ranged(float, 0.0), default=None, help="epsilon (default 1e-5, measured; the paper's 1e-6 leaves images almost unchanged: docs/results.md)")
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
    r.add_argument(
        "--batch-size",
        type=ranged(int, 1, MAX_BATCH_SIZE),
        default=8,
        help=f"face crops per batch, 1-{MAX_BATCH_SIZE} (default 8)",
    )
    add_device_args(r)
    add_compile_arg(r)
    f = p.add_argument_group("whole photos")
    f.add_argument(
        "--faces",
        choices=("auto", "aligned"),
        default="auto",
        help="auto: detect, align, restore and paste back every face (inputs at the model's size "
        "count as aligned crops); aligned: every input is an aligned face crop (default: auto)",
    )
    f.add_argument(
        "--max-faces",
        type=ranged(int, 1, MAX_FACES),
        default=10,
        help=f"faces per photo, best first (the others are reported), 1-{MAX_FACES} (default 10)",
    )
    f.add_argument(
        "--min-face-score", type=ranged(float, 0.0, 1.0, lo_open=True, hi_open=True), default=0.5,
        help="detector confidence threshold in (0, 1) (default 0.5)",
    )
    f.add_argument(
        "--upsampler",
        default="lanczos",
        metavar="lanczos|realesrgan|PATH_OR_HUB_ID",
        help="ODEdit+ second stage for pasting faces back: lanczos (default), realesrgan (Real-ESRGAN "
        "x4plus, offline; pip install 'odedit[upscale]') or a diffusers upscaling "
        "pipeline, e.g. stabilityai/stable-diffusion-x4-upscaler",
    )
    f.add_argument(
        "--paste-mask",
        choices=("face", "frame"),
        default="face",
        help="what goes back into the photo: face (default), the face only, from its outline (face mesh, or an "
        "ellipse from the keypoints when the mesh fails), so hair, background and clothes keep their pixels; "
        "frame: the whole restored frame with a feathered border",
    )
    f.add_argument(
        "--fidelity",
        type=ranged(float, 0.0, 1.0),
        default=DEFAULT_FIDELITY,
        metavar="W",
        help=f"0..1 (default {DEFAULT_FIDELITY:g}): how much of the photo's own detail finer than the model's "
        "64 px a face larger than 64 px keeps, where it is detail rather than noise (1 = all of it, "
        "0 = the upsampled restoration alone); no effect on faces of 64 px or less",
    )
    f.add_argument(
        "--match-colour",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MATCH_COLOUR,
        help="move each restored face's mean colour to the input's (default: "
        f"{'on' if DEFAULT_MATCH_COLOUR else 'off'})",
    )
    r.add_argument("--fit", choices=("stretch", "crop"), default="stretch", help="how to make aligned crops square")
    r.add_argument("--keep-size", action="store_true", help="resize outputs back to the input size")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    r.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave inputs whose output already exists (resume an interrupted run; outputs are "
        "written atomically, so an existing PNG is always complete)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bars and no line per photo")
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The frozen restorer config described by the flags (ValueError if inconsistent)."""
    from odedit.restorers import METHODS, ODEditConfig, SDEditConfig

    options = {  # each config type's flags (None = the preset's or the default)
        ODEditConfig: dict(
            preset=args.preset,
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
        ),
        SDEditConfig: dict(steps=args.steps, strength=args.strength, eta=args.eta),
    }
    config_type = METHODS[args.method]
    return config_type.from_options(**options[config_type])


def image_seed(base_seed: int, name: str) -> int:
    """See :func:`odedit.rng.restore_seed`."""
    from odedit.rng import restore_seed

    return restore_seed(base_seed, name)


# Errors of os calls that concern one file name, not the folder or the disk: such a file fails
# alone and the batch goes on. EINVAL/EILSEQ: a name the file system cannot store (FAT, SMB, ...).
NAME_ERRNOS = (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ)


def _location(path: Path) -> Path:
    """Absolute path of the directory entry itself: its folder resolved (symlinks, ..), the
    entry not followed."""
    try:
        return path.absolute().parent.resolve() / path.name
    except (OSError, RuntimeError):  # a symlink loop
        return path.absolute()


def _real(path: Path) -> Path:
    """``path`` with every symlink followed (the entry itself too), as far as it exists."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _drop_earlier_outputs(files: list[Path], inputs: list[str], outdir: Path) -> tuple[list[Path], int]:
    """Leave out the files of an input folder that is the output folder itself and that its
    restore.json lists as outputs of earlier runs: a rerun into the input folder
    (``odedit restore same -o same``) must not take its own results for photos. Files named
    explicitly are kept (and then refused by :func:`_refuse_outputs_that_are_inputs`).
    Returns the kept files and how many were left out."""
    target = _real(outdir)
    if not any(Path(i).is_dir() and _real(Path(i)) == target for i in inputs):
        return files, 0
    images = _load_sidecar(outdir / SIDECAR).get("images")
    listed = {target / str(name) for name in images} if isinstance(images, dict) else set()
    explicit = {_location(Path(i)) for i in inputs if not Path(i).is_dir()}
    kept = [f for f in files if _location(f) not in listed or _location(f) in explicit]
    return kept, len(files) - len(kept)


def _refuse_outputs_that_are_inputs(jobs: list[tuple[Path, Path]], files: list[Path]) -> None:
    """CLIError if an output path is, or resolves to, an input file: the same path (relative or
    absolute, through symlinks) or the same file (a hard link, a name differing in case on a
    case-insensitive file system). Checked before anything is written, whatever the flags."""
    by_path = {_real(f): f for f in files}
    by_id = {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        by_id[(st.st_dev, st.st_ino)] = f
    clashes = []
    for _, dst in jobs:
        hit = by_path.get(_real(dst))
        if hit is None:
            try:
                st = dst.stat()
            except OSError:
                continue
            hit = by_id.get((st.st_dev, st.st_ino))
        if hit is not None:
            clashes.append((dst, hit))
    if clashes:
        dst, src = clashes[0]
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise CLIError(
            f"output {dst} is the input {src}{more}; odedit never writes over an input, even with "
            "--overwrite: pass another output folder with -o"
        )


def _load_sidecar(path: Path) -> dict:
    import json

    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CLIError(f"{path} exists but is not valid JSON; move it away or pick another output folder")
    return data if isinstance(data, dict) else {}


def _merge_sidecar(path: Path, ours: dict) -> None:
    """Merge this run's entries into OUTDIR/restore.json under an exclusive lock on OUTDIR,
    so that two ``odedit restore`` processes writing into one folder keep each other's entries."""
    try:
        with _folder_lock(path.parent):
            current = _load_sidecar(path)
            current.setdefault("runs", {}).update(ours["runs"])
            current.setdefault("images", {}).update(ours["images"])
            write_json_atomic(path, current)
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err.strerror or err}") from None


class _folder_lock:
    """flock on the folder itself (POSIX; leaves no lock file behind). Without fcntl (Windows)
    there is no cross-process lock: use one process per output folder there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.fd = os.open(self.folder, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def run(args: argparse.Namespace) -> int:
    """``odedit restore``; SIGTERM stops it like Ctrl-C (the run is recorded as interrupted)."""
    with sigterm_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from odedit.imageio import ImageError, list_images, load_image_uint8, save_png_atomic
    from odedit.imageio import remove_stale_temps, uint8_to_unit, unit_to_uint8
    from odedit.models import ModelLoadError, compile_model, load_model, model_identity
    from odedit.provenance import code_identity
    from odedit.detect import too_small_for_detection
    from odedit.faces import finish_photo, plan_photo, uses_detection
    from odedit.restorers import Restorer

    # 1. Validate everything cheap before loading the model.
    try:
        config = build_config(args)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing exclude each other")
    try:
        files = list_images(args.inputs)
    except (FileNotFoundError, ImageError) as err:
        raise CLIError(str(err)) from None
    outdir = Path(args.output)
    files, earlier = _drop_earlier_outputs(files, args.inputs, outdir)
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
    _refuse_outputs_that_are_inputs(jobs, files)  # whatever the flags: an input is never replaced
    skipped = 0
    if args.skip_existing:
        before = len(jobs)
        jobs = [(f, o) for f, o in jobs if not o.exists()]
        skipped = before - len(jobs)
    existing = [str(o) for _, o in jobs if o.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CLIError(
            f"outputs exist: {', '.join(existing[:3])}{more}; pass --overwrite to replace them "
            "or --skip-existing to resume"
        )
    outdir = prepare_outdir(outdir)
    stale = remove_stale_temps(outdir)  # left by a killed run; never another live writer's
    if stale:
        print(f"removed {len(stale)} temp file(s) of an interrupted run from {outdir}", file=sys.stderr)
    if earlier:
        print(f"left out {earlier} file(s) of {outdir} that {SIDECAR} lists as outputs of earlier runs",
              file=sys.stderr)
    if config.nfe > LONG_RUN_CALLS:
        print(f"note: {config.nfe:,} model calls per face (the light preset makes 300): this run will take "
              "long; Ctrl-C stops it and --skip-existing resumes it", file=sys.stderr)

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    try:
        model = load_model(args.model, device=device, dtype=dtype)
    except ModelLoadError as err:
        raise CLIError(str(err)) from None
    if args.compile:
        model = compile_model(model)
    restorer = Restorer(model, config)  # the config's type picks the algorithm
    size = model.sample_size

    # 2. Sidecar: settings of this run + per-image seeds, merged with earlier runs' entries.
    sidecar_path = outdir / SIDECAR
    _load_sidecar(sidecar_path)  # an unreadable sidecar stops the run before any work
    sidecar: dict = {"runs": {}, "images": {}}  # this run's entries; merged into the file on each write
    # a random tag: two runs (processes or calls) may start in the same second with the same seed
    run_id = time.strftime("%Y%m%dT%H%M%S") + f"-{args.seed}-{secrets.token_hex(3)}"
    sidecar["runs"][run_id] = {
        **code_identity(),  # odedit_version, git_commit, git_dirty
        "method": args.method,
        "config": config.to_dict(),
        "model": model_identity(args.model),
        "image_size": size,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "dtype_requested": args.dtype,
        "compile": args.compile,
        "base_seed": args.seed,
        "fit": args.fit,
        "keep_size": args.keep_size,
        "skipped_existing": skipped,
        "faces": args.faces,
        "max_faces": args.max_faces,
        "min_face_score": args.min_face_score,
        "upsampler": args.upsampler,
        "paste_mask": args.paste_mask,
        "fidelity": args.fidelity,
        "match_colour": args.match_colour,
        "command": sys.argv,
    }
    images_meta = sidecar["images"]

    # 3. Restore batch by batch; a bad file is reported and skipped. A whole photo becomes
    #    one crop per detected face; it is written once all its faces are back.
    nfe = config.nfe
    show = not args.quiet
    counts = {"restored": 0, "no_face": 0}
    bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not show, file=sys.stderr)
    pending: list[tuple[_Item, int]] = []  # (photo, index of its crop)
    tools: dict = {}

    def detector():
        if "detector" not in tools:
            from odedit.detect import DetectorUnavailable, FaceDetector

            try:
                tools["detector"] = FaceDetector(min_score=args.min_face_score)
            except DetectorUnavailable as err:
                raise CLIError(f"{err} (or pass --faces aligned for pre-aligned crops)") from None
        return tools["detector"]

    def upsampler():
        if "upsampler" not in tools:
            from odedit.upsample import UpsamplerError, make_upsampler

            try:
                tools["upsampler"] = make_upsampler(args.upsampler, device=str(device))
            except UpsamplerError as err:
                raise CLIError(str(err)) from None
        return tools["upsampler"]

    def mesh():
        """The face mesh for the faces' outlines, or False (keypoint ellipses) where it cannot load."""
        if "mesh" not in tools:
            from odedit.facemask import mesh_or_none

            tools["mesh"] = mesh_or_none() or False
        return tools["mesh"]

    def status(text: str) -> None:  # what the run is doing now, after the bar (big photos take seconds a stage)
        if show:
            bar.set_postfix_str(text)

    def finish(item: "_Item") -> None:
        pasting = (lambda i, n: status(f"{item.src.name}: pasting face {i + 1}/{n}"))
        result, info = finish_photo(item.job, item.results, upsampler, keep_size=args.keep_size, fit=args.fit,
                                    progress=pasting, fidelity=args.fidelity, match_colour=args.match_colour)
        entry = {
            "input": str(item.src),
            "seed": item.job.seeds[0] if item.job.seeds else image_seed(args.seed, item.src.name),
            "run": run_id,
            "input_size": [int(item.job.photo.shape[1]), int(item.job.photo.shape[0])],
            "mode": info["mode"],
            "status": info["status"],
        }
        if info["mode"] == "faces" and info["faces"]:
            entry["upsampler"] = getattr(tools["upsampler"], "name", args.upsampler)
            entry["faces"] = info["faces"]
        if info["mode"] == "faces":
            entry["faces_left_out"] = info["faces_left_out"]  # found beyond --max-faces, not restored
        if "no_face_reason" in info:
            entry["no_face_reason"] = info["no_face_reason"]
        try:
            save_png_atomic(item.dst, result)
        except OSError as err:
            if err.errno in NAME_ERRNOS:  # this name only (too long for the file system, ...)
                failures.append((str(item.src), f"{item.src}: cannot write {item.dst}: {err.strerror or err}"))
                bar.update(1)
                return
            # read-only folder, full disk, ...: every later write would fail too
            raise CLIError(f"cannot write {item.dst}: {err.strerror or err}") from None
        entry["output_size"] = [int(result.shape[1]), int(result.shape[0])]
        images_meta[item.dst.name] = entry
        counts["no_face" if entry["status"] != "restored" else "restored"] += 1
        if show and entry["mode"] == "faces":
            tqdm.write(photo_line(item.src.name, entry), file=sys.stderr)
        status("")
        bar.update(1)

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([item.job.crops[k] for item, k in pending])
        gens = [torch.Generator(device=device).manual_seed(item.job.seeds[k]) for item, k in pending]
        status(f"restoring {len(pending)} face(s)")
        steps = tqdm(total=nfe, desc="model calls", leave=False, disable=not show, file=sys.stderr)
        try:
            out, diverged = restorer.restore_with_status(uint8_to_unit(batch), generator=gens, callback=steps.update)
        finally:  # on Ctrl-C too: clear its line, so that the message after it gets a line of its own
            steps.close()
        # One host sync per batch, after sampling: a diverged restoration (NaN/inf or far out of
        # range, e.g. a huge --step-size) is an error for its image, never written as a result.
        finite = (~diverged).tolist()
        done_items = []
        for (item, k), result, ok in zip(pending, unit_to_uint8(out), finite):
            item.results[k] = result
            if not ok:
                item.bad = True
            if k == len(item.job.crops) - 1:
                done_items.append(item)
        pending.clear()
        for item in done_items:
            if item.bad:
                failures.append((str(item.src), f"{item.src}: the restoration diverged (non-finite or far out-of-range values); "
                                 "lower --step-size or --temperature"))
                bar.update(1)
                continue
            finish(item)
        _merge_sidecar(sidecar_path, sidecar)

    def restore_all() -> None:
        if args.faces == "auto" and args.upsampler != "lanczos":
            upsampler()  # a model that cannot load fails now, not after the first restoration
        for src, dst in jobs:
            status(f"{src.name}: reading")
            try:
                image = load_image_uint8(src)
            except ImageError as err:
                failures.append((str(src), str(err)))
                bar.update(1)
                continue
            seeds = (lambda i, name=src.name: face_seed(args.seed, name, i))
            searched = uses_detection(args.faces, image.shape, size) and not too_small_for_detection(image.shape)
            if searched:
                status(f"{src.name}: detecting faces")
            job = plan_photo(image, size, seeds, faces_mode=args.faces, detector=detector() if searched else None,
                             max_faces=args.max_faces, fit=args.fit, paste_mask=args.paste_mask,
                             mesh=mesh() if searched and args.paste_mask == "face" else False)
            item = _Item(src=src, dst=dst, job=job, results=[None] * len(job.crops))
            if not job.crops:  # a photo without a detected face
                finish(item)
                continue
            for k in range(len(job.crops)):
                pending.append((item, k))
                if len(pending) == args.batch_size:
                    flush()
        flush()

    def record_end(status: str, error: str | None = None) -> None:
        """This run's outcome in its restore.json entry: status, error, failures, photos without a face."""
        entry = sidecar["runs"][run_id]
        entry["status"] = status
        if error is not None:
            entry["error"] = error
        entry["failures"] = [{"input": f, "error": e} for f, e in failures]
        entry["no_face"] = sorted(
            e["input"] for e in images_meta.values() if e.get("run") == run_id and e.get("status") != "restored"
        )

    try:
        restore_all()
    except BaseException as err:  # stopped (unwritable output, ...) or interrupted: record what was done
        bar.close()
        if isinstance(err, KeyboardInterrupt):
            record_end("interrupted")
        else:
            record_end("stopped", str(err) if isinstance(err, CLIError) else f"{type(err).__name__}: {err}")
        with contextlib.suppress(CLIError):  # as far as the disk allows; the original error is the one to show
            _merge_sidecar(sidecar_path, sidecar)
        raise
    finally:
        if "detector" in tools:
            tools["detector"].close()
        if tools.get("mesh"):
            tools["mesh"].close()
    bar.close()
    record_end("complete")
    _merge_sidecar(sidecar_path, sidecar)

    print(
        f"restored {counts['restored']} image(s) into {outdir} ({args.method}, {nfe} model calls per face)"
        + (f"; {skipped} already done, skipped" if skipped else ""),
        file=sys.stderr,
    )
    _report_faces(images_meta, run_id, args.max_faces)
    if failures:
        print(f"{len(failures)} input(s) failed:", file=sys.stderr)
        for _, e in failures:
            print(f"  {e}", file=sys.stderr)
        return 1
    return 0


def _and(words: list) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def photo_line(name: str, entry: dict) -> str:
    """One line on what happened to a whole photo (its restore.json ``entry``), e.g.
    ``photo.jpg: 2 faces (312 px, 140 px), x5 and x3 upscale, 1 left out beyond --max-faces,
    stages: detect, restore, upsample(lanczos), paste(face mask)``. Face sizes: the longer side
    of the detector's box, in photo px."""
    faces = entry.get("faces") or []
    if not faces:
        why = " (too small to search)" if entry.get("no_face_reason") else ""
        return f"{name}: no face found{why}, copied unchanged"
    sizes = ", ".join(f"{round(max(b[2] - b[0], b[3] - b[1]))} px" for b in (f["box"] for f in faces))
    factors = [int(f["upsample_factor"]) for f in faces]
    parts = [f"{len(faces)} face{'s' if len(faces) > 1 else ''} ({sizes})", _and([f"x{k}" for k in factors]) + " upscale"]
    if entry.get("faces_left_out"):
        parts.append(f"{entry['faces_left_out']} left out beyond --max-faces")
    stages = ["detect", "restore"]
    if max(factors) > 1:
        stages.append(f"upsample({entry.get('upsampler', '?')})")
    if any(f.get("paste_mask") == "frame" for f in faces):
        stages.append("paste(frame mask)")
    else:
        ellipses = sum(f.get("mask_source") == "keypoint_ellipse" for f in faces)
        stages.append("paste(face mask" + (f", {ellipses} from keypoints: no mesh" if ellipses else "") + ")")
    return f"{name}: " + ", ".join(parts) + ", stages: " + ", ".join(stages)


def _report_faces(images_meta: dict, run_id: str, max_faces: int) -> None:
    """On stderr, a line per photo of this run copied unchanged (no face, or too small to
    search) and per photo with more faces than --max-faces (the others left unrestored)."""
    ours = sorted((e for e in images_meta.values() if e.get("run") == run_id), key=lambda e: e["input"])
    unchanged = [e for e in ours if e["status"] != "restored"]
    if unchanged:
        print(f"{len(unchanged)} photo(s) had no detected face and were copied unchanged:", file=sys.stderr)
        for e in unchanged:
            why = e.get("no_face_reason")
            why = f" ({why}; --faces aligned restores it as a face crop)" if why else ""
            print(f"  {e['input']}{why}", file=sys.stderr)
    crowded = [e for e in ours if e.get("faces_left_out")]
    if crowded:
        print(f"{len(crowded)} photo(s) had more faces than --max-faces {max_faces}; the lower-scoring ones "
              "were left unrestored:", file=sys.stderr)
        for e in crowded:
            n, left = len(e["faces"]), e["faces_left_out"]
            print(f"  {e['input']}: {n + left} faces found, {n} restored, {left} left out", file=sys.stderr)


@dataclass
class _Item:
    """One input file on its way through the batch loop."""

    src: Path
    dst: Path
    job: "object"  # odedit.faces.PhotoJob: the crops, their seeds and the detected faces
    results: list = field(default_factory=list)  # restored crops, filled by flush()
    bad: bool = False  # a crop's restoration diverged


def face_seed(base_seed: int, name: str, index: int) -> int:
    """Seed of face ``index`` of a photo: face 0 gets the file's own seed (as a crop would)."""
    return image_seed(base_seed, name if index == 0 else f"{name}#face{index}")
