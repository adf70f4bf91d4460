"""Image-quality metrics: PSNR, SSIM, Frechet distance, sliced Wasserstein (SWD),
plus optional network metrics (LPIPS, FID) and a summary helper.

Conventions shared by the pixel metrics (unless a function says otherwise)::

    images   float tensor (N, C, H, W), values in [0, data_range] (default [0, 1]);
             numpy arrays are accepted and converted with ``torch.as_tensor``;
             a single (C, H, W) image is treated as a batch of one.
    result   per-image float64 tensor of shape (N,), on the device of the input.

All reductions are computed in float64. The only randomness (SWD) is drawn from an
explicit ``numpy.random.Generator`` (or an int seed turned into one).

The network metrics (:func:`lpips_distance`, :func:`fid_features`, :func:`fid`) need
the optional extra ``odedit[metrics]`` (``lpips``, ``pytorch-fid``, which pull in
torchvision) and their pretrained weights. They import lazily and raise
:class:`MetricUnavailable` with a reason instead of crashing; by default they never
download anything (``allow_download=False``). :func:`available_network_metrics` says
what is usable without downloading.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F

__all__ = [
    "psnr",
    "ssim",
    "frechet_distance",
    "gaussian_stats",
    "LaplacianDescriptors",
    "laplacian_pyramid",
    "laplacian_descriptors",
    "sliced_wasserstein",
    "swd_from_descriptors",
    "swd",
    "MetricUnavailable",
    "available_network_metrics",
    "lpips_distance",
    "fid_features",
    "fid",
    "mean_and_stderr",
]

ArrayLike = Union[torch.Tensor, np.ndarray]
RngLike = Union[np.random.Generator, int]


# ----------------------------------------------------------------------------------
# helpers


def _as_nchw(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    return t


def _pair_float64(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = _as_nchw(x, "x"), _as_nchw(y, "y")
    if xt.shape != yt.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    yt = yt.to(xt.device)
    return xt.to(torch.float64), yt.to(torch.float64)


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


# ----------------------------------------------------------------------------------
# PSNR / SSIM


def psnr(x: ArrayLike, y: ArrayLike, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image.

    ``x``, ``y``: (N, C, H, W) (or one (C, H, W) image), any real dtype, values in
    ``[0, data_range]``. Returns a float64 tensor of shape (N,):
    ``10 * log10(data_range**2 / MSE)`` with the MSE over C, H and W computed in
    float64. Identical images give ``+inf``. No clipping or quantisation is applied.
    """
    xt, yt = _pair_float64(x, y)
    mse = (xt - yt).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(float(data_range) ** 2 / mse)


