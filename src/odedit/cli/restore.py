"""``odedit restore``: restore image files with ODEdit or SDEdit."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

from odedit import manifest

from odedit.cli.common import (
    LONG_RUN_CALLS,
    LONG_RUN_SECONDS,
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
)
from odedit.fidelity import DEFAULT_FIDELITY, DEFAULT_LOW_BAND, DEFAULT_MATCH_COLOUR, LOW_BANDS, LOW_KEPT, kept_percent
from odedit.manifest import SIDECAR, real_path

DESCRIPTION = """\
Restore degraded face photos with a diffusion prior.

Whole photos (--faces auto, the default): every face is found with mediapipe's bundled
detector (pip install 'odedit[faces]'), aligned to the prior's frame by a similarity
transform from its keypoints, restored, upscaled (ODEdit+: --upsampler, Lanczos by
default) and blended back with a feathered mask of the face alone (--paste-mask): hair,
background and clothes keep their pixels; the output is the whole photo at its own size.
The face keeps the restoration's change only where the photo's noise explains it
(--low-band, --fidelity), so a clean face comes back as it was.
A photo with no face is copied through unchanged and reported; so is one under 32 px a
side, which is not searched. Faces beyond --max-faces are counted and reported. A line per
photo says how many faces were found, their sizes, the upscaling and the stages run (not
with --quiet).

Aligned face crops (--faces aligned, or any input already at the model's size): the whole
image is the face. It is resized to the model's square resolution (--fit stretch: whole
frame, Lanczos; --fit crop: central square first) and restored; the output is at the
model's resolution, or at the input's size with --keep-size (upscaled by --upsampler, with
the input's own detail finer than the model's where it is detail). Like a pasted face, it
keeps the restoration's change only where the input's noise explains it (--low-band,
--fidelity 0 for the restoration as it is), so a blurred or clean crop does not come back
worse than it went in.

Inputs: files and/or folders (folders: the images directly inside). Any Pillow-readable
image and mode is accepted: RGBA is composited over white, greyscale and 16-bit images
become 8-bit RGB. Outputs are PNGs with the same base names. The resolved settings, model
and per-image seeds are saved to OUTDIR/restore.json. A run that will take over 10 minutes
says so after its first model calls, with its estimate and the options that would be faster.

Methods: ODEdit (default) maps each face to the diffusion latent with the probability-flow
ODE (DDIM or DPM-Solver++(2M); no noise), then refines the latent with Langevin steps at a
few levels while decoding (Algorithm 1 of the ODEdit paper). SDEdit (--method sdedit) injects noise to a level
(--strength) and denoises stochastically. More Langevin updates remove more noise and mask
lines and smooth the face more. The default, --preset fast (DPM-Solver++(2M) on 20 levels,
10 updates at each of 4 levels: 80 model calls), is both the quickest and, with the
embedded prior, the most faithful over all corruptions; light is the paper's grid (300
calls); medium and heavy (more updates) paint over masks and noise entirely but smooth the
face and can change the person: 0.5 and 0.6 dB below fast (docs/results.md).
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
    _add_method_args(p)
    r = _add_run_args(p)
    _add_photo_args(p)
    _add_output_args(r)  # after the photo flags: the usage line keeps its order
    p.set_defaults(run=run)


def _add_method_args(p: argparse.ArgumentParser) -> None:
    """The ODEdit and SDEdit settings."""
    g = p.add_argument_group("ODEdit settings (default: the fast preset; light/medium/heavy: paper section 4.1, except the step size)")
    g.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default=None,
        metavar="PRESET",
        help="%(choices)s. fast (the default): DPM-Solver++(2M), 20 steps, 40 Langevin updates at step 2.5e-5 (80 "
        "model calls; the best measured through the gate, docs/results.md); light/medium/heavy: the paper's grid "
        "and levels (DDIM, 100 steps) with 100/200/300 Langevin updates in total (300/400/500 model calls); "
        "medium/heavy paint over masks but smooth the face and can change the person; flags below override single settings",
    )
    g.add_argument(
        "--steps", type=ranged(int, 1, MAX_STEPS), default=None, help=f"ODE steps N, 1-{MAX_STEPS} (default: the preset's; fast 20, the others 100)"
    )
    g.add_argument("--step-size", type=ranged(float, 0.0), default=None, help="epsilon (default: the preset's; fast 2.5e-5, the others 4e-5, measured through the gate; the paper's 1e-6 leaves images almost unchanged: docs/results.md)")
    add_odedit_override_args(g)
    s = p.add_argument_group("SDEdit settings")
    s.add_argument(
        "--strength",
        type=ranged(float, 0.0, 1.0, lo_open=True),
        default=0.5,
        help="noise level t0 as a fraction of the diffusion, in (0, 1] (default 0.5)",
    )
    s.add_argument("--eta", type=ranged(float, 0.0, 1.0), default=1.0, help="1 = DDPM noise (default)")


