"""The protocol of one ``odedit bench`` run: the input image sets (a folder or a .zip of
images, optionally with a corruption manifest), the per-image seeds (the ones ``odedit
corrupt`` and ``odedit restore`` use), process sharding under ``accelerate launch``,
:class:`BenchSettings` and :class:`BenchStats`, the validation of settings, the checks that
decide whether an existing output folder may be resumed, and the run loop:
:func:`run_benchmark` prepares the clean and degraded images, restores each batch with each
method (``_process_share``, ``_restore_batch``), writes the per-image records
(:mod:`odedit.bench.records`) and has the main process aggregate them
(:func:`odedit.bench.report.aggregate`).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from odedit.atomic import write_json_atomic
from odedit.bench.methods import SOURCE, MethodSpec, build_methods
from odedit.bench.records import (
    FORMAT_VERSION,
    SETTINGS_FILE,
    BenchError,
    Layout,
    ManifestEntry,
    read_json,
    read_manifest,
)
from odedit.bench.report import aggregate, fidelity
from odedit.imageio import IMAGE_EXTENSIONS, ImageError
from odedit.provenance import code_identity


# ---- image sets: a folder or a .zip of images --------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """One image of a set. ``key`` (the file stem) is its identity in the benchmark."""

    key: str
    name: str
    path: str
    member: Optional[str] = None  # member name inside a zip, else None


class ImageSet:
    """The images directly inside a folder, or every image inside a .zip, sorted by key.

    Files with an image extension (``odedit.imageio.IMAGE_EXTENSIONS``) count; hidden
    files and ``__MACOSX`` entries are skipped. Two files with the same stem are an error
    (the stem is the image's key). Zip members may sit in sub-folders; their base name is
    used. ``load`` returns (H, W, 3) uint8 RGB (same conversions as ``odedit restore``).
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path).expanduser()
        self._zip: Optional[zipfile.ZipFile] = None
        if self.path.is_dir():
            refs = [
                ImageRef(p.stem, p.name, str(p))
                for p in self.path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
            ]
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            refs = []
            for info in self._zip.infolist():
                base = info.filename.rstrip("/").rsplit("/", 1)[-1]
                if info.is_dir() or "__MACOSX/" in info.filename or base.startswith("."):
                    continue
                if Path(base).suffix.lower() in IMAGE_EXTENSIONS:
                    refs.append(ImageRef(Path(base).stem, base, str(self.path), info.filename))
        elif self.path.exists():
            raise BenchError(f"{str(self.path)!r} is neither a folder of images nor a .zip of images")
        else:
            raise BenchError(f"{str(self.path)!r} does not exist (expected a folder or a .zip of images)")
        refs.sort(key=lambda r: (r.key, r.name))
        dupes = sorted({a.key for a, b in zip(refs, refs[1:]) if a.key == b.key})
        if dupes:
            raise BenchError(
                f"{self.path}: several images share the name stem {', '.join(dupes[:5])}"
                f"{' ...' if len(dupes) > 5 else ''}; the stem identifies an image in the benchmark"
            )
        if not refs:
            raise BenchError(f"{self.path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.refs: list[ImageRef] = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self):
        return iter(self.refs)

    def by_key(self) -> dict[str, ImageRef]:
        return {r.key: r for r in self.refs}

    def load(self, ref: ImageRef) -> np.ndarray:
        from odedit.imageio import load_image_uint8, pil_to_uint8

        if ref.member is None:
            return load_image_uint8(ref.path)
        from PIL import Image, UnidentifiedImageError

        where = f"{ref.path}:{ref.member}"
        try:
            data = self._zip.read(ref.member)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return pil_to_uint8(img)
        except (UnidentifiedImageError, OSError, zipfile.BadZipFile, KeyError) as err:
            raise ImageError(f"{where}: not a readable image ({err.__class__.__name__})") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


# ---- seeds ---------------------------------------------------------------------------------------


def corruption_seed(base_seed: int, key: str) -> int:
    """Seed of image ``key``'s corruption, the one ``odedit corrupt --seed base_seed`` gives
    ``<key>.png``: the degraded image is ``corrupt(clean, name, severity,
    np.random.default_rng(seed))``."""
    from odedit.rng import corrupt_seed

    return corrupt_seed(int(base_seed), f"{key}.png")


def corruption_choice_seed(base_seed: int, key: str) -> int:
    """Seed of the generator that draws image ``key``'s corruption name
    (``choose_corruption``), as ``odedit corrupt --corruption random``."""
    from odedit.rng import corrupt_seed

    return corrupt_seed(int(base_seed), f"{key}.png", "choice")


def restore_seed(base_seed: int, key: str, sample: int = 0) -> int:
    """Seed of the restoration noise of image ``key``. Sample 0 uses the seed
    ``odedit restore --seed base_seed`` gives ``<key>.png``, so restoring
    ``DIR/images/degraded`` with ``odedit restore`` reproduces the benchmark's images."""
    from odedit.rng import restore_seed as name_seed  # the one definition of per-file seeds

    return name_seed(int(base_seed), f"{key}.png" if sample == 0 else f"{key}.png#{sample}")


# ---- processes (accelerate) --------------------------------------------------------------------


def shard(items: Sequence, index: int, num: int) -> list:
    """Process ``index`` of ``num`` takes items ``index::num`` (disjoint, covering)."""
    if num < 1 or not 0 <= index < num:
        raise ValueError(f"bad process index {index} of {num}")
    return list(items[index::num])


@dataclass
class ProcessContext:
    """Where this process stands among the launched processes."""

    index: int = 0
    num: int = 1
    device: Optional[object] = None  # accelerate's device for this process
    wait: Callable[[], None] = lambda: None

    @property
    def is_main(self) -> bool:
        return self.index == 0


def process_context(cpu: Optional[bool] = None) -> ProcessContext:
    """The ``accelerate`` process state (imported lazily); one process without a launcher.

    ``cpu``: processes without GPUs (``torchrun --nproc_per_node N`` on CPU; accelerate
    only forms a CPU process group when asked). Default: :func:`odedit.devices.needs_cpu_process_group`
    (several processes and no accelerator with a distributed backend).
    """
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return ProcessContext()
    from odedit.devices import launched_processes, needs_cpu_process_group, process_group_mismatch

    try:
        launched = launched_processes()
    except ValueError as err:
        raise BenchError(str(err)) from None
    if cpu is None:
        cpu = needs_cpu_process_group(launched)
    state = PartialState(cpu=cpu)
    mismatch = process_group_mismatch(launched, state.num_processes, "every process would evaluate every image")
    if mismatch:
        raise BenchError(mismatch)
    return ProcessContext(state.process_index, state.num_processes, state.device, state.wait_for_everyone)


# ---- settings --------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """Everything ``run_benchmark`` needs. See ``odedit bench --help`` for the meaning."""

    data: str
    output: str
    methods: list = field(default_factory=lambda: build_methods())
    model: Optional[str] = None
    limit: Optional[int] = None
    severity: int = 4
    corruptions: Optional[Sequence[str]] = None  # None = all of odedit.corruptions.CORRUPTIONS
    seed: int = 0
    manifest: Optional[str] = None
    reference: Optional[str] = None
    reference_limit: Optional[int] = None
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False  # torch.compile the network (speed only: outputs agree to ~1e-5, not in resume settings)
    fit: str = "stretch"
    grid_images: int = 8
    allow_download: bool = False
    overwrite: bool = False
    progress: bool = True
    command: Optional[list] = None


@dataclass
class BenchStats:
    """What one call of :func:`run_benchmark` did (this process's share)."""

    images: int = 0  # images in the benchmark (all processes)
    processed: int = 0  # (image, method) pairs computed now by this process
    skipped: int = 0  # pairs found finished on disk and skipped
    methods: list = field(default_factory=list)
    output: str = ""
    process: int = 0  # this process's index
    processes: int = 1  # processes of the launch
    wall_seconds: float = 0.0
    summary: Optional[dict] = None  # the aggregated table (main process)


@dataclass(frozen=True)
class _Item:
    key: str
    clean: ImageRef
    manifest: Optional[ManifestEntry] = None


def _torch_dtype(name: str, device=None):
    """The compute dtype of a ``--dtype`` name; ``auto`` resolves for ``device`` (default: --device)."""
    from odedit.devices import resolve_device, resolve_dtype_for

    try:
        if name == "auto" and device is None:
            device = resolve_device("auto")
        return resolve_dtype_for(name, device if device is not None else "cpu")
    except ValueError as err:
        raise BenchError(str(err)) from None


def _resolve_device(name, ctx: ProcessContext):
    import torch

    from odedit.devices import resolve_device

    name = str(name)
    if ctx.num > 1 and ctx.device is not None and name in ("auto", "cuda"):
        return torch.device(ctx.device)  # one device per process under accelerate launch
    try:
        return resolve_device(name)
    except ValueError as err:
        raise BenchError(str(err)) from None


def model_fingerprint(source) -> Optional[str]:
    """sha256 over the files (json, weights) of a local model folder; None for a hub id."""
    from odedit.models import DEFAULT_MODEL_DIR, file_sha256

    root = DEFAULT_MODEL_DIR if source is None else Path(source).expanduser()
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            if p.suffix in (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt"):
                h.update(f"{rel}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _settings_device(s):
    from odedit.devices import resolve_device

    try:
        return resolve_device(str(s.device))
    except ValueError as err:
        raise BenchError(str(err)) from None


def _resume_settings(s: BenchSettings, model_id: str, model_fp: Optional[str]) -> dict:
    """The settings that define the per-image results (must match to resume)."""
    return {
        "format": FORMAT_VERSION,
        "data": str(Path(s.data).expanduser().resolve()),
        "manifest": None if s.manifest is None else str(Path(s.manifest).expanduser().resolve()),
        "model": model_id,
        "model_sha256": model_fp,
        "severity": None if s.manifest else int(s.severity),
        "corruptions": None if (s.manifest or s.corruptions is None) else list(s.corruptions),
        "seed": int(s.seed),
        "fit": s.fit,
        # the resolved name: an "auto" run resumed on another CPU must not mix bf16 and fp32 rows
        "dtype": str(_torch_dtype(s.dtype, None if s.dtype != "auto" else _settings_device(s))).removeprefix("torch."),
    }


def _check_resume(existing: dict, settings: dict, methods: list[MethodSpec]) -> None:
    """BenchError unless the run recorded in ``existing`` (bench.json) has the same resume
    ``settings`` and every method of both runs the same identity (:meth:`MethodSpec.matches_record`)."""
    old = existing.get("settings", {})
    diffs = [f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in settings if old.get(k) != settings[k]]
    known = existing.get("methods", {})
    for m in methods:
        if m.name in known and not m.matches_record(known[m.name]):
            diffs.append(f"method {m.name}: settings differ from the earlier run's")
    if diffs:
        raise BenchError(
            "the output folder holds a benchmark run with different settings ("
            + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
            + "); pass --overwrite to replace it, or choose another output folder"
        )


# ---- the per-image work ------------------------------------------------------------------------


def _prepare_images(
    batch: list[_Item], data: ImageSet, lay: Layout, size: int, s: BenchSettings
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Clean and degraded uint8 images of a batch: read back if done, else made and saved."""
    from odedit.imageio import fit_square

    cleans, degs, recs = [], [], []
    for it in batch:
        stored = [lay.record("degraded", it.key), lay.image("clean", it.key), lay.image("degraded", it.key)]
        if all(p.is_file() for p in stored):
            cleans.append(lay.load_image("clean", it.key))
            degs.append(lay.load_image("degraded", it.key))
            recs.append(lay.read_record("degraded", it.key))
            continue
        clean = fit_square(data.load(it.clean), size, s.fit)
        if it.manifest is not None:
            from odedit.imageio import load_image_uint8

            deg = fit_square(load_image_uint8(it.manifest.path), size, s.fit)
            rec = {"corruption": it.manifest.corruption, "severity": it.manifest.severity,
                   "seed": it.manifest.seed, "fraction": it.manifest.fraction,
                   "degraded_file": str(it.manifest.path)}
        else:
            from odedit.corruptions import CORRUPTIONS, choose_corruption, corrupt

            # exactly what `odedit corrupt --corruption random --seed S` does to <key>.png
            name = choose_corruption(np.random.default_rng(corruption_choice_seed(s.seed, it.key)),
                                     tuple(s.corruptions or CORRUPTIONS))
            cseed = corruption_seed(s.seed, it.key)
            deg = corrupt(clean, name, int(s.severity), np.random.default_rng(cseed))
            rec = {"corruption": name, "severity": int(s.severity), "seed": cseed}
        rec = {"image": it.key, "clean_file": it.clean.member or it.clean.path, **rec}
        from odedit.imageio import save_png_atomic

        save_png_atomic(lay.image("clean", it.key), clean)
        save_png_atomic(lay.image("degraded", it.key), deg)
        lay.write_record("degraded", it.key, rec)
        cleans.append(clean)
        degs.append(deg)
        recs.append(rec)
    return np.stack(cleans), np.stack(degs), recs


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _restore_batch(model, spec: MethodSpec, degraded: np.ndarray, clean: np.ndarray, keys: list[str],
                   seed: int, device, callback) -> tuple[np.ndarray, list[dict], float]:
    """Run one method on a batch; returns uint8 outputs, per-image extras, seconds."""
    import torch

    from odedit.imageio import uint8_to_unit, unit_to_uint8
    from odedit.restorers import Restorer

    restorer = Restorer(model, spec.config)  # the config's type picks the algorithm
    x = uint8_to_unit(degraded)
    _sync(device)
    t0 = time.perf_counter()
    best = best_psnr = None
    seeds_all = []
    for j in range(spec.best_of):
        seeds = [restore_seed(seed, k, j) for k in keys]
        seeds_all.append(seeds)
        gens = [torch.Generator(device=device).manual_seed(sd) for sd in seeds]
        out = unit_to_uint8(restorer.restore(x, generator=gens, callback=callback))
        if spec.best_of == 1:
            best = out
            break
        p, _ = fidelity(clean, out)
        if best is None:
            best, best_psnr, pick = out.copy(), np.array(p), np.zeros(len(keys), dtype=int)
        else:
            better = np.array(p) > best_psnr
            best[better] = out[better]
            best_psnr = np.where(better, p, best_psnr)
            pick[better] = j
    _sync(device)
    seconds = time.perf_counter() - t0
    extras = []
    for i in range(len(keys)):
        if spec.best_of == 1:
            extras.append({"seed": seeds_all[0][i]})
        else:
            extras.append({"seeds": [s[i] for s in seeds_all], "oracle_pick": int(pick[i])})
    return best, extras, seconds


def _warm_up(model, device, batch: int) -> None:
    """One untimed model call, so that one-off setup (kernels, allocator) is not timed."""
    import torch

    size = int(model.sample_size)
    with torch.no_grad():
        model(torch.zeros(batch, int(model.in_channels), size, size, device=device), 0)
    _sync(device)


def _process_share(items: list[_Item], data: ImageSet, lay: Layout, model, methods: list[MethodSpec],
                   s: BenchSettings, device, ctx: ProcessContext, stats: BenchStats) -> None:
    from tqdm import tqdm

    from odedit.imageio import save_png_atomic

    size = model.sample_size
    pending = {m.name: sum(1 for it in items if not lay.done(m.name, it.key)) for m in methods}
    stats.skipped += sum(len(items) - n for n in pending.values())
    total_calls = sum(pending[m.name] * m.nfe for m in methods)
    if items and any(pending[m.name] and m.restores for m in methods):
        _warm_up(model, device, min(s.batch_size, len(items)))
    bar = tqdm(total=total_calls, desc="bench", unit="call", disable=not (s.progress and ctx.is_main),
               file=sys.stderr, dynamic_ncols=True)
    try:
        for start in range(0, len(items), s.batch_size):
            batch = items[start : start + s.batch_size]
            todo = [(m, [i for i, it in enumerate(batch) if not lay.done(m.name, it.key)]) for m in methods]
            if not any(idx for _, idx in todo) and all(lay.done("degraded", it.key) for it in batch):
                continue
            clean, deg, recs = _prepare_images(batch, data, lay, size, s)
            for spec, idx in todo:
                if not idx:
                    continue
                keys = [batch[i].key for i in idx]
                bar.set_postfix_str(spec.name, refresh=False)
                if not spec.restores:  # the source: the degraded image itself
                    out, extras, seconds = deg[idx], [{} for _ in idx], 0.0
                else:
                    n = len(idx)
                    out, extras, seconds = _restore_batch(
                        model, spec, deg[idx], clean[idx], keys, s.seed, device, lambda k, n=n: bar.update(n * k)
                    )
                p, q = fidelity(clean[idx], out)
                for j, i in enumerate(idx):
                    key = batch[i].key
                    if spec.restores:
                        save_png_atomic(lay.image(spec.name, key), out[j])
                    rec = {"image": key, "method": spec.name, "corruption": recs[i]["corruption"],
                           "nfe": spec.nfe, "seconds": seconds / len(idx), "psnr": p[j], "ssim": q[j],
                           "device": str(device), "batch": len(idx), "process": ctx.index, **extras[j]}
                    lay.write_record(spec.name, key, rec)
                stats.processed += len(idx)
    finally:
        bar.close()


# ---- the benchmark -----------------------------------------------------------------------------


def _items(s: BenchSettings) -> tuple[ImageSet, list[_Item]]:
    data = ImageSet(s.data)
    if s.manifest:
        entries = read_manifest(s.manifest)
        clean = data.by_key()
        missing = [e.key for e in entries if e.key not in clean]
        if missing:
            raise BenchError(
                f"{len(missing)} image(s) of the manifest have no clean image of the same name stem in "
                f"{s.data}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        items = [_Item(e.key, clean[e.key], e) for e in entries]
    else:
        items = [_Item(r.key, r) for r in data]
    if s.limit is not None:
        items = items[: int(s.limit)]
    if not items:
        raise BenchError("no images to evaluate")
    return data, items


def _validate(s: BenchSettings) -> None:
    if not s.methods:
        raise BenchError("no methods to evaluate")
    names = [m.name for m in s.methods]
    if len(set(names)) != len(names):
        raise BenchError(f"method names must be unique: {names}")
    if s.limit is not None and int(s.limit) < 1:
        raise BenchError(f"limit must be >= 1, got {s.limit}")
    if int(s.batch_size) < 1:
        raise BenchError(f"batch size must be >= 1, got {s.batch_size}")
    if s.manifest is None:
        from odedit.corruptions import CORRUPTIONS

        if not 1 <= int(s.severity) <= 5:
            raise BenchError(f"severity must be 1-5, got {s.severity}")
        bad = [c for c in (s.corruptions or ()) if c not in CORRUPTIONS]
        if bad:
            raise BenchError(f"unknown corruption(s) {', '.join(bad)}; valid: {', '.join(CORRUPTIONS)}")
        if s.corruptions is not None and not s.corruptions:
            raise BenchError("the list of corruptions is empty")
    _torch_dtype(s.dtype)


def run_benchmark(settings: BenchSettings, ctx: Optional[ProcessContext] = None) -> BenchStats:
    """Run (or resume) a benchmark; every process of a launch calls it.

    Raises BenchError for bad inputs or a settings mismatch with an existing output
    folder (unless ``settings.overwrite``), ``odedit.models.ModelLoadError`` if the model
    cannot be loaded. Returns this process's :class:`BenchStats`.
    """
    t_start = time.time()
    s = settings
    _validate(s)
    ctx = ctx or process_context(cpu=True if str(s.device) == "cpu" else None)
    out = Path(s.output).expanduser()
    data, items = _items(s)
    keys = [it.key for it in items]
    from odedit.models import model_identity

    model_id = model_identity(s.model)
    resume = _resume_settings(s, model_id, model_fingerprint(s.model))
    existing = _existing_run(s, out, resume)
    device = _resolve_device(s.device, ctx)
    model = _load_bench_model(s, device)
    size = int(model.sample_size)
    if existing and not s.overwrite and existing.get("image_size") not in (None, size):
        raise BenchError(f"{out} was made at image size {existing.get('image_size')}, this model makes {size}; "
                         "pass --overwrite to replace it")
    ctx.wait()  # every process has read the old state before the main process changes it

    run_entry = {
        "command": s.command if s.command is not None else list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "processes": ctx.num, "device": str(device), "batch_size": s.batch_size, "compile": s.compile, "limit": s.limit,
        "images": len(items), "methods": [m.name for m in s.methods], "status": "running",
        **code_identity(),
    }
    settings_path = out / SETTINGS_FILE
    if ctx.is_main:
        _write_settings(s, out, None if s.overwrite else existing, resume, size, run_entry)
    ctx.wait()

    stats = BenchStats(images=len(items), methods=[m.name for m in s.methods], output=str(out),
                       process=ctx.index, processes=ctx.num)
    try:
        _run_and_report(s, ctx, out, data, items, keys, model, model_id, device, size, stats, t_start)
    except BaseException as exc:  # record how the run ended, then re-raise it unchanged
        if ctx.is_main:
            status = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                      else f"failed: {type(exc).__name__}: {exc}"[:500])
            try:
                _end_run(settings_path, run_entry, stats, t_start, status)
            except OSError as err:
                exc.add_note(f"(bench.json could not record the run's end: {err})")
        raise
    if ctx.is_main:
        _end_run(settings_path, run_entry, stats, t_start, "complete")
    stats.wall_seconds = time.time() - t_start
    return stats


def _existing_run(s: BenchSettings, out: Path, resume: dict) -> Optional[dict]:
    """The bench.json of an earlier run in ``out`` (None: there is none, or with --overwrite an
    unreadable one). BenchError if that run may not be resumed with ``resume`` settings (unless
    --overwrite), or if ``out`` holds benchmark folders without a bench.json (another tool's)."""
    settings_path = out / SETTINGS_FILE
    if not settings_path.is_file():
        foreign = [n for n in ("images", "records") if (out / n).exists()]
        if foreign:  # never write into (or, with --overwrite, delete) folders another tool made
            raise BenchError(f"{out} has a '{foreign[0]}' folder but no {SETTINGS_FILE}: it is not an odedit bench "
                             "folder; choose another output folder")
        return None
    existing = None
    try:
        existing = read_json(settings_path)
    except (OSError, ValueError):
        if not s.overwrite:
            raise BenchError(f"{settings_path} exists but is not valid JSON; pass --overwrite to start afresh")
    if existing is not None and not s.overwrite:
        _check_resume(existing, resume, s.methods)
    return existing


def _load_bench_model(s: BenchSettings, device):
    """The model of the run on ``device`` (compiled with --compile); BenchError if a method needs
    more steps than it has timesteps."""
    from odedit.models import compile_model, load_model

    model = load_model(s.model, device=device, dtype=_torch_dtype(s.dtype, device))
    if s.compile:
        model = compile_model(model)
    T = model.schedule.num_train_timesteps
    too_long = [m.name for m in s.methods if m.config is not None and m.config.steps > T]
    if too_long:
        raise BenchError(f"method(s) {', '.join(too_long)} use more steps than the model's {T} timesteps")
    return model


def _write_settings(s: BenchSettings, out: Path, existing: Optional[dict], resume: dict, size: int,
                    run_entry: dict) -> None:
    """(Main process.) bench.json: the resume settings, seeds, methods and this run, added to
    ``existing`` (the earlier runs'; None = a new folder, or --overwrite: the old outputs go)."""
    if s.overwrite:
        Layout(out).clear()
    out.mkdir(parents=True, exist_ok=True)
    meta = existing or {}
    meta.update({
        "odedit_bench_format": FORMAT_VERSION,
        "settings": resume,
        "image_size": size,
        "seeds": {
            "base_seed": s.seed,
            "corruption": "as `odedit corrupt --corruption random --seed S` on <key>.png: name drawn by "
                          "choose_corruption(default_rng(odedit.rng.corrupt_seed(S, key.png, 'choice'))), image = "
                          "corrupt(clean, name, severity, default_rng(odedit.rng.corrupt_seed(S, key.png))); per-image "
                          "seeds in images/degraded/manifest.csv",
            "restoration": "torch.Generator(device).manual_seed(odedit.rng.restore_seed(seed, key + '.png')) per image "
                           "(as `odedit restore --seed`); oracle sample j>0: key + '.png#j'",
        },
        "reference": s.reference, "reference_limit": s.reference_limit,
    })
    known = meta.setdefault("methods", {})
    for m in s.methods:
        known[m.name] = m.to_dict()
    meta.setdefault("runs", []).append(run_entry)
    write_json_atomic(out / SETTINGS_FILE, meta)


def _end_run(settings_path: Path, run_entry: dict, stats: BenchStats, t_start: float, status: str) -> None:
    """Write how this run ended (status, wall time, pairs computed / skipped) into bench.json's last run."""
    meta = read_json(settings_path)
    run_entry.update({"status": status, "wall_seconds": round(time.time() - t_start, 3),
                      "processed_by_main_process": stats.processed, "skipped_by_main_process": stats.skipped})
    if meta.get("runs"):
        meta["runs"][-1] = run_entry
    write_json_atomic(settings_path, meta)


def _run_and_report(s: BenchSettings, ctx: ProcessContext, out: Path, data: ImageSet, items: list, keys: list[str],
                    model, model_id: str, device, size: int, stats: BenchStats, t_start: float) -> None:
    """Compute every missing (image, method) pair of this process's share, then (main process)
    aggregate the folder into summary.md / results.csv / grid.png."""
    lay = Layout(out)
    lay.mkdirs(["clean", "degraded", *[m.name for m in s.methods if m.restores]])
    (out / "records" / SOURCE).mkdir(parents=True, exist_ok=True)
    mine = shard(items, ctx.index, ctx.num)
    try:
        _process_share(mine, data, lay, model, s.methods, s, device, ctx, stats)
    finally:
        data.close()
    ctx.wait()

    if ctx.is_main:
        reference, ref_label = None, ""
        if s.reference:
            reference, ref_label = _load_reference(s, size)
        header = {
            "data": s.data + (f" (degraded images from manifest {s.manifest})" if s.manifest else ""),
            "model": f"{model_id} ({size}x{size})",
            "corruption": ("from the manifest" if s.manifest else
                           f"one random corruption per image at severity {s.severity}"
                           + (f", drawn from {', '.join(s.corruptions)}" if s.corruptions else
                              " (all 21: 19 ImageNet-C + 2 masking)")),
            "seed": s.seed,
            "device / dtype / batch size": f"{device} / {s.dtype} / {s.batch_size} ({ctx.num} process(es))",
        }
        stats.summary = aggregate(out, keys, s.methods, reference=reference, reference_label=ref_label,
                                  seed=s.seed, device=device, allow_download=s.allow_download,
                                  grid_images=s.grid_images, header=header)


def _load_reference(s: BenchSettings, size: int) -> tuple[np.ndarray, str]:
    from odedit.imageio import fit_square

    ref = ImageSet(s.reference)
    try:
        refs = ref.refs[: s.reference_limit] if s.reference_limit else ref.refs
        images = np.stack([fit_square(ref.load(r), size, s.fit) for r in refs])
    finally:
        ref.close()
    label = f"{s.reference}" + (f" (first {len(refs)} by name)" if s.reference_limit else "")
    return images, label