_SSIM_SCIPY_ON_CPU = True  # tests switch it off to check the conv2d (GPU) path


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(c**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    x: ArrayLike,
    y: ArrayLike,
    data_range: float = 1.0,
    *,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    chunk: int = 16,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), per image.

    ``x``, ``y``: (N, C, H, W) (or one (C, H, W) image), values in
    ``[0, data_range]``, H and W >= ``win_size``. Returns a float64 tensor (N,) in
    [-1, 1]; SSIM(x, x) = 1.

    Convention (the usual one, identical to ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=data_range`` and to ``pytorch_msssim.ssim``): local means, variances
    and covariance are weighted by a normalised 11x11 Gaussian window (sigma 1.5),
    evaluated only where the window fits inside the image ('valid' filtering, an
    (H-10)x(W-10) map); population (not N-1) moments; C1 = (k1 L)^2, C2 = (k2 L)^2
    with L = data_range; the SSIM map
    ``(2 mu_x mu_y + C1)(2 cov_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2))``
    is averaged over positions and then over channels (each channel separately, no
    colour conversion). Computed in float64, ``chunk`` images at a time.
    """
    xt, yt = _pair_float64(x, y)
    n, c, h, w = xt.shape
    if win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if h < win_size or w < win_size:
        raise ValueError(f"ssim needs H, W >= win_size={win_size}, got {h}x{w}")
    g = _gaussian_window(win_size, sigma, xt.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    k = 5 * c
    wh = g.view(1, 1, 1, win_size).expand(k, 1, 1, win_size)
    wv = g.view(1, 1, win_size, 1).expand(k, 1, win_size, 1)
    g_np, r = g.cpu().numpy(), win_size // 2

    def filt(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' region only
        if t.device.type == "cpu" and _SSIM_SCIPY_ON_CPU:  # scipy's float64 filter is ~8x faster than CPU conv2d
            f = scipy.ndimage.correlate1d(t.detach().numpy(), g_np, axis=3, mode="constant")
            f = scipy.ndimage.correlate1d(f[..., r : w - (win_size - 1 - r)], g_np, axis=2, mode="constant")
            return torch.from_numpy(np.ascontiguousarray(f[:, :, r : h - (win_size - 1 - r)]))
        return F.conv2d(F.conv2d(t, wh, groups=k), wv, groups=k)

    out = []
    for s in range(0, n, max(1, int(chunk))):
        a, b = xt[s : s + chunk], yt[s : s + chunk]
        f = filt(torch.cat([a, b, a * a, b * b, a * b], dim=1))
        mu_x, mu_y, exx, eyy, exy = f.split(c, dim=1)
        var_x = exx - mu_x * mu_x
        var_y = eyy - mu_y * mu_y
        cov = exy - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
        out.append((num / den).mean(dim=(2, 3)).mean(dim=1))
    return torch.cat(out)


# ----------------------------------------------------------------------------------
# Frechet distance (FID formula)


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (M, D), float64.

    The covariance is the unbiased sample covariance (``np.cov(..., rowvar=False)``),
    as in pytorch-fid / the TTUR reference. Needs M >= 2.
    """
    f = _np64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must have shape (M, D) with M >= 2, got {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _np64(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    *,
    method: str = "eigh",
    eps: float = 1e-6,
) -> float:
    """Frechet (2-Wasserstein squared) distance between N(mu1, S1) and N(mu2, S2).

    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``, the FID formula, in float64.
    ``mu``: (D,) (a scalar is D = 1); ``sigma``: (D, D) symmetric positive
    semi-definite covariance (a scalar is a 1x1 variance).

    ``method="eigh"`` (default): ``Tr (S1 S2)^{1/2} = sum sqrt(eig(A S2 A))`` with
    ``A = S1^{1/2}`` from a symmetric eigen-decomposition; negative round-off
    eigenvalues are clipped to 0. Exact for PSD inputs, real-valued, stable for the
    singular covariances of small sample sets. ``method="sqrtm"`` reproduces
    pytorch-fid: ``scipy.linalg.sqrtm(S1 @ S2)``, retried with ``eps * I`` added to
    both covariances if the result is not finite, imaginary round-off dropped.
    The result is clipped at 0 from below (it can only be negative by round-off).
    """
    m1, m2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if m1.shape != m2.shape or m1.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be vectors of equal length, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"sigma1/sigma2 must be ({d}, {d}), got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    if method == "eigh":
        s1s = (s1 + s1.T) / 2
        s2s = (s2 + s2.T) / 2
        w, v = np.linalg.eigh(s1s)
        a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        m = a @ s2s @ a
        ev = np.linalg.eigvalsh((m + m.T) / 2)
        tr_covmean = float(np.sum(np.sqrt(np.clip(ev, 0.0, None))))
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.max(np.abs(np.diagonal(covmean).imag))
            if imag > 1e-3:
                raise ValueError(f"sqrtm produced a significant imaginary component ({imag:g})")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    val = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(val, 0.0)


# ----------------------------------------------------------------------------------
# Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018)

# 5-tap binomial kernel; the separable form of the original 5x5 [1,4,6,4,1]^2/256 filter.
_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0


def _blur(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    x = scipy.ndimage.correlate1d(x, k, axis=2, mode="mirror")
    return scipy.ndimage.correlate1d(x, k, axis=3, mode="mirror")


def _pyr_down(x: np.ndarray) -> np.ndarray:  # cv2.pyrDown
    return _blur(x, _BINOMIAL5)[:, :, ::2, ::2]


def _pyr_up(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:  # cv2.pyrUp, cropped to shape
    n, c, h, w = x.shape
    up = np.zeros((n, c, 2 * h, 2 * w), dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    return _blur(up, 2.0 * _BINOMIAL5)[:, :, : shape[0], : shape[1]]


def _num_levels(h: int, w: int, min_resolution: int) -> int:
    res, levels = min(h, w), 0
    while res >= min_resolution:
        levels += 1
        res //= 2
    return levels


def _images_for_swd(images: Any) -> np.ndarray:
    """To float32 (N, C, H, W) on the 0..255 scale of the original implementation."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"images must be 4-D, got shape {a.shape}")
    if a.dtype == np.uint8:
        if a.shape[-1] > 4:
            raise ValueError(f"uint8 images must be (N, H, W, C), got shape {a.shape}")
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"images must be uint8 (N, H, W, C) or float (N, C, H, W), got dtype {a.dtype}")
    if a.shape[1] > 4:
        raise ValueError(f"float images must be (N, C, H, W) in [0, 1], got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32) * np.float32(255.0)


def laplacian_pyramid(images: ArrayLike, num_levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of a float (N, C, H, W) batch, finest level first.

    As in the original ``generate_laplacian_pyramid``: 5x5 binomial blur
    ([1,4,6,4,1]/16 separable, 'mirror' borders = cv2 BORDER_REFLECT_101), pyrDown =
    blur then keep every 2nd pixel, pyrUp = zero-stuffing then blur x4; level i is
    ``G_i - pyrUp(G_{i+1})`` and the last level is the Gaussian ``G_{L-1}`` itself,
    so the levels sum back (with pyrUp) to the input exactly. Values keep the input
    scale; float32. Sizes not divisible by 2^(L-1) are handled by cropping pyrUp.
    """
    g = np.asarray(images, dtype=np.float32)
    pyramid = [g]
    for _ in range(1, num_levels):
        nxt = _pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - _pyr_up(nxt, pyramid[-1].shape[2:])
        pyramid.append(nxt)
    return pyramid


@dataclass
class LaplacianDescriptors:
    """Raw (not yet normalised) SWD patch descriptors of one image set.

    ``levels[i]``: float32 array (M, C, P, P) of M random P x P patches of pyramid
    level i (finest first); ``resolutions[i]``: height of that level in pixels.
    Descriptors of several batches can be joined with :meth:`concat`.
    """

    levels: list[np.ndarray]
    resolutions: list[int]
    num_images: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def num_descriptors(self) -> int:
        return int(self.levels[0].shape[0]) if self.levels else 0

    def concat(self, other: "LaplacianDescriptors") -> "LaplacianDescriptors":
        if self.resolutions != other.resolutions:
            raise ValueError(f"pyramid levels differ: {self.resolutions} vs {other.resolutions}")
        return LaplacianDescriptors(
            [np.concatenate([a, b], axis=0) for a, b in zip(self.levels, other.levels)],
            list(self.resolutions),
            self.num_images + other.num_images,
            dict(self.meta),
        )


def _sample_patches(level: np.ndarray, k: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    n, c, h, w = level.shape
    r = patch // 2
    if h < patch or w < patch:
        raise ValueError(f"pyramid level {h}x{w} is smaller than the {patch}x{patch} patch")
    # patch centres uniform in [r, size - r), exactly like the original's randint(H, S - H)
    xs = rng.integers(r, w - r, size=n * k)
    ys = rng.integers(r, h - r, size=n * k)
    off = np.arange(-r, r + 1)
    img = np.repeat(np.arange(n), k)
    yy = ys[:, None] + off
    xx = xs[:, None] + off
    return level[img[:, None, None, None], np.arange(c)[None, :, None, None], yy[:, None, :, None], xx[:, None, None, :]]


def laplacian_descriptors(
    images: Any,
    rng: RngLike,
    *,
    descriptors_per_image: int = 128,
    patch_size: int = 7,
    min_resolution: int = 16,
    batch_size: int = 64,
) -> LaplacianDescriptors:
    """Random Laplacian-pyramid patch descriptors of an image set (first step of SWD).

    ``images``: float (N, C, H, W) tensor/array in [0, 1] (the package convention),
    or a uint8 (N, H, W, C) array in 0..255 (as loaded by PIL); a single image may
    omit N. Both are moved to the original's float 0..255 scale (floats are not
    quantised). The pyramid goes from full resolution down to the last level of at
    least ``min_resolution`` (on min(H, W)): 64x64 -> 64, 32, 16; 256 -> 5 levels.
    Per image and level, ``descriptors_per_image`` patches of ``patch_size`` squared
    are drawn at uniform positions from ``rng`` (a Generator or an int seed).
    Images are processed ``batch_size`` at a time; the same rng stream gives the
    same result whatever the batch size only if N is a multiple of it (draws are per
    batch and level).
    """
    rng = _as_rng(rng)
    arr = _images_for_swd(images)
    n, _, h, w = arr.shape
    num_levels = _num_levels(h, w, min_resolution)
    if num_levels < 1:
        raise ValueError(f"images of {h}x{w} are smaller than min_resolution={min_resolution}")
    chunks: list[list[np.ndarray]] = [[] for _ in range(num_levels)]
    for s in range(0, n, max(1, int(batch_size))):
        pyr = laplacian_pyramid(arr[s : s + batch_size], num_levels)
        for i, level in enumerate(pyr):
            chunks[i].append(_sample_patches(level, descriptors_per_image, patch_size, rng))
    resolutions = [h >> i for i in range(num_levels)]
    return LaplacianDescriptors(
        [np.concatenate(c, axis=0) for c in chunks],
        resolutions,
        n,
        {"descriptors_per_image": descriptors_per_image, "patch_size": patch_size},
    )


def _finalize(desc: np.ndarray) -> np.ndarray:
    """Per-channel standardisation over the whole set, flattened to (M, C*P*P)."""
    d = np.asarray(desc, dtype=np.float32)
    mean = d.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = d.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)  # constant channel: leave it at 0 rather than NaN
    return ((d - mean) / std).astype(np.float32).reshape(d.shape[0], -1)


def _w1_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Exact 1-D Wasserstein-1 between two sorted samples of any sizes."""
    allv = np.sort(np.concatenate([a, b]))
    deltas = np.diff(allv)
    ca = np.searchsorted(a, allv[:-1], side="right") / a.size
    cb = np.searchsorted(b, allv[:-1], side="right") / b.size
    return float(np.sum(np.abs(ca - cb) * deltas))


def _directions(rng: np.random.Generator, dim: int, dirs: int) -> np.ndarray:
    """``dirs`` random unit directions in R^dim: Gaussian, normalised, float32 (D, dirs)."""
    d = rng.standard_normal((dim, dirs))
    d /= np.sqrt(np.sum(np.square(d), axis=0, keepdims=True))
    return d.astype(np.float32)


def _w1_projected(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> float:
    """Mean over the columns of ``d`` of the 1-D Wasserstein-1 of the projections."""
    pa = np.sort(a @ d, axis=0)
    pb = np.sort(b @ d, axis=0)
    if pa.shape == pb.shape:
        return float(np.mean(np.abs(pa.astype(np.float64) - pb)))
    return float(np.mean([_w1_sorted(pa[:, j], pb[:, j]) for j in range(d.shape[1])]))


def _parallel_map(fn, items: list, workers: Optional[int]) -> list:
    """``[fn(*item) for item in items]``, in threads (numpy's sort and matmul release the
    GIL); results in input order, so the value never depends on ``workers``."""
    if workers is None:
        workers = min(len(items), os.cpu_count() or 1, 16)
    if workers <= 1 or len(items) <= 1:
        return [fn(*item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda item: fn(*item), items))


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, rng: RngLike, *, dirs: int = 128, repeats: int = 4,
    workers: Optional[int] = None,
) -> float:
    """Sliced Wasserstein-1 distance between point sets ``a`` (Ma, D) and ``b`` (Mb, D).

    For each of ``repeats`` rounds, ``dirs`` random unit directions (Gaussian,
    normalised, float32 as in the original) are drawn from ``rng``; both sets are
    projected, and the 1-D Wasserstein-1 distance is averaged over directions and
    rounds. Equal sizes use the original sorted-difference formula
    ``mean |sort(a d) - sort(b d)|``; unequal sizes use the exact CDF formula (same
    value when sizes are equal). No 1e3 factor here. ``workers``: threads for the
    rounds (None = one per core); the value does not depend on it.
    """
    rng = _as_rng(rng)
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be (M, D) with the same D, got {a.shape} and {b.shape}")
    ds = [_directions(rng, a.shape[1], dirs) for _ in range(repeats)]
    return float(np.mean(_parallel_map(_w1_projected, [(a, b, d) for d in ds], workers)))


def swd_from_descriptors(
    desc_a: LaplacianDescriptors,
    desc_b: LaplacianDescriptors,
    rng: RngLike,
    *,
    dirs: int = 128,
    repeats: int = 4,
    workers: Optional[int] = None,
) -> dict:
    """SWD between two descriptor sets (second step of SWD), in the original's units.

    Each set is standardised on its own, per channel and level (subtract the mean,
    divide by the population std over all its descriptors and pixels; the
    original's ``finalize_descriptors``), then :func:`sliced_wasserstein` is taken
    per level with ``repeats`` x ``dirs`` directions from ``rng`` (drawn level by
    level, round by round). Returns ``{"levels": [SWD x 1e3 per level, finest
    first], "resolutions": [...], "mean": average of the levels}`` (the original's
    ``SWDx1e3_<res>`` and ``SWDx1e3_avg``). Symmetric in (a, b) for a given rng
    state. The levels x rounds projections run in ``workers`` threads (None = one
    per core, at most 16); the result does not depend on it.
    """
    rng = _as_rng(rng)
    if desc_a.resolutions != desc_b.resolutions:
        raise ValueError(f"pyramid levels differ: {desc_a.resolutions} vs {desc_b.resolutions}")
    tasks = []  # level-major: repeats consecutive rounds per level
    for da, db in zip(desc_a.levels, desc_b.levels):
        fa, fb = _finalize(da), _finalize(db)
        if fa.shape[1] != fb.shape[1]:
            raise ValueError(f"descriptor sizes differ: {fa.shape[1]} vs {fb.shape[1]}")
        tasks += [(fa, fb, _directions(rng, fa.shape[1], dirs)) for _ in range(repeats)]
    w1 = np.asarray(_parallel_map(_w1_projected, tasks, workers)).reshape(len(desc_a.levels), repeats)
    levels = [1e3 * float(v) for v in w1.mean(axis=1)]
    return {"levels": levels, "resolutions": list(desc_a.resolutions), "mean": float(np.mean(levels))}


def swd(
    images_a: Any,
    images_b: Any,
    rng: RngLike,
    *,
    descriptors_per_image: int = 128,
    dirs: int = 128,
    repeats: int = 4,
    patch_size: int = 7,
    min_resolution: int = 16,
    batch_size: int = 64,
) -> dict:
    """Sliced Wasserstein distance of Karras et al. 2018 (Progressive GAN), x 1e3.

    ``images_a``/``images_b``: image sets as accepted by
    :func:`laplacian_descriptors` (float (N, C, H, W) in [0, 1] or uint8
    (N, H, W, C)), or precomputed :class:`LaplacianDescriptors` (e.g. of a fixed
    reference set). Defaults are the original settings: 7x7 patches, 128 per image
    and level, 4 repeats x 128 directions, pyramid down to 16 px. Randomness:
    descriptors of ``a``, then of ``b``, then the directions, all from ``rng``.
    Returns ``{"levels": [...], "resolutions": [...], "mean": float}`` as
    :func:`swd_from_descriptors`.

    Because each set is standardised separately (as in the original), a global
    per-channel affine intensity change of one set (brightness/contrast) is
    invisible to SWD; it measures the shape of the local patch distributions.
    """
    rng = _as_rng(rng)
    kw = dict(descriptors_per_image=descriptors_per_image, patch_size=patch_size,
              min_resolution=min_resolution, batch_size=batch_size)
    da = images_a if isinstance(images_a, LaplacianDescriptors) else laplacian_descriptors(images_a, rng, **kw)
    db = images_b if isinstance(images_b, LaplacianDescriptors) else laplacian_descriptors(images_b, rng, **kw)
    return swd_from_descriptors(da, db, rng, dirs=dirs, repeats=repeats)


# ----------------------------------------------------------------------------------
# optional network metrics (LPIPS, FID)


class MetricUnavailable(Exception):
    """A network metric cannot run here; ``reason`` says why (package or weights)."""

    def __init__(self, metric: str, reason: str):
        super().__init__(f"{metric} is unavailable: {reason}")
        self.metric = metric
        self.reason = reason


_EXTRA_HINT = "install the optional extra: pip install 'odedit[metrics]'"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# torchvision ImageNet backbones used by lpips (cached by torch.hub under checkpoints/)
LPIPS_BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
_MODEL_CACHE: dict = {}


def _hub_checkpoint(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _not_installed(module: str, pip_name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return f"package '{pip_name}' is not installed ({_EXTRA_HINT})" if spec is None else None


def _import_or_reason(module: str, pip_name: str) -> tuple[Any, str | None]:
    reason = _not_installed(module, pip_name)
    if reason:
        return None, reason
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # broken install, e.g. a torchvision built for another torch
        return None, f"package '{pip_name}' is installed but failed to import: {type(exc).__name__}: {exc}"


def _check_lpips(net: str) -> tuple[Any, str | None]:
    if net not in LPIPS_BACKBONE_URLS:
        raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONE_URLS)}, got {net!r}")
    reason = _not_installed("lpips", "lpips")
    if reason:
        return None, reason
    _, reason = _import_or_reason("torchvision", "torchvision")
    if reason:
        return None, f"lpips needs torchvision for its {net} backbone: {reason}"
    mod, reason = _import_or_reason("lpips", "lpips")
    if reason:
        return None, reason
    lin = os.path.join(os.path.dirname(getattr(mod, "__file__", "") or ""), "weights", "v0.1", f"{net}.pth")
    if not os.path.isfile(lin):
        return mod, f"lpips linear-layer weights not found in the package ({lin})"
    ckpt = _hub_checkpoint(LPIPS_BACKBONE_URLS[net])
    if not os.path.isfile(ckpt):
        return mod, (f"torchvision {net} backbone weights are not cached at {ckpt} "
                     f"(would need a download from {LPIPS_BACKBONE_URLS[net]})")
    return mod, None


def _check_fid() -> tuple[Any, str | None]:
    reason = _not_installed("pytorch_fid", "pytorch-fid")
    if reason:
        return None, reason
    _, reason = _import_or_reason("torchvision", "torchvision")
    if reason:
        return None, f"pytorch-fid needs torchvision: {reason}"
    mod, reason = _import_or_reason("pytorch_fid", "pytorch-fid")
    if reason:
        return None, reason
    ckpt = _hub_checkpoint(FID_WEIGHTS_URL)
    if not os.path.isfile(ckpt):
        return mod, f"FID Inception weights are not cached at {ckpt} (would need a download from {FID_WEIGHTS_URL})"
    return mod, None


def available_network_metrics() -> dict[str, str | None]:
    """``{"lpips": reason or None, "fid": reason or None}``; None means usable.

    Checks, without downloading anything: the packages (and torchvision) import,
    lpips' bundled linear weights exist, and the pretrained weights (torchvision
    AlexNet for LPIPS, pt_inception for FID) are in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``, ~/.cache/torch/hub/checkpoints by default).
    """
    return {"lpips": _check_lpips("alex")[1], "fid": _check_fid()[1]}


def _load_or_unavailable(metric: str, reason: str | None, allow_download: bool, build):
    """Build a network; weights-missing reasons become errors unless downloads are allowed."""
    if reason is not None and not (allow_download and "not cached" in reason):
        if "not cached" in reason:
            reason += "; pass allow_download=True to let it download"
        raise MetricUnavailable(metric, reason)
    try:
        return build()
    except Exception as exc:
        why = "weights could not be downloaded" if reason else "model construction failed"
        raise MetricUnavailable(metric, f"{why}: {type(exc).__name__}: {exc}") from exc


def lpips_distance(
    x: ArrayLike,
    y: ArrayLike,
    device: str | torch.device | None = None,
    *,
    net: str = "alex",
    allow_download: bool = False,
    batch_size: int = 32,
) -> torch.Tensor:
    """LPIPS v0.1 (Zhang et al. 2018) per image pair, float64 tensor (N,) on CPU.

    ``x``, ``y``: (N, 3, H, W) float in [0, 1] (rescaled to [-1, 1] for lpips).
    ``net``: 'alex' (the usual choice), 'vgg' or 'squeeze'. Raises
    :class:`MetricUnavailable` if lpips/torchvision are missing or the backbone
    weights are not cached (and ``allow_download`` is False, or downloading fails).
    """
    mod, reason = _check_lpips(net)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = ("lpips", net, str(dev))
    if key not in _MODEL_CACHE:
        def build():
            return mod.LPIPS(net=net, version="0.1", verbose=False).eval().to(dev)
        _MODEL_CACHE[key] = _load_or_unavailable("lpips", reason, allow_download, build)
    model = _MODEL_CACHE[key]
    xt, yt = _pair_float64(x, y)
    out = []
    with torch.no_grad():
        for s in range(0, xt.shape[0], batch_size):
            a = xt[s : s + batch_size].to(dev, torch.float32) * 2 - 1
            b = yt[s : s + batch_size].to(dev, torch.float32) * 2 - 1
            out.append(model(a, b).reshape(-1).to("cpu", torch.float64))
    return torch.cat(out)


def fid_features(
    images: ArrayLike,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 50,
    allow_download: bool = False,
) -> np.ndarray:
    """2048-d pool3 features of pytorch-fid's FID Inception, float64 (N, 2048).

    ``images``: (N, 3, H, W) float in [0, 1]; pytorch-fid resizes to 299x299
    (bilinear) and rescales to [-1, 1] itself. Raises :class:`MetricUnavailable`
    if pytorch-fid/torchvision are missing or the pt_inception weights are not
    cached (and ``allow_download`` is False, or downloading fails).
    """
    _, reason = _check_fid()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = ("fid", str(dev))
    if key not in _MODEL_CACHE:
        def build():
            inception = importlib.import_module("pytorch_fid.inception")
            block = inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
            return inception.InceptionV3([block]).eval().to(dev)
        _MODEL_CACHE[key] = _load_or_unavailable("fid", reason, allow_download, build)
    model = _MODEL_CACHE[key]
    x = _as_nchw(images, "images")
    feats = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            pred = model(x[s : s + batch_size].to(dev, torch.float32))[0]
            feats.append(pred.reshape(pred.shape[0], -1).to("cpu", torch.float64).numpy())
    return np.concatenate(feats, axis=0)


def fid(
    images_a: Any,
    images_b: Any,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 50,
    allow_download: bool = False,
) -> float:
    """FID between two image sets ((N, 3, H, W) float in [0, 1]).

    Either argument may instead be precomputed reference statistics ``(mu, sigma)``
    (e.g. from :func:`gaussian_stats` of :func:`fid_features`). Uses
    :func:`frechet_distance` (eigh method). Note FID is strongly biased for small
    sets (use thousands of images for comparable numbers). Raises
    :class:`MetricUnavailable` as :func:`fid_features`.
    """
    def stats(v):
        if isinstance(v, tuple) and len(v) == 2:
            return v
        return gaussian_stats(fid_features(v, device, batch_size=batch_size, allow_download=allow_download))

    mu1, s1 = stats(images_a)
    mu2, s2 = stats(images_b)
    return frechet_distance(mu1, s1, mu2, s2)


# ----------------------------------------------------------------------------------
# summaries


def mean_and_stderr(values: Iterable[float] | ArrayLike) -> tuple[float, float]:
    """Mean and standard error of the mean, as Python floats.

    stderr = sample standard deviation (ddof=1) / sqrt(n); n = 1 gives a NaN
    stderr. Accepts lists, numpy arrays and tensors (flattened); raises
    ValueError for an empty input. NaN/inf values propagate.
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().cpu().to(torch.float64).numpy().ravel()
    else:
        v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan
    return mean, float(v.std(ddof=1) / math.sqrt(n))
