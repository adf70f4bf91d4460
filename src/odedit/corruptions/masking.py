"""Masking corruptions (not in ImageNet-C): random-colour pixels and vertical lines."""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------


def _masking_random_color(batch: np.ndarray, p: float, rngs) -> np.ndarray:
    n, h, w, _ = batch.shape
    out = batch.copy()
    for i, g in enumerate(rngs):
        mask = g.random((h, w)) < p
        colors = g.integers(0, 256, (int(mask.sum()), 3), dtype=np.uint8)
        out[i][mask] = colors
    return out


def _masking_vline_random_color(batch: np.ndarray, p: float, rngs) -> np.ndarray:
    n, h, w, _ = batch.shape
    k = int(round(p * w))
    out = batch.copy()
    for i, g in enumerate(rngs):
        cols = g.choice(w, size=k, replace=False)
        colors = g.integers(0, 256, (k, 3), dtype=np.uint8)
        out[i][:, cols] = colors[None, :, :]
    return out
