"""The benchmark behind ``odedit bench``: restore a set of degraded faces with several
methods and measure fidelity (PSNR, SSIM, LPIPS) and realism (SWD, FID), as in Table 1
of the ODEdit paper.

Protocol (one run)::

    clean image  --fit to the model resolution-->  clean (H, W, 3) uint8
    clean        --one random corruption at severity, seeded by (seed, file name)-->  degraded
                 (the same image `odedit corrupt --corruption random --seed` makes)
    degraded     --each method (source = the degraded image itself)-->  restored (uint8 PNG)
    per image:   PSNR, SSIM (and LPIPS if available) of restored vs clean
    per set:     SWD (and FID if available) of the restored set vs a reference set

Everything a method produces is written under the output folder as it goes, so a run
can be interrupted and resumed::

    DIR/bench.json                      settings that define the results, methods, runs
    DIR/images/clean/<key>.png          clean images at the model resolution
    DIR/images/degraded/<key>.png       degraded inputs (+ manifest.csv, as `odedit corrupt`)
    DIR/images/<method>/<key>.png       restored images
    DIR/records/degraded/<key>.json     corruption, severity, seed of each image
    DIR/records/<method>/<key>.json     seed(s), NFE, seconds, PSNR, SSIM of one restoration
    DIR/results.csv                     long format: image, corruption, method, metric, value
    DIR/summary.md                      Table-1-like table + per-corruption breakdown
    DIR/grid.png                        rows: degraded / each method / clean

``<key>`` is the file stem of the clean image. Metrics are computed on the saved uint8
images (what a user gets), converted to float64 in [0, 1].

Several processes (``accelerate launch``) split the images: process i takes images
``i::num_processes`` and writes its own per-image files; the main process aggregates
once every process is done.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from odedit.imageio import IMAGE_EXTENSIONS, ImageError
from odedit.restorers import PAPER_STEPS, PRESETS, ODEditConfig, SDEditConfig, scaled_levels

__all__ = [
    "BenchError",
    "ImageRef",
    "ImageSet",
    "ManifestEntry",
    "read_manifest",
    "write_manifest",
    "MethodSpec",
    "odedit_method_name",
    "sdedit_method_name",
    "sdedit_nfe_matched",
    "sdedit_start_timestep",
    "build_methods",
    "ablation_methods",
    "shard",
    "ProcessContext",
    "process_context",
    "corruption_seed",
    "corruption_choice_seed",
    "restore_seed",
    "BenchSettings",
    "BenchStats",
    "run_benchmark",
    "aggregate",
]

FORMAT_VERSION = 1
SETTINGS_FILE = "bench.json"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
GRID_FILE = "grid.png"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("file", "corruption", "severity", "seed", "fraction")  # as `odedit corrupt` writes
RESULT_COLUMNS = ("image", "corruption", "method", "metric", "value")
SET_ROW = "*"  # image/corruption field of set-level rows in results.csv
METHOD_KINDS = ("source", "odedit", "sdedit")
ABLATION_STEP_SIZES = (1e-6, 1e-5, 1e-4)
# SWD settings (Karras et al. 2018 defaults) and the seeds of its three random streams.
PSNR_CAP = 100.0  # dB: an image identical to its clean image (PSNR = inf) counts as this in means
SWD_CACHE_DIR = "_swd"  # records/_swd/<hash>.json: SWD values by content (see aggregate)
SWD_CACHE_VERSION = 1  # bump when the SWD computation changes
SWD_SETTINGS = {"descriptors_per_image": 128, "patch_size": 7, "dirs": 128, "repeats": 4, "min_resolution": 16}


class BenchError(ValueError):
    """A user error in the benchmark's inputs or settings; the message says what to do."""


# ---- small file helpers ----------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


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


# ---- manifests (as written by `odedit corrupt`) ------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    """One row of a corruption manifest: the degraded file and how it was made."""

    key: str
    path: Path
    corruption: str
    severity: Optional[int]
    seed: Optional[int]
    fraction: Optional[float] = None


def read_manifest(path: os.PathLike | str) -> list[ManifestEntry]:
    """Read ``manifest.csv`` as ``odedit corrupt`` writes it (columns file, corruption,
    severity, seed, fraction; only file and corruption are required, others ignored).

    ``file`` is relative to the manifest's folder (or absolute). Empty severity/seed/
    fraction fields become None. Entries are sorted by key (the file stem).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"manifest {str(path)!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("file", "corruption") if c not in (reader.fieldnames or [])]
            if missing:
                raise BenchError(
                    f"manifest {path} lacks the column(s) {', '.join(missing)}; expected {','.join(MANIFEST_COLUMNS)}"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise BenchError(f"cannot read manifest {path}: {err}") from None
    out, seen = [], set()
    for n, row in enumerate(rows, start=2):
        file = (row.get("file") or "").strip()
        if not file:
            raise BenchError(f"{path}, line {n}: empty 'file' field")
        try:
            sev = int(row["severity"]) if (row.get("severity") or "").strip() else None
            seed = int(row["seed"]) if (row.get("seed") or "").strip() else None
            frac = float(row["fraction"]) if (row.get("fraction") or "").strip() else None
        except ValueError:
            raise BenchError(f"{path}, line {n}: severity and seed must be integers, fraction a number") from None
        p = Path(file)
        p = p if p.is_absolute() else path.parent / p
        if p.stem in seen:
            raise BenchError(f"{path}: the image {p.stem!r} is listed twice")
        seen.add(p.stem)
        out.append(ManifestEntry(p.stem, p, (row.get("corruption") or "").strip(), sev, seed, frac))
    if not out:
        raise BenchError(f"manifest {path} lists no images")
    return sorted(out, key=lambda e: e.key)


def write_manifest(path: os.PathLike | str, entries: Iterable[dict]) -> None:
    """Write a manifest (dicts with the keys of MANIFEST_COLUMNS) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow(e)
    _atomic_write_text(Path(path), buf.getvalue())


