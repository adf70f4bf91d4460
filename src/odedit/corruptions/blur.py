"""Blur corruptions: gaussian, defocus, glass, motion and zoom blur (and the motion-blur
and clipped-zoom kernels that snow reuses)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

from odedit.corruptions._plumbing import _ref_grid, _stack, scale_factor
from odedit.corruptions.params import PARAMS
from odedit.corruptions.resample import _gaussian, _resize


# ---------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------


def _gaussian_blur(x, sev, rngs):
    s = scale_factor(*x.shape[1:3])
    return _gaussian(x, PARAMS["gaussian_blur"][sev - 1] * s)


@lru_cache(maxsize=64)
def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Anti-aliased disk (area coverage, 16x16 supersampling) + small Gaussian, sums to 1."""
    half = int(math.ceil(radius)) + 1 + int(math.ceil(3 * alias_blur))
    sub = 16
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + offs[None, :]).ravel()
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius**2
    k = inside.reshape(2 * half + 1, sub, 2 * half + 1, sub).mean(axis=(1, 3))
    if k.sum() == 0:
        k[half, half] = 1.0
    k /= k.sum()
    if alias_blur > 0:
        k = ndimage.gaussian_filter(k, alias_blur, mode="constant", truncate=3.0)
    k /= k.sum()
    k.setflags(write=False)
    return k


def _defocus_blur(x, sev, rngs):
    radius, alias = PARAMS["defocus_blur"][sev - 1]
    s = scale_factor(*x.shape[1:3])
    k = _disk_kernel(radius * s, alias * s)
    if k.shape[0] <= 15:
        return ndimage.correlate(x, k[None, :, :, None], mode="mirror")
    from scipy.signal import fftconvolve  # large images: FFT (the disk is symmetric)

    p = k.shape[0] // 2
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")  # = OpenCV reflect-101
    return fftconvolve(padded, k[None, :, :, None], mode="valid", axes=(1, 2))


# Per-axis std (reference pixels) of how far a pixel ends up from its origin after the
# reference's sequential swap loop (offsets randint(-delta, delta), ``iterations`` passes),
# measured by simulating that loop on a 224x224 index map (interior pixels).
_GLASS_SPREAD = (1.80, 1.84, 3.21, 3.64, 4.74)


def _glass_blur(x, sev, rngs):
    sigma, _delta, _iters = PARAMS["glass_blur"][sev - 1]
    spread = _GLASS_SPREAD[sev - 1]
    n, h, w, _ = x.shape
    s = scale_factor(h, w)
    if s < 1:  # on the reference grid with the published sigma and spread, then back
        hr, wr = _ref_grid(h, w)
        xr = _resize(x, hr, wr)
    else:  # large images: on the image grid, lengths scaled (no detail lost)
        hr, wr, xr = h, w, x
        sigma, spread = sigma * s, spread * s
    # the reference quantises to uint8 (truncation) between the two blurs
    xr = np.floor(np.clip(_gaussian(xr, sigma), 0, 1) * 255.0) / 255.0
    off = _stack(rngs, lambda g: np.rint(g.normal(0.0, spread, (2, hr, wr))).astype(np.int64))
    yy = np.clip(np.arange(hr)[None, :, None] + off[:, 0], 0, hr - 1)
    xx = np.clip(np.arange(wr)[None, None, :] + off[:, 1], 0, wr - 1)
    xr = xr[np.arange(n)[:, None, None], yy, xx]
    return _resize(_gaussian(xr, sigma), h, w)


