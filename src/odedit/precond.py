"""EDM-style preconditioning on the DDPM grid (Karras et al. 2022, "Elucidating the design
space of diffusion-based generative models", sec. 5 and table 1), as pure tensor functions.

Notation: ab = alpha_bar_t on our grid (float64), sigma_t^2 = 1 - ab (VP noise),
s = sqrt((1 - ab) / ab) the same level as EDM's VE sigma (x_t / sqrt(ab) = x0 + s eps).
The network F sees a scaled input and its output is scaled and added to a Gaussian's exact
denoiser (:func:`odedit.gaussian.gaussian_eps`, the "skip" part):

    1. eps(x_t, t) = E_G[eps | x_t] + c_out(t) F(c_in(t) x_t, t)
    2. c_in(t)  = 1 / sqrt(ab m2 + 1 - ab)            (x_t of unit second moment; m2 = E|x0|^2 / D)
    3. c_out(t) = sqrt(mean_i Var_G[eps_i | x_t])     (the eps the Gaussian cannot explain, per pixel)
               = sqrt(1 - (1 - ab) mean_i 1 / (ab lam_i + 1 - ab))
    4. loss     = || eps - eps(x_t, t) ||^2 / c_out(t)^2 = || F - F_target ||^2   (EDM's lambda)
    5. levels   ln s ~ N(P_mean, P_std^2), rounded to the nearest level of the grid

With an isotropic Gaussian N(0, sigma_data^2 I) as G (rank 0, mean 0) this is exactly EDM's
preconditioning (c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
c_in = 1 / sqrt(s^2 + sd^2) in VE units) rewritten for eps on the VP grid. With the PPCA base
of the training faces (:mod:`odedit.gaussian`) it generalises it: F's target has unit variance
per pixel wherever the faces were Gaussian.
"""

from __future__ import annotations

import math

import torch

__all__ = ["EDM_P_MEAN", "EDM_P_STD", "EDM_SIGMA_DATA", "edm_scales", "lognormal_timesteps", "ve_log_sigma"]

# EDM's training defaults (Karras et al. 2022, table 1; FFHQ/AFHQ 64x64 configs).
EDM_P_MEAN = -1.2
EDM_P_STD = 1.2
EDM_SIGMA_DATA = 0.5


def ve_log_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """ln s of each level, s = sqrt((1 - ab) / ab); (T,) float64 -> (T,) float64, increasing in t."""
    ab = alpha_bar.double()
    return 0.5 * (torch.log1p(-ab) - torch.log(ab))


def edm_scales(
    alpha_bar: torch.Tensor,
    mean: torch.Tensor,
    eigvals: torch.Tensor,
    residual_var: float,
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """c_in(t), c_out(t) of steps 2-3 for a PPCA Gaussian (mean, eigvals, residual_var) of dim D.

    Args:
        alpha_bar: (T,) float64 ab of each level.
        mean: (D,) the Gaussian's mean (all zeros for EDM's isotropic case).
        eigvals: (k,) variances on the basis (k may be 0).
        residual_var: the variance of each of the other D - k directions.
        dim: D.
    Returns:
        two (T,) float64 tensors, c_in > 0 and c_out in (0, 1].
    """
    ab = alpha_bar.double().reshape(-1, 1)
    lam = eigvals.double().reshape(1, -1)
    var_total = float(lam.sum()) + residual_var * (dim - lam.shape[1])
    m2 = (float(mean.double().square().sum()) + var_total) / dim  # step 2: E|x0|^2 per pixel
    s2 = 1.0 - ab
    c_in = 1.0 / torch.sqrt(ab * m2 + s2)
    inv = (1.0 / (ab * lam + s2)).sum(1, keepdim=True) + (dim - lam.shape[1]) / (ab * residual_var + s2)
    c_out2 = (1.0 - s2 * inv / dim).clamp_min(1e-12)  # step 3 (>= 0 exactly; clamp guards rounding)
    return c_in.reshape(-1), c_out2.sqrt().reshape(-1)


def lognormal_timesteps(
    log_sigma: torch.Tensor,
    n: int,
    generator: torch.Generator,
    p_mean: float = EDM_P_MEAN,
    p_std: float = EDM_P_STD,
) -> torch.Tensor:
    """Step 5: n levels with ln s ~ N(p_mean, p_std^2), each rounded to the grid's nearest level.

    Args:
        log_sigma: (T,) increasing ln s of the grid (:func:`ve_log_sigma`), on the generator's device
            (float32 or float64; the draws take its dtype).
        n: how many levels.
        generator: the randomness (one normal draw per level).
    Returns:
        (n,) int64 in 0..T-1 on log_sigma's device; draws beyond the grid's ends take its end levels.
    """
    z = torch.randn(n, generator=generator, device=log_sigma.device, dtype=log_sigma.dtype)
    mids = 0.5 * (log_sigma[1:] + log_sigma[:-1])
    return torch.searchsorted(mids, (p_mean + p_std * z).contiguous())


def expected_level_share(log_sigma: torch.Tensor, lo: int, hi: int,
                         p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD) -> float:
    """Probability that :func:`lognormal_timesteps` draws a level in lo..hi (for documentation and tests)."""
    mids = 0.5 * (log_sigma[1:] + log_sigma[:-1]).double()
    cdf = lambda v: 0.5 * (1.0 + math.erf((v - p_mean) / (p_std * math.sqrt(2.0))))  # noqa: E731
    a = 0.0 if lo <= 0 else cdf(float(mids[lo - 1]))
    b = 1.0 if hi >= log_sigma.numel() - 1 else cdf(float(mids[hi]))
    return b - a