# ---- seeds ---------------------------------------------------------------------------------------


def _name_seed(base_seed: int, name: str) -> int:
    from odedit.rng import restore_seed  # the one definition of per-file seeds

    return restore_seed(int(base_seed), name)


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
    return _name_seed(base_seed, f"{key}.png" if sample == 0 else f"{key}.png#{sample}")


# ---- methods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One evaluated method.

    Attributes:
        name: unique, used for folders and tables (e.g. ``odedit-light-eps1e-05``).
        kind: ``source`` (the degraded image itself), ``odedit`` or ``sdedit``.
        config: ODEditConfig / SDEditConfig (None for source).
        best_of: > 1 = oracle: N samples, the one with the best PSNR against the clean
            image is kept (uses the ground truth; labelled as such everywhere).
        preset: the ODEdit preset the config derives from.
        note: shown in the summary.
        ablation: part of the ``--ablations`` set.
    """

    name: str
    kind: str
    config: object = None
    best_of: int = 1
    preset: Optional[str] = None
    note: str = ""
    ablation: bool = False

    def __post_init__(self) -> None:
        if self.kind not in METHOD_KINDS:
            raise ValueError(f"unknown method kind {self.kind!r}; expected one of {METHOD_KINDS}")
        if self.kind == "odedit" and not isinstance(self.config, ODEditConfig):
            raise TypeError("an odedit method needs an ODEditConfig")
        if self.kind == "sdedit" and not isinstance(self.config, SDEditConfig):
            raise TypeError("an sdedit method needs an SDEditConfig")
        if int(self.best_of) < 1:
            raise ValueError(f"best_of must be >= 1, got {self.best_of}")

    @property
    def nfe(self) -> int:
        """Model calls per image (all samples of a best-of-N method)."""
        return 0 if self.config is None else int(self.config.nfe) * int(self.best_of)

    @property
    def stochastic(self) -> bool:
        if self.kind == "sdedit":
            return True
        if self.kind == "odedit":
            c = self.config
            return c.total_langevin_steps > 0 and c.temperature > 0 and c.step_size > 0
        return False

    @property
    def oracle(self) -> bool:
        return self.best_of > 1

    def identity(self) -> dict:
        """What defines the method's results (compared when resuming)."""
        return {
            "kind": self.kind,
            "config": None if self.config is None else self.config.to_dict(),
            "best_of": int(self.best_of),
        }

    def to_dict(self) -> dict:
        return {**self.identity(), "nfe": self.nfe, "preset": self.preset, "note": self.note,
                "ablation": self.ablation, "oracle": self.oracle}


def _g(v: float) -> str:
    return f"{v:g}"


def _canonical_nolangevin(cfg: ODEditConfig) -> ODEditConfig:
    """Without Langevin, levels/step size/temperature do not matter: fix them."""
    d = ODEditConfig()
    return replace(cfg, levels=(0,), langevin_steps=0, step_size=d.step_size, temperature=d.temperature)


def odedit_method_name(preset: str, cfg: ODEditConfig) -> str:
    """``odedit-<preset>`` plus one suffix per setting that differs from the preset's.

    Suffixes (in this order): ``steps<N>`` (grid size != 100), ``top<L>`` (inversion
    level), ``lv<a-b-..>`` (Langevin levels != the paper's levels scaled to the grid),
    ``k<K>`` (updates per level != preset total / number of levels), ``eps<e>``,
    ``T<t>``, ``clip`` (x0 clipping in inversion), ``thr<p>`` (decode thresholding),
    ``dpmpp2m`` (solver), ``fp<J>`` (fixed-point inversion iterations).
    Without Langevin (K = 0) the name is ``odedit-nolangevin`` (+ the grid suffixes).
    """
    ref = ODEditConfig.from_preset(preset, steps=cfg.steps)
    parts = []
    if cfg.total_langevin_steps == 0:
        parts.append("odedit-nolangevin")
    else:
        parts.append(f"odedit-{preset}")
    if cfg.steps != PAPER_STEPS:
        parts.append(f"steps{cfg.steps}")
    if cfg.invert_to is not None and cfg.invert_to != cfg.steps - 1:
        parts.append(f"top{cfg.invert_to}")
    if cfg.total_langevin_steps > 0:
        if tuple(cfg.levels) != tuple(scaled_levels(cfg.steps)):
            parts.append("lv" + "-".join(str(lv) for lv in cfg.levels))
        if cfg.langevin_steps != PRESETS[preset] // len(cfg.levels):
            parts.append(f"k{cfg.langevin_steps}")
        if cfg.step_size != ref.step_size:
            parts.append(f"eps{_g(cfg.step_size)}")
        if cfg.temperature != ref.temperature:
            parts.append(f"T{_g(cfg.temperature)}")
    if cfg.clip_inversion_x0:
        parts.append("clip")
    if cfg.decode_threshold:
        parts.append(f"thr{_g(cfg.decode_threshold)}")
    if cfg.solver != "ddim":
        parts.append(cfg.solver.replace("+", "p"))  # dpm++2m -> dpmpp2m (file-name safe)
    if cfg.inversion_iters:
        parts.append(f"fp{cfg.inversion_iters}")
    return "-".join(parts)


