"""The measurements and tables of ``odedit bench``: per-image fidelity (PSNR, SSIM of a
restored image against its clean image, on the saved uint8 images) and :func:`aggregate`,
which reads the per-image records of a finished run, adds the set-level realism metrics
(SWD against the reference set, cached by content under ``records/_swd``; LPIPS and FID
when their networks are available), the identity similarity to the clean face when the
extra ``odedit[identity]`` is installed (cached by content under ``records/_identity``) and
writes ``results.csv``, ``summary.md``,
``grid.png`` and the degraded set's ``manifest.csv``. It reads and writes through
:mod:`odedit.bench.records` and describes methods with :mod:`odedit.bench.methods`.

:func:`aggregate` runs the steps in order: :func:`_load_records` (the per-image records),
:func:`_measure_sets` (the set-level metrics, with :class:`_SwdCache` and
:class:`_IdentityCache`), :func:`_write_results_csv`, :func:`_write_degraded_manifest`,
:func:`_write_grid`, :func:`_summary` and :func:`_summary_markdown` (summary.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from odedit.atomic import write_json_atomic, write_text_atomic
from odedit.bench.methods import MethodSpec
from odedit.bench.records import (
    GRID_FILE,
    MANIFEST_FILE,
    RESULT_COLUMNS,
    RESULTS_FILE,
    SET_ROW,
    SUMMARY_FILE,
    BenchError,
    Layout,
    read_json,
    write_manifest,
)

if TYPE_CHECKING:  # pragma: no cover
    from odedit.metrics.distribution import LaplacianDescriptors

PSNR_CAP = 100.0  # dB: an image identical to its clean image (PSNR = inf) counts as this in means
SWD_CACHE_DIR = "_swd"  # records/_swd/<hash>.json: SWD values by content (see aggregate)
SWD_CACHE_VERSION = 1  # bump when the SWD computation changes
# SWD settings (Karras et al. 2018 defaults)
SWD_SETTINGS = {"descriptors_per_image": 128, "patch_size": 7, "dirs": 128, "repeats": 4, "min_resolution": 16}
IDENTITY_CACHE_DIR = "_identity"  # records/_identity/<hash>.json: identity values by content
IDENTITY_CACHE_VERSION = 1  # bump when the identity computation changes
# identity settings (odedit.metrics.identity): upscaling, which image's landmarks place the chips
IDENTITY_SETTINGS = {"size": None, "landmarks": "clean"}
IDENTITY_MAX_WORKERS = 16  # worker processes for the identity descriptors of large sets


# ---- per-image fidelity ----------------------------------------------------------------------


def _unit(images_u8: np.ndarray):
    """uint8 (B, H, W, 3) -> float64 tensor (B, 3, H, W) in [0, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).to(torch.float64) / 255.0


def _unit32(images_u8: np.ndarray):
    """uint8 (B, H, W, 3) -> float32 tensor (B, 3, H, W) in [0, 1] (the network metrics' input)."""
    return _unit(images_u8).float()


def fidelity(clean_u8: np.ndarray, out_u8: np.ndarray) -> tuple[list[float], list[float]]:
    """PSNR and SSIM of each restored uint8 image (B, H, W, 3) against its clean image (float64 on [0, 1])."""
    from odedit.metrics import psnr, ssim

    c, o = _unit(clean_u8), _unit(out_u8)
    return psnr(o, c).tolist(), ssim(o, c).tolist()


# ---- formatting --------------------------------------------------------------------------------


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


# ---- aggregation: the records --------------------------------------------------------------------


@dataclass
class _Records:
    """The per-image records of a finished run: ``by_method[name][key]`` and ``degraded[key]``."""

    keys: list[str]
    methods: list[MethodSpec]
    by_method: dict[str, dict[str, dict]]
    degraded: dict[str, dict]

    def values(self, name: str, metric: str, keys: Optional[list[str]] = None) -> list:
        """``metric`` of method ``name`` for ``keys`` (default: every image), in order."""
        return [self.by_method[name][k][metric] for k in (self.keys if keys is None else keys)]

    def corruption(self, key: str) -> str:
        return self.degraded[key]["corruption"]


