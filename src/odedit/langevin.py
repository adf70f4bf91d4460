"""Langevin refinement of a latent with the model's score (paper eq. 9, Algorithm 1).

Notation key (Algorithm 1):
    sigma_t     noise level of the latent's level, sqrt(1 - alpha_bar_t)
    sigma_1     noise level of the lowest level of the DDIM grid (level 0)
    eps_step    the user's step size epsilon (paper: 1e-6; odedit's default 4e-5)
    a_t         the step at this level, a_t = eps_step * sigma_t / sigma_1
    T           temperature (paper: 1/3)
    score       s(x, t) = -eps(x, t) / sigma_t                          (eq. 9)

Update, K times per chosen level:
    x <- x - a_t * eps(x, t) / sigma_t + sqrt(2 a_t T) * z,   z ~ N(0, I)

For a target density p this is the unadjusted Langevin algorithm for p^(1/T): at
T = 1 it leaves p invariant (up to the O(a_t) discretisation bias), at T < 1 it
sharpens p towards its modes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from odedit.models import EpsModel
from odedit.rng import randn_per_image


def langevin_step_size(eps_step: float, sigma_t: float, sigma_1: float) -> float:
    """a_t = eps_step * sigma_t / sigma_1 (Algorithm 1, line 3)."""
    return eps_step * sigma_t / sigma_1


def langevin_update(
    x: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    sigma_t: float,
    a_t: float,
    temperature: float,
) -> torch.Tensor:
    """One Langevin update with score -eps/sigma_t (Algorithm 1, line 5).

    Args:
        x, eps, noise: (B, C, H, W) tensors of one dtype; noise ~ N(0, I).
        sigma_t, a_t, temperature: Python floats.
    """
    return x - (a_t / sigma_t) * eps + math.sqrt(2.0 * a_t * temperature) * noise


def langevin(
    model: EpsModel,
    x: torch.Tensor,
    t: int,
    n_steps: int,
    a_t: float,
    temperature: float,
    generators: Sequence[torch.Generator],
    callback: Optional[Callable[[int], None]] = None,
) -> torch.Tensor:
    """K = ``n_steps`` Langevin updates of the latent x at training timestep t.

    Args:
        x: (B, C, H, W) float latent at level t.
        a_t: step size at this level (see :func:`langevin_step_size`).
        generators: one torch.Generator per image, on x.device.
    Returns:
        (B, C, H, W) refined latent. Makes ``n_steps`` model calls.
    """
    sigma_t = model.schedule.sigma_at(t)
    for _ in range(n_steps):
        eps = model(x, t)
        x = langevin_update(x, eps, randn_per_image(x, generators), sigma_t, a_t, temperature)
        if callback is not None:
            callback(1)
    return x
