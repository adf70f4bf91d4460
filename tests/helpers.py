"""Small test helpers shared by several test modules (import as ``from helpers import ...``)."""

import math

import torch


class Counted:
    """Wrap an eps model and count its calls and the timesteps asked for (forwards the contract)."""

    def __init__(self, model):
        self.model, self.calls, self.timesteps = model, 0, []
        self.schedule, self.sample_size, self.in_channels = model.schedule, model.sample_size, model.in_channels

    def __call__(self, x, t):
        self.calls += 1
        self.timesteps.append(t)
        return self.model(x, t)


# ---- the conversions the library does not need (the inverses of odedit.schedule's) ----------


def eps_to_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Predicted clean image x0 = (x - sigma eps) / sqrt(alpha_bar)."""
    return (x - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def eps_to_v(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """v = (eps - sigma x) / sqrt(ab), the inverse of :func:`odedit.schedule.v_to_eps`."""
    return (eps - math.sqrt(1.0 - alpha_bar) * x) / math.sqrt(alpha_bar)


def eps_to_score(eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Stein score of the noisy marginal, s = -eps / sigma (eq. 9)."""
    return -eps / math.sqrt(1.0 - alpha_bar)
