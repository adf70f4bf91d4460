"""ODEdit (Algorithm 1) and SDEdit: configuration, model-call counts, closed-form behaviour on
an exact Gaussian prior, agreement with diffusers, the restore API, and the model adapter."""

from __future__ import annotations

import copy
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import psnr
from diffusers import DDIMScheduler, DDPMScheduler

from odedit import models
from odedit.analytic import GaussianPrior, langevin_stationary_var
from odedit.models import ModelLoadError, UNetEps, load_model, write_checksums
from odedit.ode import clip_x0, dynamic_threshold
from odedit.restorers import (
    PAPER_STEP_SIZE,
    PRESETS,
    ODEdit,
    ODEditConfig,
    SDEdit,
    SDEditConfig,
    odedit,
    sdedit,
)
from odedit.rng import generators_for
from odedit.schedule import timestep_grid
from odedit.solvers import decode, invert
from odedit.sde import stochastic_step
from helpers import Counted

pytestmark = pytest.mark.usefixtures("single_thread")

T = 1000
Z = 5.0  # statistical tolerance, in standard errors


def _gens(offset: int, n: int):
    return generators_for(range(offset, offset + n))




def _prior_images(prior: GaussianPrior, n: int, seed: int) -> torch.Tensor:
    """In-distribution images in model space: samples of the prior."""
    return prior.sample(_gens(seed, n))


# =================================================================================== configs


def test_fast_preset_settings_and_overrides():
    cfg = ODEditConfig.from_preset("fast")
    assert (cfg.steps, cfg.solver, cfg.step_size, cfg.levels) == (20, "dpm++2m", 2.5e-5, (0, 5, 10, 15))
    assert cfg.total_langevin_steps == PRESETS["fast"] == 40 and cfg.langevin_steps == 10
    assert cfg.nfe == 2 * 20 + 40
    # a flag overrides one setting and keeps the preset's others
    over = ODEditConfig.from_preset("fast", step_size=1e-5, steps=10)
    assert (over.step_size, over.solver, over.steps, over.levels) == (1e-5, "dpm++2m", 10, (0, 2, 5, 8))
    # the paper's presets are untouched by it
    assert ODEditConfig.from_preset("light") == ODEditConfig(langevin_steps=25)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(steps=-5), "steps must be a positive integer"),
        (dict(levels=(0, 100)), r"levels \[100\] outside the grid \[0, 99\] \(steps=100\)"),
        (dict(levels=(-1, 3)), r"levels \[-1\] outside the grid"),
        (dict(steps=10), r"levels \[25, 50, 75\] outside the grid \[0, 9\]"),
        (dict(invert_to=40), r"levels \[50, 75\] outside the grid \[0, 40\]"),
        (dict(levels=(3, 3)), "levels must be distinct"),
        (dict(invert_to=100), r"invert_to must be in \[0, 99\]"),
        (dict(langevin_steps=-1), "langevin_steps must be an integer >= 0"),
        (dict(step_size=-1e-6), "step_size must be finite and >= 0"),
        (dict(step_size=float("nan")), "step_size must be finite"),
        (dict(temperature=-0.1), "temperature must be finite and >= 0"),
        (dict(decode_threshold=0.0), r"decode_threshold must be in \(0, 1\]"),
        (dict(decode_threshold=1.2), r"decode_threshold must be in \(0, 1\]"),
    ],
)
def test_odedit_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ODEditConfig(**kwargs)


def test_odedit_config_defaults_are_the_paper_settings_but_the_step_size():
    cfg = ODEditConfig()
    assert (cfg.steps, cfg.levels, cfg.step_size, cfg.temperature) == (100, (0, 25, 50, 75), 4e-5, 1 / 3)
    assert cfg.langevin_steps * 4 == PRESETS["light"] == 100
    assert cfg.nfe == 2 * 100 + 100
    assert ODEditConfig(levels=(50, 0, 25)).levels == (0, 25, 50)  # sorted
    d = cfg.to_dict()
    assert d["total_langevin_steps"] == 100 and d["nfe"] == 300
    # the paper's reading stays one flag away
    paper = ODEditConfig.from_preset("medium", step_size=PAPER_STEP_SIZE)
    assert (paper.step_size, paper.total_langevin_steps, paper.nfe) == (1e-6, 200, 400)


@pytest.mark.parametrize("preset,total", [("light", 100), ("medium", 200), ("heavy", 300)])
@pytest.mark.parametrize("steps", [None, 50, 10, 6])
def test_presets_total_updates(preset, total, steps):
    cfg = ODEditConfig.from_preset(preset, steps=steps)
    assert cfg.total_langevin_steps == total
    n = 100 if steps is None else steps
    assert cfg.steps == n and len(cfg.levels) == 4 and cfg.levels[0] == 0 and max(cfg.levels) < n
    # the paper's levels t = 0, 25, 50, 75 of 100, moved to the N-step grid
    assert cfg.levels == tuple(sorted({min(n - 1, round(lv * n / 100)) for lv in (0, 25, 50, 75)}))


