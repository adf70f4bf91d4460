"""Stochastic reverse steps (DDPM ancestral sampling as DDIM with eta), for SDEdit.

Notation key (Song et al. 2020, DDIM eq. 12 and 16):
    ab_cur, ab_next   alpha_bar at the current and the next (lower) level
    eta               0: deterministic DDIM; 1: DDPM's posterior variance
    sigma_eta         eta * sqrt((1 - ab_next) / (1 - ab_cur)) * sqrt(1 - ab_cur / ab_next)

    x0_hat = (x - sqrt(1 - ab_cur) eps) / sqrt(ab_cur)
    x_next = sqrt(ab_next) x0_hat + sqrt(1 - ab_next - sigma_eta^2) eps + sigma_eta z

With eta = 1 on consecutive training timesteps this is exactly DDPM's ancestral step.
"""

from __future__ import annotations

import math

import torch


def forward_noise(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Sample q(x_t | x0): sqrt(ab) x0 + sqrt(1 - ab) z (SDEdit's noise injection)."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise


def stochastic_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    noise: torch.Tensor,
    ab_cur: float,
    ab_next: float,
    eta: float = 1.0,
) -> torch.Tensor:
    """One reverse step from ``ab_cur`` to ``ab_next`` > ab_cur with DDIM-eta noise.

    Args:
        x, eps, noise: (B, C, H, W) float tensors; noise ~ N(0, I).
        ab_cur, ab_next: Python floats, 0 < ab_cur < ab_next <= 1.
    """
    sigma_eta = eta * math.sqrt((1.0 - ab_next) / (1.0 - ab_cur)) * math.sqrt(1.0 - ab_cur / ab_next)
    x0_hat = (x - math.sqrt(1.0 - ab_cur) * eps) / math.sqrt(ab_cur)
    direction = math.sqrt(max(1.0 - ab_next - sigma_eta**2, 0.0))
    return math.sqrt(ab_next) * x0_hat + direction * eps + sigma_eta * noise
