"""Langevin refinement (Algorithm 1, lines 3-5) with the exact score of a Gaussian prior.

For the target N(m, v) (per pixel) the update x' = x - a eps/sigma + sqrt(2 a T) z is the
linear chain x' - m = r (x - m) + sqrt(2 a T) z with r = 1 - a / v, so after K steps from
x_0 (independent of the noise):

    E[x_K - m]   = r^K E[x_0 - m]
    Var[x_K]     = var* + r^(2K) (Var[x_0] - var*),     var* = T v / (1 - a / (2 v))

The statistics are pooled over ~20k independent pixels; tolerances are 5 standard errors
of the estimators (mean: sqrt(var / n); variance: var sqrt(2 / n)).
"""

from __future__ import annotations

import math

import pytest
import torch

from odedit import restorers
from odedit.analytic import GaussianPrior, langevin_stationary_var
from odedit.langevin import langevin, langevin_step_size, langevin_update
from odedit.restorers import ODEditConfig, odedit
from odedit.rng import generators_for, randn_per_image
from odedit.schedule import timestep_grid

pytestmark = pytest.mark.usefixtures("single_thread")

N_IMAGES = 27  # 27 x 3 x 16 x 16 = 20736 pixels
Z = 5.0  # tolerance in standard errors


def _gens(offset: int, n: int = N_IMAGES):
    return generators_for(range(offset, offset + n))


def _moments(prior: GaussianPrior, x: torch.Tensor, t: int) -> tuple[float, float, int]:
    """Pooled mean and variance of x - sqrt(ab) mu (mu is a per-pixel tensor)."""
    m, _ = prior.marginal(t)
    d = (x - m).flatten()
    return float(d.mean()), float(d.var()), d.numel()


def _check(prior, x, t, mean_expected, var_expected):
    mean, var, n = _moments(prior, x, t)
    assert abs(mean - mean_expected) < Z * math.sqrt(var_expected / n), (mean, mean_expected)
    assert abs(var - var_expected) < Z * var_expected * math.sqrt(2.0 / n), (var, var_expected)


@pytest.mark.parametrize("t,ratio,k", [(300, 0.02, 150), (300, 0.2, 60), (800, 0.2, 60)])
def test_stationary_at_temperature_one(gaussian_prior, t, ratio, k):
    """Started from the exact marginal, the T=1 chain keeps the mean and ends at var*,
    which for the larger step (a = 0.2 v) is measurably above v (the O(a) bias)."""
    p = gaussian_prior
    _, v = p.marginal(t)
    a = ratio * v
    x = p.sample(_gens(0), t=t)
    _check(p, x, t, 0.0, v)  # the start really is the marginal
    out = langevin(p, x, t, k, a, 1.0, _gens(100))
    var_star = langevin_stationary_var(v, a, 1.0)
    assert var_star == pytest.approx(v / (1 - ratio / 2), rel=1e-12)
    r = 1 - a / v
    var_k = var_star + r ** (2 * k) * (v - var_star)
    _check(p, out, t, 0.0, var_k)
    if ratio >= 0.2:  # the bias is resolved by the test: var* differs from v by > Z standard errors
        assert var_star - v > 2 * Z * var_star * math.sqrt(2.0 / out.numel())


def test_temperature_one_third_converges_to_var_star(gaussian_prior):
    p, t = gaussian_prior, 500
    _, v = p.marginal(t)
    a, k, temp = 0.1 * v, 100, 1.0 / 3.0
    out = langevin(p, p.sample(_gens(0), t=t), t, k, a, temp, _gens(200))
    var_star = langevin_stationary_var(v, a, temp)
    assert var_star == pytest.approx(temp * v / (1 - a / (2 * v)), rel=1e-12)
    var_k = var_star + (1 - a / v) ** (2 * k) * (v - var_star)
    _check(p, out, t, 0.0, var_k)


def test_off_distribution_start_contracts_to_the_mean(gaussian_prior):
    """A latent 3 standard deviations above the mean is pulled back by (1 - a/v)^K on average."""
    p, t = gaussian_prior, 250
    m, v = p.marginal(t)
    a, temp = 0.05 * v, 1.0 / 3.0
    x = (m + 3.0 * math.sqrt(v)).expand(N_IMAGES, -1, -1, -1).clone()  # deterministic start
    r = 1 - a / v
    var_star = langevin_stationary_var(v, a, temp)
    for k in (5, 20, 60):
        out = langevin(p, x, t, k, a, temp, _gens(300 + k))
        _check(p, out, t, r**k * 3.0 * math.sqrt(v), var_star * (1 - r ** (2 * k)))


def test_zero_temperature_is_exact_gradient_descent(gaussian_prior):
    p, t = gaussian_prior, 400
    m, v = p.marginal(t)
    x = p.sample(_gens(0, 2), t=t)
    a, k = 0.3 * v, 7
    out = langevin(p, x, t, k, a, 0.0, _gens(10, 2))
    torch.testing.assert_close(out - m, (1 - a / v) ** k * (x - m), rtol=1e-12, atol=1e-12)