def test_preset_overrides_and_errors():
    assert ODEditConfig.from_preset("heavy", langevin_steps=0).total_langevin_steps == 0
    assert ODEditConfig.from_preset("light", levels=(0, 10)).langevin_steps == 50
    with pytest.raises(ValueError, match="unknown preset 'ultra'; expected one of light, medium, heavy, fast"):
        ODEditConfig.from_preset("ultra")
    with pytest.raises(ValueError, match="levels must not be empty"):
        ODEditConfig.from_preset("light", levels=())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps must be a positive integer"),
        (dict(strength=0.0), r"strength must be in \(0, 1\]"),
        (dict(strength=1.01), r"strength must be in \(0, 1\]"),
        (dict(eta=-0.5), r"eta must be in \[0, 1\]"),
        (dict(eta=2.0), r"eta must be in \[0, 1\]"),
    ],
)
def test_sdedit_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SDEditConfig(**kwargs)


@pytest.mark.parametrize(
    "steps,strength,start",
    [(100, 0.5, 49), (100, 1.0, 99), (100, 0.3, 29), (100, 0.255, 25), (100, 0.01, 0), (100, 0.001, 0),
     (10, 0.3, 2), (1000, 0.5, 499), (1, 0.7, 0)],
)
def test_sdedit_strength_to_start_level(steps, strength, start, gaussian_prior):
    """start = ceil(strength * N) - 1: strength 1 starts at the top level, a positive strength never
    below level 0; for integer strength * N this is diffusers' img2img convention."""
    cfg = SDEditConfig(steps=steps, strength=strength)
    assert cfg.start_level == start and cfg.nfe == start + 1
    if math.isclose(strength * steps, round(strength * steps)):
        sched = DDIMScheduler(timestep_spacing="leading", steps_offset=0)
        sched.set_timesteps(steps)
        n_img2img = min(int(steps * strength), steps)  # diffusers' get_timesteps
        assert int(sched.timesteps[steps - n_img2img]) == timestep_grid(T, steps)[start]
    if steps <= 100:
        m = Counted(gaussian_prior)
        ticks = []
        sdedit(m, torch.zeros((1, 3, 16, 16)), cfg, _gens(0, 1), callback=ticks.append)
        grid = timestep_grid(T, steps)
        assert m.calls == cfg.nfe == sum(ticks)
        assert m.timesteps == [grid[i] for i in range(start, -1, -1)]


# ================================================================================= NFE counts


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(steps=10, levels=(0, 2, 5, 8), langevin_steps=3),
        dict(steps=10, levels=(0, 3, 6), langevin_steps=2, invert_to=6),
        dict(steps=12, levels=(4,), langevin_steps=0),
        dict(steps=7, levels=(), langevin_steps=5),
    ],
)
def test_odedit_nfe_equals_model_calls(gaussian_prior, kwargs):
    cfg = ODEditConfig(**kwargs)
    m = Counted(gaussian_prior)
    ticks = []
    odedit(m, torch.zeros((2, 3, 16, 16)), cfg, _gens(0, 2), callback=ticks.append)
    top = cfg.top_level
    assert m.calls == cfg.nfe == sum(ticks) == 2 * (top + 1) + cfg.langevin_steps * len(cfg.levels)
    grid = timestep_grid(T, cfg.steps)
    # inversion visits grid[0..top] in order; every later call is at a level <= top
    assert m.timesteps[: top + 1] == grid[: top + 1]
    assert max(m.timesteps[top + 1 :]) == grid[top]


def test_restore_callback_counts_nfe_on_the_tiny_unet(tiny_unet_dir):
    cfg = ODEditConfig.from_preset("light", steps=6, langevin_steps=2)
    restorer = ODEdit.from_pretrained(tiny_unet_dir, config=cfg)
    m = Counted(restorer.model)
    restorer.model = m
    ticks = []
    img = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    out = restorer.restore(img, generator=_gens(0, 2), callback=ticks.append)
    assert out.shape == img.shape and m.calls == sum(ticks) == cfg.nfe == 2 * 6 + 2 * 4


# ====================================================================== ODEdit on a Gaussian prior


def test_odedit_without_langevin_is_invert_then_decode(gaussian_prior, tiny_unet):
    x = _prior_images(gaussian_prior, 2, 0)
    for cfg in (ODEditConfig(steps=20, levels=(0, 5, 10, 15), langevin_steps=0),
                ODEditConfig(steps=20, levels=(), langevin_steps=9, step_size=1e-3)):
        grid = timestep_grid(T, 20)
        ref = decode(gaussian_prior, invert(gaussian_prior, x, grid), grid)
        assert torch.equal(odedit(gaussian_prior, x, cfg, _gens(0, 2)), ref)
    # with a partial inversion and the clip/threshold options, on the tiny UNet
    cfg = ODEditConfig(steps=10, levels=(0, 3), langevin_steps=0, invert_to=6, clip_inversion_x0=True,
                       decode_threshold=0.9)
    xf = x.float().clamp(-1, 1)
    grid = timestep_grid(T, 10)
    with torch.no_grad():
        z = invert(tiny_unet, xf, grid, to_level=6, x0_transform=clip_x0)
        ref = decode(tiny_unet, z, grid, from_level=6, x0_transform=dynamic_threshold(0.9))
        out = odedit(tiny_unet, xf, cfg, _gens(0, 2))
    assert torch.equal(out, ref)


