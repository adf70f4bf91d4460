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
``lower_order_final`` (:func:`dpmpp_2m`, the ``dpm++2m`` solver, sets it for paths under 15
steps, as diffusers does; always when a path ends at the clean image, where h = +inf and only
x_next = D_cur is defined). From the clean level itself (inversion starting at t = -1)
eps is evaluated at t_next, as :func:`odedit.ode.ddim_path` does, and the step is the
DDIM step; the history then holds D = x (exact at sigma = 0).

Model calls: ``len(timesteps) - 1``, one per step, like DDIM. ``x0_transform`` (clipping,
dynamic thresholding) is applied to each D as it is computed, never implicitly.

The solvers by name: :data:`SOLVERS` maps each name to its path function (the one table; a
new solver is one entry here). :func:`invert` and :func:`decode` move an image or a latent
between levels of a timestep grid with any of them (levels: indices into the grid, -1 = the
clean image); :func:`invert` also runs DDIM's fixed-point inversion
(:func:`odedit.ode.ddim_invert_path_fixed_point`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from odedit.models import EpsModel
from odedit.ode import StepCallback, X0Transform, ddim_invert_path_fixed_point, ddim_path, ddim_step

__all__ = [
    "SOLVERS", "PathFn", "decode", "dpmpp_2m", "dpmpp_2m_path", "invert", "level_coefficients", "level_path",
    "path_function", "solver_path",
]

# A path function: (model, x, timesteps, x0_transform, callback) -> x at timesteps[-1],
# one model call per step (the contract of odedit.ode.ddim_path).
PathFn = Callable[
    [EpsModel, torch.Tensor, Sequence[int], Optional[X0Transform], Optional[StepCallback]], torch.Tensor
]


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


def dpmpp_2m(
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """:func:`dpmpp_2m_path` with diffusers' rule for the last step: first order on paths of
    fewer than 15 steps (``lower_order_final``), second order on longer ones."""
    return dpmpp_2m_path(model, x, timesteps, len(timesteps) - 1 < 15, x0_transform, callback)


# The ODE solvers by name (--solver): ddim = eq. 8, the paper's; dpm++2m = DPM-Solver++(2M).
SOLVERS: dict[str, PathFn] = {"ddim": ddim_path, "dpm++2m": dpmpp_2m}


def path_function(solver: str) -> PathFn:
    """The path function of a solver name (ValueError for an unknown name)."""
    try:
        return SOLVERS[solver]
    except KeyError:
        raise ValueError(f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}") from None


def solver_path(
    solver: str,
    model: EpsModel,
    x: torch.Tensor,
    timesteps: Sequence[int],
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Integrate along ``timesteps`` with a named solver (a key of :data:`SOLVERS`), one call per step."""
    return path_function(solver)(model, x, timesteps, x0_transform, callback)


def level_path(grid: Sequence[int], from_level: int, to_level: int) -> list[int]:
    """The timesteps from grid level ``from_level`` to ``to_level``, both included.

    Levels index ``grid`` (ascending timesteps); level -1 is the clean image (timestep -1).
    E.g. on grid [0, 100, 200]: level_path(grid, -1, 2) = [-1, 0, 100, 200] (inversion),
    level_path(grid, 2, -1) = [200, 100, 0, -1] (decoding), level_path(grid, 2, 1) = [200, 100].
    """
    if not (-1 <= from_level < len(grid) and -1 <= to_level < len(grid)) or from_level == to_level:
        raise ValueError(f"bad levels {from_level} -> {to_level} on a grid of {len(grid)}")
    step = 1 if to_level > from_level else -1
    return [-1 if i < 0 else int(grid[i]) for i in range(from_level, to_level + step, step)]


def invert(
    model: EpsModel,
    x0: torch.Tensor,
    grid: Sequence[int],
    to_level: Optional[int] = None,
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
    *,
    solver: str = "ddim",
    inversion_iters: int = 0,
) -> torch.Tensor:
    """Map a clean image to the latent at ``grid[to_level]`` with the probability-flow ODE (no noise).

    Args:
        x0: (B, C, H, W) image in model space (usually [-1, 1]), float; never clipped here.
        grid: ascending timestep grid (see :func:`odedit.schedule.timestep_grid`).
        to_level: index into grid; default the top level ``len(grid) - 1``.
        solver: a key of :data:`SOLVERS`.
        inversion_iters: J > 0: DDIM's fixed-point inversion, the exact inverse of DDIM decoding
            (:func:`odedit.ode.ddim_invert_path_fixed_point`; needs ``solver="ddim"``).
    Returns:
        (B, C, H, W) latent, x0's dtype. Model calls: (to_level + 1) * (1 + J).
    """
    path = level_path(grid, -1, len(grid) - 1 if to_level is None else int(to_level))
    if inversion_iters:
        if solver != "ddim":
            raise ValueError(f"fixed-point inversion inverts DDIM decoding: it needs solver 'ddim', not {solver!r}")
        return ddim_invert_path_fixed_point(model, x0, path, inversion_iters, x0_transform, callback)
    return path_function(solver)(model, x0, path, x0_transform, callback)


def decode(
    model: EpsModel,
    x: torch.Tensor,
    grid: Sequence[int],
    from_level: Optional[int] = None,
    to_level: int = -1,
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[StepCallback] = None,
    *,
    solver: str = "ddim",
) -> torch.Tensor:
    """Carry a latent at ``grid[from_level]`` (default: the top) down to ``grid[to_level]`` (-1: the image).

    One solver call for the whole path (a multistep solver keeps its history along it).

    Args:
        x: (B, C, H, W) float latent at level ``from_level``.
        solver: a key of :data:`SOLVERS`.
    Returns:
        (B, C, H, W) latent (image at -1), x's dtype, not clipped. Model calls: from_level - to_level.
    """
    top = len(grid) - 1 if from_level is None else int(from_level)
    if to_level >= top:
        raise ValueError(f"to_level {to_level} must be below from_level {top}")
    return path_function(solver)(model, x, level_path(grid, top, to_level), x0_transform, callback)
