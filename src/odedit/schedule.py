"""Noise-schedule maths (float64) and the conversions of x0 and v predictions to eps.

Notation (DDPM/DDIM, as in the ODEdit paper, eq. 8-9):
    alpha_bar[t]  cumulative product of (1 - beta) at training timestep t, t = 0..T-1
    sigma_t       sqrt(1 - alpha_bar[t]), the noise level of x_t = sqrt(alpha_bar) x0 + sigma eps
    score         s(x_t, t) = -eps(x_t, t) / sigma_t                                   (eq. 9)

The clean image sits at ``alpha_bar = 1`` (sigma = 0), "below" timestep 0, like
diffusers' DDIM with ``set_alpha_to_one=True``.

Everything here is a pure function. Schedule constants are float64 CPU tensors; the
step coefficients handed to the samplers are Python floats, so multiplying a CUDA
tensor by them never forces a host-device sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

# Keys of a diffusers scheduler config that define the training noise schedule.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")


def betas_for(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
) -> torch.Tensor:
    """Betas of a named diffusers schedule as a float64 tensor of shape (T,).

    Supports ``linear`` (Ho et al. 2020), ``scaled_linear`` (latent diffusion) and
    ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021 cosine), with diffusers' formulas.
    """
    T = int(num_train_timesteps)
    if T < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {T}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def f(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(
        f"unsupported beta_schedule {beta_schedule!r}; expected linear, scaled_linear or squaredcos_cap_v2"
    )


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The training noise schedule of a diffusion model.

    Attributes:
        alpha_bar: float64 CPU tensor of shape (T,), strictly decreasing in (0, 1].
    """

    alpha_bar: torch.Tensor

    def __post_init__(self) -> None:
        ab = self.alpha_bar
        if not isinstance(ab, torch.Tensor) or ab.ndim != 1 or ab.numel() < 1:
            raise ValueError("alpha_bar must be a 1-D tensor with at least one entry")
        if ab.dtype != torch.float64:
            raise ValueError(f"alpha_bar must be float64, got {ab.dtype}")
        if not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError("alpha_bar must lie in (0, 1]")
        if ab.numel() > 1 and not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alpha_bar must be strictly decreasing")

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "NoiseSchedule":
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        return cls(alpha_bar=torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(cls, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
        """The DDPM linear schedule (the paper's setting: T=1000, 1e-4 .. 0.02)."""
        return cls.from_betas(betas_for("linear", num_train_timesteps, beta_start, beta_end))

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> "NoiseSchedule":
        """Build from a diffusers scheduler config (DDPM/DDIM/... ``scheduler_config.json``).

        Reads ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` and
        ``trained_betas``; other keys (sampler settings) are ignored.
        """
        if config.get("trained_betas") is not None:
            return cls.from_betas(torch.tensor(config["trained_betas"], dtype=torch.float64))
        return cls.from_betas(
            betas_for(
                config.get("beta_schedule", "linear"),
                config.get("num_train_timesteps", 1000),
                config.get("beta_start", 1e-4),
                config.get("beta_end", 2e-2),
            )
        )

    # ---- accessors --------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alpha_bar.numel())

    def alpha_bar_at(self, t: int) -> float:
        """alpha_bar at integer timestep t; t = -1 means the clean image (alpha_bar = 1)."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_train_timesteps:
            raise IndexError(f"timestep {t} outside [-1, {self.num_train_timesteps - 1}]")
        return float(self.alpha_bar[t])

    def sigma_at(self, t: int) -> float:
        """sigma_t = sqrt(1 - alpha_bar[t]) (0 for the clean level t = -1)."""
        return math.sqrt(1.0 - self.alpha_bar_at(t))


def timestep_grid(num_train_timesteps: int, num_steps: int) -> list[int]:
    """The N-step DDIM grid, ascending: ``[0, k, 2k, ..., (N-1)k]`` with ``k = T // N``.

    This is DDIM's uniform "leading" spacing (diffusers ``timestep_spacing='leading'``,
    ``steps_offset=0``). Level i of the grid is timestep ``grid[i]``; the paper's Langevin
    levels ``t in {0, 25, 50, 75}`` of 100 are indices into this list, and sigma_1 in
    Algorithm 1 is the sigma of level 0.
    """
    T, N = int(num_train_timesteps), int(num_steps)
    if not 1 <= N <= T:
        raise ValueError(f"number of steps must be in [1, {T}], got {N}")
    k = T // N
    return [i * k for i in range(N)]


# ---- conversions between parameterisations (pure; ab = alpha_bar as a float) ---------
# (the other directions, used by the tests only, are in tests/helpers.py)


def x0_to_eps(x: torch.Tensor, x0: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """eps = (x - sqrt(alpha_bar) x0) / sigma (undefined at sigma = 0)."""
    return (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)


def v_to_eps(x: torch.Tensor, v: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """eps from a v-prediction (Salimans & Ho 2022): eps = sqrt(ab) v + sigma x."""
    return math.sqrt(alpha_bar) * v + math.sqrt(1.0 - alpha_bar) * x
