"""Digital corruptions: brightness, contrast, saturate, JPEG, pixelate and elastic transform."""

from __future__ import annotations

import io
import math

import numpy as np
from scipy import ndimage

from odedit.corruptions._plumbing import _ref_grid, _to_uint8, scale_factor
from odedit.corruptions.params import PARAMS
from odedit.corruptions.resample import _bilinear, _interp_matrix, _resize


# ---------------------------------------------------------------------------------------
# Digital
# ---------------------------------------------------------------------------------------


def _brightness(x, sev, rngs):
    c = PARAMS["brightness"][sev - 1]
    v = x.max(axis=-1, keepdims=True)
    vn = np.clip(v + c, 0, 1)
    # HSV with hue and saturation fixed: RGB scales linearly with V (V = 0 -> grey vn)
    return np.where(v > 0, x * (vn / np.where(v > 0, v, 1.0)), vn)


def _contrast(x, sev, rngs):
    c = PARAMS["contrast"][sev - 1]
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


def _saturate(x, sev, rngs):
    a, b = PARAMS["saturate"][sev - 1]
    v = x.max(axis=-1, keepdims=True)
    mn = x.min(axis=-1, keepdims=True)
    delta = v - mn
    sat = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    new = np.clip(sat * a + b, 0, 1)
    # fixed hue and value: x' = V - (V - x) * S' / S; grey pixels have hue 0 (red) in skimage
    coloured = v - (v - x) * (new / np.where(delta > 0, sat, 1.0))
    grey = v * np.concatenate([np.ones_like(new), 1 - new, 1 - new], axis=-1)
    return np.where(delta > 0, coloured, grey)


def _jpeg_compression(x, sev, rngs):
    from PIL import Image

    q = PARAMS["jpeg_compression"][sev - 1]
    out = []
    for xi in _to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(xi).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0)
    return np.stack(out)


def _pixelate(x, sev, rngs):
    from PIL import Image

    c = PARAMS["pixelate"][sev - 1]
    h, w = x.shape[1:3]
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = []
    for xi in _to_uint8(x):
        im = Image.fromarray(xi).resize(small, Image.BOX).resize((w, h), Image.BOX)
        out.append(np.asarray(im, dtype=np.float64) / 255.0)
    return np.stack(out)


def _smooth_field(g: np.random.Generator, hr: int, wr: int, sigma: float, h: int, w: int) -> np.ndarray:
    """gaussian(U(-1, 1) on the (hr, wr) reference grid, sigma, reflect, truncate 3) at (h, w).

    For sigma > 8 the blurred noise is generated on a coarse grid of spacing g_ = sigma // 4
    reference pixels with matching variance (block sums of g_^2 uniforms ~ N(0, g_^2 / 3)),
    which is statistically the same field at a fraction of the cost.
    """
    if sigma <= 8:
        f = ndimage.gaussian_filter(g.uniform(-1, 1, (hr, wr)), sigma, mode="reflect", truncate=3.0)
        return _resize(f[None], h, w)[0]
    gs = int(sigma // 4)
    hc, wc = -(-hr // gs), -(-wr // gs)
    f = ndimage.gaussian_filter(g.normal(0, 1, (hc, wc)), sigma / gs, mode="reflect", truncate=3.0)
    f /= gs * math.sqrt(3.0)
    # image pixel centre -> reference coordinate -> coarse coordinate
    ry = ((np.arange(h) + 0.5) * hr / h) / gs - 0.5
    rx = ((np.arange(w) + 0.5) * wr / w) / gs - 0.5
    return _interp_matrix(ry, hc) @ f @ _interp_matrix(rx, wc).T


def _elastic_transform(x, sev, rngs):
    alpha, sigma, jitter = PARAMS["elastic_transform"][sev - 1]
    n, h, w, _ = x.shape
    s = scale_factor(h, w)
    hr, wr = _ref_grid(h, w)
    cy, cx = h // 2, w // 2
    sq = min(h, w) // 3
    pts1 = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=np.float64)
    src = np.hstack([pts1, np.ones((3, 1))])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ys, xs = [], []
    for g in rngs:
        pts2 = pts1 + g.uniform(-jitter * s, jitter * s, pts1.shape)
        a = np.linalg.solve(src, pts2).T  # 2x3, forward affine (x, y) -> (x', y')
        inv = np.linalg.inv(np.vstack([a, [0.0, 0.0, 1.0]]))
        dx = _smooth_field(g, hr, wr, sigma, h, w) * alpha * s
        dy = _smooth_field(g, hr, wr, sigma, h, w) * alpha * s
        px, py = xx + dx, yy + dy
        xs.append(inv[0, 0] * px + inv[0, 1] * py + inv[0, 2])
        ys.append(inv[1, 0] * px + inv[1, 1] * py + inv[1, 2])
    return _bilinear(x, np.stack(ys), np.stack(xs))