def _add_run_args(p: argparse.ArgumentParser):
    """The "run" group: seed, batch size, device; returns it."""
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
    return r


def _add_photo_args(p: argparse.ArgumentParser) -> None:
    """Whole photos and crops: detection, upsampling, paste-back and the gate."""
    f = p.add_argument_group("whole photos and crops")
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
        help="ODEdit+ second stage for pasting faces back (and for aligned crops with --keep-size): lanczos "
        "(default), realesrgan (Real-ESRGAN "
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
        help=f"0..1 (default {DEFAULT_FIDELITY:g}): how much of the photo a pasted face keeps where the "
        "restoration's change is not explained by the photo's noise: its detail finer than the model's 64 px "
        "(where it is detail rather than noise and, unless --low-band off, wherever its noise does not explain "
        "the change) and, unless --low-band off, its coarse band "
        "(1 = all of it, 0 = the upsampled restoration alone); an aligned crop is one face filling the frame "
        "(its fine band only with --keep-size)",
    )
    f.add_argument(
        "--low-band",
        choices=LOW_BANDS,
        default=DEFAULT_LOW_BAND,
        help=f"the noise gate (default {DEFAULT_LOW_BAND}): keep the restoration's change to the face's "
        "coarse band, and to its fine band where the photo has detail, only where the photo's noise explains it, "
        "so a clean face comes back as it was; local: per region (an erased pair of glasses is refused where "
        "it happens), global: one share per face and band, off: no gate (the restoration's coarse band as is, "
        "the photo's fine band where it is signal: more change, the old behaviour)",
    )
    f.add_argument(
        "--match-colour",
        action=argparse.BooleanOptionalAction,
        default=DEFAULT_MATCH_COLOUR,
        help="move each restored face's mean colour to the input's (default: "
        f"{'on' if DEFAULT_MATCH_COLOUR else 'off'})",
    )


def _add_output_args(r) -> None:
    """The rest of the "run" group: fit and the output policy."""
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
    """A file's seed: :func:`odedit.rng.face_seed` of its face 0 (kept for callers of this name)."""
    from odedit.rng import face_seed

    return face_seed(base_seed, name)


# Errors of os calls that concern one file name, not the folder or the disk: such a file fails
# alone and the batch goes on. EINVAL/EILSEQ: a name the file system cannot store (FAT, SMB, ...).
NAME_ERRNOS = (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ)
DIVERGED_MESSAGE = "the restoration diverged (non-finite or far out-of-range values); lower --step-size or --temperature"


