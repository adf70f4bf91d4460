"""How good a prior is at each noise level: x0-denoising error against doing nothing.

Notation (DDPM / the ODEdit paper): ab = alpha_bar_t, sigma_t = sqrt(1 - ab),
x_t = sqrt(ab) x0 + sigma_t eps with eps ~ N(0, I).

1. The model's clean-image estimate (Tweedie; eq. 8's x0 term):
   x0_hat = (x_t - sigma_t eps_theta(x_t, t)) / sqrt(ab).
2. "Doing nothing" keeps the noisy image, rescaled: x0_nothing = x_t / sqrt(ab),
   whose error is (sigma_t / sqrt(ab)) eps.
3. Since x0_hat - x0 = -(sigma_t / sqrt(ab)) (eps_theta - eps), the ratio
   MSE(x0_hat) / MSE(x0_nothing) = |eps_theta - eps|^2 / |eps|^2: the eps-MSE
   normalised by the drawn noise's energy. 1 = no better than doing nothing,
   0 = perfect; for Gaussian data N(mu, s^2 I) the best possible ratio is
   ab s^2 / (ab s^2 + 1 - ab) (the posterior variance over the baseline's).

Everything is deterministic given the generator, so two models (EMA and raw weights,
two checkpoints) are compared on exactly the same noisy images.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from odedit.models import EpsModel

__all__ = ["DEFAULT_LEVELS", "denoising_errors"]

# The levels reported in docs/model.md: near-clean to nearly pure noise.
DEFAULT_LEVELS = (10, 100, 250, 500, 750)


def denoising_errors(
    model: EpsModel,
    x0: torch.Tensor,
    timesteps: Sequence[int] = DEFAULT_LEVELS,
    generator: torch.Generator | None = None,
    batch_size: int = 64,
) -> list[dict]:
    """Per-level x0-denoising MSE of ``model`` on clean images ``x0``.

    Args:
        model: the ``eps(x, t)`` contract; its dtype/device are used for the calls.
        x0: (N, C, H, W) float images in the model space [-1, 1] (on the model's device).
        timesteps: training timesteps 0..T-1 to evaluate.
        generator: draws the noise (CPU generator; one (N, C, H, W) draw per level, in
            order), so results are reproducible and comparable between models.
        batch_size: images per model call.
    Returns:
        one dict per level: ``t``, ``alpha_bar``, ``mse_x0`` (model, float64 mean over all
        pixels, [-1, 1] scale), ``mse_nothing`` (x_t / sqrt(ab)), and ``ratio`` =
        mse_x0 / mse_nothing.
    """
    T = model.schedule.num_train_timesteps
    rows = []
    for t in timesteps:
        t = int(t)
        if not 0 <= t < T:
            raise ValueError(f"timestep {t} outside 0..{T - 1}")
        ab = model.schedule.alpha_bar_at(t)
        sigma = math.sqrt(1.0 - ab)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
        err = torch.zeros((), dtype=torch.float64, device=x0.device)
        energy = torch.zeros((), dtype=torch.float64, device=x0.device)
        for i in range(0, x0.shape[0], batch_size):
            xb, nb = x0[i : i + batch_size].float(), noise[i : i + batch_size]
            x_t = math.sqrt(ab) * xb + sigma * nb  # step 1: the noisy image
            eps_hat = model(x_t, t).float()
            err += (eps_hat - nb).double().square().sum()
            energy += nb.double().square().sum()
        scale = (1.0 - ab) / ab  # (sigma_t / sqrt(ab))^2: eps error -> x0 error (step 3)
        n = x0.numel()
        mse_x0 = float(err) * scale / n
        mse_nothing = float(energy) * scale / n  # step 2
        rows.append(dict(t=t, alpha_bar=ab, mse_x0=mse_x0, mse_nothing=mse_nothing, ratio=mse_x0 / mse_nothing))
    return rows
