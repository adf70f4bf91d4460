"""Distances between image or feature sets: the Frechet distance (the FID formula) and the
sliced Wasserstein distance on Laplacian-pyramid patches (SWD, Karras et al. 2018)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch

from ._common import ArrayLike, RngLike, _as_rng



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


