"""Resampling and filtering helpers (separable matrices: exact, vectorised over the batch)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage


# ---------------------------------------------------------------------------------------
# Resampling helpers (separable matrices: exact, vectorised over the batch)
# ---------------------------------------------------------------------------------------


def _interp_matrix(coords: np.ndarray, n_in: int) -> np.ndarray:
    """Linear-interpolation matrix (len(coords), n_in) sampling at ``coords`` (clamped)."""
    c = np.clip(np.asarray(coords, dtype=np.float64), 0.0, n_in - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = c - i0
    m = np.zeros((len(c), n_in))
    rows = np.arange(len(c))
    np.add.at(m, (rows, i0), 1.0 - t)
    np.add.at(m, (rows, i1), t)
    return m


@lru_cache(maxsize=256)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling: box/area average when shrinking, bilinear when enlarging."""
    if n_in == n_out:
        m = np.eye(n_in)
    elif n_out < n_in:
        scale = n_in / n_out
        edges = np.arange(n_out + 1) * scale
        i = np.arange(n_in)
        lo = np.maximum(edges[:-1, None], i[None, :])
        hi = np.minimum(edges[1:, None], i[None, :] + 1)
        m = np.clip(hi - lo, 0.0, None) / scale
    else:
        coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        m = _interp_matrix(coords, n_in)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=256)
def _resize_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The banded :func:`_resize_matrix` as (n_out, K) input indices and weights."""
    m = _resize_matrix(n_in, n_out)
    nz = m != 0
    k = max(1, int(nz.sum(axis=1).max()))
    first = np.argmax(nz, axis=1)
    idx = np.minimum(first[:, None] + np.arange(k)[None, :], n_in - 1)
    wts = np.take_along_axis(m, idx, axis=1)
    wts[first[:, None] + np.arange(k)[None, :] > n_in - 1] = 0.0
    idx.setflags(write=False)
    wts.setflags(write=False)
    return idx, wts


def _resize_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Resample axis 1 or 2 of (N, H, W, ...) to n_out (sparse taps; no BLAS threads)."""
    idx, wts = _resize_taps(a.shape[axis], n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    out = None
    for j in range(idx.shape[1]):
        term = np.take(a, idx[:, j], axis=axis) * wts[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def _resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize a (N, h0, w0, ...) float array to (N, h, w, ...)."""
    if a.shape[1] != h:
        a = _resize_axis(a, h, 1)
    if a.shape[2] != w:
        a = _resize_axis(a, w, 2)
    return a


def _gaussian(a: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur over axes 1 and 2 of (N, H, W[, C]) (each image, channel separately)."""
    if sigma <= 0:
        return a
    a = ndimage.gaussian_filter1d(a, sigma, axis=1, mode=mode, truncate=truncate)
    return ndimage.gaussian_filter1d(a, sigma, axis=2, mode=mode, truncate=truncate)


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """scipy 'reflect' (half-sample symmetric) boundary for integer indices."""
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample (N, H, W, C) at float positions ys, xs (N, H', W'), reflect boundary."""
    n, h, w, _ = img.shape
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    ty = (ys - y0)[..., None]
    tx = (xs - x0)[..., None]
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    ya, yb = _reflect_index(y0, h), _reflect_index(y0 + 1, h)
    xa, xb = _reflect_index(x0, w), _reflect_index(x0 + 1, w)
    b = np.arange(n)[:, None, None]
    top = img[b, ya, xa] * (1 - tx) + img[b, ya, xb] * tx
    bot = img[b, yb, xa] * (1 - tx) + img[b, yb, xb] * tx
    return top * (1 - ty) + bot * ty