def test_odedit_with_zero_step_size_returns_the_input(gaussian_prior):
    x = _prior_images(gaussian_prior, 4, 10)
    cfg = ODEditConfig(step_size=0.0)  # paper grid: 100 steps, 4 levels x 50 updates, all with a_t = 0
    out = odedit(gaussian_prior, x, cfg, _gens(0, 4))
    assert psnr(out, x, data_range=2.0) > 40.0


def _decode_gain(prior: GaussianPrior, t_cur: int, t_next: int) -> float:
    """For the exact Gaussian eps, one DDIM decode step (eq. 8, model at t_cur) maps
    d = x - sqrt(ab) mu at t_cur to c * d at t_next with this c."""
    ab_c, ab_n = prior.schedule.alpha_bar_at(t_cur), prior.schedule.alpha_bar_at(t_next)
    v_c = ab_c * prior.std**2 + 1 - ab_c
    coef = math.sqrt((1 - ab_n) / ab_n) - math.sqrt((1 - ab_c) / ab_c)
    return math.sqrt(ab_n) * (1 / math.sqrt(ab_c) + coef * math.sqrt(1 - ab_c) / v_c)


def _odedit_closed_form(prior: GaussianPrior, cfg: ODEditConfig) -> tuple[float, float]:
    """(F, V): given the latent after inversion, the output of ODEdit on the Gaussian prior is
    E[out] - mu = F (out_0 - mu) (out_0: the same run without Langevin) and Var[out] = V per pixel.
    Each Langevin block at level l maps d -> r^K d + N(0, var*(1 - r^(2K))), r = 1 - a_l / v_l;
    each decode step multiplies d by its gain."""
    grid = timestep_grid(T, cfg.steps)
    sched = prior.schedule
    sigma_1 = sched.sigma_at(grid[0])
    factor, var = 1.0, 0.0
    for level in range(cfg.top_level, -1, -1):
        t = grid[level]
        if level in cfg.levels and cfg.langevin_steps > 0:
            v = prior.std**2 * sched.alpha_bar_at(t) + 1 - sched.alpha_bar_at(t)
            a = cfg.step_size * sched.sigma_at(t) / sigma_1
            rk = (1 - a / v) ** cfg.langevin_steps
            factor *= rk
            var = rk**2 * var + (langevin_stationary_var(v, a, cfg.temperature) * (1 - rk**2) if a > 0 else 0.0)
        c = _decode_gain(prior, t, grid[level - 1] if level > 0 else -1)
        var *= c**2
    return factor, var


def test_odedit_zero_temperature_contracts_by_the_closed_form_factor(gaussian_prior):
    """At T = 0 Langevin is gradient descent on the exact log-density: the output is pulled to mu
    by exactly prod_l (1 - a_l / v_l)^K relative to the run without Langevin."""
    x = gaussian_prior.mean + 0.6  # off-distribution: 1.2 standard deviations above the mean
    x = x.expand(2, -1, -1, -1).clone()
    base = ODEditConfig(steps=20, levels=(0, 5, 10, 15), langevin_steps=0)
    out0 = odedit(gaussian_prior, x, base, _gens(0, 2))
    for k in (1, 4, 10):
        cfg = ODEditConfig(steps=20, levels=(0, 5, 10, 15), langevin_steps=k, step_size=2e-3, temperature=0.0)
        factor, var = _odedit_closed_form(gaussian_prior, cfg)
        assert var == 0.0 and 0 < factor < 1
        out = odedit(gaussian_prior, x, cfg, _gens(0, 2))
        torch.testing.assert_close(out - gaussian_prior.mean, factor * (out0 - gaussian_prior.mean),
                                   rtol=1e-10, atol=1e-12)


def test_odedit_langevin_pulls_toward_the_prior_mean(gaussian_prior):
    """At the paper's temperature 1/3 with a large step: mean and variance of the output follow the
    closed form, and the distance to mu decreases with the number of Langevin updates."""
    mu, n = gaussian_prior.mean, 16
    x = (mu + 0.6).expand(n, -1, -1, -1).clone()
    levels = (0, 5, 10, 15)
    out0 = odedit(gaussian_prior, x, ODEditConfig(steps=20, levels=levels, langevin_steps=0), _gens(0, n))
    dists, expected = [], []
    for k in (0, 2, 6, 20):
        cfg = ODEditConfig(steps=20, levels=levels, langevin_steps=k, step_size=5e-4, temperature=1 / 3)
        factor, var = _odedit_closed_form(gaussian_prior, cfg)
        out = odedit(gaussian_prior, x, cfg, _gens(100 * k, n))
        resid = out - mu - factor * (out0 - mu)  # ~ N(0, var) per pixel, independent across images
        if k > 0:
            m = resid.numel()
            assert abs(float(resid.mean())) < Z * math.sqrt(var / m)
            assert abs(float(resid.var()) / var - 1) < Z * math.sqrt(2 / m)
        expected_sq = factor**2 * float(((out0 - mu) ** 2).mean()) + var
        sq = float(((out - mu) ** 2).mean())
        assert sq == pytest.approx(expected_sq, rel=0.05)
        dists.append(sq)
        expected.append(expected_sq)
    # the closed form says: monotone decrease here (the bias shrinks faster than the noise grows) ...
    assert all(b < a for a, b in zip(expected, expected[1:])), expected
    # ... and so does the measurement
    assert all(b < a for a, b in zip(dists, dists[1:])), dists


