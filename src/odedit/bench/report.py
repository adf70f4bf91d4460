"""The measurements and tables of ``odedit bench``: per-image fidelity (PSNR, SSIM of a
restored image against its clean image, on the saved uint8 images) and :func:`aggregate`,
which reads the per-image records of a finished run, adds the set-level realism metrics
(SWD against the reference set, cached by content under ``records/_swd``; LPIPS and FID
when their networks are available), the identity similarity to the clean face when the
extra ``odedit[identity]`` is installed (cached by content under ``records/_identity``) and
writes ``results.csv``, ``summary.md``,
``grid.png`` and the degraded set's ``manifest.csv``. It reads and writes through
:mod:`odedit.bench.records` and describes methods with :mod:`odedit.bench.methods`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from odedit.bench.methods import MethodSpec, _g, sdedit_start_timestep
from odedit.bench.records import (
    GRID_FILE,
    MANIFEST_FILE,
    RESULT_COLUMNS,
    RESULTS_FILE,
    SET_ROW,
    SUMMARY_FILE,
    BenchError,
    _atomic_write_text,
    _Layout,
    _load_png,
    _read_json,
    _write_json,
    write_manifest,
)
from odedit.restorers import ODEditConfig

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


def _fidelity(clean_u8: np.ndarray, out_u8: np.ndarray) -> tuple[list[float], list[float]]:
    from odedit.metrics import psnr, ssim

    c, o = _unit(clean_u8), _unit(out_u8)
    return psnr(o, c).tolist(), ssim(o, c).tolist()


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
    if not spec.restores:
        return "-"
    if isinstance(c, ODEditConfig):
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
    folder = {m.name: ("degraded" if not m.restores else m.name) for m in methods}

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

    # identity similarity to the clean face (optional extra odedit[identity]), cached by content
    id_reason = M.identity_unavailable()
    id_vals: dict[str, list[float]] = {}
    clean_digest = _identity_digest(clean) if id_reason is None else ""
    clean_desc = None  # the clean images' descriptors, made only when some set is not cached

    def identity_of(name: str, images: np.ndarray) -> list[float]:
        nonlocal clean_desc
        cache = lay.out / "records" / IDENTITY_CACHE_DIR / f"{_identity_digest(images, clean_digest)}.json"
        if cache.is_file():
            return _read_json(cache)["cosine"]
        workers = min(_cpus(), IDENTITY_MAX_WORKERS)
        if clean_desc is None:
            clean_desc = M.identity_descriptors(clean, size=IDENTITY_SETTINGS["size"], workers=workers)
        value = M.identity_scores(images, clean, clean_descriptors=clean_desc, workers=workers,
                                  **IDENTITY_SETTINGS).cosine.tolist()
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cache, {"set": name, "cosine": value})
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
        if id_reason is None:
            try:
                id_vals[m.name] = identity_of(m.name, imgs)
            except M.MetricUnavailable as err:
                id_reason = err.reason
                id_vals.clear()
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
            if m.name in id_vals:
                w.writerow([k, corr, m.name, "identity", _num(id_vals[m.name][i])])
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

        rows_img = [sets[m.name][:ncols] for m in methods if m.restores]
        tiles = np.concatenate([_load_set(lay, "degraded", keys[:ncols]), *rows_img, clean[:ncols]])
        grid_rows = ["degraded", *[m.name for m in methods if m.restores], "clean"]
        grid = make_grid(tiles, ncols=ncols)
        save_png_atomic(lay.out / GRID_FILE, _label_rows(grid, grid_rows, tiles.shape[1]))
    grid_rows = ["degraded", *[m.name for m in methods if m.restores], "clean"]

    # summary
    unavailable = {k: v for k, v in reasons.items() if v}
    if id_reason:
        unavailable["identity"] = id_reason
    summary = {"methods": {}, "unavailable": unavailable, "grid_rows": grid_rows, "n": len(keys), "floor": floor}
    for m in methods:
        ps = [recs[m.name][k]["psnr"] for k in keys]
        ss = [recs[m.name][k]["ssim"] for k in keys]
        secs = [recs[m.name][k]["seconds"] for k in keys]
        entry = {"psnr": M.mean_and_stderr(_capped(ps)), "ssim": M.mean_and_stderr(ss),
                 "swd": swd_vals[m.name]["mean"], "nfe": m.nfe, "seconds": float(np.mean(secs)),
                 "lpips": M.mean_and_stderr(lpips_vals[m.name]) if m.name in lpips_vals else None,
                 "fid": fid_vals.get(m.name)}
        if m.name in id_vals:
            entry["identity"] = _finite_mean_se(id_vals[m.name])
            entry["identity_failed"] = _n_nan(id_vals[m.name])
        summary["methods"][m.name] = entry
    text = _summary_markdown(methods, keys, recs, deg_recs, lpips_vals, swd_vals, fid_vals, reasons, floor,
                             grid_rows, ncols, ref_is_clean, reference_label, header or {}, len(ref),
                             id_vals, id_reason)
    _atomic_write_text(lay.out / SUMMARY_FILE, text)
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
                      grid_rows, ncols, ref_is_clean, reference_label, header, n_ref, id_vals=None,
                      id_reason=None) -> str:
    id_vals = id_vals or {}
    with_id = bool(id_vals)
    n = len(keys)
    L = [f"# odedit bench: {n} images", ""]
    for k, v in header.items():
        L.append(f"- {k}: {v}")
    L.append(f"- realism reference: {'the clean images of this benchmark' if ref_is_clean else reference_label}"
             f" ({n_ref} images)")
    L += ["", "## Results", "",
          "| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ |" + (" ID ↑ |" if with_id else "")
          + " SWD ↓ | FID ↓ | NFE / image | s / image |",
          "|---|---|---|---|" + ("---|" if with_id else "") + "---|---|---|---|"]
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
        sec_txt = "-" if not m.restores else f"{secs:.3g}"
        idc = ""
        if with_id:
            ids = [float(v) for v in id_vals.get(m.name, []) if math.isfinite(float(v))]
            idc = f" {_mean_se(ids, 3)} |"
            n_nan = _n_nan(id_vals.get(m.name, []))
            if n_nan:
                notes.append(f"{m.name}: dlib could not measure the identity of {n_nan} image(s) (NaN in "
                             "results.csv, left out of the ID mean).")
        L.append(f"| {label} | {_mean_se(ps, 2)} | {_mean_se(ss, 3)} | {lp} |{idc} {_fmt(swd_vals[m.name]['mean'], 2)} "
                 f"| {fid} | {m.nfe} | {sec_txt} |")
        if m.oracle:
            notes.append(f"† {m.name}: oracle: best PSNR of {m.best_of} against the clean image (uses the ground "
                         "truth; not a blind restoration result).")
    if floor:
        fid_floor = _fmt(floor["fid"], 2) if "fid" in floor else "n/a"
        L.append(f"| clean (floor) | - | - | - |{' - |' if with_id else ''} {_fmt(floor['swd'], 2)} | {fid_floor} "
                 "| - | - |")
    L += ["", f"PSNR (dB), SSIM and LPIPS: mean ± standard error over the {n} images, each restored image against "
          "its clean image (float64, data range 1 on [0, 1] images; SSIM with the 11x11 Gaussian window, "
          "sigma 1.5). SWD (sliced Wasserstein distance on 7x7 Laplacian-pyramid patches, x 1e3, averaged over "
          "the pyramid levels) and FID: one number per restored set against the realism reference set. NFE: "
          "model calls per image. Seconds per image: wall time of the batch / images in it "
          "(depends on device and batch size). One sample per image unless marked as an oracle."]
    if with_id:
        L += ["", "ID: identity similarity, the cosine similarity of dlib's face-recognition descriptors (128-D "
              "ResNet) of each restored image and its clean image at the benchmark's resolution, both chips "
              "placed by the clean image's 5 dlib landmarks; mean ± standard error (1 = same descriptor "
              "direction; dlib's network, so not comparable with ArcFace IDS values; it drops strongly under "
              "pixel noise; see docs/benchmark.md, Identity)."]
    for metric in ("lpips", "fid"):
        if reasons.get(metric):
            L.append("")
            L.append(f"{metric.upper()} n/a: {reasons[metric]}")
    if id_reason:
        L += ["", f"ID (identity similarity) not measured: {id_reason}"]
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
    if with_id:
        L += ["", "## Per corruption: ID ↑, mean over images", "",
              "| corruption | n | " + " | ".join(m.name for m in methods) + " |",
              "|---|---|" + "---|" * len(methods)]
        pos = {k: i for i, k in enumerate(keys)}
        for c in corrs:
            ks = [k for k in keys if deg_recs[k]["corruption"] == c]
            cells = []
            for m in methods:
                vals = [float(id_vals[m.name][pos[k]]) for k in ks if math.isfinite(float(id_vals[m.name][pos[k]]))]
                cells.append(_fmt(float(np.mean(vals)), 3) if vals else "n/a")
            L.append(f"| {c} | {len(ks)} | " + " | ".join(cells) + " |")
    L += ["", "## Files", "",
          f"- `grid.png`: rows {', '.join(grid_rows)} (top to bottom); columns: the first {ncols} images "
          f"({', '.join(keys[:ncols])})",
          "- `results.csv`: one row per image, method and metric (psnr, ssim, lpips, "
          + ("identity, " if with_id else "") + "nfe, seconds); "
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
