"""Training data: a folder or a ``.zip`` of images, decoded once into memory.

Design (measured, see docs/training.md): face training sets at 64x64 are small when
decoded (CelebA train, 24,152 images: 24,152 x 64 x 64 x 3 = 297 MB of uint8), so the
whole set is decoded **once** up front into a contiguous uint8 array by a small thread
pool (Pillow releases the GIL while decoding). Training then never touches the disk
or a JPEG decoder again: a batch is an index gather from that array (on the GPU when
the array is moved there), which keeps even a fast accelerator fed without
DataLoader worker processes.

Bad files (truncated, not images, unreadable) are counted and skipped, never fatal;
an empty dataset, or one where every file is bad, is a :class:`DatasetError` that
names the number of skipped files and a few examples.

Batch order and flips come from :class:`EpochStream`, a pure function of
``(seed, position)``: resuming a run at optimizer step ``s`` reproduces exactly the
batches an uninterrupted run would have drawn, with no sampler state to save.
"""

from __future__ import annotations

import io
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from odedit.imageio import FIT_MODES, IMAGE_EXTENSIONS, MAX_PIXELS, fit_square

__all__ = [
    "DatasetError",
    "ImageArrayDataset",
    "EpochStream",
    "load_dataset",
    "list_sources",
]


class DatasetError(ValueError):
    """The training data cannot be used; the message says why (and what was skipped)."""


@dataclass
class ImageArrayDataset:
    """Decoded training images.

    Attributes:
        images: uint8 array (N, R, R, 3), RGB, C-contiguous.
        names: N source names (paths relative to the folder, or zip member names).
        skipped: (name, reason) of every file that could not be decoded.
        source: the folder or zip the images came from.
    """

    images: np.ndarray
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:
        """One image as (R, R, 3) uint8 (no flip; flips are applied per batch)."""
        return self.images[index]

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def summary(self) -> dict:
        return {
            "source": self.source,
            "images": len(self),
            "resolution": self.resolution,
            "skipped": len(self.skipped),
            "skipped_examples": [f"{n}: {r}" for n, r in self.skipped[:5]],
        }


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith("._") or name.startswith("__MACOSX/"):  # macOS resource forks in zips
        return False
    return base.lower().endswith(IMAGE_EXTENSIONS)


def list_sources(path: os.PathLike | str) -> tuple[str, list[str]]:
    """The kind (``folder`` | ``zip``) and sorted image names of a dataset path.

    Folders are searched recursively; names are relative paths. Raises DatasetError
    for a missing path, a file that is not a zip, or no image files at all.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset {str(path)!r} does not exist")
    if path.is_dir():
        names = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and _is_image_name(p.relative_to(path).as_posix())
        )
        kind = "folder"
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = sorted(i.filename for i in zf.infolist() if not i.is_dir() and _is_image_name(i.filename))
        except (zipfile.BadZipFile, OSError) as err:
            raise DatasetError(f"cannot read zip file {str(path)!r}: {err}") from None
        kind = "zip"
    else:
        raise DatasetError(f"dataset {str(path)!r} is neither a folder nor a .zip file of images")
    if not names:
        raise DatasetError(
            f"dataset {str(path)!r} contains no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    return kind, names


def _decode(data: bytes, resolution: int, fit: str) -> np.ndarray:
    """Encoded bytes -> (R, R, 3) uint8. Raises on any problem (caller counts it)."""
    from PIL import Image

    from odedit.imageio import pil_to_uint8

    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,}-pixel limit")
        img.load()
        arr = pil_to_uint8(img)
    return fit_square(arr, resolution, fit)


def load_dataset(
    path: os.PathLike | str,
    resolution: int = 64,
    fit: str = "stretch",
    workers: int = 4,
    progress: Optional[Callable[[int], None]] = None,
    limit: Optional[int] = None,
) -> ImageArrayDataset:
    """Decode every image of a folder or zip into memory at ``resolution``.

    Args:
        path: a folder (searched recursively) or a ``.zip`` of image files.
        resolution: side of the square training images.
        fit: ``stretch`` (Lanczos resize of the whole frame, the default of ``odedit
            restore`` too) or ``crop`` (central square, then Lanczos:
            :func:`odedit.imageio.resize_square`); see :func:`odedit.imageio.fit_square`.
        workers: decoding threads (>= 1).
        progress: called with the number of files finished, as they finish.
        limit: decode only the first ``limit`` names (sorted), e.g. for quick tests.
    Raises:
        DatasetError: missing/unsupported path, no image files, or no readable image.
    """
    if fit not in FIT_MODES:
        raise ValueError(f"unknown fit mode {fit!r}; expected one of {FIT_MODES}")
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    path = Path(path).expanduser()
    kind, names = list_sources(path)
    if limit is not None:
        names = names[: int(limit)]
    out = np.empty((len(names), resolution, resolution, 3), dtype=np.uint8)
    ok = np.zeros(len(names), dtype=bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int, data: bytes | None, err: str | None) -> None:
        if err is None:
            try:
                out[i] = _decode(data, resolution, fit)
                ok[i] = True
                return
            except Exception as exc:  # any decoder failure means "bad file", never a crash
                err = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        skipped.append((names[i], err))  # list.append is atomic under the GIL

    workers = max(1, int(workers))
    chunk = 512  # bounded memory: at most ~chunk encoded files in flight
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list = []
        for item in _read_sources(kind, path, names):
            pending.append(pool.submit(work, *item))
            if len(pending) >= chunk:
                for fut in pending:
                    fut.result()
                if progress is not None:
                    progress(len(pending))
                pending = []
        for fut in pending:
            fut.result()
        if progress is not None and pending:
            progress(len(pending))

    skipped.sort()
    n_ok = int(ok.sum())
    if n_ok == 0:
        examples = "; ".join(f"{n} ({r})" for n, r in skipped[:3])
        raise DatasetError(
            f"dataset {str(path)!r} has no readable images: all {len(skipped)} image files were "
            f"skipped as unreadable (e.g. {examples})"
        )
    if n_ok < len(names):
        out = out[ok]  # compacting copy, C-contiguous
    kept = [n for n, good in zip(names, ok) if good]
    return ImageArrayDataset(images=np.ascontiguousarray(out), names=kept, skipped=skipped, source=str(path))


def _read_sources(kind: str, path: Path, names: list[str]):
    """Yield (index, bytes or None, error or None) for each of ``names`` in a ``zip`` or a
    folder, reading sequentially (I/O friendly)."""
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            for i, name in enumerate(names):
                try:
                    yield i, zf.read(name), None
                except Exception as exc:  # bad CRC, unsupported compression, ...
                    yield i, None, f"{type(exc).__name__}: {exc}"
    else:
        for i, name in enumerate(names):
            try:
                yield i, (path / name).read_bytes(), None
            except OSError as exc:
                yield i, None, f"{type(exc).__name__}: {exc.strerror or exc}"


def _splitmix64(x: int) -> int:
    """A 64-bit mixing function: decorrelates seeds built from small integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. seed, rank, step): different inputs, unrelated streams."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & 0xFFFFFFFFFFFFFFFF))
    return h & 0x7FFFFFFFFFFFFFFF


