"""Derive the face-alignment template from aligned CelebA frames, and measure it.

The prior's frame is CelebA's aligned 178x218 frame squashed to 64x64. This script
un-squashes train frames back to 178x218, runs the detector (mediapipe 0.10.14), and
averages the six keypoints: that mean is the template (src/odedit/assets/face_template.json).
On held-out val frames it then measures how well detect -> similarity fit reproduces
CelebA's own alignment (which is the identity for an already aligned frame):

    keypoint residual   RMS distance of fitted keypoints from the template (canonical px)
    frame error         mean distance of the model frame's corners from where CelebA put
                        them, in model-frame (64 px) pixels

Usage:
    python scripts/face_template.py --train ../shared/data/celeba64/train.zip \
        --val ../shared/data/celeba64/val.zip --n-train 3000 --n-val 500 \
        --out src/odedit/assets/face_template.json --report docs/data/face_template_report.json
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from odedit import align
from odedit.detect import KEYPOINT_NAMES, MEDIAPIPE_VERSION, FaceDetector


def frames(zip_path: Path, n: int):
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(x for x in zf.namelist() if x.lower().endswith((".jpg", ".png")))[:n]
        for name in names:
            img = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
            w, h = align.CANONICAL_FRAME
            yield name, np.asarray(img.resize((w, h), Image.LANCZOS), dtype=np.uint8)


def detect_all(det: FaceDetector, zip_path: Path, n: int):
    kps, names, missed = [], [], 0
    for name, img in frames(zip_path, n):
        found = det.detect(img, max_faces=1)
        if not found:
            missed += 1
            continue
        kps.append(found[0].keypoints)
        names.append(name)
    return np.stack(kps), names, missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=3000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--size", type=int, default=64, help="model frame size for the frame error")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    args = ap.parse_args()

    t0 = time.time()
    with FaceDetector() as det:
        train_kp, _, train_missed = detect_all(det, args.train, args.n_train)
        val_kp, _, val_missed = detect_all(det, args.val, args.n_val)
    mean = train_kp.mean(0)
    spread = np.sqrt(((train_kp - mean) ** 2).sum(2).mean(0))

    # Which keypoints to fit: all six, or the four central ones (ears are guesses in 3/4 views).
    w, h = align.CANONICAL_FRAME
    s = float(args.size)
    ideal = align.apply(align.squash_matrix(args.size), np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
    variants = {}
    for label, use in (("eyes+nose+mouth", (0, 1, 2, 3)), ("all six", (0, 1, 2, 3, 4, 5)), ("eyes+mouth", (0, 1, 3))):
        tpl = align.Template(points=mean, names=KEYPOINT_NAMES, use=use, spread=spread)
        resid, corner = [], []
        for kp in val_kp:
            sim = align.fit_similarity(kp[list(use)], mean[list(use)])
            resid.append(align.keypoint_residual(sim, kp, mean, use))
            m = align.compose(align.squash_matrix(args.size), sim)
            # where do CelebA's frame corners land in our frame? (identity = perfect)
            got = align.apply(m, np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
            corner.append(float(np.linalg.norm(got - ideal, axis=1).mean()))
        resid, corner = np.array(resid), np.array(corner)
        variants[label] = {
            "use": list(use),
            "keypoint_residual_canonical_px": {"mean": float(resid.mean()), "p95": float(np.percentile(resid, 95))},
            "frame_corner_error_model_px": {
                "mean": float(corner.mean()),
                "median": float(np.median(corner)),
                "p95": float(np.percentile(corner, 95)),
                "max": float(corner.max()),
            },
        }
    best = min(variants, key=lambda k: variants[k]["frame_corner_error_model_px"]["mean"])
    use = variants[best]["use"]
    template = {
        "about": "mean mediapipe BlazeFace keypoints on CelebA aligned frames, canonical 178x218 frame pixels",
        "frame": list(align.CANONICAL_FRAME),
        "names": list(KEYPOINT_NAMES),
        "points": [[round(float(x), 3), round(float(y), 3)] for x, y in mean],
        "spread": [round(float(v), 3) for v in spread],
        "use": use,
        "source": f"{args.train.name}: first {args.n_train} frames sorted by name, {len(train_kp)} detected",
        "detector": f"mediapipe {MEDIAPIPE_VERSION} face_detection, short+full range, min score 0.5",
    }
    report = {
        "template": template,
        "train": {"frames": args.n_train, "detected": len(train_kp), "missed": train_missed},
        "val": {"frames": args.n_val, "detected": len(val_kp), "missed": val_missed},
        "variants": variants,
        "chosen": best,
        "model_size": args.size,
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(template, indent=2) + "\n")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    json.dump({k: v for k, v in report.items() if k != "template"}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