# =================================================================================== SDEdit


def _sdedit_closed_form(prior: GaussianPrior, cfg: SDEditConfig) -> tuple[float, float]:
    """(G, V) with E[out] - mu = G (x_in - mu) and Var[out] = V per pixel, for the exact Gaussian eps.

    Start: d = x - sqrt(ab) mu ~ N(sqrt(ab) (x_in - mu), 1 - ab). A stochastic DDIM step maps
    d -> g d + sigma_eta z with g = (sqrt(ab_n ab_c) s^2 + dir sigma_c) / v_c."""
    grid = timestep_grid(T, cfg.steps)
    sched, s2 = prior.schedule, prior.std**2
    ab_s = sched.alpha_bar_at(grid[cfg.start_level])
    gain, var = math.sqrt(ab_s), 1 - ab_s
    for level in range(cfg.start_level, -1, -1):
        ab_c = sched.alpha_bar_at(grid[level])
        ab_n = sched.alpha_bar_at(grid[level - 1] if level > 0 else -1)
        v_c = ab_c * s2 + 1 - ab_c
        sig_eta = cfg.eta * math.sqrt((1 - ab_n) / (1 - ab_c) * (1 - ab_c / ab_n))
        direction = math.sqrt(max(1 - ab_n - sig_eta**2, 0.0))
        g = (math.sqrt(ab_n * ab_c) * s2 + direction * math.sqrt(1 - ab_c)) / v_c
        gain, var = g * gain, g**2 * var + sig_eta**2
    return gain, var


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_sdedit_on_a_gaussian_prior_matches_the_closed_form(gaussian_prior, strength):
    mu, n = gaussian_prior.mean, 48
    cfg = SDEditConfig(steps=50, strength=strength)
    gain, var = _sdedit_closed_form(gaussian_prior, cfg)
    means = []
    for x_level in (0.9, -0.9):
        x = torch.full((n, 3, 16, 16), x_level, dtype=torch.float64)
        out = sdedit(gaussian_prior, x, cfg, _gens(int(10 * x_level) + 50, n))
        resid = out - mu - gain * (x - mu)
        m = resid.numel()
        assert abs(float(resid.mean())) < Z * math.sqrt(var / m)
        assert abs(float(resid.var()) / var - 1) < Z * math.sqrt(2 / m)
        means.append(out.mean(0))
    if strength == 1.0:
        # independent of the input: the input enters with weight sqrt(ab_top) * prod g < 1 %, and
        # the sample mean over n draws is the prior mean within the sampling error
        assert abs(gain) < 0.01
        for mean in means:
            z = (mean - mu) / math.sqrt(var / n)
            assert abs(float(z.mean())) < Z / math.sqrt(z.numel()) + abs(gain) * 1.5 / math.sqrt(var / n)
            assert float(z.abs().max()) < 5.0
        # the ancestral sampler on a strided grid under-disperses (var < s^2 here); the reference
        # itself tends to the data variance s^2 on the full 1000-step DDPM chain
        _, var_full = _sdedit_closed_form(gaussian_prior, SDEditConfig(steps=T, strength=1.0))
        assert var < var_full and abs(var_full / gaussian_prior.std**2 - 1) < 0.03
    else:
        assert gain > 10 * _sdedit_closed_form(gaussian_prior, SDEditConfig(steps=50, strength=1.0))[0]


def test_sdedit_eta0_is_ddim_decoding_of_the_noised_input(gaussian_prior):
    """eta = 0: only the injected noise is random; the reverse process is the ODE (eq. 8)."""
    cfg = SDEditConfig(steps=20, strength=0.6, eta=0.0)
    x0 = _prior_images(gaussian_prior, 3, 4)
    gens = _gens(0, 3)
    z = torch.stack([torch.randn((3, 16, 16), generator=g, dtype=torch.float64) for g in gens])
    grid = timestep_grid(T, cfg.steps)
    ab = gaussian_prior.schedule.alpha_bar_at(grid[cfg.start_level])
    ref = decode(gaussian_prior, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * z, grid, from_level=cfg.start_level)
    torch.testing.assert_close(sdedit(gaussian_prior, x0, cfg, _gens(0, 3)), ref, rtol=1e-12, atol=1e-12)


