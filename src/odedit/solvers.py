"""Higher-order solvers of the probability-flow ODE (beside :mod:`odedit.ode`'s DDIM).

DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2, multistep, data
prediction), usable in both directions: decoding (descending timesteps) and inversion
(ascending timesteps; the same update with h < 0, as diffusers'
``DPMSolverMultistepInverseScheduler``). The ODEdit paper (section 5) names faster ODE
solvers such as DPM-Solver as a drop-in for its eq. 8.

Notation key:
    t_cur, t_next    current and next training timestep; -1 = the clean image
    alpha, sigma     sqrt(alpha_bar), sqrt(1 - alpha_bar) at a level (alpha = 1, sigma = 0 clean)
    lam              lambda = log(alpha / sigma), the half log-SNR (+inf at the clean level)
    h                lam_next - lam_cur (> 0 decoding, < 0 inverting)
    D                data prediction x0 = (x - sigma eps(x, t)) / alpha
    r                h_prev / h, ratio of the previous step to this one

Steps (numbers cited in the code):
    1. D_cur = (x_cur - sigma_cur eps(x_cur, t_cur)) / alpha_cur        (model call at t_cur)
    2. first order (== DDIM, eq. 8):
           x_next = (sigma_next / sigma_cur) x_cur - alpha_next (e^-h - 1) D_cur
    3. second order (2M): D = (1 + 1/(2r)) D_cur - 1/(2r) D_prev, then step 2 with D
       (diffusers ``solver_type="midpoint"``; DPM-Solver++ eq. (for 2M) / Algorithm 2).

The first step has no history and is first order. The last step is first order when
``lower_order_final`` (:func:`solver_path` sets it for paths under 15 steps, as diffusers
does; always when a path ends at the clean image, where h = +inf and only
x_next = D_cur is defined). From the clean level itself (inversion starting at t = -1)
eps is evaluated at t_next, as :func:`odedit.ode.ddim_path` does, and the step is the
DDIM step; the history then holds D = x (exact at sigma = 0).

Model calls: ``len(timesteps) - 1``, one per step, like DDIM. ``x0_transform`` (clipping,
dynamic thresholding) is applied to each D as it is computed, never implicitly.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from odedit.models import EpsModel
from odedit.ode import StepCallback, X0Transform, ddim_path, ddim_step

__all__ = ["SOLVERS", "dpmpp_2m_path", "solver_path", "level_coefficients"]

SOLVERS = ("ddim", "dpm++2m")


def level_coefficients(alpha_bar: float) -> tuple[float, float, float]:
    """(alpha, sigma, lambda) of a level; the clean level (alpha_bar = 1) gives (1, 0, +inf)."""
    alpha = math.sqrt(alpha_bar)
    sigma = math.sqrt(max(0.0, 1.0 - alpha_bar))
    lam = math.inf if sigma == 0.0 else math.log(alpha / sigma)
    return alpha, sigma, lam


def dpmpp_2m_path(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    lower_order_final: bool = True,
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Integrate the probability-flow ODE along monotone ``timesteps`` with DPM-Solver++(2M).

    Args:
        model: the eps(x, t) contract.
        x: (B, C, H, W) float latent at level ``timesteps[0]`` (-1: the clean image).
        timesteps: strictly monotone; descending decodes, ascending inverts. -1 may only
            be the first (inversion from the image) or the last (decoding to the image).
        lower_order_final: take the last step at first order (forced when it ends at -1).
        x0_transform: optional map of each data prediction D (e.g. :func:`odedit.ode.clip_x0`).
        callback: called with 1 after each model call.
    Returns:
        (B, C, H, W) latent at level ``timesteps[-1]``, x's dtype.
    """
    ts = [int(t) for t in timesteps]
    if len(ts) < 2:
        return x
    ascending = ts[1] > ts[0]
    for a, b in zip(ts[:-1], ts[1:]):
        if (b > a) != ascending or a == b:
            raise ValueError(f"timesteps must be strictly monotone, got {ts}")
    schedule = model.schedule
    coef = [level_coefficients(schedule.alpha_bar_at(t)) for t in ts]
    d_prev: Optional[torch.Tensor] = None
    h_prev: Optional[float] = None
    last = len(ts) - 2
    for i in range(len(ts) - 1):
        t_cur, t_next = ts[i], ts[i + 1]
        (a_cur, s_cur, l_cur), (a_next, s_next, l_next) = coef[i], coef[i + 1]
        if s_cur == 0.0:
            # From the clean image: eps at t_next and the DDIM step (D = x exactly).
            eps = model(x, t_next)
            x_new = ddim_step(x, eps, 1.0, a_next * a_next, x0_transform)
            d_prev, h_prev = (x if x0_transform is None else x0_transform(x)), None
            x = x_new
        else:
            # 1. data prediction at the current level.
            eps = model(x, t_cur)
            d_cur = (x - s_cur * eps) / a_cur
            if x0_transform is not None:
                d_cur = x0_transform(d_cur)
            if s_next == 0.0:
                x = d_cur  # step 2 with h = +inf: x_next = alpha_next D = D
            else:
                h = l_next - l_cur
                first = d_prev is None or h_prev is None or (lower_order_final and i == last)
                if first:
                    d = d_cur  # 2. first order
                else:
                    r = h_prev / h  # 3. second order (midpoint form)
                    d = (1.0 + 0.5 / r) * d_cur - (0.5 / r) * d_prev
                x = (s_next / s_cur) * x - (a_next * math.expm1(-h)) * d
                h_prev = h
            d_prev = d_cur
        if callback is not None:
            callback(1)
    return x


def solver_path(
    solver: str,
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Integrate along ``timesteps`` with a named solver (``ddim`` | ``dpm++2m``), one call per step."""
    if solver == "ddim":
        return ddim_path(model, x, timesteps, x0_transform, callback)
    if solver == "dpm++2m":
        # first-order last step on short paths only, as diffusers (lower_order_final, < 15 steps)
        return dpmpp_2m_path(model, x, timesteps, len(timesteps) - 1 < 15, x0_transform, callback)
    raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