def sdedit_method_name(cfg: SDEditConfig, matched: bool = False) -> str:
    """``sdedit-<strength>`` (+ ``steps<N>`` if != 100, ``eta<e>`` if != 1); an
    NFE-matched variant is ``sdedit-<strength>-nfe<NFE>`` (its steps follow from the NFE)."""
    parts = [f"sdedit-{_g(cfg.strength)}"]
    if matched:
        parts.append(f"nfe{cfg.nfe}")
    elif cfg.steps != PAPER_STEPS:
        parts.append(f"steps{cfg.steps}")
    if cfg.eta != 1.0:
        parts.append(f"eta{_g(cfg.eta)}")
    return "-".join(parts)


def sdedit_nfe_matched(nfe: int, strength: float, eta: float = 1.0,
                       num_train_timesteps: int = 1000) -> SDEditConfig:
    """SDEdit at ``strength`` (same start t0 as the plain method) with ``nfe`` model calls.

    The reverse path is ``nfe`` evenly spaced timesteps from t0 to 0 (``SDEditConfig.calls``),
    capped at t0 + 1 calls (every timestep once): e.g. strength 0.3 starts at t0 = 290 and
    can make at most 291 calls.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    plain = SDEditConfig(strength=strength, eta=eta)
    t0 = sdedit_start_timestep(plain, num_train_timesteps)
    return replace(plain, calls=min(int(nfe), t0 + 1))


def sdedit_start_timestep(cfg: SDEditConfig, num_train_timesteps: int = 1000) -> int:
    """The training timestep SDEdit starts from (its effective noise level)."""
    return cfg.timesteps(num_train_timesteps)[0]


def _odedit_config(preset: str, overrides: dict) -> ODEditConfig:
    cfg = ODEditConfig.from_preset(preset, **overrides)
    return _canonical_nolangevin(cfg) if cfg.total_langevin_steps == 0 else cfg


def _add(out: dict, spec: MethodSpec) -> None:
    old = out.get(spec.name)
    if old is None:
        out[spec.name] = spec
    elif old.identity() != spec.identity():  # pragma: no cover - names encode the settings
        raise BenchError(f"two different methods would be named {spec.name!r}")


def ablation_methods(
    preset: str,
    overrides: dict,
    strengths: Sequence[float],
    eta: float = 1.0,
) -> list[MethodSpec]:
    """The standard ablation set around ODEdit ``preset`` (with ``overrides``):

    - no Langevin (``odedit-nolangevin``: invert then decode, K = 0);
    - Langevin only at the lowest level (levels = (0,), same total updates);
    - all four levels = the base method itself;
    - step sizes 1e-6 / 1e-5 / 1e-4;
    - x0 clipping in inversion toggled;
    - SDEdit at each strength with the base's NFE (:func:`sdedit_nfe_matched`).
    """
    base = _odedit_config(preset, overrides)
    out: dict[str, MethodSpec] = {}

    def od(cfg: ODEditConfig, note: str) -> None:
        cfg = _canonical_nolangevin(cfg) if cfg.total_langevin_steps == 0 else cfg
        _add(out, MethodSpec(odedit_method_name(preset, cfg), "odedit", cfg, preset=preset, note=note, ablation=True))

    od(base, "ablation base: Langevin at all levels")
    od(replace(base, langevin_steps=0), "ablation: invert then decode, no Langevin")
    lv0 = {**overrides, "levels": (0,), "langevin_steps": base.total_langevin_steps}
    od(_odedit_config(preset, lv0), "ablation: Langevin only at the lowest level (same total updates)")
    for eps in ABLATION_STEP_SIZES:
        od(replace(base, step_size=eps), f"ablation: step size {_g(eps)}")
    od(replace(base, clip_inversion_x0=not base.clip_inversion_x0),
       f"ablation: x0 clipping in inversion {'on' if not base.clip_inversion_x0 else 'off'}")
    base_name = odedit_method_name(preset, base)
    for s in strengths:
        cfg = sdedit_nfe_matched(base.nfe, s, eta)
        t0 = sdedit_start_timestep(cfg)
        note = f"NFE matched to {base_name} ({base.nfe}): NFE={cfg.nfe}, starts at t0={t0}"
        if cfg.nfe != base.nfe:
            note += f" (capped at t0 + 1 = {t0 + 1} calls)"
        _add(out, MethodSpec(sdedit_method_name(cfg, matched=True), "sdedit", cfg, note=note, ablation=True))
    return list(out.values())


def build_methods(
    methods: Sequence[str] = METHOD_KINDS,
    presets: Sequence[str] = ("medium",),
    odedit_overrides: Optional[dict] = None,
    step_sizes: Optional[Sequence[float]] = None,
    strengths: Sequence[float] = (0.5,),
    sdedit_steps: Optional[int] = None,
    eta: float = 1.0,
    ablations: bool = False,
    match_nfe: bool = False,
    best_of: int = 1,
) -> list[MethodSpec]:
    """The ordered, de-duplicated list of methods a benchmark evaluates.

    Args:
        methods: kinds to run: ``source``, ``odedit``, ``sdedit``.
        presets: ODEdit presets; each with every value of ``step_sizes`` (None = default).
        odedit_overrides: ODEditConfig.from_preset overrides (steps, levels,
            langevin_steps, temperature, invert_to, clip_inversion_x0, decode_threshold).
        strengths: SDEdit strengths, each its own method.
        sdedit_steps: SDEdit grid size (default 100).
        ablations: add :func:`ablation_methods` of the first preset.
        match_nfe: add SDEdit at each strength with the NFE of each ODEdit preset.
        best_of: N > 1 adds an oracle variant (best PSNR of N against the clean image)
            of each stochastic method from presets/strengths (not of the ablations).
    """
    kinds = list(dict.fromkeys(methods))
    bad = [k for k in kinds if k not in METHOD_KINDS]
    if bad:
        raise BenchError(f"unknown method(s) {', '.join(bad)}; expected a subset of {','.join(METHOD_KINDS)}")
    if not kinds and not ablations:
        raise BenchError("no methods to evaluate")
    presets = list(dict.fromkeys(presets or ["medium"]))
    for p in presets:
        if p not in PRESETS:
            raise BenchError(f"unknown preset {p!r}; expected one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in (odedit_overrides or {}).items() if v is not None and k != "step_size"}
    sizes = list(dict.fromkeys(step_sizes)) if step_sizes else [None]
    strengths = list(dict.fromkeys(float(s) for s in strengths))
    if not strengths and ("sdedit" in kinds or ablations or match_nfe):
        raise BenchError("no SDEdit strengths given")
    out: dict[str, MethodSpec] = {}
    main: list[str] = []
    try:
        if "source" in kinds:
            _add(out, MethodSpec("source", "source", note="the degraded image itself"))
        if "odedit" in kinds:
            for p in presets:
                for eps in sizes:
                    cfg = _odedit_config(p, {**overrides, "step_size": eps})
                    spec = MethodSpec(odedit_method_name(p, cfg), "odedit", cfg, preset=p)
                    _add(out, spec)
                    main.append(spec.name)
        if "sdedit" in kinds:
            for s in strengths:
                cfg = SDEditConfig(steps=sdedit_steps or PAPER_STEPS, strength=s, eta=eta)
                spec = MethodSpec(sdedit_method_name(cfg), "sdedit", cfg)
                _add(out, spec)
                main.append(spec.name)
        if ablations:
            eps0 = sizes[0]
            for spec in ablation_methods(presets[0], {**overrides, "step_size": eps0}, strengths, eta):
                _add(out, spec)
        if match_nfe:
            for p in presets:
                base = _odedit_config(p, {**overrides, "step_size": sizes[0]})
                for s in strengths:
                    cfg = sdedit_nfe_matched(base.nfe, s, eta)
                    note = (f"NFE matched to {odedit_method_name(p, base)} ({base.nfe}): "
                            f"NFE={cfg.nfe}, starts at t0={sdedit_start_timestep(cfg)}")
                    _add(out, MethodSpec(sdedit_method_name(cfg, matched=True), "sdedit", cfg, note=note))
        if best_of > 1:
            for name in main:
                spec = out[name]
                if spec.stochastic:
                    _add(out, replace(
                        spec, name=f"{name}-oracle-best{best_of}", best_of=int(best_of),
                        note=f"oracle: best PSNR of {best_of} against the clean image",
                    ))
    except (ValueError, TypeError) as err:
        if isinstance(err, BenchError):
            raise
        raise BenchError(str(err)) from None
    return list(out.values())


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
    only forms a CPU process group when asked). Default: True when CUDA is unavailable.
    """
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return ProcessContext()
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and state.num_processes != launched:
        raise BenchError(
            f"launched as {launched} processes but accelerate formed a group of {state.num_processes}; "
            "every process would evaluate every image. Use `accelerate launch` on GPUs or "
            "`torchrun --nproc_per_node N` on CPUs"
        )
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
    old = existing.get("settings", {})
    diffs = [f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in settings if old.get(k) != settings[k]]
    known = existing.get("methods", {})
    for m in methods:
        if m.name in known and _identity_of(known[m.name]) != _json_roundtrip(m.identity()):
            diffs.append(f"method {m.name}: settings differ from the earlier run's")
    if diffs:
        raise BenchError(
            "the output folder holds a benchmark run with different settings ("
            + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
            + "); pass --overwrite to replace it, or choose another output folder"
        )


