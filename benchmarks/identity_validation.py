"""Does the identity metric (odedit.metrics.identity) tell people apart on CelebA-64 faces?

    OMP_NUM_THREADS=1 python benchmarks/identity_validation.py [--n 100] [--sizes none,256] [-o out.json]

On the first N val faces (``../shared/data/celeba64/val.zip``): mean cosine similarity of each face
against itself, a lightly blurred copy, corrupted copies (odedit.corruptions) and the next face (a
different person), the ROC-AUC of each same-person condition against the different-person pairs,
and the fraction of pairs under dlib's same-person distance 0.6; each with the clean image's
landmarks (the benchmark's choice) and with each image's own, at each --sizes (none = as stored,
64 px; S = Lanczos upscale to S px first). The numbers of docs/benchmark.md (Identity) come from
``--n 100`` (~15 min on one busy core). Needs ``odedit[identity]`` and the data.
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from odedit.corruptions import corrupt
from odedit.metrics import identity as I

VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba64" / "val.zip"


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.round(gaussian_filter(x.astype(float), (0, sigma, sigma, 0))), 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--data", type=Path, default=VAL)
    ap.add_argument("--sizes", default="none,256", help="comma list: none (as stored) or a side in px")
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    with zipfile.ZipFile(args.data) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))[: args.n]
        clean = np.stack([np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names])
    conds = {
        "blur sigma 0.5 px": _blur(clean, 0.5),
        "blur sigma 1 px": _blur(clean, 1.0),
        "gaussian_blur sev3": corrupt(clean, "gaussian_blur", 3, 1),
        "gaussian_noise sev3": corrupt(clean, "gaussian_noise", 3, 2),
        "jpeg_compression sev4": corrupt(clean, "jpeg_compression", 4, 3),
        "jpeg_compression sev5": corrupt(clean, "jpeg_compression", 5, 3),
    }
    model = I.load_identity_model()
    res = {"images": names[0] + " ... " + names[-1]}
    for size_txt in args.sizes.split(","):
        size = None if size_txt.strip().lower() == "none" else int(size_txt)
        t = time.time()
        dc = I.identity_descriptors(clean, size=size, model=model)
        diff = I.scores_from_descriptors(dc, np.roll(dc, -1, 0))  # face i vs face i+1, own landmarks each
        r = {"seconds_per_descriptor": (time.time() - t) / len(clean),
             "self": float(np.nanmean(I.scores_from_descriptors(dc, dc).cosine)),
             "different (i vs i+1)": {"cos": float(np.nanmean(diff.cosine)), "cos_sd": float(np.nanstd(diff.cosine)),
                                      "dist": float(np.nanmean(diff.distance)),
                                      "frac_dist_below_0.6": float(np.mean(diff.distance < 0.6))}}
        for name, deg in conds.items():
            for lm in ("clean", "own"):
                dd = I.identity_descriptors(deg, clean if lm == "clean" else None, size=size, model=model)
                same = I.scores_from_descriptors(dd, dc)
                r[f"{name} [{lm} landmarks]"] = {
                    "cos": float(np.nanmean(same.cosine)), "cos_sd": float(np.nanstd(same.cosine)),
                    "dist": float(np.nanmean(same.distance)),
                    "frac_dist_below_0.6": float(np.mean(same.distance < 0.6)), "failed": same.failed,
                    "auc_vs_different": I.roc_auc(same.cosine, diff.cosine),
                }
        res[f"{size_txt.strip()} px" if size else "as stored"] = r
        print(json.dumps({size_txt: r}, indent=1), flush=True)
    if args.output:
        args.output.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