def run(args: argparse.Namespace) -> int:
    """``odedit restore``; SIGTERM stops it like Ctrl-C (the run is recorded as interrupted)."""
    with sigterm_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from odedit.pipeline import Pipeline

    # 1. Validate everything cheap before loading the model.
    try:
        config = build_config(args)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if args.overwrite and args.skip_existing:
        raise CLIError("--overwrite and --skip-existing exclude each other")
    todo = _collect(args)
    outdir = _prepare(Path(args.output), todo, config.nfe)
    restorer, device, dtype = _load_restorer(args, config)
    options = _options(args)

    # 2. restore.json: this run's settings and seeds, merged with earlier runs' entries.
    with _manifest_errors():
        manifest.load(outdir / SIDECAR)  # an unreadable sidecar stops the run before any work
    settings = manifest.run_settings(
        method=args.method, config=config, model=args.model, image_size=restorer.model.sample_size, device=device,
        dtype=dtype, dtype_requested=args.dtype, compile=args.compile, skipped_existing=todo.skipped,
        photo_settings=options.settings(), command=sys.argv,
    )
    record = manifest.RunManifest(outdir, manifest.new_run_id(args.seed), settings)

    # 3. The pipeline: a whole photo becomes one crop per detected face, crops are restored in
    #    batches across files, and a photo is written once all its faces are back.
    long_run = _LongRunCheck(
        len(todo.jobs), config.nfe, lambda faces: faster_options(args, config, device, dtype, faces)
    )
    files = _Files(args, todo, record, long_run)
    pipeline = Pipeline(restorer, options, detector=_detector_factory(args), upsampler=_upsampler_factory(args, device),
                        progress=files, device=device)
    files.run(pipeline)

    print(
        f"restored {files.counts['restored']} image(s) into {outdir} ({args.method}, {config.nfe} model calls per face)"
        + (f"; {todo.skipped} already done, skipped" if todo.skipped else ""),
        file=sys.stderr,
    )
    _report_faces(record.images, record.run_id, args.max_faces)
    if todo.failures:
        print(f"{len(todo.failures)} input(s) failed:", file=sys.stderr)
        for _, e in todo.failures:
            print(f"  {e}", file=sys.stderr)
        return 1
    return 0


@dataclass
class _Todo:
    """The run's inputs, checked before anything is written."""

    jobs: list  # (input, output) pairs to restore
    failures: list  # (input, message): inputs that failed, here or later in the run
    skipped: int = 0  # outputs that exist (--skip-existing)
    earlier: int = 0  # files left out: restore.json lists them as outputs of earlier runs


def _collect(args: argparse.Namespace) -> _Todo:
    """The (input, output) pairs of this run: one output name per input, never an input as
    output, existing outputs refused, kept (--overwrite) or skipped (--skip-existing)."""
    from odedit.imageio import ImageError, list_images

    try:
        files = list_images(args.inputs)
    except (FileNotFoundError, ImageError) as err:
        raise CLIError(str(err)) from None
    outdir = Path(args.output)
    with _manifest_errors():
        files, earlier = manifest.drop_earlier_outputs(files, args.inputs, outdir)
    todo = _Todo(jobs=[], failures=[], earlier=earlier)
    out_names: dict[str, Path] = {}
    for f in files:
        name = f.stem + ".png"
        if name in out_names:
            todo.failures.append((str(f), f"{f}: output name {name} already taken by {out_names[name]}"))
            continue
        out_names[name] = f
        todo.jobs.append((f, outdir / name))
    _refuse_outputs_that_are_inputs(todo.jobs, files)  # whatever the flags: an input is never replaced
    if args.skip_existing:
        before = len(todo.jobs)
        todo.jobs = [(f, o) for f, o in todo.jobs if not o.exists()]
        todo.skipped = before - len(todo.jobs)
    existing = [str(o) for _, o in todo.jobs if o.exists()]
    if existing and not args.overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise CLIError(
            f"outputs exist: {', '.join(existing[:3])}{more}; pass --overwrite to replace them "
            "or --skip-existing to resume"
        )
    return todo


def _refuse_outputs_that_are_inputs(jobs: list[tuple[Path, Path]], files: list[Path]) -> None:
    """CLIError if an output path is, or resolves to, an input file: the same path (relative or
    absolute, through symlinks) or the same file (a hard link, a name differing in case on a
    case-insensitive file system). Checked before anything is written, whatever the flags."""
    by_path = {real_path(f): f for f in files}
    by_id = {}
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        by_id[(st.st_dev, st.st_ino)] = f
    clashes = []
    for _, dst in jobs:
        hit = by_path.get(real_path(dst))
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


def _prepare(outdir: Path, todo: _Todo, nfe: int) -> Path:
    """Create the output folder, clear a killed run's temps and say what was left out."""
    from odedit.imageio import remove_stale_temps

    outdir = prepare_outdir(outdir)
    stale = remove_stale_temps(outdir)  # left by a killed run; never another live writer's
    if stale:
        print(f"removed {len(stale)} temp file(s) of an interrupted run from {outdir}", file=sys.stderr)
    if todo.earlier:
        print(f"left out {todo.earlier} file(s) of {outdir} that {SIDECAR} lists as outputs of earlier runs",
              file=sys.stderr)
    if nfe > LONG_RUN_CALLS:
        print(f"note: {nfe:,} model calls per face (the default preset makes 80, light 300): this run will take "
              "long; Ctrl-C stops it and --skip-existing resumes it", file=sys.stderr)
    return outdir