def _load_records(lay: Layout, keys: list[str], methods: list[MethodSpec]) -> _Records:
    """The records of ``keys`` x ``methods`` (and of the degraded images); BenchError if any is missing."""
    missing = [(m.name, k) for m in methods for k in keys if not lay.done(m.name, k)]
    missing += [("degraded", k) for k in keys if not lay.done("degraded", k)]
    if missing:
        raise BenchError(
            f"{len(missing)} per-image result(s) are missing (e.g. {missing[0][0]}/{missing[0][1]}); "
            "a process did not finish: run the same command again to complete them"
        )
    degraded = {k: lay.read_record("degraded", k) for k in keys}
    by_method = {m.name: {k: lay.read_record(m.name, k) for k in keys} for m in methods}
    return _Records(keys, methods, by_method, degraded)


def _image_folder(m: MethodSpec) -> str:
    """Where a method's images are: the source's are the degraded images themselves."""
    return m.name if m.restores else "degraded"


# ---- aggregation: the set-level metrics ------------------------------------------------------------


@dataclass
class _SetMetrics:
    """What :func:`_measure_sets` measured: values by method name, the realism floor (the clean
    set against a separate reference) and, by metric, why one was not measured (None = it was)."""

    reasons: dict[str, Optional[str]]  # lpips, fid, identity
    swd: dict[str, dict] = field(default_factory=dict)
    lpips: dict[str, list[float]] = field(default_factory=dict)
    identity: dict[str, list[float]] = field(default_factory=dict)
    fid: dict[str, Optional[float]] = field(default_factory=dict)
    floor: dict[str, Optional[float]] = field(default_factory=dict)


def _metric_reasons(allow_download: bool) -> dict[str, Optional[str]]:
    """The network metrics and the identity metric usable here (None), else why not."""
    from odedit import metrics as M

    reasons = M.available_network_metrics()
    if allow_download:
        reasons = {k: (None if v and "not cached" in v else v) for k, v in reasons.items()}
    return {**reasons, "identity": M.identity_unavailable()}


class _SwdCache:
    """SWD of image sets against the reference, cached by content under ``records/_swd``: a rerun
    that adds methods (or only rewrites the tables) computes the SWD of the new sets only."""

    def __init__(self, lay: Layout, ref: np.ndarray, seed: int):
        self.folder = lay.out / "records" / SWD_CACHE_DIR
        self.ref, self.seed = ref, seed
        self.ref_digest = _swd_digest(ref, seed)
        self.ref_desc = None  # the reference's descriptors, made only when some set is not cached

    def __call__(self, name: str, images: np.ndarray) -> dict:
        cache = self.folder / f"{_swd_digest(images, self.seed, self.ref_digest)}.json"
        if cache.is_file():
            return read_json(cache)["swd"]
        if self.ref_desc is None:
            self.ref_desc = swd_descriptors(self.ref, self.seed, reference=True)
        value = swd_of_descriptors(swd_descriptors(images, self.seed), self.ref_desc, self.seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, {"set": name, "swd": value})
        return value


class _IdentityCache:
    """Identity similarity of image sets to the clean faces (optional extra odedit[identity]),
    cached by content under ``records/_identity``."""

    def __init__(self, lay: Layout, clean: np.ndarray):
        self.folder = lay.out / "records" / IDENTITY_CACHE_DIR
        self.clean = clean
        self.clean_digest = _identity_digest(clean)
        self.clean_desc = None  # the clean images' descriptors, made only when some set is not cached

    def __call__(self, name: str, images: np.ndarray) -> list[float]:
        from odedit import metrics as M

        cache = self.folder / f"{_identity_digest(images, self.clean_digest)}.json"
        if cache.is_file():
            return read_json(cache)["cosine"]
        workers = min(_cpus(), IDENTITY_MAX_WORKERS)
        if self.clean_desc is None:
            self.clean_desc = M.identity_descriptors(self.clean, size=IDENTITY_SETTINGS["size"], workers=workers)
        value = M.identity_scores(images, self.clean, clean_descriptors=self.clean_desc, workers=workers,
                                  **IDENTITY_SETTINGS).cosine.tolist()
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, {"set": name, "cosine": value})
        return value


