"""A closed-form Gaussian prior: an exact ``eps(x, t)`` model for checking solvers.

Test support: the library itself never imports this module; the tests (tests/conftest.py,
test_ode, test_langevin, test_restorers, ...) check the solvers and Langevin against it, and it
ships so that users can run the same checks on their own solvers.

If the data are x0 ~ N(mu, s^2 I), every noisy marginal of the diffusion
x_t = sqrt(ab) x0 + sigma eps (ab = alpha_bar_t, sigma^2 = 1 - ab) is Gaussian too::

    x_t ~ N(sqrt(ab) mu, v I),            v = ab s^2 + 1 - ab
    eps(x_t, t) = E[eps | x_t] = sigma (x_t - sqrt(ab) mu) / v      (exact posterior mean)
    score(x_t, t) = -eps / sigma = -(x_t - sqrt(ab) mu) / v

and the probability-flow ODE keeps the standardised variable
``(x - sqrt(ab) mu) / sqrt(v)`` constant, so its exact solution between two levels is
an affine map (:func:`flow_map`). The clean level (t = -1) has ab = 1, v = s^2.

For the discretised Langevin chain ``x' = x - a (x - m) / v + sqrt(2 a T) z`` the
stationary variance is ``T v / (1 - a / (2 v))`` (:func:`langevin_stationary_var`);
it tends to ``T v`` as a -> 0.

:class:`GaussianPrior` implements the model contract of :mod:`odedit.models`
(``schedule``, ``sample_size``, ``in_channels``, ``__call__(x, t)``), so every sampler
of odedit can run on it and be compared with these formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from odedit.schedule import NoiseSchedule

Mean = Union[torch.Tensor, float]


def _as(mean: Mean, like: torch.Tensor) -> Union[torch.Tensor, float]:
    """``mean`` in the dtype and on the device of ``like`` (scalars stay Python floats)."""
    if isinstance(mean, torch.Tensor):
        return mean.to(dtype=like.dtype, device=like.device)
    return float(mean)


def marginal_var(std: float, alpha_bar: float) -> float:
    """Per-pixel variance v = ab s^2 + 1 - ab of the noisy marginal at alpha_bar."""
    return alpha_bar * std**2 + 1.0 - alpha_bar


def marginal_moments(mean: Mean, std: float, alpha_bar: float) -> tuple[Mean, float]:
    """Mean ``sqrt(ab) mu`` (tensor of mu's shape, or float) and variance v at alpha_bar."""
    return math.sqrt(alpha_bar) * mean, marginal_var(std, alpha_bar)


def gaussian_eps(x: torch.Tensor, mean: Mean, std: float, alpha_bar: float) -> torch.Tensor:
    """Exact eps(x, t) = sigma (x - sqrt(ab) mu) / v; same shape and dtype as x ((B, C, H, W))."""
    sigma = math.sqrt(1.0 - alpha_bar)
    return (x - math.sqrt(alpha_bar) * _as(mean, x)) * (sigma / marginal_var(std, alpha_bar))


def flow_map(x: torch.Tensor, mean: Mean, std: float, ab_from: float, ab_to: float) -> torch.Tensor:
    """Exact probability-flow ODE map of x from level ``ab_from`` to level ``ab_to``.

    ``(x - sqrt(ab) mu) / sqrt(v)`` is constant along the flow. Works in x's dtype (use
    float64 for a reference solution); returns a tensor of x's shape.
    """
    mu = _as(mean, x)
    gain = math.sqrt(marginal_var(std, ab_to) / marginal_var(std, ab_from))
    return (x - math.sqrt(ab_from) * mu) * gain + math.sqrt(ab_to) * mu


def langevin_stationary_var(var: float, step: float, temperature: float = 1.0) -> float:
    """Stationary variance of ``x' = x - a (x - m) / v + sqrt(2 a T) z`` for N(m, v): T v / (1 - a / (2 v)).

    The chain contracts by (1 - a / v) per step and is stable for 0 < a < 2 v.
    """
    if not 0.0 < step < 2.0 * var:
        raise ValueError(f"the Langevin chain is stable only for 0 < step < 2 var = {2.0 * var}, got {step}")
    return temperature * var / (1.0 - step / (2.0 * var))


@dataclass(eq=False)
class GaussianPrior:
    """The model ``eps(x, t)`` of the data distribution N(mean, std^2 I), computed exactly.

    Args:
        mean: mu, a tensor of the image shape (C, H, W) or a scalar.
        std: s > 0, the per-pixel standard deviation of the data.
        schedule: the noise schedule (default: the DDPM linear schedule, T = 1000).
        sample_size, in_channels: image size and channels; taken from ``mean`` when it
            is a (C, H, W) tensor, else default 16 and 3.

    ``prior(x, t)`` returns a tensor of x's shape, dtype and device; t is a training
    timestep 0..T-1 or -1 for the clean level (where eps = 0).
    """

    mean: Mean
    std: float
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule.linear)
    sample_size: Optional[int] = None
    in_channels: Optional[int] = None

    def __post_init__(self) -> None:
        if not (self.std > 0 and math.isfinite(self.std)):
            raise ValueError(f"std must be finite and > 0, got {self.std}")
        if isinstance(self.mean, torch.Tensor) and self.mean.ndim == 3:
            c, h, w = self.mean.shape
            self.in_channels = c if self.in_channels is None else self.in_channels
            self.sample_size = h if self.sample_size is None else self.sample_size
            if (c, h, w) != (self.in_channels, self.sample_size, self.sample_size):
                raise ValueError(
                    f"mean of shape {tuple(self.mean.shape)} does not match "
                    f"({self.in_channels}, {self.sample_size}, {self.sample_size})"
                )
        elif isinstance(self.mean, torch.Tensor) and self.mean.ndim != 0:
            raise ValueError(f"mean must be a scalar or a (C, H, W) tensor, got shape {tuple(self.mean.shape)}")
        self.sample_size = 16 if self.sample_size is None else int(self.sample_size)
        self.in_channels = 3 if self.in_channels is None else int(self.in_channels)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return gaussian_eps(x, self.mean, self.std, self.schedule.alpha_bar_at(int(t)))

    def marginal(self, t: int) -> tuple[Mean, float]:
        """(mean, variance) of x_t; t = -1 is the data distribution itself."""
        return marginal_moments(self.mean, self.std, self.schedule.alpha_bar_at(int(t)))

    def flow(self, x: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        """The exact probability-flow ODE map from timestep t_from to t_to (-1 = clean)."""
        ab = self.schedule.alpha_bar_at
        return flow_map(x, self.mean, self.std, ab(int(t_from)), ab(int(t_to)))

    def sample(
        self,
        generators: Sequence[torch.Generator],
        t: int = -1,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """Draw x_t ~ N(sqrt(ab) mu, v I): (len(generators), C, H, W), row b from generators[b]."""
        shape = (self.in_channels, self.sample_size, self.sample_size)
        z = torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=g.device) for g in generators])
        mean, var = self.marginal(t)
        return _as(mean, z) + math.sqrt(var) * z