def _load_restorer(args: argparse.Namespace, config):
    """(restorer, device, dtype): the model of --model on --device in --dtype (compiled with --compile)."""
    from odedit.models import ModelLoadError, compile_model, load_model
    from odedit.restorers import Restorer

    device = resolve_device(args.device)
    dtype = torch_dtype(args.dtype, device)
    try:
        model = load_model(args.model, device=device, dtype=dtype)
    except ModelLoadError as err:
        raise CLIError(str(err)) from None
    if args.compile:
        model = compile_model(model)
    return Restorer(model, config), device, dtype  # the config's type picks the algorithm


def _options(args: argparse.Namespace):
    from odedit.pipeline import PipelineOptions

    return PipelineOptions(
        seed=args.seed, batch_size=args.batch_size, faces=args.faces, max_faces=args.max_faces,
        min_face_score=args.min_face_score, fit=args.fit, keep_size=args.keep_size, paste_mask=args.paste_mask,
        upsampler=args.upsampler, fidelity=args.fidelity, match_colour=args.match_colour,
        low_band=args.low_band,
    )


def _detector_factory(args: argparse.Namespace):
    def make():
        from odedit.detect import DetectorUnavailable, FaceDetector

        try:
            return FaceDetector(min_score=args.min_face_score)
        except DetectorUnavailable as err:
            raise CLIError(f"{err} (or pass --faces aligned for pre-aligned crops)") from None

    return make


def _upsampler_factory(args: argparse.Namespace, device):
    def make():
        from odedit.upsample import UpsamplerError, make_upsampler

        try:
            return make_upsampler(args.upsampler, device=str(device))
        except UpsamplerError as err:
            raise CLIError(str(err)) from None

    return make


@contextlib.contextmanager
def _manifest_errors():
    """restore.json cannot be read or written: a one-line error."""
    try:
        yield
    except manifest.ManifestError as err:
        raise CLIError(str(err)) from None


class _Input(NamedTuple):
    """One input file, as the pipeline takes it: (name, photo, ...)."""

    name: str
    photo: object  # (H, W, 3) uint8
    src: Path
    dst: Path