def _fid_reference(ref: np.ndarray, reasons: dict, device, allow_download: bool):
    """The reference set's FID statistics, or None (then ``reasons["fid"]`` says why)."""
    from odedit import metrics as M

    if reasons["fid"] is not None:
        return None
    try:
        return M.gaussian_stats(M.fid_features(_unit32(ref), device, allow_download=allow_download))
    except M.MetricUnavailable as err:
        reasons["fid"] = err.reason
    except ValueError as err:
        reasons["fid"] = f"needs at least 2 images per set ({err})"
    return None


def _measure(res: _SetMetrics, metric: str, name: str, compute: Callable, errors: tuple = ()) -> None:
    """``res.<metric>[name] = compute()`` while ``metric`` is available; on MetricUnavailable (or one
    of ``errors``) it becomes unavailable for every set (its values are dropped, the reason kept)."""
    from odedit import metrics as M

    if res.reasons[metric] is not None:
        return
    values = getattr(res, metric)
    try:
        values[name] = compute()
    except (M.MetricUnavailable, *errors) as err:
        res.reasons[metric] = getattr(err, "reason", str(err))
        values.clear()


def _measure_sets(lay: Layout, r: _Records, clean: np.ndarray, ref: np.ndarray, ref_is_clean: bool, seed: int,
                  device, allow_download: bool) -> tuple[dict[str, np.ndarray], _SetMetrics]:
    """Each method's images (by name) and their set-level metrics: SWD against ``ref`` (always),
    LPIPS, identity similarity and FID where available; the floor when ``ref`` is not the clean set."""
    from odedit import metrics as M

    res = _SetMetrics(_metric_reasons(allow_download))
    swd = _SwdCache(lay, ref, seed)
    identity = _IdentityCache(lay, clean) if res.reasons["identity"] is None else None
    ref_fid = _fid_reference(ref, res.reasons, device, allow_download)
    sets = {}
    for m in r.methods:
        imgs = sets[m.name] = lay.load_images(_image_folder(m), r.keys)
        res.swd[m.name] = swd(m.name, imgs)
        _measure(res, "lpips", m.name, lambda: M.lpips_distance(
            _unit32(imgs), _unit32(clean), device, allow_download=allow_download).tolist())
        _measure(res, "identity", m.name, lambda: identity(m.name, imgs))
        _measure(res, "fid", m.name, lambda: M.fid(_unit32(imgs), ref_fid, device, allow_download=allow_download),
                 errors=(ValueError,))
    if not ref_is_clean:
        res.floor["swd"] = swd("clean", clean)["mean"]
        if res.reasons["fid"] is None:
            res.floor["fid"] = M.fid(_unit32(clean), ref_fid, device, allow_download=allow_download)
    return sets, res


# ---- aggregation: the files ------------------------------------------------------------------------


