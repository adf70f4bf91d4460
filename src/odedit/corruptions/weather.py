"""Weather corruptions: fog, frost (with the procedural frost texture), snow and spatter."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from odedit.corruptions._plumbing import _ref_grid, _stack, scale_factor
from odedit.corruptions.blur import _clipped_zoom, _motion_apply, _motion_taps
from odedit.corruptions.params import PARAMS
from odedit.corruptions.resample import _gaussian, _resize


# ---------------------------------------------------------------------------------------
# Weather
# ---------------------------------------------------------------------------------------


def _plasma_fractal(rngs, mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square height maps (N, mapsize, mapsize) in [0, 1] (reference plasma_fractal)."""
    assert mapsize & (mapsize - 1) == 0
    n = len(rngs)
    m = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled(arr):
        return arr / 4 + wibble * _stack(rngs, lambda g: g.uniform(-wibble, wibble, arr.shape[1:]))

    while step >= 2:
        half = step // 2
        corner = m[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        m[:, half:mapsize:step, half:mapsize:step] = wibbled(sq)
        dr = m[:, half:mapsize:step, half:mapsize:step]
        ul = m[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        m[:, 0:mapsize:step, half:mapsize:step] = wibbled(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        m[:, half:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= wibbledecay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-12)


def _plasma_for(rngs, h: int, w: int, decay: float) -> np.ndarray:
    """Plasma on the reference grid, cropped as in the reference and resized to (h, w)."""
    hr, wr = _ref_grid(h, w)
    size = 1 << max(1, (max(hr, wr) - 1).bit_length())  # 256 for 224 px, as in the reference
    p = _plasma_fractal(rngs, size, decay)[:, :hr, :wr]
    return _resize(p, h, w)


def _fog(x, sev, rngs):
    strength, decay = PARAMS["fog"][sev - 1]
    h, w = x.shape[1:3]
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * _plasma_for(rngs, h, w, decay)[..., None]
    return x * max_val / (max_val + strength)


def frost_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedural frost picture, float64 (height, width, 3) in [0, 1].

    Generated on the reference grid (short side 224 px) and area-resized, so crystals
    keep the same size relative to the image at every resolution. Deterministic given
    ``rng``. See the package docstring (:mod:`odedit.corruptions`) for the recipe.
    """
    return _frost_textures([rng], height, width)[0]


_FROST_MEAN = 0.42


def _frost_textures(rngs, h: int, w: int) -> np.ndarray:
    hr, wr = _ref_grid(h, w)
    cover = _plasma_for(rngs, hr, wr, 1.6)  # where the ice has grown (fractal patches)
    density = np.clip((cover - 0.2) / 0.5, 0.0, 1.0) ** 1.5
    haze = _plasma_for(rngs, hr, wr, 2.2)  # fine fractal veil
    crystals = np.stack([_dendrites(g, d) for g, d in zip(rngs, density)])
    crystals = _gaussian(crystals, 0.6)
    ice = 1.0 - np.exp(-1.4 * crystals)
    glow = _gaussian(ice, 3.0)
    frost = 0.06 + density * (0.18 + 0.22 * haze) + 0.55 * ice + 0.5 * glow
    # like the photographs: mean brightness ~0.42 (fixed, so severities compare across draws)
    frost = np.clip(frost * (_FROST_MEAN / frost.mean(axis=(1, 2), keepdims=True)), 0.0, 1.0)
    tint = np.array([0.84, 0.92, 1.0])
    return np.clip(_resize(frost[..., None] * tint, h, w), 0.0, 1.0)


def _dendrites(g: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Ink of fern-like ice dendrites on the grid of ``density`` (h, w), float64.

    Trunks start preferentially where ``density`` is high; branches leave trunks (and
    twigs leave branches) at +-60 degrees, shorter towards the tip; short needles add rime.
    """
    h, w = density.shape
    area = h * w
    p = density.ravel() ** 2 + 0.02
    p /= p.sum()

    def starts(k):
        idx = g.choice(area, size=k, p=p)
        return (idx // w + g.random(k)).astype(np.float64), (idx % w + g.random(k)).astype(np.float64)

    n_trunks = max(4, int(round(area / 900)))
    y0, x0 = starts(n_trunks)
    theta = g.uniform(0, 2 * np.pi, n_trunks)
    length = np.exp(g.uniform(np.log(12), np.log(70), n_trunks))
    bright = g.uniform(0.5, 1.0, n_trunks)
    segs = [np.stack([y0, x0, theta, length, bright], axis=1)]
    parent = segs[0]
    for level, spacing, ratio, dim in ((1, 3.0, 0.4, 0.75), (2, 2.5, 0.45, 0.6)):
        per = np.maximum(0, (parent[:, 3] / spacing).astype(int))
        tr = np.repeat(np.arange(len(parent)), per)
        if len(tr) == 0:
            break
        pos = g.uniform(0.0, 1.0, len(tr)) * parent[tr, 3]
        side = np.where(g.random(len(tr)) < 0.5, -1.0, 1.0)
        bt = parent[tr, 2] + side * (np.pi / 3) + g.normal(0, 0.06, len(tr))
        blen = (parent[tr, 3] - pos) * ratio * g.uniform(0.4, 1.0, len(tr))
        by = parent[tr, 0] + pos * np.sin(parent[tr, 2])
        bx = parent[tr, 1] + pos * np.cos(parent[tr, 2])
        child = np.stack([by, bx, bt, blen, parent[tr, 4] * dim], axis=1)
        child = child[child[:, 3] > 1.0]
        segs.append(child)
        parent = child
    n_needles = int(round(area / 60))
    ny, nx = starts(n_needles)
    segs.append(
        np.stack(
            [
                ny,
                nx,
                g.uniform(0, 2 * np.pi, n_needles),
                np.exp(g.uniform(np.log(1.0), np.log(4.0), n_needles)),
                g.uniform(0.1, 0.4, n_needles),
            ],
            axis=1,
        )
    )
    s = np.concatenate(segs)
    step = 0.5
    npts = np.maximum(1, np.ceil(s[:, 3] / step).astype(int))
    sid = np.repeat(np.arange(len(s)), npts)
    t = (np.arange(len(sid)) - np.repeat(np.cumsum(npts) - npts, npts)) * step
    py = s[sid, 0] + t * np.sin(s[sid, 2])
    px = s[sid, 1] + t * np.cos(s[sid, 2])
    wt = s[sid, 4] * step
    keep = (py >= 0) & (py < h - 1) & (px >= 0) & (px < w - 1)
    py, px, wt = py[keep], px[keep], wt[keep]
    iy, ix = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    fy, fx = py - iy, px - ix
    acc = np.zeros(h * w)
    for oy, ox, f in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        acc += np.bincount((iy + oy) * w + ix + ox, weights=wt * f, minlength=h * w)
    return acc.reshape(h, w)


def _frost(x, sev, rngs):
    a, b = PARAMS["frost"][sev - 1]
    h, w = x.shape[1:3]
    return a * x + b * _frost_textures(rngs, h, w)


def _gray(x: np.ndarray) -> np.ndarray:
    """OpenCV RGB2GRAY weights; (N, H, W, 3) -> (N, H, W, 1)."""
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]


def _snow(x, sev, rngs):
    loc, scale, zoom, thr, radius, sigma, keep = PARAMS["snow"][sev - 1]
    n, h, w, _ = x.shape
    s = scale_factor(h, w)
    hr, wr = _ref_grid(h, w)
    layer = _stack(rngs, lambda g: g.normal(loc, scale, (hr, wr)))
    layer = _clipped_zoom(layer, float(zoom))
    layer[layer < thr] = 0
    layer = _resize(np.clip(layer, 0, 1), h, w)
    angles = [g.uniform(-135, -45) for g in rngs]
    layer = np.stack([_motion_apply(li, _motion_taps(radius * s, sigma * s, a)) for li, a in zip(layer, angles)])
    layer = layer[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


# --- spatter --------------------------------------------------------------------------

_SOBEL = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _canny(img: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV-style Canny (3x3 Sobel, L1 magnitude, NMS, hysteresis) of a 2-D array."""
    gx = ndimage.correlate(img, _SOBEL, mode="mirror")
    gy = ndimage.correlate(img, _SOBEL.T, mode="mirror")
    mag = np.abs(gx) + np.abs(gy)
    ang = np.mod(np.degrees(np.arctan2(gy, gx)), 180.0)
    p = np.pad(mag, 1)
    h, w = img.shape

    def nb(dy, dx):
        return p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    horiz = (ang < 22.5) | (ang >= 157.5)
    diag = (ang >= 22.5) & (ang < 67.5)
    vert = (ang >= 67.5) & (ang < 112.5)
    anti = (ang >= 112.5) & (ang < 157.5)
    local_max = (
        (horiz & (mag > nb(0, -1)) & (mag >= nb(0, 1)))
        | (vert & (mag > nb(-1, 0)) & (mag >= nb(1, 0)))
        | (diag & (mag > nb(-1, -1)) & (mag >= nb(1, 1)))
        | (anti & (mag > nb(-1, 1)) & (mag >= nb(1, -1)))
    )
    weak = local_max & (mag > low)
    strong = local_max & (mag > high)
    if not strong.any():
        return np.zeros_like(weak)
    labels, _ = ndimage.label(weak, structure=np.ones((3, 3)))
    keep = np.unique(labels[strong])
    return np.isin(labels, keep[keep > 0])


def _equalize_hist(img: np.ndarray) -> np.ndarray:
    """OpenCV equalizeHist of a uint8 array."""
    hist = np.bincount(img.ravel(), minlength=256)
    total = img.size
    first = int(np.flatnonzero(hist)[0])
    if hist[first] == total:
        return np.full_like(img, first)
    cdf = np.cumsum(hist)
    lut = np.rint((cdf - hist[first]) * (255.0 / (total - hist[first])))
    lut[: first + 1] = 0
    return np.clip(lut, 0, 255).astype(np.uint8)[img]


def _box3(a: np.ndarray) -> np.ndarray:
    return ndimage.uniform_filter(a, 3, mode="mirror")


_EMBOSS = np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def _water_mask(liquid: np.ndarray) -> np.ndarray:
    """The reference's water-drop shading (before normalisation), on one 2-D layer."""
    lu8 = (liquid * 255).astype(np.uint8)
    edges = _canny(lu8.astype(np.float64), 50, 150)
    if edges.any():
        dist = ndimage.distance_transform_edt(~edges)
    else:
        dist = np.full(liquid.shape, 20.0)
    dist = np.minimum(dist, 20.0)
    dist = _box3(dist).astype(np.uint8)
    dist = _equalize_hist(dist)
    dist = np.clip(np.rint(ndimage.correlate(dist.astype(np.float64), _EMBOSS, mode="mirror")), 0, 255)
    dist = _box3(dist)
    return liquid * dist


def _spatter(x, sev, rngs):
    loc, scale, sigma, thr, inten, mud = PARAMS["spatter"][sev - 1]
    n, h, w, _ = x.shape
    hr, wr = _ref_grid(h, w)
    liquid = _stack(rngs, lambda g: g.normal(loc, scale, (hr, wr)))
    liquid = _gaussian(liquid, sigma)
    liquid[liquid < thr] = 0
    if not mud:
        m = np.stack([_water_mask(li) for li in liquid])
        mx = m.max(axis=(1, 2), keepdims=True)
        m = np.where(mx > 0, m / np.where(mx > 0, mx, 1.0), 0.0) * inten
        m = _resize(m, h, w)[..., None]
        color = np.array([175, 238, 238]) / 255.0  # pale turquoise water
        return x + m * color
    m = (liquid > thr).astype(np.float64)
    m = _gaussian(m, inten)
    m[m < 0.8] = 0
    m = _resize(m, h, w)[..., None]
    color = np.array([63, 42, 20]) / 255.0  # mud brown
    return x * (1 - m) + color * m