class _Files:
    """The command's side of the pipeline: reads the inputs, writes the outputs and their
    restore.json entries, shows the progress (the pipeline's :class:`odedit.pipeline.Progress`)."""

    def __init__(self, args: argparse.Namespace, todo: _Todo, record, long_run: _LongRunCheck | None = None):
        from tqdm import tqdm

        self.todo, self.record, self.long_run = todo, record, long_run
        self.show = not args.quiet
        self.read = 0  # inputs read so far (the long-run estimate's faces per photo)
        self.counts = {"restored": 0, "no_face": 0}
        self.bar = tqdm(total=len(todo.jobs), desc="images", unit="img", disable=not self.show, file=sys.stderr)

    def run(self, pipeline) -> None:
        """Every input through ``pipeline``; restore.json records what was done however the run ends."""
        try:
            with _manifest_errors(), pipeline:
                for item, result, info in pipeline.run(self.inputs()):
                    self.write(item, result, info)
        except BaseException as err:  # stopped (unwritable output, ...) or interrupted: record what was done
            self.bar.close()
            if isinstance(err, KeyboardInterrupt):
                self.record.end("interrupted", self.todo.failures)
            else:
                error = str(err) if isinstance(err, CLIError) else f"{type(err).__name__}: {err}"
                self.record.end("stopped", self.todo.failures, error)
            with contextlib.suppress(manifest.ManifestError):  # as far as the disk allows; the original error is the one to show
                self.record.save()
            raise
        self.bar.close()
        self.record.end("complete", self.todo.failures)
        with _manifest_errors():
            self.record.save()

    def inputs(self) -> Iterator[_Input]:
        """The inputs, read one at a time as the pipeline asks; a bad file is reported and skipped."""
        from odedit.imageio import ImageError, load_image_uint8

        for src, dst in self.todo.jobs:
            self.status(f"{src.name}: reading")
            try:
                image = load_image_uint8(src)
            except ImageError as err:
                self.fail(src, str(err))
                continue
            self.read += 1
            yield _Input(src.name, image, src, dst)

    def write(self, item: _Input, result, info: dict) -> None:
        """Write one output atomically and record it; a name the file system refuses fails alone."""
        from odedit import imageio
        from odedit.pipeline import DIVERGED

        if info["status"] == DIVERGED:  # an error for its image, never written as a result
            return self.fail(item.src, f"{item.src}: {DIVERGED_MESSAGE}")
        entry = manifest.image_entry(str(item.src), self.record.run_id, info, result.shape)
        try:
            imageio.save_png_atomic(item.dst, result)
        except OSError as err:
            if err.errno in NAME_ERRNOS:  # this name only (too long for the file system, ...)
                return self.fail(item.src, f"{item.src}: cannot write {item.dst}: {err.strerror or err}")
            # read-only folder, full disk, ...: every later write would fail too
            raise CLIError(f"cannot write {item.dst}: {err.strerror or err}") from None
        self.record.add_image(item.dst.name, entry)
        self.counts["no_face" if entry["status"] != "restored" else "restored"] += 1
        if self.show and entry["mode"] == "faces":
            self.bar.write(photo_line(item.src.name, entry), file=sys.stderr)
        elif self.show and entry.get("restoration_kept", 1.0) < LOW_KEPT:
            self.bar.write(crop_line(item.src.name, entry), file=sys.stderr)
        self.status("")
        self.bar.update(1)

    def fail(self, src: Path, message: str) -> None:
        self.todo.failures.append((str(src), message))
        self.bar.update(1)

    def status(self, text: str) -> None:
        """What the run is doing now, after the bar (a big photo takes seconds a stage)."""
        if self.show:
            self.bar.set_postfix_str(text)

    # the pipeline's Progress hooks
    def stage(self, stage) -> None:
        self.status(str(stage))

    @contextlib.contextmanager
    def restoring(self, crops: int, calls: int):
        from tqdm import tqdm

        steps = tqdm(total=calls, desc="model calls", leave=False, disable=not self.show, file=sys.stderr)
        timer = self.long_run.timer(crops, calls, self.read) if self.long_run is not None else None

        def update(k: int) -> None:
            steps.update(k)
            if timer is not None:
                timer(k)

        try:
            yield update
        finally:  # on Ctrl-C too: clear its line, so that the message after it gets a line of its own
            steps.close()

    def batch_done(self) -> None:
        self.record.save()  # a batch's outputs are on disk: so are their entries


# ---- a run that will take long says so ---------------------------------------------------------

TIMED_CALLS = 4  # model calls timed for the estimate, after the first (which may warm up or compile)


def estimate_seconds(seconds_per_call: float, calls: int, faces: float, batch: int) -> float:
    """The run's restoring time: ``calls`` model calls of ``seconds_per_call`` per batch of up
    to ``batch`` faces, for ``faces`` faces in all (reading, pasting and writing aside)."""
    return seconds_per_call * calls * math.ceil(faces / max(batch, 1))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def plain_duration(seconds: float) -> str:
    """``seconds`` in words: 'about 25 minutes', 'about 2 hours 10 minutes', 'about 3 days'."""
    minutes = round(seconds / 60)
    if minutes < 60:
        return "about " + _count(max(minutes, 1), "minute")
    if seconds < 48 * 3600:
        hours, minutes = divmod(round(seconds / 600) * 10, 60)  # to the nearest 10 minutes
        return "about " + _count(hours, "hour") + (f" {minutes} minutes" if minutes else "")
    return "about " + _count(round(seconds / 86400), "day")


def faster_options(args: argparse.Namespace, config, device, dtype, faces: float) -> list[str]:
    """The flags that would make this run faster on this machine, each with why, for ``faces`` faces."""
    import torch

    from odedit.devices import cpu_has_fast_bf16
    from odedit.restorers import ODEditConfig

    tips = []
    if isinstance(config, ODEditConfig):
        fast = ODEditConfig.from_preset("fast").nfe
        if config.nfe > fast:
            tips.append(f"--preset fast ({fast} model calls per face instead of {config.nfe:,})")
    if torch.device(device).type == "cpu":
        if torch.cuda.is_available():
            tips.append("--device cuda (this machine has a GPU)")
        bf16_hardware = cpu_has_fast_bf16()
        if bf16_hardware and dtype != torch.bfloat16:
            tips.append("--dtype auto (bfloat16: this CPU has bf16 hardware, 1.4-4x faster per model call)")
        elif not bf16_hardware and dtype != torch.float32:
            tips.append("--dtype auto (float32: without bf16 hardware PyTorch's bfloat16 is far slower)")
    if args.batch_size < 8 and faces > args.batch_size:
        tips.append("--batch-size 8 (several faces per model call)")
    if not args.compile and faces >= 30:
        tips.append("--compile (1.13x on a CPU after a one-off compile; docs/performance.md)")
    return tips