def _write_results_csv(lay: Layout, r: _Records, res: _SetMetrics) -> None:
    """results.csv, long format: per image psnr, ssim (lpips, identity), nfe, seconds; per set swd (fid)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for m in r.methods:
        for i, k in enumerate(r.keys):
            rec, corr = r.by_method[m.name][k], r.corruption(k)
            w.writerow([k, corr, m.name, "psnr", _num(rec["psnr"])])
            w.writerow([k, corr, m.name, "ssim", _num(rec["ssim"])])
            if m.name in res.lpips:
                w.writerow([k, corr, m.name, "lpips", _num(res.lpips[m.name][i])])
            if m.name in res.identity:
                w.writerow([k, corr, m.name, "identity", _num(res.identity[m.name][i])])
            w.writerow([k, corr, m.name, "nfe", str(int(rec["nfe"]))])
            w.writerow([k, corr, m.name, "seconds", _num(rec["seconds"])])
        sw = res.swd[m.name]
        w.writerow([SET_ROW, SET_ROW, m.name, "swd", _num(sw["mean"])])
        for resolution, v in zip(sw["resolutions"], sw["levels"]):
            w.writerow([SET_ROW, SET_ROW, m.name, f"swd_{resolution}", _num(v)])
        if m.name in res.fid:
            w.writerow([SET_ROW, SET_ROW, m.name, "fid", _num(res.fid[m.name])])
    write_text_atomic(lay.out / RESULTS_FILE, buf.getvalue())


def _write_degraded_manifest(lay: Layout, r: _Records) -> None:
    """images/degraded/manifest.csv, with the columns `odedit corrupt` writes."""
    write_manifest(lay.out / "images" / "degraded" / MANIFEST_FILE, [
        {"file": f"{k}.png", "corruption": d["corruption"], "severity": _blank(d.get("severity")),
         "seed": _blank(d.get("seed")), "fraction": "" if d.get("fraction") is None else repr(float(d["fraction"]))}
        for k, d in ((k, r.degraded[k]) for k in r.keys)
    ])


def _write_grid(lay: Layout, r: _Records, sets: dict[str, np.ndarray], clean: np.ndarray,
                grid_images: int) -> tuple[list[str], int]:
    """grid.png: rows degraded / each restoring method / clean; the first ``grid_images`` images.
    Returns the row names and the number of columns (0: no grid written)."""
    restoring = [m.name for m in r.methods if m.restores]
    grid_rows = ["degraded", *restoring, "clean"]
    ncols = min(grid_images, len(r.keys))
    if ncols > 0:
        from odedit.imageio import make_grid, save_png_atomic

        tiles = np.concatenate([lay.load_images("degraded", r.keys[:ncols]), *[sets[n][:ncols] for n in restoring],
                                clean[:ncols]])
        grid = make_grid(tiles, ncols=ncols)
        save_png_atomic(lay.out / GRID_FILE, label_rows(grid, grid_rows, tiles.shape[1]))
    return grid_rows, ncols


def _summary(r: _Records, res: _SetMetrics, grid_rows: list[str]) -> dict:
    """The summary :func:`aggregate` returns: per method means ± stderrs and set metrics."""
    from odedit import metrics as M

    unavailable = {k: v for k, v in res.reasons.items() if v}
    summary = {"methods": {}, "unavailable": unavailable, "grid_rows": grid_rows, "n": len(r.keys),
               "floor": res.floor}
    for m in r.methods:
        entry = {"psnr": M.mean_and_stderr(_capped(r.values(m.name, "psnr"))),
                 "ssim": M.mean_and_stderr(r.values(m.name, "ssim")),
                 "swd": res.swd[m.name]["mean"], "nfe": m.nfe, "seconds": float(np.mean(r.values(m.name, "seconds"))),
                 "lpips": M.mean_and_stderr(res.lpips[m.name]) if m.name in res.lpips else None,
                 "fid": res.fid.get(m.name)}
        if m.name in res.identity:
            entry["identity"] = _finite_mean_se(res.identity[m.name])
            entry["identity_failed"] = _n_nan(res.identity[m.name])
        summary["methods"][m.name] = entry
    return summary


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
    lay = Layout(out)
    r = _load_records(lay, keys, methods)
    clean = lay.load_images("clean", keys)
    ref = clean if reference is None else reference
    sets, res = _measure_sets(lay, r, clean, ref, reference is None, seed, device, allow_download)
    _write_results_csv(lay, r, res)
    _write_degraded_manifest(lay, r)
    grid_rows, ncols = _write_grid(lay, r, sets, clean, grid_images)
    summary = _summary(r, res, grid_rows)
    ref_text = "the clean images of this benchmark" if reference is None else reference_label
    text = _summary_markdown(r, res, grid_rows, ncols, f"{ref_text} ({len(ref)} images)", header or {})
    write_text_atomic(lay.out / SUMMARY_FILE, text)
    return summary


def _cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _n_nan(values: list[float]) -> int:
    return sum(1 for v in values if not math.isfinite(float(v)))


def _finite_mean_se(values: list[float]):
    """mean_and_stderr of the finite values (None if there are none): identity pairs dlib
    could not measure are NaN, counted separately (:func:`_n_nan`) and said in the summary."""
    from odedit.metrics import mean_and_stderr

    ok = [float(v) for v in values if math.isfinite(float(v))]
    return mean_and_stderr(ok) if ok else None


def _identity_digest(images: np.ndarray, clean_digest: str = "") -> str:
    """Hash of what a set's identity values depend on: its bytes, the settings and (``clean_digest``,
    this function's value for the clean set) the clean images it is compared with."""
    h = hashlib.sha256(json.dumps({"v": IDENTITY_CACHE_VERSION, "identity": IDENTITY_SETTINGS, "clean": clean_digest},
                                  sort_keys=True).encode())
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()[:40]


def _blank(v) -> str:
    return "" if v is None else str(v)


def label_rows(grid: np.ndarray, labels: list[str], tile: int, pad: int = 2) -> np.ndarray:
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