def test_sdedit_equals_diffusers_ddim_eta1_loop(gaussian_prior, linear_schedule):
    """SDEdit = add_noise at the start level + DDIMScheduler(eta=1) steps, with the same noises."""
    n_img, cfg = 2, SDEditConfig(steps=20, strength=0.4)
    x0 = _prior_images(gaussian_prior, n_img, 3)
    ours = sdedit(gaussian_prior, x0, cfg, _gens(0, n_img))

    sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.alphas_cumprod = linear_schedule.alpha_bar.clone()
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.set_timesteps(cfg.steps)
    gens = _gens(0, n_img)
    noise = lambda: torch.stack([torch.randn((3, 16, 16), generator=g, dtype=torch.float64) for g in gens])  # noqa: E731
    timesteps = sched.timesteps[cfg.steps - cfg.nfe :]
    x = sched.add_noise(x0, noise(), timesteps[:1].repeat(n_img))
    for t in timesteps:
        x = sched.step(gaussian_prior(x, int(t)), t, x, eta=1.0, variance_noise=noise()).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t", [999, 500, 37, 1, 0])
def test_stochastic_step_eta1_is_ddpm_ancestral_step(gaussian_prior, linear_schedule, t):
    sched = DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    sched.alphas_cumprod = linear_schedule.alpha_bar.clone()
    x = gaussian_prior.sample(_gens(0, 2), t=t)
    eps = gaussian_prior(x, t)
    ref = sched.step(eps, t, x, generator=_gens(5, 2)).prev_sample
    z = torch.stack([torch.randn((3, 16, 16), generator=g, dtype=torch.float64) for g in _gens(5, 2)])
    ab_prev = linear_schedule.alpha_bar_at(t - 1)
    ours = stochastic_step(x, eps, z, linear_schedule.alpha_bar_at(t), ab_prev, eta=1.0)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # eta = 0 is the deterministic DDIM step
    from odedit.ode import ddim_step

    det = stochastic_step(x, eps, z, linear_schedule.alpha_bar_at(t), ab_prev, eta=0.0)
    torch.testing.assert_close(det, ddim_step(x, eps, linear_schedule.alpha_bar_at(t), ab_prev), rtol=1e-12, atol=1e-12)


def test_sdedit_batch_independence(gaussian_prior, tiny_unet):
    cfg = SDEditConfig(steps=12, strength=0.5)
    x = _prior_images(gaussian_prior, 4, 20)
    batch = sdedit(gaussian_prior, x, cfg, _gens(0, 4))
    for i in range(4):
        assert torch.equal(sdedit(gaussian_prior, x[i : i + 1], cfg, _gens(i, 1)), batch[i : i + 1])
    # the network's conv kernels may pick other algorithms for other batch sizes: small tolerance
    xf = x.float().clamp(-1, 1)
    with torch.no_grad():
        batch = sdedit(tiny_unet, xf, cfg, _gens(0, 4))
        singles = torch.cat([sdedit(tiny_unet, xf[i : i + 1], cfg, _gens(i, 1)) for i in range(4)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


def test_odedit_batch_independence(gaussian_prior, tiny_unet):
    cfg = ODEditConfig(steps=6, levels=(0, 2, 4), langevin_steps=1, step_size=1e-4)
    x = _prior_images(gaussian_prior, 3, 30)
    batch = odedit(gaussian_prior, x, cfg, _gens(0, 3))
    for i in range(3):
        assert torch.equal(odedit(gaussian_prior, x[i : i + 1], cfg, _gens(i, 1)), batch[i : i + 1])
    # The first decode steps divide the model's rounding by sqrt(alpha_bar) of the top level
    # (~0.017 at t = 900), and a random UNet's ODE round trip is poorly conditioned: in float32
    # batch-dependent conv rounding (~1e-6) shows up at ~1e-3. In float64 it must vanish.
    net64 = UNetEps(copy.deepcopy(tiny_unet.unet).double(), tiny_unet.schedule)
    xd = x.clamp(-1, 1)
    with torch.no_grad():
        batch = odedit(net64, xd, cfg, _gens(0, 3))
        singles = torch.cat([odedit(net64, xd[i : i + 1], cfg, _gens(i, 1)) for i in range(3)])
    assert batch.dtype == torch.float64
    torch.testing.assert_close(batch, singles, rtol=0, atol=1e-9)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)


# =============================================================================== restore API


def _unit_images(prior, n, seed):
    return ((_prior_images(prior, n, seed) + 1) / 2).clamp(0, 1).float()


def test_restore_api_shapes_ranges_and_generators(gaussian_prior):
    restorer = ODEdit(gaussian_prior, ODEditConfig(steps=10, levels=(0, 2, 5, 8), langevin_steps=3, step_size=1e-3))
    img = _unit_images(gaussian_prior, 3, 40)
    out = restorer.restore(img, generator=_gens(0, 3))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # single image (C, H, W) in, single image out; equal to its row of the batch
    one = restorer.restore(img[1], generator=_gens(1, 1))
    assert one.shape == img[1].shape and torch.equal(one, out[1])
    # list of generators: batch independent; same seeds -> same result
    assert torch.equal(restorer.restore(img[[2, 0]], generator=_gens(2, 1) + _gens(0, 1)), out[[2, 0]])
    # single generator: reproducible, and each image gets its own noise
    same = img[:1].expand(3, -1, -1, -1)
    a = restorer.restore(same, generator=torch.Generator().manual_seed(5))
    b = restorer.restore(same, generator=torch.Generator().manual_seed(5))
    c = restorer.restore(same, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])
    # no generator: fresh randomness
    assert not torch.equal(restorer.restore(same), restorer.restore(same))
    # float64 in -> float64 out
    assert restorer.restore(img.double(), generator=_gens(0, 3)).dtype == torch.float64


