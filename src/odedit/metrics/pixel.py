"""Per-image fidelity metrics: PSNR and SSIM (float64, one value per image)."""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from ._common import ArrayLike, _pair_float64



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