def long_run_note(seconds: float, *, photos: int, faces: float, calls: int, tips: list[str]) -> str:
    """The note of a run estimated to take ``seconds``: how long, what for, what is faster."""
    faces_n = max(1, round(faces))
    what = _count(photos, "image") + ("" if faces_n == photos else f", about {_count(faces_n, 'face')}")
    lines = [
        f"note: this run will take {plain_duration(seconds)} on this machine ({what}, {calls:,} model calls "
        "per face; timed on its first model calls)."
    ]
    if tips:
        lines.append("  Faster: " + "; ".join(tips) + ".")
    lines.append("  Ctrl-C stops the run and --skip-existing resumes it.")
    return "\n".join(lines)


class _LongRunCheck:
    """Times the first batch's model calls and, when the whole run will take over
    :data:`LONG_RUN_SECONDS`, says so once on stderr (with --quiet too), naming the faster options."""

    def __init__(self, photos: int, calls: int, tips: Callable[[float], list[str]]):
        self.photos, self.calls, self.tips = photos, calls, tips
        self.started = False

    def timer(self, crops: int, calls: int, photos_read: int):
        """The callback that times this batch's model calls: only the first batch's, and only
        when it makes enough calls to time (None otherwise)."""
        if self.started or calls < 3:
            self.started = True
            return None
        self.started = True
        window = min(TIMED_CALLS, calls - 1)
        marks: list[float] = []

        def tick(k: int) -> None:
            if len(marks) > window:
                return
            marks.append(time.perf_counter())
            if len(marks) == window + 1:
                self._report((marks[-1] - marks[0]) / window, crops, photos_read)

        return tick

    def _report(self, seconds_per_call: float, crops: int, photos_read: int) -> None:
        # Faces per photo as in the photos read so far (a photo without a face counts as 0).
        faces = max(crops, crops * self.photos / max(photos_read, 1))
        seconds = estimate_seconds(seconds_per_call, self.calls, faces, crops)
        if seconds > LONG_RUN_SECONDS:
            from tqdm import tqdm

            note = long_run_note(seconds, photos=self.photos, faces=faces, calls=self.calls, tips=self.tips(faces))
            tqdm.write(note, file=sys.stderr)


def _and(words: list) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def photo_line(name: str, entry: dict) -> str:
    """One line on what happened to a whole photo (its restore.json ``entry``), e.g.
    ``photo.jpg: 2 faces (312 px, 140 px), x5 and x3 upscale, 1 left out beyond --max-faces,
    stages: detect, restore, upsample(lanczos), paste(face mask)``, ending in ``; kept 8% of the
    restoration's change (...)`` when the coarse-band gate kept less than ``LOW_KEPT`` of a face's
    change. Face sizes: the longer side of the detector's box, in photo px."""
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
    line = f"{name}: " + ", ".join(parts) + ", stages: " + ", ".join(stages)
    kept = [f.get("restoration_kept", 1.0) for f in faces]
    if min(kept) < LOW_KEPT:
        # say so: a face that comes back (nearly) as it went in is the gate's doing, not a failure
        line += (f"; kept {_and([kept_percent(k) for k in kept])} of the restoration's change "
                 "(the rest was not explained by the photo's noise; --low-band off keeps all of it)")
    return line


def crop_line(name: str, entry: dict) -> str:
    """The line for an aligned crop whose gate kept less than ``LOW_KEPT`` of the restoration's change."""
    return (f"{name}: kept {kept_percent(entry['restoration_kept'])} of the restoration's change (the rest was not "
            "explained by the crop's noise; --low-band off keeps all of it)")


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