def test_restore_maps_unit_range_to_model_space_and_back(gaussian_prior):
    """[0, 1] in, [0, 1] out: with a zero step size ODEdit is the ODE round trip (> 40 dB),
    and large Langevin noise is clamped to [0, 1]."""
    img = _unit_images(gaussian_prior, 3, 50)
    out = ODEdit(gaussian_prior, ODEditConfig(step_size=0.0)).restore(img, generator=_gens(0, 3))
    assert psnr(out, img, data_range=1.0) > 40.0
    noisy = ODEdit(gaussian_prior, ODEditConfig(steps=10, levels=(0,), langevin_steps=5, step_size=0.3,
                                                temperature=1.0)).restore(img, generator=_gens(0, 3))
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0  # clamped, not wrapped
    sd = SDEdit(gaussian_prior, SDEditConfig(steps=20, strength=0.3)).restore(img, generator=_gens(0, 3))
    assert sd.shape == img.shape and 0.0 <= float(sd.min()) and float(sd.max()) <= 1.0


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, 16, 16), (3, 16, 15), (1, 1, 3, 16, 16), (16, 16)])
def test_restore_rejects_bad_shapes(gaussian_prior, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 16, 16\)"):
        ODEdit(gaussian_prior).restore(torch.rand(shape))


def test_restore_argument_errors(gaussian_prior):
    with pytest.raises(ValueError, match="got 1 generators for 2 images"):
        ODEdit(gaussian_prior).restore(torch.rand((2, 3, 16, 16)), generator=_gens(0, 1))
    with pytest.raises(TypeError, match="ODEdit needs an ODEditConfig"):
        ODEdit(gaussian_prior, SDEditConfig())
    with pytest.raises(TypeError, match="SDEdit needs an SDEditConfig"):
        SDEdit(gaussian_prior, ODEditConfig())
    # the class defaults to the tool's preset (fast), the config type to the paper's Algorithm 1 (light)
    assert ODEdit(gaussian_prior).config == ODEditConfig.from_preset("fast") != ODEditConfig()
    assert SDEdit(gaussian_prior).config == SDEditConfig()


