"""Builders of the bad-input corpus (docs/reliability.md): used by tests/test_reliability.py
and as the seed corpus of scripts/fuzz_images.py."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width x height RGB pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _png_chunk(b"IEND", b""))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def face_like(size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# name -> (file name, bytes); "accepted" says whether a restore should succeed on it
def bad_files() -> dict[str, tuple[str, bytes, bool]]:
    rgb = Image.fromarray(face_like())
    png, jpg = encoded(rgb, "PNG"), encoded(rgb, "JPEG", quality=90)
    frames = [Image.fromarray(face_like(seed=s)) for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    deep = Image.fromarray(np.random.default_rng(1).integers(0, 65535, (24, 24), dtype=np.uint16))
    return {
        "empty file": ("empty.png", b"", False),
        "text named .png": ("text.png", b"just some text\n", False),
        "truncated PNG": ("trunc_png.png", png[: len(png) // 2], False),
        "truncated JPEG": ("trunc_jpg.jpg", jpg[: len(jpg) // 2], False),
        "16-bit PNG": ("deep16.png", encoded(deep, "PNG"), True),
        "palette PNG": ("palette.png", encoded(rgb.convert("P"), "PNG"), True),
        "CMYK JPEG": ("cmyk.jpg", encoded(rgb.convert("CMYK"), "JPEG"), True),
        "animated GIF": ("anim.gif", gif.getvalue(), False),
        "1x1 image": ("one.png", encoded(Image.new("RGB", (1, 1)), "PNG"), False),
        "decompression bomb (50k x 50k header)": ("bomb.png", bomb_png(), False),
        "JPEG with a PNG name": ("actually_jpeg.png", jpg, True),
    }


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every bad file into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (fname, data, _) in bad_files().items():
        path = folder / fname
        path.write_bytes(data)
        out[name] = path
    return out


def non_utf8_name(folder: Path) -> Path:
    """A valid PNG whose file name is not valid UTF-8 (bytes 0xff 0xfe)."""
    path = Path(os.fsdecode(os.fsencode(str(folder)) + b"/\xff\xfeface.png"))
    Image.fromarray(face_like(seed=5)).save(path)
    return path
