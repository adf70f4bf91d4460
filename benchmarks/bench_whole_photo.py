"""Whole photos: does `odedit restore` ever make a photo worse? Which paste-back is best?

The benchmark of issue 26 (docs/faces.md, "Whole-photo benchmark"). Clean portraits
(../shared/data/samples/celebahq-1024, eight CelebA-HQ photos at 1024 px; the three bundled
sample faces are three of them) are resized so that the face spans about 80, 230 or 600 px
(photo sides 128, 384, 1024), corrupted (clean, gaussian noise, gaussian blur, JPEG, random
colour masking; severities 1 and 5, noise also 3, masking 5), and run through the real pipeline: detection on the
degraded photo, alignment, the restorer (`odedit restore`'s default: ODEdit, the default preset), then
each *finishing variant* (mask, upsampler, fine-detail weight, colour matching) pastes the
same restored crops back. Restorations are cached, so finishing variants are cheap to add.

Scores, against the clean photo: PSNR and SSIM of the face region (the detector's box on the
clean photo) and of the whole photo; identity similarity of the face (dlib, when the
``identity`` extra is installed); SWD of 128-px aligned face crops pooled per variant; time.

    python benchmarks/bench_whole_photo.py restore   # the slow part: cached under --work
    python benchmarks/bench_whole_photo.py score     # every finishing variant -> json + tables
    python benchmarks/bench_whole_photo.py figure    # before/after grid of one photo
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SIZES = (128, 384, 1024)
CONDITIONS = (
    ("clean", 0),
    ("gaussian_noise", 1), ("gaussian_noise", 3), ("gaussian_noise", 5),
    ("gaussian_blur", 1), ("gaussian_blur", 5),
    ("jpeg_compression", 1), ("jpeg_compression", 5),
    ("masking_random_color", 5),
)
FAMILY = {"clean": "clean", "gaussian_noise": "noise", "gaussian_blur": "blur",
          "jpeg_compression": "jpeg", "masking_random_color": "mask"}


def item_name(photo: str, size: int, cond: str, sev: int) -> str:
    return f"{photo}_s{size}_{cond}{sev}"


def degrade(clean: np.ndarray, cond: str, sev: int, name: str) -> np.ndarray:
    from odedit.corruptions import corrupt
    from odedit.rng import corrupt_seed

    if cond == "clean":
        return clean.copy()
    return corrupt(clean, cond, sev, np.random.default_rng(corrupt_seed(0, name)))


def parse_conditions(text: str) -> list[tuple[str, int]]:
    """'clean0,gaussian_blur1' -> [('clean', 0), ('gaussian_blur', 1)]; each must be in CONDITIONS."""
    known = {f"{c}{s}": (c, s) for c, s in CONDITIONS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown condition(s) {bad or text!r}; choose from {', '.join(known)}")
    return [known[n] for n in names]


def load_clean(path: str, size: int) -> np.ndarray:
    from odedit.imageio import load_image_uint8, resize_to

    return resize_to(load_image_uint8(path), size, size)


def cpu_label() -> str:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    bf16 = "AMX-BF16" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "no bf16 hardware")
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {bf16}"


def stage_restore(args) -> None:
    """Degrade, detect, cut, restore (batched); cache jobs + restored crops per item."""
    from odedit.detect import FaceDetector
    from odedit.faces import plan_photo
    from odedit.restorers import ODEdit
    from odedit.rng import face_seed, generators_for

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = sorted(glob.glob(os.path.join(args.photos, "*.png")))[: args.limit_photos]
    detector = FaceDetector()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    restorer = ODEdit.from_pretrained(None, dtype=dtype)
    check_settings(work, {"config": restorer.config.to_dict(), "dtype": args.dtype, "model": embedded_model_id()})
    pending = []  # (name, job, t_plan)
    for path in photos:
        stem = Path(path).stem
        for size in args.sizes:
            clean = load_clean(path, size)
            ref = plan_photo(clean, 64, lambda i: 0, detector=detector, max_faces=1, mesh=False)
            for cond, sev in args.conditions:
                name = item_name(stem, size, cond, sev)
                if (work / f"{name}.pkl").exists():
                    continue
                deg = degrade(clean, cond, sev, name)
                t0 = time.perf_counter()
                job = plan_photo(deg, 64, lambda i, n=name: face_seed(0, n, i),
                                 detector=detector, max_faces=args.max_faces, mesh=False)
                pending.append(((stem, size, cond, sev), job, ref, time.perf_counter() - t0))
    print(f"{len(pending)} items to restore, {sum(len(j.crops) for _, j, _, _ in pending)} faces", file=sys.stderr)
    # Batch faces across items, in order; write each item once all its faces are done.
    queue = [(k, i) for k, (_, job, _, _) in enumerate(pending) for i in range(len(job.crops))]
    results: dict[int, dict[int, np.ndarray]] = {}
    secs: dict[int, float] = {}
    from odedit.imageio import uint8_to_unit, unit_to_uint8

    for b in range(0, len(queue), args.batch_size):
        chunk = queue[b : b + args.batch_size]
        crops = np.stack([pending[k][1].crops[i] for k, i in chunk])
        seeds = [pending[k][1].seeds[i] for k, i in chunk]
        t0 = time.perf_counter()
        out = restorer.restore(uint8_to_unit(crops), generator=generators_for(seeds))
        dt = (time.perf_counter() - t0) / len(chunk)
        for (k, i), img in zip(chunk, unit_to_uint8(out)):
            results.setdefault(k, {})[i] = img
            secs[k] = secs.get(k, 0.0) + dt
        done = [k for k in {k for k, _ in chunk} if len(results[k]) == len(pending[k][1].crops)]
        for k in done:
            _write_item(work, pending[k], [results[k][i] for i in range(len(pending[k][1].crops))], secs[k])
        print(f"  restored {min(b + args.batch_size, len(queue))}/{len(queue)} faces", file=sys.stderr, flush=True)
    for k, item in enumerate(pending):  # items with no face found
        if not item[1].crops:
            _write_item(work, item, [], 0.0)


SETTINGS = "restorer.json"


def embedded_model_id() -> str:
    """The embedded prior, named by its checksums file's digest: a new shipped prior is other settings."""
    import hashlib

    from odedit.models import DEFAULT_MODEL_DIR

    digest = hashlib.sha256((DEFAULT_MODEL_DIR / "checksums.json").read_bytes()).hexdigest()[:16]
    return f"embedded sha256:{digest}"


