"""The DDIM probability-flow ODE solver (paper eq. 8): exactness on a Gaussian prior and
agreement with diffusers' DDIMScheduler / DDIMInverseScheduler."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import psnr
from diffusers import DDIMInverseScheduler, DDIMScheduler

from odedit.ode import clip_x0, ddim_path, ddim_step, dynamic_threshold
from odedit.solvers import decode, invert
from odedit.schedule import timestep_grid
from helpers import Counted

pytestmark = pytest.mark.usefixtures("single_thread")

T = 1000


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _images(seed: int, n: int = 2, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=g, dtype=dtype) * 2 - 1




# ---- exactness on the closed-form Gaussian prior ------------------------------------------------


def test_analytic_flow_map_solves_the_probability_flow_ode(gaussian_prior):
    """Sanity check of the reference itself: the map is a group (composition, identity) and
    carries the marginal N(sqrt(ab) mu, v) at one level onto the marginal at the other."""
    p = gaussian_prior
    x = _images(0)
    a = p.flow(p.flow(x, -1, 300), 300, 900)
    torch.testing.assert_close(a, p.flow(x, -1, 900), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.flow(p.flow(x, -1, 900), 900, -1), x, rtol=1e-12, atol=1e-12)
    m_from, v_from = p.marginal(200)
    m_to, v_to = p.marginal(700)
    y = m_from + math.sqrt(v_from) * 1.7  # 1.7 standard deviations above the mean ...
    torch.testing.assert_close(p.flow(y.expand(1, -1, -1, -1), 200, 700)[0], m_to + math.sqrt(v_to) * 1.7)
    # ... and the ODE's velocity: d(x/sqrt(ab))/d(sigma/sqrt(ab)) = eps(x, t) (limit of eq. 8)
    ab = p.schedule.alpha_bar
    t = 500
    rho = lambda s: math.sqrt((1 - float(ab[s])) / float(ab[s]))  # noqa: E731
    ya = p.flow(x, -1, t - 1) / math.sqrt(float(ab[t - 1]))
    yb = p.flow(x, -1, t + 1) / math.sqrt(float(ab[t + 1]))
    slope = (yb - ya) / (rho(t + 1) - rho(t - 1))
    torch.testing.assert_close(slope, p(p.flow(x, -1, t), t), rtol=1e-4, atol=1e-6)


def test_ddim_inversion_converges_at_first_order_to_the_exact_flow(gaussian_prior):
    """DDIM is an Euler scheme of the ODE in (x/sqrt(ab), sigma/sqrt(ab)): doubling N halves the error."""
    x0 = _images(1)
    errors = []
    for n in (25, 50, 100, 200):
        grid = timestep_grid(T, n)
        latent = invert(gaussian_prior, x0, grid)
        exact = gaussian_prior.flow(x0, -1, grid[-1])  # float64 closed form at the same top level
        errors.append(_rel(latent, exact))
    assert all(e > 0 for e in errors)
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.6 < r < 2.6 for r in ratios), (errors, ratios)
    assert errors[-1] < 0.02  # the error itself is small, not only shrinking


def test_ddim_decoding_converges_at_first_order_to_the_exact_flow(gaussian_prior):
    x0 = _images(2)
    errors = []
    for n in (25, 50, 100, 200):
        grid = timestep_grid(T, n)
        latent = gaussian_prior.flow(x0, -1, grid[-1])
        errors.append(_rel(decode(gaussian_prior, latent, grid), x0))
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.6 < r < 2.6 for r in ratios), (errors, ratios)


def test_invert_then_decode_round_trip(gaussian_prior):
    """In-distribution images (samples of the prior) come back at > 40 dB with N = 100 steps,
    and the round-trip error is first order too (about 6 dB per doubling of N)."""
    x0 = gaussian_prior.sample([torch.Generator().manual_seed(s) for s in range(4)])
    values = {}
    for n in (50, 100, 200):
        grid = timestep_grid(T, n)
        latent = invert(gaussian_prior, x0, grid)
        back = decode(gaussian_prior, latent, grid)
        assert back.dtype == torch.float64
        values[n] = psnr(back, x0, data_range=2.0)
    assert values[100] > 40.0, values
    gain = 20 * math.log10(2)  # 6.02 dB for an error halved
    assert 0.7 * gain < values[100] - values[50] < 1.3 * gain, values
    assert 0.7 * gain < values[200] - values[100] < 1.3 * gain, values
    # the inverted latent has the standard-normal statistics of x_T ~ N(sqrt(ab) mu, v) ~ N(0, 1)
    grid = timestep_grid(T, 100)
    z = invert(gaussian_prior, x0, grid)
    m, v = gaussian_prior.marginal(grid[-1])
    zs = (z - m) / math.sqrt(v)
    assert abs(float(zs.mean())) < 5 / math.sqrt(zs.numel())
    assert abs(float(zs.var()) - 1) < 0.1


def test_single_step_is_exact_for_a_linear_path(gaussian_prior):
    """Eq. 8 step in the x0 form and in the rescaled form are the same map; with an identity
    transform the x0 branch must give the same numbers."""
    x, eps = _images(3), _images(4)
    for ab_cur, ab_next in [(1.0, 0.9999), (0.9, 0.5), (0.05, 0.3), (0.3, 1.0)]:
        a = ddim_step(x, eps, ab_cur, ab_next)
        b = ddim_step(x, eps, ab_cur, ab_next, x0_transform=lambda z: z)
        x0 = (x - math.sqrt(1 - ab_cur) * eps) / math.sqrt(ab_cur)
        ref = math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps
        torch.testing.assert_close(a, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b, ref, rtol=1e-12, atol=1e-12)


def test_paths_calls_and_levels(gaussian_prior):
    """Model calls: one per step, at the higher timestep of each pair; partial paths compose."""
    grid = timestep_grid(T, 10)
    m = Counted(gaussian_prior)
    x0 = _images(5)
    ticks = []
    z = invert(m, x0, grid, callback=ticks.append)
    assert m.calls == 10 and sum(ticks) == 10 and m.timesteps == grid
    m.calls, m.timesteps = 0, []
    back = decode(m, z, grid)
    assert m.calls == 10 and m.timesteps == grid[::-1]
    # partial inversion then the rest; partial decoding then the rest: bitwise the same
    mid = invert(gaussian_prior, x0, grid, to_level=4)
    assert torch.equal(ddim_path(gaussian_prior, mid, grid[4:]), z)
    half = decode(gaussian_prior, z, grid, to_level=4)
    assert torch.equal(decode(gaussian_prior, half, grid, from_level=4), back)
    with pytest.raises(ValueError, match="below"):
        decode(gaussian_prior, z, grid, from_level=3, to_level=3)
    with pytest.raises(ValueError, match="repeated timestep"):
        ddim_path(gaussian_prior, z, [10, 10])
    # dtype is the input's
    assert invert(gaussian_prior, x0.float(), grid).dtype == torch.float32


# ---- agreement with diffusers -------------------------------------------------------------------


def _ddim(linear_schedule, float64: bool, **kw) -> DDIMScheduler:
    s = DDIMScheduler(
        **{
            **dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
            **dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"),
            **kw,
        }
    )
    if float64:  # diffusers keeps alphas_cumprod in float32; give it ours to compare formulas tightly
        s.alphas_cumprod = linear_schedule.alpha_bar.clone()
        s.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


def _ddim_inverse(linear_schedule, float64: bool, **kw) -> DDIMInverseScheduler:
    s = DDIMInverseScheduler(
        **{
            **dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
            **dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"),
            **kw,
        }
    )
    if float64:
        s.alphas_cumprod = linear_schedule.alpha_bar.clone()
        s.initial_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return s


def _diffusers_loop(scheduler, eps_fn, x, n):
    scheduler.set_timesteps(n)
    for t in scheduler.timesteps:
        x = scheduler.step(eps_fn(x, int(t)), t, x).prev_sample
    return x


def _raw_unet(model):
    """The diffusers way of calling the network: scalar timestep, ``.sample``."""
    return lambda x, t: model.unet(x, t).sample


@pytest.mark.parametrize("n", [10, 7])
def test_decode_equals_diffusers_ddim_gaussian(gaussian_prior, linear_schedule, n):
    xT = torch.randn((2, 3, 16, 16), dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ours = decode(gaussian_prior, xT, timestep_grid(T, n))
    ref = _diffusers_loop(_ddim(linear_schedule, True), gaussian_prior, xT, n)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    # with diffusers' own float32 alphas_cumprod: agreement to float32 precision of the schedule
    ref32 = _diffusers_loop(_ddim(linear_schedule, False), gaussian_prior, xT, n)
    torch.testing.assert_close(ours, ref32, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_unet64(tiny_unet):
    """The tiny UNet in float64 (UNetEps computes in the network's dtype): comparisons with
    diffusers then test the formulas, not float32 rounding amplified by the random network."""
    from odedit.models import UNetEps

    return UNetEps(copy.deepcopy(tiny_unet.unet).double(), tiny_unet.schedule)


@pytest.mark.parametrize("n", [10, 7])
def test_decode_equals_diffusers_ddim_tiny_unet(tiny_unet64, linear_schedule, n):
    xT = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    with torch.no_grad():
        ours = decode(tiny_unet64, xT, timestep_grid(T, n))
        ref = _diffusers_loop(_ddim(linear_schedule, True), _raw_unet(tiny_unet64), xT, n)
    assert _rel(ours, xT) > 0.05  # the network did move the sample
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_decode_float32_close_to_diffusers_float32(tiny_unet, linear_schedule):
    """Both in float32, diffusers with its float32 alphas_cumprod. The first decode step divides
    by sqrt(alpha_bar(900)) ~ 0.017, so 1e-5-level differences in the schedule and rounding of
    the random network surface at ~1e-4..1e-3: a loose tolerance, the tight check is above."""
    n = 10
    xT = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = decode(tiny_unet, xT, timestep_grid(T, n))
        ref = _diffusers_loop(_ddim(linear_schedule, False), _raw_unet(tiny_unet), xT, n)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-3)
    assert _rel(ours, ref) < 1e-3


def test_inversion_equals_diffusers_ddim_inverse(gaussian_prior, tiny_unet64, linear_schedule):
    """diffusers' DDIMInverseScheduler.step(eps, t, x) moves x from level t - T//N (alpha_bar = 1,
    the clean image, when that is negative and set_alpha_to_one=True) up to level t, and the
    pipelines evaluate the model at t, the *higher* level: the same convention as ours, so the
    whole N-step inversion is comparable step for step."""
    n = 10
    x0 = _images(6)
    for model in (gaussian_prior, tiny_unet64):
        with torch.no_grad():
            ours = invert(model, x0, timestep_grid(T, n))
            ref = _diffusers_loop(_ddim_inverse(linear_schedule, True), model, x0, n)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    assert _rel(ours, x0) > 0.5


def test_clipped_decode_and_inversion_equal_diffusers_clip_sample(tiny_unet64, linear_schedule):
    n = 10
    grid = timestep_grid(T, n)
    xT = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 1.5
    x0 = _images(12)
    net = _raw_unet(tiny_unet64)
    with torch.no_grad():
        ours = decode(tiny_unet64, xT, grid, x0_transform=clip_x0)
        ref = _diffusers_loop(_ddim(linear_schedule, True, clip_sample=True), net, xT, n)
        unclipped = decode(tiny_unet64, xT, grid)
        ours_inv = invert(tiny_unet64, x0, grid, x0_transform=clip_x0)
        ref_inv = _diffusers_loop(_ddim_inverse(linear_schedule, True, clip_sample=True), net, x0, n)
        unclipped_inv = invert(tiny_unet64, x0, grid)
    assert _rel(ours, unclipped) > 1e-2 and _rel(ours_inv, unclipped_inv) > 1e-3  # clipping was active
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours_inv, ref_inv, rtol=1e-9, atol=1e-9)
    assert ours.abs().max() <= 1.0 + 1e-12  # the last step lands on the clipped x0


def test_dynamic_threshold_equals_diffusers_thresholding(tiny_unet64, linear_schedule):
    n, p = 10, 0.9
    xT = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(13), dtype=torch.float64) * 1.5
    sched = _ddim(linear_schedule, True, thresholding=True, dynamic_thresholding_ratio=p, sample_max_value=1e6)
    with torch.no_grad():
        ours = decode(tiny_unet64, xT, timestep_grid(T, n), x0_transform=dynamic_threshold(p))
        ref = _diffusers_loop(sched, _raw_unet(tiny_unet64), xT, n)
        plain = decode(tiny_unet64, xT, timestep_grid(T, n))
    assert _rel(ours, plain) > 1e-2
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="percentile"):
            dynamic_threshold(bad)


def test_dynamic_threshold_formula():
    x0 = torch.tensor([[[[0.5, -3.0, 2.0, 0.1]]], [[[0.2, 0.3, -0.4, 0.9]]]], dtype=torch.float64)
    out = dynamic_threshold(1.0)(x0)
    # image 0: s = max |x0| = 3 -> x0 / 3; image 1: s = max(1, 0.9) = 1 -> unchanged
    torch.testing.assert_close(out[0], x0[0] / 3.0)
    torch.testing.assert_close(out[1], x0[1])
    torch.testing.assert_close(clip_x0(x0), x0.clamp(-1, 1))


# ---- fixed-point inversion: the exact inverse of DDIM decoding ---------------------------------


def test_fixed_point_inversion_inverts_decoding(gaussian_prior):
    from odedit.ode import ddim_invert_path_fixed_point

    grid = timestep_grid(T, 10)
    # (A random network is no contraction at 10 steps: the iteration converges only where the
    # step's eps coefficient times eps's Lipschitz constant is < 1; the Gaussian's is.)
    for model, x0 in ((gaussian_prior, _images(8)),):
        with torch.no_grad():
            errs = []
            for iters in (0, 1, 3, 8):
                z = ddim_invert_path_fixed_point(model, x0, [-1, *grid], iters)
                errs.append(_rel(decode(model, z, grid), x0))
        # every refinement shrinks the round-trip error (a contraction: geometric decay)
        assert all(b < a for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < 1e-2 * errs[0], errs
    # iters = 0 is the explicit inversion; calls = steps * (1 + iters)
    x0 = _images(10)
    torch.testing.assert_close(ddim_invert_path_fixed_point(gaussian_prior, x0, [-1, *grid], 0), invert(gaussian_prior, x0, grid))
    c = Counted(gaussian_prior)
    ddim_invert_path_fixed_point(c, x0, [-1, *grid], 2)
    assert c.calls == 30 and set(c.timesteps) == set(grid)
    with pytest.raises(ValueError, match="ascending"):
        ddim_invert_path_fixed_point(gaussian_prior, x0, grid[::-1], 1)