def swd_descriptors(images: np.ndarray, seed: int, reference: bool = False) -> "LaplacianDescriptors":
    """The bench's Laplacian-pyramid patch descriptors (:data:`SWD_SETTINGS`) of ``images``
    (N, H, W, 3) uint8, drawn with the bench's generator for the reference set or for a compared set
    (:class:`odedit.metrics.distribution.LaplacianDescriptors`: per pyramid level, patches as float32)."""
    from odedit import metrics as M

    kw = {k: SWD_SETTINGS[k] for k in ("descriptors_per_image", "patch_size", "min_resolution")}
    return M.laplacian_descriptors(images, np.random.default_rng((seed, 1 if reference else 2)), **kw)


def swd_of_descriptors(desc: "LaplacianDescriptors", ref_desc: "LaplacianDescriptors", seed: int) -> dict:
    """The bench's SWD (``{"mean", ...}`` per :func:`odedit.metrics.swd_from_descriptors`) of a set's
    descriptors against the reference's, both from :func:`swd_descriptors` with the same ``seed``."""
    from odedit import metrics as M

    return M.swd_from_descriptors(desc, ref_desc, np.random.default_rng((seed, 3)),
                                  dirs=SWD_SETTINGS["dirs"], repeats=SWD_SETTINGS["repeats"])


def _summary_markdown(r: _Records, res: _SetMetrics, grid_rows: list[str], ncols: int, reference: str,
                      header: dict) -> str:
    """summary.md: the run, the results table and its notes, the methods, the per-corruption tables, the files."""
    n = len(r.keys)
    L = [f"# odedit bench: {n} images", ""]
    for k, v in header.items():
        L.append(f"- {k}: {v}")
    L.append(f"- realism reference: {reference}")
    rows, notes = _results_table(r, res)
    L += ["", "## Results", "", *rows, *_results_notes(n, res, notes)]
    L += ["", "## Methods", "", "| method | settings | NFE | notes |", "|---|---|---|---|"]
    for m in r.methods:
        L.append(f"| {m.name} | {m.settings_text()} | {m.nfe} | {m.note} |")
    L += _per_corruption_tables(r, res)
    with_id = bool(res.identity)
    L += ["", "## Files", "",
          f"- `grid.png`: rows {', '.join(grid_rows)} (top to bottom); columns: the first {ncols} images "
          f"({', '.join(r.keys[:ncols])})",
          "- `results.csv`: one row per image, method and metric (psnr, ssim, lpips, "
          + ("identity, " if with_id else "") + "nfe, seconds); "
          f"set-level rows (swd, swd_<resolution>, fid) have image and corruption `{SET_ROW}`",
          "- `images/<method>/`, `images/degraded/` (+ `manifest.csv`), `images/clean/`: the images measured",
          "- `bench.json`: settings, methods, seeds, model, commands and wall times", ""]
    return "\n".join(L)


def _results_table(r: _Records, res: _SetMetrics) -> tuple[list[str], list[str]]:
    """The lines of the main table (one row per method, + the floor) and the notes its cells need."""
    with_id = bool(res.identity)
    L = ["| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ |" + (" ID ↑ |" if with_id else "")
         + " SWD ↓ | FID ↓ | NFE / image | s / image |",
         "|---|---|---|---|" + ("---|" if with_id else "") + "---|---|---|---|"]
    notes = []
    for m in r.methods:
        ps = r.values(m.name, "psnr")
        lp = _mean_se(res.lpips[m.name], 3) if m.name in res.lpips else "n/a"
        fid = _fmt(res.fid[m.name], 2) if m.name in res.fid else "n/a"
        secs = float(np.mean(r.values(m.name, "seconds")))
        n_inf = sum(1 for v in ps if math.isinf(v))
        if n_inf:
            notes.append(f"{m.name}: {n_inf} image(s) identical to their clean image (PSNR = inf, counted as "
                         f"{PSNR_CAP:g} dB in the mean).")
        label = m.name + (" †" if m.oracle else "")
        sec_txt = "-" if not m.restores else f"{secs:.3g}"
        idc = ""
        if with_id:
            ids = [float(v) for v in res.identity.get(m.name, []) if math.isfinite(float(v))]
            idc = f" {_mean_se(ids, 3)} |"
            n_nan = _n_nan(res.identity.get(m.name, []))
            if n_nan:
                notes.append(f"{m.name}: dlib could not measure the identity of {n_nan} image(s) (NaN in "
                             "results.csv, left out of the ID mean).")
        L.append(f"| {label} | {_mean_se(_capped(ps), 2)} | {_mean_se(r.values(m.name, 'ssim'), 3)} | {lp} |{idc} "
                 f"{_fmt(res.swd[m.name]['mean'], 2)} | {fid} | {m.nfe} | {sec_txt} |")
        if m.oracle:
            notes.append(f"† {m.name}: oracle: best PSNR of {m.best_of} against the clean image (uses the ground "
                         "truth; not a blind restoration result).")
    if res.floor:
        fid_floor = _fmt(res.floor["fid"], 2) if "fid" in res.floor else "n/a"
        L.append(f"| clean (floor) | - | - | - |{' - |' if with_id else ''} {_fmt(res.floor['swd'], 2)} | {fid_floor} "
                 "| - | - |")
    return L, notes


