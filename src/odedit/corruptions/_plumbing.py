"""Input checks and plumbing shared by the corruption families: argument checks, per-image
generators, the size scale factor, the reference grid and float <-> uint8 conversion."""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

from odedit.corruptions.params import CORRUPTIONS, REFERENCE_SIZE

RngLike = Union[np.random.Generator, int, Sequence[np.random.Generator], None]


# ---------------------------------------------------------------------------------------
# Input checks and plumbing
# ---------------------------------------------------------------------------------------


def scale_factor(height: int, width: int) -> float:
    """``s = min(height, width) / 224``: how size-dependent parameters are scaled."""
    return min(int(height), int(width)) / REFERENCE_SIZE


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")


def _check_severity(severity) -> None:
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)):
        raise ValueError(f"severity must be an integer 1-5, got {severity!r}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1-5, got {severity}")


def _as_batch(image) -> tuple[np.ndarray, bool]:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr[None], True
    if arr.ndim == 4 and arr.shape[-1] == 3:
        return arr, False
    raise ValueError(f"expected an (H, W, 3) image or an (N, H, W, 3) batch, got shape {arr.shape}")


def _rngs_for(rng: RngLike, n: int, single: bool, required: bool) -> list[np.random.Generator]:
    if rng is None:
        if required:
            raise ValueError("this corruption is random: pass rng=np.random.default_rng(seed)")
        return [np.random.default_rng(0)] * n  # never used by deterministic corruptions
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return [rng] if single else list(rng.spawn(n))
    rngs = list(rng)
    if len(rngs) != n or not all(isinstance(g, np.random.Generator) for g in rngs):
        raise ValueError(f"need one numpy Generator per image: got {len(rngs)} for {n} images")
    return rngs


def _to_uint8(y: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _stack(rngs, draw: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
    """Per-image draws stacked along a new first axis (image i from rngs[i])."""
    return np.stack([np.asarray(draw(g)) for g in rngs])


def _ref_grid(h: int, w: int) -> tuple[int, int]:
    """The reference grid (short side 224) on which random fields are generated."""
    s = scale_factor(h, w)
    return max(1, int(round(h / s))), max(1, int(round(w / s)))