def _motion_taps(radius: float, sigma: float, angle_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse line kernel: integer offsets (dy, dx) and weights summing to 1.

    ImageMagick MotionBlurImage: output(p) = sum_i k_i * input(p + i * (cos a, sin a)),
    i = 0 .. 2 * radius, k_i ~ exp(-i^2 / (2 sigma^2)). Sampled every 1/8 pixel and
    splatted bilinearly onto the integer grid.
    """
    length = 2.0 * radius
    t = np.arange(0.0, length + 1e-9, 0.125)
    wt = np.exp(-(t**2) / (2.0 * max(sigma, 1e-6) ** 2))
    a = math.radians(angle_deg)
    px, py = t * math.cos(a), t * math.sin(a)
    x0, y0 = np.floor(px), np.floor(py)
    fx, fy = px - x0, py - y0
    half = int(math.ceil(length)) + 1
    size = 2 * half + 1
    k = np.zeros(size * size)
    for oy, ox, f in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        idx = (y0.astype(np.int64) + oy + half) * size + (x0.astype(np.int64) + ox + half)
        k += np.bincount(idx, weights=wt * f, minlength=size * size)
    k = k.reshape(size, size)
    nz = np.nonzero(k > 1e-12 * k.max())
    w = k[nz]
    return nz[0] - half, nz[1] - half, w / w.sum()


def _motion_apply(img: np.ndarray, taps) -> np.ndarray:
    """Apply sparse taps to one (H, W[, C]) image with edge padding."""
    dy, dx, wts = taps
    h, w = img.shape[:2]
    p = int(max(np.abs(dy).max(), np.abs(dx).max()))
    pad = [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2)
    padded = np.pad(img, pad, mode="edge")
    if len(wts) > 96:  # long kernels (large images): FFT convolution with the flipped kernel
        from scipy.signal import fftconvolve

        k = np.zeros((2 * p + 1, 2 * p + 1))
        k[p - dy, p - dx] = wts
        k = k.reshape(k.shape + (1,) * (img.ndim - 2))
        return fftconvolve(padded, k, mode="valid", axes=(0, 1))
    out = np.zeros_like(img)
    for a, b, wt in zip(dy, dx, wts):
        out += wt * padded[p + a : p + a + h, p + b : p + b + w]
    return out


def _motion_blur(x, sev, rngs):
    radius, sigma = PARAMS["motion_blur"][sev - 1]
    s = scale_factor(*x.shape[1:3])
    angles = [g.uniform(-45, 45) for g in rngs]
    return np.stack([_motion_apply(xi, _motion_taps(radius * s, sigma * s, a)) for xi, a in zip(x, angles)])


@lru_cache(maxsize=256)
def _clipped_zoom_coords(n: int, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling of the reference ``clipped_zoom`` along one axis: (i0, i1, t).

    Crop the central ceil(n / z) pixels, zoom them with scipy.ndimage.zoom(order=1)
    (output round(ch * z), input coordinate j * (ch - 1) / (out - 1)), trim to n; output
    pixel j is ``(1 - t) * in[i0] + t * in[i1]``.
    """
    ch = int(np.ceil(n / z))
    top = (n - ch) // 2
    out_n = int(round(ch * z))
    trim = (out_n - n) // 2
    j = np.arange(n) + trim
    c = np.clip(top + j * ((ch - 1) / (out_n - 1) if out_n > 1 else 0.0), 0, n - 1)
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    for a in (i0, i1, c):
        a.setflags(write=False)
    return i0, i1, c - i0


def _clipped_zoom(a: np.ndarray, z: float) -> np.ndarray:
    """The reference ``clipped_zoom`` of (N, H, W[, C]) over axes 1 and 2."""
    i0, i1, t = _clipped_zoom_coords(a.shape[1], z)
    tt = t.reshape((1, -1) + (1,) * (a.ndim - 2))
    a = a[:, i0] * (1 - tt) + a[:, i1] * tt
    i0, i1, t = _clipped_zoom_coords(a.shape[2], z)
    tt = t.reshape((1, 1, -1) + (1,) * (a.ndim - 3))
    return a[:, :, i0] * (1 - tt) + a[:, :, i1] * tt


def _zoom_blur(x, sev, rngs):
    factors = PARAMS["zoom_blur"][sev - 1]
    out = x.copy()
    for z in factors:
        out += _clipped_zoom(x, float(z))
    return out / (len(factors) + 1)