def test_langevin_update_formula():
    g = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn((2, 3, 4, 4), generator=g, dtype=torch.float64) for _ in range(3))
    out = langevin_update(x, eps, z, sigma_t=0.7, a_t=0.05, temperature=0.25)
    torch.testing.assert_close(out, x + 0.05 * (-eps / 0.7) + math.sqrt(2 * 0.05 * 0.25) * z, rtol=1e-14, atol=1e-14)


def test_langevin_calls_the_model_at_its_level_with_per_image_noise(gaussian_prior):
    """K model calls, all at timestep t; the noise of image b comes from generators[b]."""
    p, t, k = gaussian_prior, 600, 4
    calls = []

    def model(x, tt):
        calls.append(tt)
        return p(x, tt)

    model.schedule = p.schedule
    x = p.sample(_gens(0, 2), t=t)
    ticks = []
    out = langevin(model, x, t, k, 0.01, 0.5, _gens(50, 2), callback=ticks.append)
    assert calls == [t] * k and sum(ticks) == k
    # replay by hand with fresh copies of the generators
    gens = _gens(50, 2)
    sigma = p.schedule.sigma_at(t)
    ref = x
    for _ in range(k):
        z = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])
        ref = ref - 0.01 * p(ref, t) / sigma + math.sqrt(2 * 0.01 * 0.5) * z
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-13)


def test_step_size_of_algorithm_1():
    """a_t = eps * sigma_t / sigma_1 (Algorithm 1, line 3)."""
    assert langevin_step_size(1e-6, 0.5, 0.01) == pytest.approx(5e-5, rel=1e-14)
    assert langevin_step_size(2e-3, 0.01, 0.01) == pytest.approx(2e-3, rel=1e-14)
    assert langevin_step_size(0.0, 0.9, 0.01) == 0.0


def test_odedit_uses_algorithm_1_step_sizes(gaussian_prior, monkeypatch):
    """Inside ODEdit: Langevin runs at each chosen level l at timestep grid[l], with
    a = eps * sigma(grid[l]) / sigma(grid[0]) and the configured K and temperature."""
    seen = []

    def spy(model, x, t, n_steps, a_t, temperature, generators, callback=None):
        seen.append((t, n_steps, a_t, temperature))
        return x

    monkeypatch.setattr(restorers, "langevin", spy)
    cfg = ODEditConfig(steps=20, levels=(0, 5, 10, 15), langevin_steps=3, step_size=1e-4, temperature=0.3)
    x = torch.zeros((1, 3, 16, 16), dtype=torch.float64)
    odedit(gaussian_prior, x, cfg, _gens(0, 1))
    grid = timestep_grid(1000, 20)
    ab = gaussian_prior.schedule.alpha_bar
    sigma = lambda tt: math.sqrt(1 - float(ab[tt]))  # noqa: E731
    expected = [(grid[l], 3, 1e-4 * sigma(grid[l]) / sigma(grid[0]), 0.3) for l in (15, 10, 5, 0)]
    assert [s[:2] for s in seen] == [e[:2] for e in expected]  # top level first
    for (_, _, a, temp), (_, _, a_ref, temp_ref) in zip(seen, expected):
        assert a == pytest.approx(a_ref, rel=1e-12) and temp == temp_ref


def test_per_image_generators_make_results_batch_independent(gaussian_prior):
    p, t = gaussian_prior, 350
    x = p.sample(_gens(0, 3), t=t)
    batch = langevin(p, x, t, 12, 0.05, 1.0 / 3.0, _gens(40, 3))
    singles = [langevin(p, x[i : i + 1], t, 12, 0.05, 1.0 / 3.0, _gens(40 + i, 1)) for i in range(3)]
    for i in range(3):
        assert torch.equal(batch[i : i + 1], singles[i])
    # a batch in another order gives the same rows
    perm = [2, 0, 1]
    shuffled = langevin(p, x[perm], t, 12, 0.05, 1.0 / 3.0, [_gens(40 + i, 1)[0] for i in perm])
    assert torch.equal(shuffled, batch[perm])
    # and a different seed gives a different result
    assert not torch.equal(langevin(p, x[:1], t, 12, 0.05, 1.0 / 3.0, _gens(99, 1)), singles[0])


def test_randn_per_image_rows_and_errors():
    like = torch.empty((3, 2, 5, 5), dtype=torch.float64)
    noise = randn_per_image(like, _gens(7, 3))
    assert noise.shape == like.shape and noise.dtype == torch.float64
    for b in range(3):
        ref = torch.randn((2, 5, 5), generator=torch.Generator().manual_seed(7 + b), dtype=torch.float64)
        assert torch.equal(noise[b], ref)
    with pytest.raises(ValueError, match="one generator per image: 2 for a batch of 3"):
        randn_per_image(like, _gens(0, 2))


def test_stationary_var_validation():
    with pytest.raises(ValueError, match="stable"):
        langevin_stationary_var(1.0, 2.5)
    with pytest.raises(ValueError, match="stable"):
        langevin_stationary_var(1.0, 0.0)
