"""The training objective as pure tensor functions: learning rate, noising and the eps loss.

Objective (Ho et al. 2020, "simple" loss): for an image x0 in [-1, 1], a uniform
timestep t in 0..T-1 and eps ~ N(0, I),

    x_t = sqrt(alpha_bar[t]) x0 + sqrt(1 - alpha_bar[t]) eps,   loss = || eps - eps_theta(x_t, t) ||^2

with the linear beta schedule 1e-4..0.02 over T = 1000 steps
(:data:`odedit.unets.DEFAULT_SCHEDULER_CONFIG`), optionally min-SNR-gamma weighted.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from odedit.schedule import NoiseSchedule


def lr_at(
    step: int,
    lr: float,
    warmup_steps: int,
    schedule: str = "constant",
    total_steps: Optional[int] = None,
    decay_steps: Optional[int] = None,
) -> float:
    """Learning rate of the update made at optimizer step ``step`` (0-based).

    Linear warm-up from lr/warmup to lr over ``warmup_steps`` updates, then constant,
    or a cosine / linear decay to 0 at ``total_steps``. The decay spans every step after the
    warm-up, or only the last ``decay_steps`` (constant before them: warm-up, stable, decay,
    as in Hagele et al. 2024, "Scaling laws and compute-optimal training beyond fixed training
    durations", where a linear cool-down of 10-20 % of the run matched a whole cosine schedule).
    """
    scale = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule != "constant":
        if total_steps is None:
            raise ValueError(f"the {schedule} schedule needs total_steps")
        start = warmup_steps if decay_steps is None else max(warmup_steps, total_steps - decay_steps)
        span = max(1, total_steps - start)
        progress = min(1.0, max(0.0, (step - start) / span))
        scale *= 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return lr * scale


def min_snr_weights(schedule: NoiseSchedule, gamma: float) -> torch.Tensor:
    """min-SNR-gamma loss weights of the eps objective (Hang et al. 2023, eq. for eps-prediction).

    SNR(t) = alpha_bar / (1 - alpha_bar); w(t) = min(SNR(t), gamma) / SNR(t), shape (T,),
    float32, in (0, 1]: the low-noise steps (SNR > gamma) are weighted down.
    """
    ab = schedule.alpha_bar
    snr = ab / (1.0 - ab)
    return (snr.clamp(max=float(gamma)) / snr).float()


def weighted_eps_loss(pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, weights: Optional[torch.Tensor]):
    """Mean squared eps error, per-sample weighted by ``weights[t]`` (None: plain MSE)."""
    if weights is None:
        return F.mse_loss(pred.float(), noise)
    per_sample = (pred.float() - noise).square().flatten(1).mean(1)
    return (weights[t] * per_sample).mean()


def model_eps(net, x_t: torch.Tensor, t: torch.Tensor, base=None, alpha_bar=None, scales=None) -> torch.Tensor:
    """The eps a training step scores: what :class:`odedit.models.GaussianResidualEps` computes at inference.

    ``net`` is the diffusers UNet (called as ``net(x, t, return_dict=False)``), ``x_t`` (B, C, H, W),
    ``t`` (B,) int64; ``base`` the Gaussian (or None: a plain eps network), ``alpha_bar`` (T,) on
    x_t's device, ``scales`` (c_in, c_out) (T,) tables for EDM preconditioning or None.
    Returns (B, C, H, W): float32 with a base or scales, else the network's dtype.
    """
    if scales is None:
        pred = net(x_t, t, return_dict=False)[0]
    else:
        c_in, c_out = (c[t].view(-1, 1, 1, 1) for c in scales)
        pred = c_out * net(c_in * x_t, t, return_dict=False)[0].float()
    if base is not None:  # the network is the residual on the Gaussian (float32)
        pred = pred.float() + base.eps(x_t, alpha_bar[t])
    return pred


def _noise_tables(schedule: NoiseSchedule, device) -> tuple[torch.Tensor, torch.Tensor]:
    ab = schedule.alpha_bar
    return ab.sqrt().float().to(device), (1.0 - ab).sqrt().float().to(device)


def _noisy(x0, t, noise, tables):
    sqrt_ab, sqrt_1mab = tables
    return sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise


@torch.no_grad()
def denoising_loss(unet, x0: torch.Tensor, schedule: NoiseSchedule, seed: int = 0) -> float:
    """A deterministic estimate of the training loss on a batch (for evaluation).

    Timesteps are spread evenly over 0..T-1 across the batch and the noise comes
    from ``seed``, so two models (e.g. before and after training) are compared on
    exactly the same problems. ``x0`` is (B, 3, H, W) in [-1, 1].
    """
    device = next(unet.parameters()).device
    B = x0.shape[0]
    T = schedule.num_train_timesteps
    t = torch.linspace(0, T - 1, B).round().long().to(device)
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x0.shape, generator=gen).to(device)
    x0 = x0.to(device, torch.float32)
    pred = unet(_noisy(x0, t, noise, _noise_tables(schedule, device)), t, return_dict=False)[0]
    return float(F.mse_loss(pred.float(), noise))
