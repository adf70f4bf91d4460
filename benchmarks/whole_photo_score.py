"""Scoring stage of benchmarks/bench_whole_photo.py: every finishing variant on the cached
restorations, scored against the clean photos; writes a json of per-item rows and prints
markdown tables (face region and whole photo, by family x severity and by face size)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from bench_whole_photo import CONDITIONS, FAMILY, cpu_label, degrade, item_name, load_clean

# name -> paste options; "input" is the degraded photo itself.
VARIANTS = {
    "input": None,
    # `odedit restore`'s defaults as the library has them now (paste_faces with mask/upsampler only).
    "default": dict(mask="face", upsampler="lanczos"),
    "frame-lanczos (before)": dict(mask="frame", upsampler="lanczos", detail=0.0, colour=False),
    "face-lanczos": dict(mask="face", upsampler="lanczos", detail=0.0, colour=False),
    "face-lanczos-detail": dict(mask="face", upsampler="lanczos", detail=1.0, colour=False),
    "face-lanczos-detail-colour": dict(mask="face", upsampler="lanczos", detail=1.0, colour=True),
    "face-lanczos-detail0.5": dict(mask="face", upsampler="lanczos", detail=0.5, colour=False),
    "face-realesrgan": dict(mask="face", upsampler="realesrgan", detail=0.0, colour=False),
    "face-realesrgan-detail": dict(mask="face", upsampler="realesrgan", detail=1.0, colour=False),
    # Session 9: the coarse band gated too (odedit.fidelity.restoration_share), margin m.
    "gate-global-m1": dict(mask="face", upsampler="lanczos", detail=1.0, colour=True, low="global", margin=1.0),
    "gate-global-m2": dict(mask="face", upsampler="lanczos", detail=1.0, colour=True, low="global", margin=2.0),
    "gate-local-m1": dict(mask="face", upsampler="lanczos", detail=1.0, colour=True, low="local", margin=1.0),
    "gate-local-m2": dict(mask="face", upsampler="lanczos", detail=1.0, colour=True, low="local", margin=2.0),
}


class MemoUpsampler:
    """Caches an upsampler's output per (frame bytes, factor): variants share the same frames."""

    def __init__(self, inner):
        self.inner, self.name, self.cache, self.seconds = inner, inner.name, {}, 0.0

    def upsample(self, faces, factor):
        out = []
        for f in faces:
            key = (hashlib.sha1(np.ascontiguousarray(f).tobytes()).hexdigest(), factor)
            if key not in self.cache:
                t0 = time.perf_counter()
                self.cache[key] = self.inner.upsample([f], factor)[0]
                self.seconds += time.perf_counter() - t0
            out.append(self.cache[key])
        return out


