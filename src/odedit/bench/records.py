"""The on-disk side of ``odedit bench``: the output folder's file names and layout
(:class:`Layout`: ``images/<folder>/<key>.png`` and ``records/<folder>/<key>.json``, read
and written atomically through :mod:`odedit.atomic`), corruption manifests
(``manifest.csv`` as ``odedit corrupt`` writes and reads it), and :class:`BenchError`, the
user-error type every part of the benchmark raises. This is the bottom layer of
:mod:`odedit.bench`: it imports nothing else of it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from odedit.atomic import write_json_atomic, write_text_atomic

FORMAT_VERSION = 1
SETTINGS_FILE = "bench.json"
RESULTS_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
GRID_FILE = "grid.png"
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ("file", "corruption", "severity", "seed", "fraction")  # as `odedit corrupt` writes
RESULT_COLUMNS = ("image", "corruption", "method", "metric", "value")
SET_ROW = "*"  # image/corruption field of set-level rows in results.csv


class BenchError(ValueError):
    """A user error in the benchmark's inputs or settings; the message says what to do."""


def read_json(path: Path):
    """The JSON value in ``path`` (written by :func:`odedit.atomic.write_json_atomic`)."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


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
    write_text_atomic(Path(path), buf.getvalue())


# ---- the output folder -----------------------------------------------------------------------


class Layout:
    """Where a benchmark's files live under its output folder ``out``: images
    ``images/<folder>/<key>.png`` and per-image records ``records/<folder>/<key>.json``, where
    ``<folder>`` is ``clean``, ``degraded`` or a method's name; a record marks its pair done."""

    def __init__(self, out: os.PathLike | str):
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

    def load_image(self, folder: str, key: str) -> np.ndarray:
        """The saved (H, W, 3) uint8 image."""
        from odedit.imageio import load_image_uint8

        return load_image_uint8(self.image(folder, key))

    def load_images(self, folder: str, keys: list[str]) -> np.ndarray:
        """The saved images of ``keys`` as one (N, H, W, 3) uint8 array."""
        return np.stack([self.load_image(folder, k) for k in keys])

    def read_record(self, folder: str, key: str) -> dict:
        return read_json(self.record(folder, key))

    def write_record(self, folder: str, key: str, record: dict) -> None:
        write_json_atomic(self.record(folder, key), record)

    def clear(self) -> None:
        """Delete every file a benchmark writes here (``--overwrite``); other files stay."""
        for name in ("images", "records"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in (SETTINGS_FILE, RESULTS_FILE, SUMMARY_FILE, GRID_FILE):
            (self.out / name).unlink(missing_ok=True)
