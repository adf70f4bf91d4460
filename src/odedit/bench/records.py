"""The on-disk side of ``odedit bench``: the output folder's file names and layout
(``_Layout``: ``images/<folder>/<key>.png`` and ``records/<folder>/<key>.json``), atomic
text and JSON writes, corruption manifests (``manifest.csv`` as ``odedit corrupt`` writes
and reads it), the checks that decide whether an existing output folder may be resumed,
and :class:`BenchError`, the user-error type every part of the benchmark raises. This is
the bottom layer of :mod:`odedit.bench`: at run time it imports nothing else of it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from odedit.atomic import write_text_atomic

if TYPE_CHECKING:  # annotations only: methods imports this module
    from odedit.bench.methods import MethodSpec

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


# ---- small file helpers ----------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    """See :func:`odedit.atomic.write_text_atomic` (short temp name, ordinary mode, rename)."""
    write_text_atomic(path, text)


def _write_json(path: Path, obj) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path):
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
    _atomic_write_text(Path(path), buf.getvalue())


# ---- the output folder -----------------------------------------------------------------------


def _load_png(path: Path) -> np.ndarray:
    from odedit.imageio import load_image_uint8

    return load_image_uint8(path)


class _Layout:
    def __init__(self, out: Path):
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


# ---- resuming --------------------------------------------------------------------------------


def _check_resume(existing: dict, settings: dict, methods: list[MethodSpec]) -> None:
    old = existing.get("settings", {})
    diffs = [f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in settings if old.get(k) != settings[k]]
    known = existing.get("methods", {})
    for m in methods:
        if m.name in known and _identity_of(known[m.name]) != _json_roundtrip(m.identity()):
            diffs.append(f"method {m.name}: settings differ from the earlier run's")
    if diffs:
        raise BenchError(
            "the output folder holds a benchmark run with different settings ("
            + "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
            + "); pass --overwrite to replace it, or choose another output folder"
        )


# ODEditConfig fields added later, with the values runs made before them used.
# Keyed by the recorded method kind (odedit.restorers.ODEditConfig.method).
_CONFIG_DEFAULTS = {"odedit": {"solver": "ddim", "inversion_iters": 0}}


def _identity_of(d: dict) -> dict:
    ident = {k: d.get(k) for k in ("kind", "config", "best_of")}
    if isinstance(ident["config"], dict):  # runs recorded before a field existed used its default
        ident["config"] = {**_CONFIG_DEFAULTS.get(ident["kind"], {}), **ident["config"]}
    return _json_roundtrip(ident)


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _clear_outputs(out: Path) -> None:
    for name in ("images", "records"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (SETTINGS_FILE, RESULTS_FILE, SUMMARY_FILE, GRID_FILE):
        (out / name).unlink(missing_ok=True)
