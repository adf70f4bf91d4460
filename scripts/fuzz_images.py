"""Fuzz odedit's image-loading path with atheris (coverage-guided, libFuzzer engine).

Target: the bytes of one input file -> written to disk under a fuzzed name and extension ->
``odedit.imageio.list_images`` + ``load_image_uint8`` (the CLI's input handling) and, when it
loads, ``fit_square`` to the model frame (what ``odedit restore`` does next). The contract:
either an (H, W, 3) uint8 image with H, W >= MIN_SIDE comes back, or ``ImageError`` is raised
(the CLI reports it by name and goes on). Anything else (another exception type, a wrong
shape or dtype, a crash or a hang) is a finding.

The seed corpus is the bad-input corpus of docs/reliability.md (tests/reliability_corpus.py)
plus valid PNG/JPEG/BMP/GIF/TIFF/WebP files.

Usage:
    pip install atheris
    python scripts/fuzz_images.py --seconds 600 [--corpus DIR]
Writes findings (crashing inputs) into DIR/findings/ and prints a summary line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402


def seed_corpus(folder: Path) -> None:
    from PIL import Image

    from reliability_corpus import bad_files, encoded, face_like

    folder.mkdir(parents=True, exist_ok=True)
    for _, (fname, data, _) in bad_files().items():
        (folder / fname).write_bytes(data)
    img = Image.fromarray(face_like(size=20))
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tif"), ("WEBP", "webp")):
        (folder / f"valid.{ext}").write_bytes(encoded(img, fmt))
    (folder / "rgba.png").write_bytes(encoded(img.convert("RGBA"), "PNG"))
    (folder / "grey.png").write_bytes(encoded(img.convert("L"), "PNG"))


EXTS = (".png", ".jpg", ".gif", ".webp", ".tif", ".bmp", ".jpeg", ".txt", "")


def make_target(workdir: Path):
    from odedit.imageio import MIN_SIDE, ImageError, fit_square, list_images, load_image_uint8

    def target(data: bytes) -> None:
        ext = EXTS[len(data) % len(EXTS)]  # the extension must not matter: Pillow reads the content
        path = workdir / f"in{ext}"
        path.write_bytes(data)
        try:
            (found,) = list_images([path])
            image = load_image_uint8(found)
        except ImageError:
            return
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8, (type(image), getattr(image, "dtype", None))
        assert image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= MIN_SIDE, image.shape
        small = fit_square(image, 16, "stretch")
        assert small.shape == (16, 16, 3) and small.dtype == np.uint8

    return target


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.mkdtemp(prefix="odedit-fuzz-")))
    ap.add_argument("--max-len", type=int, default=20000)
    args = ap.parse_args()
    import atheris

    with atheris.instrument_imports():
        from PIL import Image  # Pillow's Python-level decoders are instrumented too

        Image.init()  # imports every format plugin now, inside the instrumented block
        import odedit.imageio  # noqa: F401
    seeds = args.corpus / "seeds"
    if not seeds.exists():
        seed_corpus(seeds)
    findings = args.corpus / "findings"
    findings.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="odedit-fuzz-work-"))
    target = make_target(work)
    t0 = time.time()
    print(f"fuzzing for {args.seconds} s, corpus {args.corpus}", file=sys.stderr)
    atheris.Setup(
        [sys.argv[0], str(args.corpus / "live"), str(seeds), f"-max_total_time={args.seconds}",
         f"-max_len={args.max_len}", f"-artifact_prefix={findings}/", "-timeout=20", "-rss_limit_mb=4096"],
        target,
    )
    (args.corpus / "live").mkdir(exist_ok=True)
    atheris.Fuzz()  # exits the process when done (0) or at the first finding (non-zero)
    print(f"done in {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