class EpochStream:
    """An endless, seeded stream of (image index, flip) pairs, epoch after epoch.

    Position ``k`` of the stream is element ``k % n`` of epoch ``k // n``'s random
    permutation; each epoch also draws one flip bit per position. Everything is a pure
    function of ``(seed, k)``, so a run resumed at any position continues exactly
    as an uninterrupted one. With several processes, the global batch at a position
    is cut into contiguous per-process slices.
    """

    def __init__(self, n: int, seed: int = 0, flip: bool = True):
        if n < 1:
            raise ValueError("EpochStream needs at least one image")
        self.n, self.seed, self.flip = int(n), int(seed), bool(flip)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(permutation int64 (n,), flips bool (n,)) of epoch ``e``."""
        hit = self._cache.get(e)
        if hit is None:
            rng = np.random.default_rng(mix_seed(self.seed, 0xDA7A, e))
            perm = rng.permutation(self.n).astype(np.int64)
            flips = rng.random(self.n) < 0.5 if self.flip else np.zeros(self.n, dtype=bool)
            hit = (perm, flips)
            self._cache = {k: v for k, v in self._cache.items() if k >= e - 1}  # keep at most 2-3 epochs
            self._cache[e] = hit
        return hit

    def take(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and flips at stream positions ``start .. start + count - 1``."""
        pos = np.arange(int(start), int(start) + int(count), dtype=np.int64)
        epochs, within = np.divmod(pos, self.n)
        idx = np.empty(count, dtype=np.int64)
        flips = np.empty(count, dtype=bool)
        for e in np.unique(epochs):
            sel = epochs == e
            perm, fl = self.epoch(int(e))
            idx[sel] = perm[within[sel]]
            flips[sel] = fl[within[sel]]
        return idx, flips


def batch_to_model_space(images, flips=None):
    """uint8 (B, H, W, 3) tensor (any device) -> float32 (B, 3, H, W) in [-1, 1], flipped per row.

    ``flips`` is a bool tensor (B,) on the same device; True mirrors that image left-right.
    """
    import torch

    x = images.permute(0, 3, 1, 2).to(torch.float32).div_(127.5).sub_(1.0)
    if flips is not None:
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


def examples(skipped: Sequence[tuple[str, str]], n: int = 3) -> str:
    """A short printable list of skipped files and reasons."""
    return "; ".join(f"{name} ({reason})" for name, reason in list(skipped)[:n])