def test_the_config_type_picks_the_algorithm(gaussian_prior):
    """One table: {ODEditConfig: odedit, SDEditConfig: sdedit}; method names come from the configs."""
    from odedit.restorers import ALGORITHMS, METHODS, Restorer, algorithm_for, config_for

    assert ALGORITHMS == {ODEditConfig: odedit, SDEditConfig: sdedit}
    assert METHODS == {"odedit": ODEditConfig, "sdedit": SDEditConfig}
    assert algorithm_for(SDEditConfig()) is sdedit
    with pytest.raises(TypeError, match="no restoration method takes a dict"):
        algorithm_for({})
    with pytest.raises(TypeError, match="no restoration method"):
        Restorer(gaussian_prior)  # the generic class has no default config
    img = torch.rand((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    for cfg, cls in ((ODEditConfig(steps=4, levels=(0, 2), langevin_steps=2), ODEdit),
                     (SDEditConfig(steps=6, strength=0.5), SDEdit)):
        assert torch.equal(Restorer(gaussian_prior, cfg).restore(img, generator=_gens(1, 2)),
                           cls(gaussian_prior, cfg).restore(img, generator=_gens(1, 2)))
    # config_for: a method name and options; None keeps the preset's or the default value
    assert config_for("odedit") == ODEditConfig.from_preset("fast")
    assert config_for("odedit", preset="fast", steps=None, solver=None) == ODEditConfig.from_preset("fast")
    assert config_for("sdedit", steps=None, strength=0.3) == SDEditConfig(strength=0.3)
    with pytest.raises(ValueError, match="unknown method 'x'"):
        config_for("x")
    assert ODEditConfig(steps=4, levels=(0,), langevin_steps=1).stochastic
    assert not ODEditConfig(steps=4, levels=(0,), langevin_steps=0).stochastic
    assert not ODEditConfig(steps=4, levels=(0,), langevin_steps=1, temperature=0.0).stochastic
    assert SDEditConfig(eta=0.0).stochastic


# ========================================================================= model adapter (UNetEps)


class FakeNet(torch.nn.Module):
    """Stands in for a UNet2DModel: outputs the exact eps, v or x0 of a Gaussian prior."""

    def __init__(self, prior: GaussianPrior, kind: str, learned_variance: bool = False):
        super().__init__()
        self.prior, self.kind, self.learned_variance = prior, kind, learned_variance
        self.weight = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.config = SimpleNamespace(sample_size=prior.sample_size, in_channels=prior.in_channels)
        self.seen = []

    def forward(self, x, timesteps, return_dict=True):
        assert not return_dict and timesteps.dtype == torch.long and timesteps.shape == (x.shape[0],)
        t = int(timesteps[0])
        self.seen.append(t)
        ab = self.prior.schedule.alpha_bar_at(t)
        eps = self.prior(x, t)
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        out = {"epsilon": eps, "v_prediction": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0, "sample": x0}[self.kind]
        if self.learned_variance:
            out = torch.cat([out, torch.full_like(out, 123.0)], dim=1)
        return (out + self.weight,)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("learned_variance", [False, True])
def test_unet_adapter_prediction_types(gaussian_prior, kind, learned_variance):
    net = FakeNet(gaussian_prior, kind, learned_variance)
    model = UNetEps(net, gaussian_prior.schedule, kind)
    assert (model.sample_size, model.in_channels) == (16, 3) and model.dtype == torch.float64
    x = gaussian_prior.sample(_gens(0, 2), t=300)
    for t in (0, 10, 300, 999):
        torch.testing.assert_close(model(x, t), gaussian_prior(x, t), rtol=1e-9, atol=1e-9)
    assert net.seen == [0, 10, 300, 999]
    out32 = model(x.float(), 300)  # computed in the network's dtype, returned in the input's
    assert out32.dtype == torch.float32 and out32.shape == x.shape
    torch.testing.assert_close(out32, gaussian_prior(x, 300).float(), rtol=1e-5, atol=1e-5)


def test_unet_adapter_on_a_real_unet_and_bad_prediction_type(tiny_unet, gaussian_prior):
    x = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tiny_unet(x, 421), tiny_unet.unet(x, 421).sample, rtol=0, atol=1e-6)
    assert (tiny_unet.sample_size, tiny_unet.in_channels, tiny_unet.prediction_type) == (16, 3, "epsilon")
    assert not any(p.requires_grad for p in tiny_unet.unet.parameters()) and not tiny_unet.unet.training
    with pytest.raises(ValueError, match="unsupported prediction_type 'x0'"):
        UNetEps(FakeNet(gaussian_prior, "sample"), gaussian_prior.schedule, "x0")


# =============================================================================== load_model


@pytest.fixture()
def model_copy(tiny_unet_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(tiny_unet_dir, dst)
    return dst


def test_load_model_reads_schedule_and_prediction_type(model_copy):
    cfg_path = model_copy / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    cfg_path.write_text(json.dumps(cfg))
    m = load_model(model_copy)
    assert m.prediction_type == "v_prediction"
    torch.testing.assert_close(m.schedule.alpha_bar, DDPMScheduler(**{k: cfg[k] for k in (
        "num_train_timesteps", "beta_schedule", "beta_start", "beta_end")}).alphas_cumprod.double(), rtol=1e-4, atol=0)


def test_load_model_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a hub id"):
        load_model(tmp_path / "does" / "not" / "exist")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(tmp_path / "weights.bin")


def test_load_model_incomplete_folders(model_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="does not look like a diffusers model folder"):
        load_model(empty)
    shutil.rmtree(model_copy / "scheduler")
    with pytest.raises(ModelLoadError, match="has no scheduler config"):
        load_model(model_copy)


def test_load_model_hub_id_offline(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nmore lines")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)  # "someone/face-model" must not exist as a local folder
    with pytest.raises(ModelLoadError) as info:
        load_model("someone/face-model")
    msg = str(info.value)
    assert "'someone/face-model'" in msg and "--model /path/to/model" in msg and "OSError" in msg
    assert "more lines" not in msg  # one line of the cause, not a traceback dump


def test_default_model_missing_says_none_is_shipped(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match="ships no embedded default") as info:
        load_model(None)
    assert "--model" in str(info.value)


def test_default_model_is_loaded_when_present(monkeypatch, model_copy):
    write_checksums(model_copy)
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", model_copy)
    assert models.default_model_available()
    assert isinstance(load_model(None), UNetEps)
    (model_copy / "checksums.json").unlink()  # the embedded prior is never loaded unchecked
    with pytest.raises(ModelLoadError, match="no checksums.json"):
        load_model(None)


def test_checksum_mismatch_is_reported(model_copy):
    sums = write_checksums(model_copy)
    assert "unet/diffusion_pytorch_model.safetensors" in sums and "scheduler/scheduler_config.json" in sums
    load_model(model_copy)  # intact: loads
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_model(model_copy)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        load_model(model_copy)


@pytest.mark.parametrize("calls", [1, 7, 200, 491])
def test_sdedit_with_a_call_budget_keeps_t0_and_makes_that_many_calls(gaussian_prior, calls):
    """SDEditConfig.calls: `calls` evenly spaced timesteps from the plain t0 down to 0."""
    cfg = SDEditConfig(strength=0.5, calls=calls)
    t0 = SDEditConfig(strength=0.5).timesteps(T)[0]
    m = Counted(gaussian_prior)
    ticks = []
    sdedit(m, torch.zeros((1, 3, 16, 16)), cfg, _gens(0, 1), callback=ticks.append)
    assert m.calls == cfg.nfe == calls == sum(ticks)
    assert m.timesteps[0] == t0 and len(set(m.timesteps)) == calls
    if calls > 1:
        assert m.timesteps[-1] == 0
        gaps = [a - b for a, b in zip(m.timesteps, m.timesteps[1:])]
        assert max(gaps) - min(gaps) <= 1  # evenly spaced up to rounding


def test_sdedit_call_budget_beyond_t0_is_refused():
    with pytest.raises(ValueError, match="at most 491 model calls"):
        SDEditConfig(strength=0.5, calls=492).timesteps(T)
    with pytest.raises(ValueError, match="calls"):
        SDEditConfig(calls=0)


# ====================================================================== solvers inside ODEdit


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_odedit_nfe_and_segments_with_each_solver(gaussian_prior, solver):
    cfg = ODEditConfig(steps=10, levels=(0, 2, 5, 8), langevin_steps=3, solver=solver)
    m = Counted(gaussian_prior)
    odedit(m, torch.zeros((2, 3, 16, 16)), cfg, _gens(0, 2))
    assert m.calls == cfg.nfe == 2 * 10 + 3 * 4
    # decoding visits every level once, each Langevin block before the step down from its level
    g = timestep_grid(T, 10)
    # inversion: DDIM evaluates eps at the higher level of each step, DPM-Solver at the current
    # one (after the first step from the image, which evaluates at grid[0])
    up = g if solver == "ddim" else [g[0], *g[:9]]
    lang = lambda lv: [g[lv]] * 3  # noqa: E731
    down = [g[9], *lang(8), g[8], g[7], g[6], *lang(5), g[5], g[4], g[3], *lang(2), g[2], g[1], *lang(0), g[0]]
    assert m.timesteps == [*up, *down]


def test_odedit_is_invert_then_langevin_and_decode_per_segment(gaussian_prior):
    """Algorithm 1 by hand: invert to the top; at each chosen level (the top included) K Langevin
    updates, then one solver path down to the next chosen level or the image."""
    from odedit.langevin import langevin, langevin_step_size

    p, x = gaussian_prior, _prior_images(gaussian_prior, 2, 3)
    cfg = ODEditConfig(steps=10, levels=(2, 6, 9), langevin_steps=2, step_size=1e-3, solver="dpm++2m")
    grid, gens = timestep_grid(T, 10), _gens(0, 2)
    z = invert(p, x, grid, solver="dpm++2m")
    for n, n_next in ((9, 6), (6, 2), (2, -1)):
        a_n = langevin_step_size(1e-3, p.schedule.sigma_at(grid[n]), p.schedule.sigma_at(grid[0]))
        z = langevin(p, z, grid[n], 2, a_n, cfg.temperature, gens)
        z = decode(p, z, grid, n, n_next, solver="dpm++2m")
    assert torch.equal(odedit(p, x, cfg, _gens(0, 2)), z)


def test_odedit_with_dpm_solver_without_langevin_is_its_round_trip(gaussian_prior):
    from odedit.solvers import dpmpp_2m_path

    x = _prior_images(gaussian_prior, 2, 1)
    grid = timestep_grid(T, 10)
    cfg = ODEditConfig(steps=10, levels=(0, 5), langevin_steps=0, solver="dpm++2m")
    ref = dpmpp_2m_path(gaussian_prior, dpmpp_2m_path(gaussian_prior, x, [-1, *grid]), [*grid[::-1], -1])
    out = odedit(gaussian_prior, x, cfg, _gens(0, 2))
    assert torch.equal(out, ref)
    err = {s: float((odedit(gaussian_prior, x, ODEditConfig(steps=10, levels=(0,), langevin_steps=0, solver=s),
                            _gens(0, 2)) - x).norm() / x.norm()) for s in ("ddim", "dpm++2m")}
    assert err["dpm++2m"] < err["ddim"] / 2, err
    with pytest.raises(ValueError, match="solver"):
        ODEditConfig(solver="euler")


def test_odedit_fixed_point_inversion_counts_and_round_trip(gaussian_prior):
    x = _prior_images(gaussian_prior, 2, 2)
    base = dict(steps=10, levels=(0,), langevin_steps=0)
    m = Counted(gaussian_prior)
    cfg = ODEditConfig(**base, inversion_iters=3)
    out = odedit(m, x, cfg, _gens(0, 2))
    assert m.calls == cfg.nfe == 10 * 4 + 10
    plain = odedit(gaussian_prior, x, ODEditConfig(**base), _gens(0, 2))
    assert float((out - x).norm()) < float((plain - x).norm()) / 10
    with pytest.raises(ValueError, match="solver"):
        ODEditConfig(**base, inversion_iters=2, solver="dpm++2m")