# ODEditConfig fields added later, with the values runs made before them used.
_CONFIG_DEFAULTS = {"odedit": {"solver": "ddim", "inversion_iters": 0}}


def _identity_of(d: dict) -> dict:
    ident = {k: d.get(k) for k in ("kind", "config", "best_of")}
    if isinstance(ident["config"], dict):  # runs recorded before a field existed used its default
        ident["config"] = {**_CONFIG_DEFAULTS.get(ident["kind"], {}), **ident["config"]}
    return _json_roundtrip(ident)


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _clear_outputs(out: Path) -> None:
    for name in ("images", "records"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (SETTINGS_FILE, RESULTS_FILE, SUMMARY_FILE, GRID_FILE):
        (out / name).unlink(missing_ok=True)


# ---- the per-image work ------------------------------------------------------------------------


def _unit(images_u8: np.ndarray):
    """uint8 (B, H, W, 3) -> float64 tensor (B, 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).to(torch.float64) / 255.0


def _fidelity(clean_u8: np.ndarray, out_u8: np.ndarray) -> tuple[list[float], list[float]]:
    from odedit.metrics import psnr, ssim

    c, o = _unit(clean_u8), _unit(out_u8)
    return psnr(o, c).tolist(), ssim(o, c).tolist()


def _load_png(path: Path) -> np.ndarray:
    from odedit.imageio import load_image_uint8

    return load_image_uint8(path)


class _Layout:
    def __init__(self, out: Path):
        self.out = Path(out)

    def image(self, folder: str, key: str) -> Path:
        return self.out / "images" / folder / f"{key}.png"

    def record(self, folder: str, key: str) -> Path:
        return self.out / "records" / folder / f"{key}.json"

    def done(self, folder: str, key: str) -> bool:
        return self.record(folder, key).is_file()

    def mkdirs(self, folders: Iterable[str]) -> None:
        for f in folders:
            (self.out / "images" / f).mkdir(parents=True, exist_ok=True)
            (self.out / "records" / f).mkdir(parents=True, exist_ok=True)


def _prepare_images(
    batch: list[_Item], data: ImageSet, lay: _Layout, size: int, s: BenchSettings
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Clean and degraded uint8 images of a batch: read back if done, else made and saved."""
    from odedit.imageio import fit_square

    cleans, degs, recs = [], [], []
    for it in batch:
        stored = [lay.record("degraded", it.key), lay.image("clean", it.key), lay.image("degraded", it.key)]
        if all(p.is_file() for p in stored):
            cleans.append(_load_png(lay.image("clean", it.key)))
            degs.append(_load_png(lay.image("degraded", it.key)))
            recs.append(_read_json(lay.record("degraded", it.key)))
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
        _write_json(lay.record("degraded", it.key), rec)
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
    from odedit.restorers import ODEdit, SDEdit

    restorer = (ODEdit if spec.kind == "odedit" else SDEdit)(model, spec.config)
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
        p, _ = _fidelity(clean, out)
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


def _process_share(items: list[_Item], data: ImageSet, lay: _Layout, model, methods: list[MethodSpec],
                   s: BenchSettings, device, ctx: ProcessContext, stats: BenchStats) -> None:
    from odedit.imageio import save_png_atomic

    size = model.sample_size
    work = [m for m in methods]
    pending = {m.name: sum(1 for it in items if not lay.done(m.name, it.key)) for m in work}
    stats.skipped += sum(len(items) - n for n in pending.values())
    total_calls = sum(pending[m.name] * m.nfe for m in work)
    from tqdm import tqdm

    if items and any(pending[m.name] and m.kind != "source" for m in work):
        _warm_up(model, device, min(s.batch_size, len(items)))
    bar = tqdm(total=total_calls, desc="bench", unit="call", disable=not (s.progress and ctx.is_main),
               file=sys.stderr, dynamic_ncols=True)
    try:
        for start in range(0, len(items), s.batch_size):
            batch = items[start : start + s.batch_size]
            todo = [(m, [i for i, it in enumerate(batch) if not lay.done(m.name, it.key)]) for m in work]
            if not any(idx for _, idx in todo) and all(lay.done("degraded", it.key) for it in batch):
                continue
            clean, deg, recs = _prepare_images(batch, data, lay, size, s)
            for spec, idx in todo:
                if not idx:
                    continue
                keys = [batch[i].key for i in idx]
                bar.set_postfix_str(spec.name, refresh=False)
                if spec.kind == "source":
                    out, extras, seconds = deg[idx], [{} for _ in idx], 0.0
                else:
                    n = len(idx)
                    out, extras, seconds = _restore_batch(
                        model, spec, deg[idx], clean[idx], keys, s.seed, device, lambda k, n=n: bar.update(n * k)
                    )
                p, q = _fidelity(clean[idx], out)
                for j, i in enumerate(idx):
                    key = batch[i].key
                    if spec.kind != "source":
                        save_png_atomic(lay.image(spec.name, key), out[j])
                    rec = {"image": key, "method": spec.name, "corruption": recs[i]["corruption"],
                           "nfe": spec.nfe, "seconds": seconds / len(idx), "psnr": p[j], "ssim": q[j],
                           "device": str(device), "batch": len(idx), "process": ctx.index, **extras[j]}
                    _write_json(lay.record(spec.name, key), rec)
                stats.processed += len(idx)
    finally:
        bar.close()


# ---- aggregation -------------------------------------------------------------------------------


def _fmt(v: Optional[float], digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def _mean_se(values: list[float], digits: int) -> str:
    from odedit.metrics import mean_and_stderr

    if not values:
        return "n/a"
    m, se = mean_and_stderr(values)
    if math.isnan(se):
        return _fmt(m, digits)
    return f"{_fmt(m, digits)} ± {_fmt(se, digits)}"


def _capped(values: list[float]) -> list[float]:
    """PSNR values for means: +inf (identical images) counts as PSNR_CAP dB."""
    return [min(float(v), PSNR_CAP) for v in values]


def _num(v) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def _config_text(spec: MethodSpec) -> str:
    c = spec.config
    if spec.kind == "source":
        return "-"
    if spec.kind == "odedit":
        if c.total_langevin_steps == 0:
            text = f"steps={c.steps}, no Langevin"
        else:
            text = (f"steps={c.steps}, levels={','.join(map(str, c.levels))}, K={c.langevin_steps}/level "
                    f"({c.total_langevin_steps} total), eps={_g(c.step_size)}, T={_g(c.temperature)}")
        if c.invert_to is not None:
            text += f", invert_to={c.invert_to}"
        if c.clip_inversion_x0:
            text += ", x0 clipping in inversion"
        if c.decode_threshold:
            text += f", decode threshold {_g(c.decode_threshold)}"
    else:
        text = f"steps={c.steps}, strength={_g(c.strength)}, eta={_g(c.eta)}, t0={sdedit_start_timestep(c)}"
        if c.calls is not None:
            text += f", {c.calls} evenly spaced timesteps"
    if spec.best_of > 1:
        text += f", best of {spec.best_of}"
    return text


def _load_set(lay: _Layout, folder: str, keys: list[str]) -> np.ndarray:
    return np.stack([_load_png(lay.image(folder, k)) for k in keys])


def aggregate(
    out: os.PathLike | str,
    keys: list[str],
    methods: list[MethodSpec],
    *,
    reference: Optional[np.ndarray] = None,
    reference_label: str = "",
    seed: int = 0,
    device=None,
    allow_download: bool = False,
    grid_images: int = 8,
    header: Optional[dict] = None,
) -> dict:
    """Read the per-image records of ``keys`` x ``methods`` under ``out`` and write
    results.csv, summary.md, grid.png and images/degraded/manifest.csv.

    ``reference``: uint8 (N, H, W, 3) realism reference set; None = the clean images of
    ``keys``. Returns the summary as a dict (per method: means, stderrs, set metrics).
    """
    from odedit import metrics as M

    lay = _Layout(Path(out))
    missing = [(m.name, k) for m in methods for k in keys if not lay.done(m.name, k)]
    missing += [("degraded", k) for k in keys if not lay.done("degraded", k)]
    if missing:
        raise BenchError(
            f"{len(missing)} per-image result(s) are missing (e.g. {missing[0][0]}/{missing[0][1]}); "
            "a process did not finish: run the same command again to complete them"
        )
    deg_recs = {k: _read_json(lay.record("degraded", k)) for k in keys}
    recs = {m.name: {k: _read_json(lay.record(m.name, k)) for k in keys} for m in methods}
    clean = _load_set(lay, "clean", keys)
    ref_is_clean = reference is None
    ref = clean if ref_is_clean else reference
    folder = {m.name: ("degraded" if m.kind == "source" else m.name) for m in methods}

    # network metrics: what is usable here, and why not
    reasons = M.available_network_metrics()
    if allow_download:
        reasons = {k: (None if v and "not cached" in v else v) for k, v in reasons.items()}
    lpips_vals: dict[str, list[float]] = {}
    fid_vals: dict[str, Optional[float]] = {}
    swd_vals: dict[str, dict] = {}
    floor: dict[str, Optional[float]] = {}

    ref_digest = _swd_digest(ref, seed)
    ref_desc = None  # the reference's descriptors, made only when some set is not cached

    def swd_of(name: str, images: np.ndarray) -> dict:
        """SWD of one set against the reference, cached by content: a rerun that adds methods
        (or only rewrites the tables) computes the SWD of the new sets only."""
        nonlocal ref_desc
        cache = lay.out / "records" / SWD_CACHE_DIR / f"{_swd_digest(images, seed, ref_digest)}.json"
        if cache.is_file():
            return _read_json(cache)["swd"]
        if ref_desc is None:
            ref_desc = M.laplacian_descriptors(ref, np.random.default_rng((seed, 1)), **_desc_kw())
        desc = M.laplacian_descriptors(images, np.random.default_rng((seed, 2)), **_desc_kw())
        value = M.swd_from_descriptors(desc, ref_desc, np.random.default_rng((seed, 3)),
                                       dirs=SWD_SETTINGS["dirs"], repeats=SWD_SETTINGS["repeats"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cache, {"set": name, "swd": value})
        return value

    ref_fid = None
    if reasons["fid"] is None:
        try:
            ref_fid = M.gaussian_stats(M.fid_features(_unit(ref).float(), device, allow_download=allow_download))
        except M.MetricUnavailable as err:
            reasons["fid"] = err.reason
        except ValueError as err:
            reasons["fid"] = f"needs at least 2 images per set ({err})"
    sets = {}
    for m in methods:
        imgs = _load_set(lay, folder[m.name], keys)
        sets[m.name] = imgs
        swd_vals[m.name] = swd_of(m.name, imgs)
        if reasons["lpips"] is None:
            try:
                lpips_vals[m.name] = M.lpips_distance(_unit(imgs).float(), _unit(clean).float(), device,
                                                      allow_download=allow_download).tolist()
            except M.MetricUnavailable as err:
                reasons["lpips"] = err.reason
                lpips_vals.clear()
        if reasons["fid"] is None:
            try:
                fid_vals[m.name] = M.fid(_unit(imgs).float(), ref_fid, device, allow_download=allow_download)
            except (M.MetricUnavailable, ValueError) as err:
                reasons["fid"] = getattr(err, "reason", str(err))
                fid_vals.clear()
    if not ref_is_clean:
        floor["swd"] = swd_of("clean", clean)["mean"]
        if reasons["fid"] is None:
            floor["fid"] = M.fid(_unit(clean).float(), ref_fid, device, allow_download=allow_download)

    # results.csv (long format)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for m in methods:
        for i, k in enumerate(keys):
            r = recs[m.name][k]
            corr = deg_recs[k]["corruption"]
            w.writerow([k, corr, m.name, "psnr", _num(r["psnr"])])
            w.writerow([k, corr, m.name, "ssim", _num(r["ssim"])])
            if m.name in lpips_vals:
                w.writerow([k, corr, m.name, "lpips", _num(lpips_vals[m.name][i])])
            w.writerow([k, corr, m.name, "nfe", str(int(r["nfe"]))])
            w.writerow([k, corr, m.name, "seconds", _num(r["seconds"])])
        sw = swd_vals[m.name]
        w.writerow([SET_ROW, SET_ROW, m.name, "swd", _num(sw["mean"])])
        for res, v in zip(sw["resolutions"], sw["levels"]):
            w.writerow([SET_ROW, SET_ROW, m.name, f"swd_{res}", _num(v)])
        if m.name in fid_vals:
            w.writerow([SET_ROW, SET_ROW, m.name, "fid", _num(fid_vals[m.name])])
    _atomic_write_text(lay.out / RESULTS_FILE, buf.getvalue())

    # manifest of the degraded set (same columns as `odedit corrupt`)
    write_manifest(lay.out / "images" / "degraded" / MANIFEST_FILE, [
        {"file": f"{k}.png", "corruption": deg_recs[k]["corruption"], "severity": _blank(deg_recs[k].get("severity")),
         "seed": _blank(deg_recs[k].get("seed")),
         "fraction": "" if deg_recs[k].get("fraction") is None else repr(float(deg_recs[k]["fraction"]))}
        for k in keys
    ])

    # grid.png: rows degraded / each restoring method / clean; the first grid_images images
    ncols = min(grid_images, len(keys))
    if ncols > 0:
        from odedit.imageio import make_grid, save_png_atomic

        rows_img = [sets[m.name][:ncols] for m in methods if m.kind != "source"]
        tiles = np.concatenate([_load_set(lay, "degraded", keys[:ncols]), *rows_img, clean[:ncols]])
        grid_rows = ["degraded", *[m.name for m in methods if m.kind != "source"], "clean"]
        grid = make_grid(tiles, ncols=ncols)
        save_png_atomic(lay.out / GRID_FILE, _label_rows(grid, grid_rows, tiles.shape[1]))
    grid_rows = ["degraded", *[m.name for m in methods if m.kind != "source"], "clean"]

    # summary
    summary = {"methods": {}, "unavailable": {k: v for k, v in reasons.items() if v}, "grid_rows": grid_rows,
               "n": len(keys), "floor": floor}
    for m in methods:
        ps = [recs[m.name][k]["psnr"] for k in keys]
        ss = [recs[m.name][k]["ssim"] for k in keys]
        secs = [recs[m.name][k]["seconds"] for k in keys]
        entry = {"psnr": M.mean_and_stderr(_capped(ps)), "ssim": M.mean_and_stderr(ss),
                 "swd": swd_vals[m.name]["mean"], "nfe": m.nfe, "seconds": float(np.mean(secs)),
                 "lpips": M.mean_and_stderr(lpips_vals[m.name]) if m.name in lpips_vals else None,
                 "fid": fid_vals.get(m.name)}
        summary["methods"][m.name] = entry
    text = _summary_markdown(methods, keys, recs, deg_recs, lpips_vals, swd_vals, fid_vals, reasons, floor,
                             grid_rows, ncols, ref_is_clean, reference_label, header or {}, len(ref))
    _atomic_write_text(lay.out / SUMMARY_FILE, text)
    return summary


def _blank(v) -> str:
    return "" if v is None else str(v)


def _label_rows(grid: np.ndarray, labels: list[str], tile: int, pad: int = 2) -> np.ndarray:
    """Prepend a white column with each row's name (Pillow's default font)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(probe.textbbox((0, 0), t, font=font)[2] for t in labels) + 2 * pad + 2
    strip = Image.new("RGB", (width, grid.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, text in enumerate(labels):
        box = draw.textbbox((0, 0), text, font=font)
        y = pad + r * (tile + pad) + (tile - (box[3] - box[1])) // 2 - box[1]
        draw.text((pad + 1, y), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(strip, dtype=np.uint8), grid], axis=1)


def _swd_digest(images: np.ndarray, seed: int, ref_digest: str = "") -> str:
    """Hash of what an SWD value depends on: the set's bytes, the seed, the SWD settings and
    (``ref_digest``, this function's value for the reference set) the reference."""
    h = hashlib.sha256(json.dumps({"v": SWD_CACHE_VERSION, "seed": seed, "swd": SWD_SETTINGS, "ref": ref_digest},
                                  sort_keys=True).encode())
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:40]


def _desc_kw() -> dict:
    return {k: SWD_SETTINGS[k] for k in ("descriptors_per_image", "patch_size", "min_resolution")}


def _summary_markdown(methods, keys, recs, deg_recs, lpips_vals, swd_vals, fid_vals, reasons, floor,
                      grid_rows, ncols, ref_is_clean, reference_label, header, n_ref) -> str:
    n = len(keys)
    L = [f"# odedit bench: {n} images", ""]
    for k, v in header.items():
        L.append(f"- {k}: {v}")
    L.append(f"- realism reference: {'the clean images of this benchmark' if ref_is_clean else reference_label}"
             f" ({n_ref} images)")
    L += ["", "## Results", "",
          "| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | SWD ↓ | FID ↓ | NFE / image | s / image |",
          "|---|---|---|---|---|---|---|---|"]
    notes = []
    for m in methods:
        ps = [recs[m.name][k]["psnr"] for k in keys]
        ss = [recs[m.name][k]["ssim"] for k in keys]
        lp = _mean_se(lpips_vals[m.name], 3) if m.name in lpips_vals else "n/a"
        fid = _fmt(fid_vals[m.name], 2) if m.name in fid_vals else "n/a"
        secs = float(np.mean([recs[m.name][k]["seconds"] for k in keys]))
        n_inf = sum(1 for v in ps if math.isinf(v))
        if n_inf:
            notes.append(f"{m.name}: {n_inf} image(s) identical to their clean image (PSNR = inf, counted as "
                         f"{PSNR_CAP:g} dB in the mean).")
        ps = _capped(ps)
        label = m.name + (" †" if m.oracle else "")
        sec_txt = "-" if m.kind == "source" else f"{secs:.3g}"
        L.append(f"| {label} | {_mean_se(ps, 2)} | {_mean_se(ss, 3)} | {lp} | {_fmt(swd_vals[m.name]['mean'], 2)} "
                 f"| {fid} | {m.nfe} | {sec_txt} |")
        if m.oracle:
            notes.append(f"† {m.name}: oracle: best PSNR of {m.best_of} against the clean image (uses the ground "
                         "truth; not a blind restoration result).")
    if floor:
        fid_floor = _fmt(floor["fid"], 2) if "fid" in floor else "n/a"
        L.append(f"| clean (floor) | - | - | - | {_fmt(floor['swd'], 2)} | {fid_floor} | - | - |")
    L += ["", f"PSNR (dB), SSIM and LPIPS: mean ± standard error over the {n} images, each restored image against "
          "its clean image (float64, data range 1 on [0, 1] images; SSIM with the 11x11 Gaussian window, "
          "sigma 1.5). SWD (sliced Wasserstein distance on 7x7 Laplacian-pyramid patches, x 1e3, averaged over "
          "the pyramid levels) and FID: one number per restored set against the realism reference set. NFE: "
          "model calls per image. Seconds per image: wall time of the batch / images in it "
          "(depends on device and batch size). One sample per image unless marked as an oracle."]
    for metric in ("lpips", "fid"):
        if reasons.get(metric):
            L.append("")
            L.append(f"{metric.upper()} n/a: {reasons[metric]}")
    if notes:
        L += [""] + notes
    L += ["", "## Methods", "", "| method | settings | NFE | notes |", "|---|---|---|---|"]
    for m in methods:
        L.append(f"| {m.name} | {_config_text(m)} | {m.nfe} | {m.note} |")

    corrs = sorted({deg_recs[k]["corruption"] for k in keys}, key=_corruption_order)
    for metric, title, digits in (("psnr", "PSNR ↑ (dB)", 2), ("ssim", "SSIM ↑", 3)):
        L += ["", f"## Per corruption: {title}, mean over images", "",
              "| corruption | n | " + " | ".join(m.name for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
        for c in corrs:
            ks = [k for k in keys if deg_recs[k]["corruption"] == c]
            cells = [_fmt(float(np.mean(_capped([recs[m.name][k][metric] for k in ks]))), digits) for m in methods]
            L.append(f"| {c} | {len(ks)} | " + " | ".join(cells) + " |")
    L += ["", "## Files", "",
          f"- `grid.png`: rows {', '.join(grid_rows)} (top to bottom); columns: the first {ncols} images "
          f"({', '.join(keys[:ncols])})",
          "- `results.csv`: one row per image, method and metric (psnr, ssim, lpips, nfe, seconds); "
          f"set-level rows (swd, swd_<resolution>, fid) have image and corruption `{SET_ROW}`",
          "- `images/<method>/`, `images/degraded/` (+ `manifest.csv`), `images/clean/`: the images measured",
          "- `bench.json`: settings, methods, seeds, model, commands and wall times", ""]
    return "\n".join(L)


def _corruption_order(name: str):
    try:
        from odedit.corruptions import CORRUPTIONS

        return (CORRUPTIONS.index(name), name)
    except (ImportError, ValueError):
        return (10**6, name)


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
    from odedit.models import load_model, model_identity

    model_id = model_identity(s.model)
    resume = _resume_settings(s, model_id, model_fingerprint(s.model))
    settings_path = out / SETTINGS_FILE
    existing = None
    if settings_path.is_file():
        try:
            existing = _read_json(settings_path)
        except (OSError, ValueError):
            if not s.overwrite:
                raise BenchError(f"{settings_path} exists but is not valid JSON; pass --overwrite to start afresh")
        if existing is not None and not s.overwrite:
            _check_resume(existing, resume, s.methods)
    else:
        foreign = [n for n in ("images", "records") if (out / n).exists()]
        if foreign:  # never write into (or, with --overwrite, delete) folders another tool made
            raise BenchError(f"{out} has a '{foreign[0]}' folder but no {SETTINGS_FILE}: it is not an odedit bench "
                             "folder; choose another output folder")

    device = _resolve_device(s.device, ctx)
    model = load_model(s.model, device=device, dtype=_torch_dtype(s.dtype, device))
    T = model.schedule.num_train_timesteps
    too_long = [m.name for m in s.methods if m.config is not None and m.config.steps > T]
    if too_long:
        raise BenchError(f"method(s) {', '.join(too_long)} use more steps than the model's {T} timesteps")
    size = int(model.sample_size)
    if existing and not s.overwrite and existing.get("image_size") not in (None, size):
        raise BenchError(f"{out} was made at image size {existing.get('image_size')}, this model makes {size}; "
                         "pass --overwrite to replace it")
    ctx.wait()  # every process has read the old state before the main process changes it

    run_entry = {
        "command": s.command if s.command is not None else list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_start)),
        "processes": ctx.num, "device": str(device), "batch_size": s.batch_size, "limit": s.limit,
        "images": len(items), "methods": [m.name for m in s.methods], "status": "running",
    }
    if ctx.is_main:
        if s.overwrite:
            _clear_outputs(out)
            existing = None
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
        _write_json(settings_path, meta)
    ctx.wait()

    lay = _Layout(out)
    lay.mkdirs(["clean", "degraded", *[m.name for m in s.methods if m.kind != "source"]])
    (out / "records" / "source").mkdir(parents=True, exist_ok=True)
    stats = BenchStats(images=len(items), methods=[m.name for m in s.methods], output=str(out),
                       process=ctx.index, processes=ctx.num)
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
        stats.wall_seconds = time.time() - t_start
        meta = _read_json(settings_path)
        run_entry.update({"status": "complete", "wall_seconds": round(stats.wall_seconds, 3),
                          "processed_by_main_process": stats.processed, "skipped_by_main_process": stats.skipped})
        if meta.get("runs"):
            meta["runs"][-1] = run_entry
        _write_json(settings_path, meta)
    stats.wall_seconds = time.time() - t_start
    return stats


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
