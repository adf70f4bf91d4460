"""DPM-Solver++(2M): second-order convergence on the closed-form Gaussian prior, agreement with
diffusers' DPMSolverMultistepScheduler / DPMSolverMultistepInverseScheduler, model-call counts;
the solver table and invert/decode between grid levels with every solver."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import DPMSolverMultistepInverseScheduler, DPMSolverMultistepScheduler

from helpers import Counted
from odedit.ode import ddim_path
from odedit.solvers import (
    SOLVERS,
    decode,
    dpmpp_2m_path,
    invert,
    level_coefficients,
    level_path,
    solver_path,
)
from odedit.schedule import timestep_grid

pytestmark = pytest.mark.usefixtures("single_thread")

T = 1000


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _x(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g, dtype=torch.float64) * 2 - 1


def _path(lo, hi, n, descending):
    ts = [lo + (hi - lo) * i // n for i in range(n + 1)]
    return ts[::-1] if descending else ts


@pytest.mark.parametrize("descending", [True, False], ids=["decode", "invert"])
def test_second_order_convergence_on_the_gaussian_oracle(gaussian_prior, descending):
    """Error ratio per halving of the step: ~4 for DPM-Solver++(2M), ~2 for DDIM."""
    p = gaussian_prior
    lo, hi = 50, 850
    start, end = (hi, lo) if descending else (lo, hi)
    x_start = p.flow(_x(3), -1, start)
    exact = p.flow(x_start, start, end)
    errs = {"dpm": [], "ddim": []}
    for n in (20, 40, 80, 160):  # coarser grids are not yet in the asymptotic regime
        ts = _path(lo, hi, n, descending)
        errs["dpm"].append(_rel(dpmpp_2m_path(p, x_start, ts, lower_order_final=False), exact))
        errs["ddim"].append(_rel(ddim_path(p, x_start, ts), exact))
    ratios = {k: [a / b for a, b in zip(v, v[1:])] for k, v in errs.items()}
    assert all(3.0 < r < 5.0 for r in ratios["dpm"][1:]), (errs, ratios)
    assert all(1.6 < r < 2.6 for r in ratios["ddim"]), (errs, ratios)
    assert errs["dpm"][-1] < errs["ddim"][-1] / 10


def test_first_step_and_clean_ends_are_ddim(gaussian_prior):
    """One step is first order: identical to DDIM (from the image, to the image, or between levels)."""
    p = gaussian_prior
    x = _x(4)
    for ts in ([-1, 0], [-1, 600], [600, 300], [300, -1]):
        torch.testing.assert_close(dpmpp_2m_path(p, x, ts), ddim_path(p, x, ts))
    # decoding to the clean image takes D at the last level: a Gaussian's posterior mean
    x_t = p.flow(x, -1, 300)
    out = dpmpp_2m_path(p, x_t, [300, -1])
    ab = p.schedule.alpha_bar_at(300)
    torch.testing.assert_close(out, (x_t - math.sqrt(1 - ab) * p(x_t, 300)) / math.sqrt(ab))


def test_round_trip_beats_ddim_at_equal_calls(gaussian_prior):
    p = gaussian_prior
    x0 = _x(5)
    up = _path(0, 990, 10, False)
    rt = {}
    for name in ("ddim", "dpm++2m"):
        lat = solver_path(name, p, x0, [-1, *up])
        rt[name] = _rel(solver_path(name, p, lat, [*up[::-1], -1]), x0)
    assert rt["dpm++2m"] < rt["ddim"] / 2, rt


def test_call_counts_and_bad_paths(gaussian_prior):
    c = Counted(gaussian_prior)
    x = _x(6)
    dpmpp_2m_path(c, x, [900, 700, 500, 300, 100, -1])
    assert c.calls == 5 and c.timesteps == [900, 700, 500, 300, 100]
    c = Counted(gaussian_prior)
    dpmpp_2m_path(c, x, [-1, 0, 100, 200])
    assert c.calls == 3 and c.timesteps == [0, 0, 100]  # from the image: eps at the next level
    with pytest.raises(ValueError, match="monotone"):
        dpmpp_2m_path(gaussian_prior, x, [100, 200, 150])
    with pytest.raises(ValueError, match="unknown solver"):
        solver_path("euler", gaussian_prior, x, [100, 0])
    assert level_coefficients(1.0) == (1.0, 0.0, math.inf)


# ---- agreement with diffusers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet64(tiny_unet):
    from odedit.models import UNetEps

    return UNetEps(copy.deepcopy(tiny_unet.unet).double(), tiny_unet.schedule)


def _sched(cls, linear_schedule):
    s = cls(
        num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
    )  # fmt: skip
    # float64 schedule constants, as ours: the comparison then tests the formulas
    ab = linear_schedule.alpha_bar.clone()
    s.alphas_cumprod = ab
    s.alpha_t, s.sigma_t = ab.sqrt(), (1 - ab).sqrt()
    s.lambda_t = s.alpha_t.log() - s.sigma_t.log()
    return s


def _loop(s, eps, x, n):
    s.set_timesteps(n)
    s.sigmas = s.sigmas.double()
    if hasattr(s, "noisiest_timestep"):  # the inverse scheduler's last sigma
        ab = s.alphas_cumprod[s.noisiest_timestep]
        s.sigmas[-1] = ((1 - ab) / ab).sqrt()
    ab = s.alphas_cumprod
    s.sigmas[: len(s.timesteps)] = ((1 - ab[s.timesteps]) / ab[s.timesteps]).sqrt()
    for t in s.timesteps:
        x = s.step(eps(x, int(t)), t, x).prev_sample
    return x, [int(t) for t in s.timesteps]


@pytest.mark.parametrize("n", [10, 6])
def test_decode_equals_diffusers_dpmsolver_multistep(tiny_unet64, linear_schedule, n):
    xT = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    with torch.no_grad():
        ref, ts = _loop(_sched(DPMSolverMultistepScheduler, linear_schedule), tiny_unet64, xT, n)
        ours = dpmpp_2m_path(tiny_unet64, xT, [*ts, -1])
    assert _rel(ours, xT) > 0.05
    # DPMSolverMultistepScheduler.step upcasts the sample to float32 (not float64), so the two
    # agree to float32 rounding; a first- instead of second-order step differs by ~1e-2.
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    first_order = ours.clone()
    with torch.no_grad():
        s1 = _sched(DPMSolverMultistepScheduler, linear_schedule)
        s1.register_to_config(solver_order=1)
        first_order, _ = _loop(s1, tiny_unet64, xT, n)
    assert _rel(first_order, ref) > 1e-3  # the tolerance above can tell the orders apart


@pytest.mark.parametrize("n", [10, 6])
def test_inversion_equals_diffusers_dpmsolver_multistep_inverse(tiny_unet64, linear_schedule, n):
    x0 = _x(n)
    with torch.no_grad():
        s = _sched(DPMSolverMultistepInverseScheduler, linear_schedule)
        ref, ts = _loop(s, tiny_unet64, x0, n)
        ours = dpmpp_2m_path(tiny_unet64, x0, [*ts, int(s.noisiest_timestep)])
    assert _rel(ours, x0) > 0.05
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_sampling_uses_the_named_solver(gaussian_prior):
    from odedit.rng import generators_for, randn_per_image
    from odedit.sampling import ddim_sample
    from odedit.schedule import timestep_grid

    gens = generators_for([0, 1], "cpu")
    out = ddim_sample(gaussian_prior, gens, steps=8, solver="dpm++2m")
    like = torch.empty(2, 3, 16, 16)
    xT = randn_per_image(like, generators_for([0, 1], "cpu"))
    grid = timestep_grid(T, 8)
    ref = dpmpp_2m_path(gaussian_prior, xT.double(), [*grid[::-1], -1]).float().clamp(-1, 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, ddim_sample(gaussian_prior, generators_for([0, 1], "cpu"), steps=8))


# ---- the solver table; invert / decode between grid levels with every solver ------------------


def test_level_path():
    grid = [0, 100, 200, 300]
    assert level_path(grid, -1, 3) == [-1, 0, 100, 200, 300]
    assert level_path(grid, -1, 1) == [-1, 0, 100]
    assert level_path(grid, 3, -1) == [300, 200, 100, 0, -1]
    assert level_path(grid, 3, 1) == [300, 200, 100]
    assert level_path(grid, 0, -1) == [0, -1]
    for bad in ((2, 2), (4, 0), (0, 4), (-2, 1)):
        with pytest.raises(ValueError, match="bad levels"):
            level_path(grid, *bad)


def test_solver_table_names_the_path_functions(gaussian_prior):
    assert list(SOLVERS) == ["ddim", "dpm++2m"]
    assert SOLVERS["ddim"] is ddim_path
    x, ts = _x(7), [900, 600, 300, 0, -1]
    for name, fn in SOLVERS.items():
        assert torch.equal(fn(gaussian_prior, x, ts, None, None), solver_path(name, gaussian_prior, x, ts))
    # dpm++2m: first-order last step below 15 steps, second order from 15 on (diffusers' rule)
    for n in (5, 14, 15, 20):
        ts = [*_path(0, 900, n, True), -1]
        lof = n < 15
        assert torch.equal(solver_path("dpm++2m", gaussian_prior, x, ts), dpmpp_2m_path(gaussian_prior, x, ts, lof))


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_invert_and_decode_with_every_solver(gaussian_prior, solver):
    """invert/decode are the solver's path between grid levels; partial paths compose."""
    p, x0, grid = gaussian_prior, _x(8), timestep_grid(T, 10)
    fn = SOLVERS[solver]
    c, ticks = Counted(p), []
    z = invert(c, x0, grid, callback=ticks.append, solver=solver)
    assert torch.equal(z, fn(p, x0, [-1, *grid], None, None)) and c.calls == sum(ticks) == 10
    assert torch.equal(invert(p, x0, grid, 4, solver=solver), fn(p, x0, [-1, *grid[:5]], None, None))
    back = decode(p, z, grid, solver=solver)
    assert torch.equal(back, fn(p, z, [*grid[::-1], -1], None, None))
    assert torch.equal(decode(p, z, grid, 9, 4, solver=solver), fn(p, z, grid[4:][::-1], None, None))
    assert torch.equal(decode(p, z, grid, 6, solver=solver), fn(p, z, [*grid[:7][::-1], -1], None, None))
    with pytest.raises(ValueError, match="below"):
        decode(p, z, grid, 3, 3, solver=solver)


def test_invert_with_fixed_point_iterations(gaussian_prior):
    from odedit.ode import ddim_invert_path_fixed_point

    p, x0, grid = gaussian_prior, _x(9), timestep_grid(T, 10)
    c = Counted(p)
    z = invert(c, x0, grid, 6, inversion_iters=2)
    assert c.calls == 7 * 3
    assert torch.equal(z, ddim_invert_path_fixed_point(p, x0, [-1, *grid[:7]], 2))
    # the exact inverse of DDIM decoding: better round trips than the explicit inversion
    exact = _rel(decode(p, invert(p, x0, grid, inversion_iters=8), grid), x0)
    assert exact < _rel(decode(p, invert(p, x0, grid), grid), x0) / 10
    with pytest.raises(ValueError, match="fixed-point"):
        invert(p, x0, grid, inversion_iters=1, solver="dpm++2m")
    with pytest.raises(ValueError, match="unknown solver"):
        invert(p, x0, grid, solver="euler")