def check_settings(work: Path, settings: dict) -> None:
    """The cache is keyed by item name only: refuse to add restorations made with other settings
    (config, dtype, model) to a folder whose restorer.json differs, or whose restorations predate
    restorer.json; a new folder gets one."""
    path = work / SETTINGS
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as read back
    if path.exists():
        held = json.loads(path.read_text())
        if held != settings:
            diff = sorted(k for k in set(held) | set(settings) if held.get(k) != settings.get(k))
            raise SystemExit(f"{work} holds restorations made with other settings ({', '.join(diff)} differ, "
                             f"see {path}): use another --work")
        return
    if any(work.glob("*.pkl")):
        raise SystemExit(f"{work} holds restorations of unrecorded settings (no {SETTINGS}): use another --work, "
                         f"or write the settings they were made with to {path}")
    tmp = work / f".{SETTINGS}.tmp"
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, path)


def _write_item(work: Path, item, restored: list, restore_s: float) -> None:
    """The cache keeps what the scoring stage cannot recompute cheaply: the detections on the
    degraded photo (their crops are cut again, deterministically), the restored crops, the
    clean photo's face (the scoring region) and the times."""
    key, job, ref, plan_s = item
    name = item_name(*key)
    rec = {"key": key, "detections": [f.detection for f in job.faces], "faces_left_out": job.faces_left_out,
           "restored": restored, "ref_detection": ref.faces[0].detection if ref.faces else None,
           "ref_matrix": ref.faces[0].matrix if ref.faces else None, "plan_s": plan_s, "restore_s": restore_s}
    tmp = work / f".{name}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump(rec, f)
    os.replace(tmp, work / f"{name}.pkl")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("restore", "score", "figure"))
    ap.add_argument("--photos", default="../shared/data/samples/celebahq-1024")
    ap.add_argument("--work", default=os.path.expanduser("~/.cache/odedit/wholephoto"))
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=list(SIZES))
    ap.add_argument("--limit-photos", type=int, default=8)
    ap.add_argument("--conditions", type=parse_conditions, default=list(CONDITIONS),
                    help="restore stage: comma-separated condition+severity names, e.g. clean0,gaussian_blur1 "
                         "(default: all nine)")
    ap.add_argument("--max-faces", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", choices=("bf16", "float32"), default="bf16")
    ap.add_argument("--variants", default="all", help="comma-separated variant names (score stage)")
    ap.add_argument("--out", default="docs/data/whole_photo.json")
    ap.add_argument("--figure-photo", default="00234")
    ap.add_argument("--figure-size", type=int, default=384)
    ap.add_argument("--figure-variant", default="face-lanczos-detail")
    ap.add_argument("--figure-out", default="docs/img/whole_photo_benchmark.jpg")
    args = ap.parse_args(argv)
    if args.stage == "restore":
        stage_restore(args)
    elif args.stage == "score":
        from whole_photo_score import stage_score  # noqa: E402  (benchmarks/ on sys.path)

        stage_score(args)
    else:
        from whole_photo_score import stage_figure  # noqa: E402

        stage_figure(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