def _unit(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(torch.float64) / 255.0


def region_scores(out: np.ndarray, clean: np.ndarray, face: np.ndarray) -> dict:
    """Face: PSNR over the clean face's oval pixels, SSIM over the oval's bounding box; photo: all."""
    from odedit.metrics.pixel import psnr, ssim

    ys, xs = np.nonzero(face)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    err = (out[face].astype(np.float64) - clean[face].astype(np.float64)) ** 2
    face_psnr = float(10 * np.log10(255.0**2 / max(err.mean(), 1e-10)))
    a, b = _unit(out[y0:y1, x0:x1]), _unit(clean[y0:y1, x0:x1])
    whole_a, whole_b = _unit(out), _unit(clean)
    return {
        "face_psnr": face_psnr, "face_ssim": float(ssim(a, b)),
        "photo_psnr": float(psnr(whole_a, whole_b)), "photo_ssim": float(ssim(whole_a, whole_b)),
    }


def face_region(clean: np.ndarray, ref_det, mesh) -> np.ndarray:
    """(H, W) bool: the clean photo's face oval (face mesh, as the paste-back mask finds it)."""
    from odedit import align
    from odedit.faces import cut_faces, paste_mask

    face = cut_faces(clean, [ref_det], 64, mesh=mesh)[0]
    r = 256
    alpha, _ = paste_mask(face, r, "face")
    white = np.full((r, r, 3), 255, np.uint8)
    inside = align.paste_back(np.zeros_like(clean), white, face.matrix, 64, mask=alpha)[..., 0]
    return inside >= 128


def aligned(photo: np.ndarray, matrix: np.ndarray, size: int = 128) -> np.ndarray:
    from odedit import align

    m = align.compose(np.array([[size / 64, 0, 0], [0, size / 64, 0]], dtype=np.float64), matrix)
    crop = align.warp_affine(photo, m, (size, size), mode="bicubic", padding="reflection")
    return np.clip(np.round(crop), 0, 255).astype(np.uint8)


def finish(variant: dict, deg: np.ndarray, dets, restored, upsamplers, mesh, faces=None):
    """One variant's paste-back; ``faces``: the item's cut faces (with outlines), to reuse."""
    from odedit.faces import cut_faces, paste_faces

    if faces is None:
        faces = cut_faces(deg, dets, 64, mesh=mesh)
    options = {} if "detail" not in variant else dict(
        fidelity=variant["detail"], match_colour=variant["colour"],
        low_band=variant.get("low", "off"), low_margin=variant.get("margin", 1.0))
    out, _ = paste_faces(deg, faces, restored, upsamplers[variant["upsampler"]], mask=variant["mask"], **options)
    return out


def stage_score(args) -> None:
    from odedit.facemask import FaceMesh
    from odedit.upsample import make_upsampler

    work = Path(args.work)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    upsamplers = {"lanczos": MemoUpsampler(make_upsampler("lanczos"))}
    if any((VARIANTS[n] or {}).get("upsampler") == "realesrgan" for n in names):
        upsamplers["realesrgan"] = MemoUpsampler(make_upsampler("realesrgan", dtype=torch.bfloat16))
    mesh = FaceMesh()
    identity = _identity()
    rows, crops = [], defaultdict(list)
    items = sorted(work.glob("*.pkl"))
    photos_dir = args.photos
    for n_item, pkl in enumerate(items):
        rec = pickle.load(open(pkl, "rb"))
        stem, size, cond, sev = rec["key"]
        name = item_name(stem, size, cond, sev)
        clean = load_clean(os.path.join(photos_dir, stem + ".png"), size)
        deg = degrade(clean, cond, sev, name)
        region = face_region(clean, rec["ref_detection"], mesh)
        ref_m = rec["ref_matrix"]
        crops["clean", FAMILY[cond]].append(aligned(clean, ref_m))
        from odedit.faces import cut_faces

        t0 = time.perf_counter()
        faces = cut_faces(deg, rec["detections"], 64, mesh=mesh) if rec["detections"] else []
        cut_s = time.perf_counter() - t0
        for vname in names:
            v = VARIANTS[vname]
            t0 = time.perf_counter()
            out = deg if v is None else (finish(v, deg, rec["detections"], rec["restored"], upsamplers, mesh, faces)
                                         if rec["detections"] else deg)
            secs = time.perf_counter() - t0 + (cut_s if v is not None else 0.0)
            row = {"item": name, "photo": stem, "size": size, "family": FAMILY[cond], "condition": cond,
                   "severity": sev, "variant": vname, "faces_found": len(rec["detections"]),
                   "finish_s": round(secs, 3), "restore_s": round(rec["restore_s"], 3),
                   "face_px": int(round(max(np.ptp(np.nonzero(region)[0]), np.ptp(np.nonzero(region)[1])))) + 1}
            row.update(region_scores(out, clean, region))
            if identity is not None:
                sim = identity.similarity(aligned(out, ref_m, 64)[None], aligned(clean, ref_m, 64)[None])
                row["identity"] = float(sim[0])
            rows.append(row)
            crops[vname, FAMILY[cond]].append(aligned(out, ref_m))
        print(f"  scored {n_item + 1}/{len(items)} {name}", file=sys.stderr, flush=True)
    swd = _swd_table(crops, names)
    held = work / "restorer.json"  # the restore stage's settings (bench_whole_photo.check_settings)
    result = {"cpu": cpu_label(), "date": time.strftime("%Y-%m-%d"), "variants": {n: VARIANTS[n] for n in names},
              "restorer": json.loads(held.read_text()) if held.exists() else None,
              "rows": rows, "swd": swd,
              "upsampler_seconds": {k: round(u.seconds, 2) for k, u in upsamplers.items()},
              "upsampled_frames": {k: len(u.cache) for k, u in upsamplers.items()}}
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    print(markdown(result))


class _Identity:
    def __init__(self):
        from odedit.metrics import identity

        self.mod, self.model = identity, identity.load_identity_model()

    def similarity(self, a, b):
        return self.mod.identity_similarity(a, b, model=self.model)


def _identity():
    """dlib's identity similarity where the ``identity`` extra is installed, else None."""
    from odedit.metrics.identity import identity_unavailable

    reason = identity_unavailable()
    if reason:
        print(f"identity not measured: {reason}", file=sys.stderr)
        return None
    return _Identity()


def _swd_table(crops, names) -> dict:
    from odedit.metrics.distribution import swd

    out = {}
    for vname in names:
        a = np.concatenate([np.stack(crops[vname, fam]) for fam in sorted({f for (v, f) in crops if v == vname})])
        b = np.concatenate([np.stack(crops["clean", fam]) for fam in sorted({f for (v, f) in crops if v == vname})])
        out[vname] = round(float(swd(a, b, 0)["mean"]), 2)
    return out


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def markdown(result: dict) -> str:
    rows = result["rows"]
    names = list(result["variants"])
    conds = sorted({(r["family"], r["severity"]) for r in rows}, key=lambda c: (list(FAMILY.values()).index(c[0]), c[1]))
    lines = [f"CPU: {result['cpu']}; {len({r['item'] for r in rows})} photos x conditions; date {result['date']}", ""]
    keys = [("face_psnr", "face PSNR (dB)"), ("face_ssim", "face SSIM"), ("photo_psnr", "whole-photo PSNR")]
    if rows and "identity" in rows[0]:
        keys.append(("identity", "identity similarity to the clean face (dlib cosine)"))
    for key, label in keys:
        lines += [f"**{label}**, mean over photos and sizes", "",
                  "| variant | " + " | ".join(f"{f} {s}" if s else f for f, s in conds) + " |",
                  "|---" * (len(conds) + 1) + "|"]
        for v in names:
            cells = [_mean([r for r in rows if r["variant"] == v and (r["family"], r["severity"]) == c], key) for c in conds]
            fmt = "{:.2f}" if "psnr" in key else "{:.3f}"
            lines.append(f"| {v} | " + " | ".join(fmt.format(x) for x in cells) + " |")
        lines.append("")
    sizes = sorted({r["size"] for r in rows})
    lines += ["**face PSNR by photo size** (clean and severity 1 / severity 5)", "",
              "| variant | " + " | ".join(f"{s} px: clean+sev1 | {s} px: sev5" for s in sizes) + " |",
              "|---" * (2 * len(sizes) + 1) + "|"]
    for v in names:
        cells = []
        for s in sizes:
            mild = [r for r in rows if r["variant"] == v and r["size"] == s and r["severity"] <= 1]
            hard = [r for r in rows if r["variant"] == v and r["size"] == s and r["severity"] == 5]
            cells += [f"{_mean(mild, 'face_psnr'):.2f}", f"{_mean(hard, 'face_psnr'):.2f}"]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "**SWD** of 128-px aligned face crops vs the clean photos' (all conditions pooled): " +
              ", ".join(f"{v} {s}" for v, s in result["swd"].items())]
    return "\n".join(lines)


