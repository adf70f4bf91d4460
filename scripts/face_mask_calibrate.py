"""Fit the keypoint ellipse of odedit.facemask (the fallback face outline) to the face mesh.

For each face (the CelebA-HQ portraits, then CelebA val frames un-squashed to 356x436 px):
detect it, cut its aligned frame at facemask.MESH_RESOLUTION px, run the face mesh and take its
36-point oval. In the face's own axes (x along the eye line, y down, origin the eyes' midpoint;
d = eyes-to-mouth distance along y, e = distance between the eyes, n = the nose's x) the oval's
bounding box is fitted by least squares:

    centre x ~ k * n          centre y ~ c * d
    half-width ~ a_d d + a_e e   half-height ~ b_d d + b_e e

and the ellipse with these parameters is compared with the oval (IoU, on a grid). The
coefficients are facemask.ELLIPSE; the run that set them (8 portraits + the first 400 val
frames, 403 faces with an oval): IoU mean 0.842, median 0.850, 5th percentile 0.745.

    python scripts/face_mask_calibrate.py --portraits ../shared/data/samples/celebahq-1024 \\
        --val ../shared/data/celeba64/val.zip --n-val 400       # ~1 minute on 2 busy cores
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from odedit import align, facemask
from odedit.detect import FaceDetector


def photos(portraits: Path | None, val: Path | None, n_val: int):
    if portraits is not None:
        for f in sorted(portraits.glob("*.png")):
            yield f.name, np.asarray(Image.open(f).convert("RGB"))
    if val is not None:
        with zipfile.ZipFile(val) as zf:
            for name in sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".png")))[:n_val]:
                img = Image.open(io.BytesIO(zf.read(name))).convert("RGB")
                w, h = align.CANONICAL_FRAME
                yield name, np.asarray(img.resize((2 * w, 2 * h), Image.LANCZOS))


def face_axes(kp: np.ndarray):
    mid = (kp[0] + kp[1]) / 2
    u = kp[1] - kp[0]
    e = float(np.linalg.norm(u))
    u = u / e
    v = np.array([-u[1], u[0]])
    return mid, u, v, float((kp[3] - mid) @ v), e, float((kp[2] - mid) @ u)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--portraits", type=Path, default=None)
    ap.add_argument("--val", type=Path, default=None)
    ap.add_argument("--n-val", type=int, default=400)
    ap.add_argument("--out", type=Path, default=None, help="write the fit and its IoU here (JSON)")
    args = ap.parse_args()
    tpl = align.load_template()
    rows, no_mesh = [], 0
    with FaceDetector() as det, facemask.FaceMesh(max_faces=1) as mesh:
        for name, photo in photos(args.portraits, args.val, args.n_val):
            found = det.detect(photo, max_faces=1)
            if not found:
                continue
            kp = found[0].keypoints
            m = align.photo_to_frame(kp, tpl, 64)
            res = facemask.MESH_RESOLUTION
            zoom = align.compose(np.diag([res / 64, res / 64, 1.0])[:2], m)
            crop = np.clip(np.round(align.warp_affine(photo, zoom, (res, res), padding="reflection")), 0, 255)
            ovals = mesh.ovals(crop.astype(np.uint8))
            if not ovals:
                no_mesh += 1
                continue
            rows.append((kp, align.apply(align.invert(zoom), ovals[0])))  # the oval in photo px
    feats, boxes = [], []
    for kp, oval in rows:
        mid, u, v, d, e, n = face_axes(kp)
        local = np.stack([(oval - mid) @ u, (oval - mid) @ v], 1)
        lo, hi = local.min(0), local.max(0)
        feats.append((d, e, n))
        boxes.append(((lo + hi) / 2, (hi - lo) / 2))
    d, e, n = (np.array(x) for x in zip(*feats))
    centre = np.array([b[0] for b in boxes])
    half = np.array([b[1] for b in boxes])
    fit = {
        "nose_shift": float(np.linalg.lstsq(n[:, None], centre[:, 0], rcond=None)[0][0]),
        "centre_y": float(np.linalg.lstsq(d[:, None], centre[:, 1], rcond=None)[0][0]),
    }
    fit["a_d"], fit["a_e"] = (float(c) for c in np.linalg.lstsq(np.stack([d, e], 1), half[:, 0], rcond=None)[0])
    fit["b_d"], fit["b_e"] = (float(c) for c in np.linalg.lstsq(np.stack([d, e], 1), half[:, 1], rcond=None)[0])
    ious = []
    for kp, oval in rows:  # the shipped ELLIPSE, on a 160 px grid around both shapes
        ell = facemask.keypoint_ellipse(kp)
        lo, hi = np.minimum(oval.min(0), ell.min(0)), np.maximum(oval.max(0), ell.max(0))
        scale = 160 / float((hi - lo).max())
        a = facemask.fill_polygon((oval - lo) * scale, (160, 160))
        b = facemask.fill_polygon((ell - lo) * scale, (160, 160))
        ious.append((a & b).sum() / max((a | b).sum(), 1))
    ious = np.array(ious)
    report = {
        "faces": len(rows),
        "no_mesh_oval": no_mesh,
        "fit": {k: round(v, 3) for k, v in fit.items()},
        "shipped": facemask.ELLIPSE,
        "iou_of_shipped": {"mean": round(float(ious.mean()), 3), "median": round(float(np.median(ious)), 3),
                           "p5": round(float(np.percentile(ious, 5)), 3), "min": round(float(ious.min()), 3)},
    }
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