def _results_notes(n: int, res: _SetMetrics, notes: list[str]) -> list[str]:
    """The paragraphs under the main table: what the metrics are, which are n/a and why, ``notes``."""
    L = ["", f"PSNR (dB), SSIM and LPIPS: mean ± standard error over the {n} images, each restored image against "
         "its clean image (float64, data range 1 on [0, 1] images; SSIM with the 11x11 Gaussian window, "
         "sigma 1.5). SWD (sliced Wasserstein distance on 7x7 Laplacian-pyramid patches, x 1e3, averaged over "
         "the pyramid levels) and FID: one number per restored set against the realism reference set. NFE: "
         "model calls per image. Seconds per image: wall time of the batch / images in it "
         "(depends on device and batch size). One sample per image unless marked as an oracle."]
    if res.identity:
        L += ["", "ID: identity similarity, the cosine similarity of dlib's face-recognition descriptors (128-D "
              "ResNet) of each restored image and its clean image at the benchmark's resolution, both chips "
              "placed by the clean image's 5 dlib landmarks; mean ± standard error (1 = same descriptor "
              "direction; dlib's network, so not comparable with ArcFace IDS values; it drops strongly under "
              "pixel noise; see docs/benchmark.md, Identity)."]
    for metric in ("lpips", "fid"):
        if res.reasons.get(metric):
            L += ["", f"{metric.upper()} n/a: {res.reasons[metric]}"]
    if res.reasons.get("identity"):
        L += ["", f"ID (identity similarity) not measured: {res.reasons['identity']}"]
    if notes:
        L += [""] + notes
    return L


def _per_corruption_tables(r: _Records, res: _SetMetrics) -> list[str]:
    """PSNR and SSIM (and ID) per corruption: means over the images of each corruption."""
    corrs = sorted({r.corruption(k) for k in r.keys}, key=_corruption_order)
    by_corr = {c: [k for k in r.keys if r.corruption(k) == c] for c in corrs}
    pos = {k: i for i, k in enumerate(r.keys)}

    def mean_cell(metric: str, digits: int) -> Callable[[str, list[str]], str]:
        return lambda name, ks: _fmt(float(np.mean(_capped(r.values(name, metric, ks)))), digits)

    def identity_cell(name: str, ks: list[str]) -> str:
        vals = [float(res.identity[name][pos[k]]) for k in ks if math.isfinite(float(res.identity[name][pos[k]]))]
        return _fmt(float(np.mean(vals)), 3) if vals else "n/a"

    tables = [("PSNR ↑ (dB)", mean_cell("psnr", 2)), ("SSIM ↑", mean_cell("ssim", 3))]
    if res.identity:
        tables.append(("ID ↑", identity_cell))
    L = []
    for title, cell in tables:
        L += ["", f"## Per corruption: {title}, mean over images", "",
              "| corruption | n | " + " | ".join(m.name for m in r.methods) + " |",
              "|---|---|" + "---|" * len(r.methods)]
        for c, ks in by_corr.items():
            L.append(f"| {c} | {len(ks)} | " + " | ".join(cell(m.name, ks) for m in r.methods) + " |")
    return L


def _corruption_order(name: str):
    try:
        from odedit.corruptions import CORRUPTIONS

        return (CORRUPTIONS.index(name), name)
    except (ImportError, ValueError):
        return (10**6, name)