FIGURE_CONDITIONS = (("clean", 0), ("gaussian_noise", 5), ("gaussian_blur", 5), ("jpeg_compression", 5),
                     ("masking_random_color", 5))


def stage_figure(args) -> None:
    """Before/after grid from the cache: rows = conditions of one photo at one size; columns =
    degraded input, the previous default (frame-lanczos), ``--figure-variant``, clean."""
    from PIL import Image

    from odedit.facemask import FaceMesh
    from odedit.imageio import make_grid, resize_to
    from odedit.upsample import make_upsampler

    work = Path(args.work)
    upsamplers = {"lanczos": make_upsampler("lanczos")}
    if "realesrgan" in (VARIANTS["frame-lanczos (before)"]["upsampler"], VARIANTS[args.figure_variant]["upsampler"]):
        upsamplers["realesrgan"] = make_upsampler("realesrgan", dtype=torch.bfloat16)
    mesh = FaceMesh()
    tiles = []
    for cond, sev in FIGURE_CONDITIONS:
        name = item_name(args.figure_photo, args.figure_size, cond, sev)
        rec = pickle.load(open(work / f"{name}.pkl", "rb"))
        clean = load_clean(os.path.join(args.photos, args.figure_photo + ".png"), args.figure_size)
        deg = degrade(clean, cond, sev, name)
        row = [deg]
        for vname in ("frame-lanczos (before)", args.figure_variant):
            v = VARIANTS[vname]
            row.append(finish(v, deg, rec["detections"], rec["restored"], upsamplers, mesh) if rec["detections"] else deg)
        row.append(clean)
        tiles += [resize_to(t, 256, 256) for t in row]
    grid = make_grid(np.stack(tiles), 4, pad=4)
    Image.fromarray(grid).save(args.figure_out, quality=88)
    print(f"wrote {args.figure_out}: rows {FIGURE_CONDITIONS}; columns degraded | frame-lanczos (before) | "
          f"{args.figure_variant} | clean", file=sys.stderr)
