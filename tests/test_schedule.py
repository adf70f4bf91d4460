"""Noise schedules, the DDIM grid and the eps/x0/v/score conversions, checked against diffusers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from helpers import eps_to_score, eps_to_v, eps_to_x0
from odedit.schedule import NoiseSchedule, betas_for, timestep_grid, v_to_eps, x0_to_eps

pytestmark = pytest.mark.usefixtures("single_thread")

F32_EPS = 2.0**-24  # unit roundoff of float32

SCHEDULES = [
    dict(beta_schedule="linear", num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02),
    dict(beta_schedule="linear", num_train_timesteps=250, beta_start=5e-4, beta_end=0.05),
    dict(beta_schedule="scaled_linear", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000),
    dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=300),
]


def _float64_reference(beta_schedule, num_train_timesteps, beta_start=1e-4, beta_end=0.02):
    """alpha_bar from the published formulas, in numpy float64 (independent of torch code paths)."""
    T = num_train_timesteps
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T) ** 2
    else:  # Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
        i = np.arange(T)
        betas = np.minimum(1 - f((i + 1) / T) / f(i / T), 0.999)
    return np.cumprod(1.0 - betas)


@pytest.mark.parametrize("cfg", SCHEDULES, ids=lambda c: f"{c['beta_schedule']}-{c['num_train_timesteps']}")
def test_alpha_bar_matches_diffusers_and_float64_formula(cfg):
    ours = NoiseSchedule.from_betas(betas_for(**cfg)).alpha_bar
    assert ours.dtype == torch.float64 and ours.shape == (cfg["num_train_timesteps"],)
    # 1. exact float64 formula
    np.testing.assert_allclose(ours.numpy(), _float64_reference(**cfg), rtol=1e-12, atol=0)
    # 2. diffusers computes betas and their cumulative product in float32: each of the T
    #    factors (1 - beta) is rounded once and each product once, so the relative error
    #    is bounded by about 2 T u (u = float32 unit roundoff). Compared in float64.
    ref = DDPMScheduler(**cfg).alphas_cumprod.double()
    rtol = 2 * cfg["num_train_timesteps"] * F32_EPS
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=0)


def test_betas_match_diffusers():
    for cfg in SCHEDULES:
        ours = betas_for(**cfg)
        ref = DDPMScheduler(**cfg).betas.double()
        torch.testing.assert_close(ours, ref, rtol=4 * F32_EPS, atol=0)


def test_linear_constructor_is_the_paper_schedule():
    s = NoiseSchedule.linear()
    assert s.num_train_timesteps == 1000
    np.testing.assert_allclose(s.alpha_bar.numpy(), _float64_reference("linear", 1000, 1e-4, 0.02), rtol=1e-12)
    assert s.alpha_bar_at(0) == pytest.approx(1 - 1e-4, rel=1e-15)
    assert s.alpha_bar_at(-1) == 1.0 and s.sigma_at(-1) == 0.0
    assert s.sigma_at(500) == pytest.approx(math.sqrt(1 - float(s.alpha_bar[500])), rel=1e-15)


@pytest.mark.parametrize("cfg", SCHEDULES[1:4], ids=lambda c: c["beta_schedule"])
def test_from_scheduler_config_reads_diffusers_config(cfg, tmp_path):
    sched = DDPMScheduler(**cfg, prediction_type="v_prediction", clip_sample=False)
    # the FrozenDict of a live scheduler ...
    ours = NoiseSchedule.from_scheduler_config(sched.config).alpha_bar
    torch.testing.assert_close(ours, NoiseSchedule.from_betas(betas_for(**cfg)).alpha_bar, rtol=0, atol=0)
    # ... and the json file diffusers writes (sampler keys are ignored)
    sched.save_config(tmp_path)
    cfg_json = json.loads((tmp_path / "scheduler_config.json").read_text())
    again = NoiseSchedule.from_scheduler_config(cfg_json).alpha_bar
    torch.testing.assert_close(again, ours, rtol=0, atol=0)
    torch.testing.assert_close(again, sched.alphas_cumprod.double(), rtol=2 * cfg["num_train_timesteps"] * F32_EPS, atol=0)


def test_from_scheduler_config_trained_betas_and_defaults():
    betas = np.linspace(1e-3, 0.1, 50)
    ours = NoiseSchedule.from_scheduler_config({"trained_betas": betas.tolist(), "beta_schedule": "nonsense"})
    np.testing.assert_allclose(ours.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-13)
    # missing keys take diffusers' defaults (linear 1e-4 .. 0.02 over 1000 steps)
    default = NoiseSchedule.from_scheduler_config({"_class_name": "DDPMScheduler"}).alpha_bar
    torch.testing.assert_close(default, NoiseSchedule.linear().alpha_bar, rtol=0, atol=0)


@pytest.mark.parametrize("T,N", [(1000, 1), (1000, 7), (1000, 10), (1000, 50), (1000, 100), (1000, 333), (1000, 999), (1000, 1000), (250, 40)])
def test_timestep_grid_matches_ddim_leading_spacing(T, N):
    sched = DDIMScheduler(num_train_timesteps=T, timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(N)
    ref = sched.timesteps.tolist()[::-1]  # diffusers lists them descending
    grid = timestep_grid(T, N)
    assert grid == ref
    assert len(grid) == N and grid[0] == 0 and all(b > a for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("N", [0, -3, 1001])
def test_timestep_grid_rejects_bad_step_counts(N):
    with pytest.raises(ValueError, match=r"number of steps must be in \[1, 1000\]"):
        timestep_grid(1000, N)


def test_schedule_validation_errors():
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule(torch.tensor([0.9, 0.9, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        NoiseSchedule(torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([1.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NoiseSchedule(torch.tensor([0.5, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="float64"):
        NoiseSchedule(torch.tensor([0.9, 0.5], dtype=torch.float32))
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule(torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="unsupported beta_schedule 'cosine'"):
        betas_for("cosine")
    with pytest.raises(ValueError, match="num_train_timesteps"):
        betas_for("linear", 0)
    s = NoiseSchedule.linear(10)
    for t in (-2, 10):
        with pytest.raises(IndexError, match=r"outside \[-1, 9\]"):
            s.alpha_bar_at(t)


# ---- conversions ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 250, 999])
def test_conversions_agree_with_the_forward_process(t):
    """With x = sqrt(ab) x0 + sigma eps, every parameterisation recovers the truth."""
    ab = NoiseSchedule.linear().alpha_bar_at(t)
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand((2, 3, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn((2, 3, 8, 8), generator=g, dtype=torch.float64)
    a, sig = math.sqrt(ab), math.sqrt(1 - ab)
    x = a * x0 + sig * eps
    v = a * eps - sig * x0  # Salimans & Ho 2022
    # diffusers' definition of the velocity target
    v_ref = DDPMScheduler().get_velocity(x0, eps, torch.full((2,), t))
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)

    tol = dict(rtol=0, atol=1e-9 / sig if t else 1e-6)  # x0 -> eps divides by sigma (= 0.01 at t=0)
    torch.testing.assert_close(eps_to_x0(x, eps, ab), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(x0_to_eps(x, x0, ab), eps, **tol)
    torch.testing.assert_close(eps_to_v(x, eps, ab), v, rtol=0, atol=1e-9 / a)
    torch.testing.assert_close(v_to_eps(x, v, ab), eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_to_score(eps, ab), -eps / sig, rtol=1e-15, atol=0)
    # round trips
    torch.testing.assert_close(x0_to_eps(x, eps_to_x0(x, eps, ab), ab), eps, **tol)
    torch.testing.assert_close(v_to_eps(x, eps_to_v(x, eps, ab), ab), eps, rtol=0, atol=1e-9 / a)


def test_score_of_a_gaussian_matches_autograd():
    """eq. 9 on an exact model: -eps/sigma is the gradient of the log density of N(sqrt(ab) mu, v)."""
    from odedit.analytic import GaussianPrior

    prior = GaussianPrior(torch.tensor(0.3, dtype=torch.float64), 0.7)
    t = 400
    ab = prior.schedule.alpha_bar_at(t)
    x = torch.randn((1, 3, 4, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    m, v = math.sqrt(ab) * 0.3, ab * 0.49 + 1 - ab
    logp = (-0.5 * (x - m) ** 2 / v).sum()
    (grad,) = torch.autograd.grad(logp, x)
    torch.testing.assert_close(eps_to_score(prior(x.detach(), t), ab), grad, rtol=1e-12, atol=1e-12)
