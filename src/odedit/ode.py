"""The DDIM probability-flow ODE solver (paper eq. 8), used in both directions.

Notation key:
    t_cur, t_next  training timesteps of the current and the next level; -1 = clean image
    ab_cur, ab_next  alpha_bar at those levels (1 at the clean level)
    eps            model output eps(x, t)

Eq. 8:  x_next / sqrt(ab_next) = x_cur / sqrt(ab_cur)
                                 + (sqrt((1-ab_next)/ab_next) - sqrt((1-ab_cur)/ab_cur)) * eps

The same formula inverts (t_next > t_cur, "forward", image -> latent) and decodes
(t_next < t_cur). For each pair of adjacent levels the model is evaluated at the
*higher* timestep, in both directions, so that a decode step is the mirror image of
the inversion step (diffusers' DDIMScheduler / DDIMInverseScheduler convention):
    decoding  t_cur > t_next:  eps(x_cur, t_cur)
    inverting t_cur < t_next:  eps(x_cur, t_next)

No clipping happens unless asked for: ``x0_transform`` (e.g. :func:`clip_x0`,
:func:`dynamic_threshold`) is applied to the predicted x0 inside a step, which is
what the official ODEdit implementation does in inversion (clip) and decoding
(dynamic thresholding). The model-output eps is kept, as in diffusers' DDIM with
``use_clipped_model_output=False``.

Paths between the levels of a grid, with this solver or another, are
:func:`odedit.solvers.invert` and :func:`odedit.solvers.decode`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from odedit.models import EpsModel

X0Transform = Callable[[torch.Tensor], torch.Tensor]
StepCallback = Callable[[int], None]


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    ab_cur: float,
    ab_next: float,
    x0_transform: Optional[X0Transform] = None,
) -> torch.Tensor:
    """One deterministic DDIM step (eq. 8) from alpha_bar ``ab_cur`` to ``ab_next``.

    Args:
        x: (B, C, H, W) latent at the current level, float.
        eps: (B, C, H, W) noise prediction for x.
        ab_cur, ab_next: alpha_bar of the two levels as Python floats in (0, 1].
        x0_transform: optional map applied to the predicted x0 (clipping/thresholding).
    Returns:
        (B, C, H, W) latent at the next level, same dtype as x.
    """
    if x0_transform is None:
        # 1. eq. 8 as written: rescale, then move along eps by the change in sigma/sqrt(ab).
        coef = math.sqrt((1.0 - ab_next) / ab_next) - math.sqrt((1.0 - ab_cur) / ab_cur)
        return math.sqrt(ab_next) * (x / math.sqrt(ab_cur) + coef * eps)
    # 1'. x0 form: predicted x0, treated, then re-noised to the next level with the same eps.
    x0 = (x - math.sqrt(1.0 - ab_cur) * eps) / math.sqrt(ab_cur)
    x0 = x0_transform(x0)
    return math.sqrt(ab_next) * x0 + math.sqrt(1.0 - ab_next) * eps


def clip_x0(x0: torch.Tensor) -> torch.Tensor:
    """Clip a predicted x0 to the data range [-1, 1] (official ODEdit inversion option)."""
    return x0.clamp(-1.0, 1.0)


def dynamic_threshold(percentile: float) -> X0Transform:
    """Imagen's dynamic thresholding (Saharia et al. 2022) at a percentile in (0, 1].

    Per image, s = max(1, quantile(|x0|, percentile)); x0 <- clamp(x0, -s, s) / s.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic-threshold percentile must be in (0, 1], got {percentile}")

    def transform(x0: torch.Tensor) -> torch.Tensor:
        flat = x0.reshape(x0.shape[0], -1).abs()
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # quantile needs float32/64: upcast fp16/bf16 only, never downcast
        s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return transform


def ddim_path(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Integrate eq. 8 along a monotone path of timesteps (-1 = the clean image).

    Ascending ``timesteps`` invert (image -> latent), descending ones decode. Makes
    ``len(timesteps) - 1`` model calls; ``callback(1)`` is called after each.

    Args:
        model: the eps(x, t) contract.
        x: (B, C, H, W) float latent at level ``timesteps[0]``.
        timesteps: e.g. ``[-1, 0, 10, ..., 990]`` to invert fully on a 100-step grid.
    Returns:
        (B, C, H, W) latent at level ``timesteps[-1]``.
    """
    schedule = model.schedule
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:]):
        if t_cur == t_next:
            raise ValueError(f"repeated timestep {t_cur} in the DDIM path")
        # The model is evaluated at the higher of the two levels (see module docstring).
        eps = model(x, max(t_cur, t_next))
        x = ddim_step(x, eps, schedule.alpha_bar_at(t_cur), schedule.alpha_bar_at(t_next), x0_transform)
        if callback is not None:
            callback(1)
    return x


def ddim_invert_path_fixed_point(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    iters: int,
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """DDIM inversion that exactly undoes DDIM decoding: fixed-point iteration per step.

    The decoder's step from t_next down to t_cur uses eps(x_next, t_next) (module
    docstring), so its exact inverse solves the implicit equation

        x_next = ddim_step(x_cur, eps(x_next, t_next), ab_cur, ab_next)

    (eq. 8 is affine in x for a fixed eps). Step 1 takes the usual explicit guess
    eps(x_cur, t_next); steps 2..iters+1 re-evaluate eps at the current guess of x_next
    (Pan et al. 2023, "Effective real image editing with accelerated iterative diffusion
    inversion"; Wallace et al. 2023 reach exactness with EDICT instead). ``iters = 0`` is
    :func:`ddim_path`. Model calls: ``(len(timesteps) - 1) * (1 + iters)``. The iteration
    converges where the step's eps coefficient times eps's Lipschitz constant is < 1 (fine
    grids); with an ``x0_transform`` the step is no longer affine and the result is only an
    approximate inverse.

    Args:
        timesteps: ascending path (e.g. ``[-1, 0, 10, ..., 990]``).
        iters: fixed-point refinements per step (>= 0).
    """
    if iters < 0:
        raise ValueError(f"fixed-point iterations must be >= 0, got {iters}")
    if any(b <= a for a, b in zip(timesteps[:-1], timesteps[1:])):
        raise ValueError(f"fixed-point inversion needs ascending timesteps, got {list(timesteps)}")
    schedule = model.schedule
    for t_cur, t_next in zip(timesteps[:-1], timesteps[1:]):
        ab_cur, ab_next = schedule.alpha_bar_at(t_cur), schedule.alpha_bar_at(t_next)
        guess = x
        for _ in range(iters + 1):
            eps = model(guess, t_next)  # 1. explicit guess, then 2.. re-evaluation at the guess
            guess = ddim_step(x, eps, ab_cur, ab_next, x0_transform)
            if callback is not None:
                callback(1)
        x = guess
    return x

