"""EDM-style preconditioning (odedit.precond): EDM's own formulas in the isotropic case, the
generalised scales against Monte Carlo on Gaussian data, the log-normal levels, the model adapter
and the files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from odedit.gaussian import GaussianBase
from odedit.precond import edm_scales, expected_level_share, lognormal_timesteps, ve_log_sigma
from odedit.schedule import NoiseSchedule
from odedit.unets import DEFAULT_SCHEDULER_CONFIG

SHAPE = (3, 4, 4)
D = math.prod(SHAPE)


def _schedule() -> NoiseSchedule:
    return NoiseSchedule.from_scheduler_config(DEFAULT_SCHEDULER_CONFIG)


def _ppca(k: int = 5, seed: int = 0) -> GaussianBase:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    lam = torch.linspace(1.5, 0.05, k, dtype=torch.float64)
    return GaussianBase(0.3 * torch.randn(D, generator=g, dtype=torch.float64), U, lam, 0.02, SHAPE, 0, "edm")


def test_isotropic_scales_are_edms_preconditioning():
    """With N(0, sd^2 I): D_VE = x_VE - s eps = c_skip x_VE - c_out_EDM F(c_in_EDM x_VE) (Karras et al.
    table 1), i.e. our eps parametrisation is EDM's up to the sign of F."""
    sd = 0.5
    ab = _schedule().alpha_bar
    base = GaussianBase.isotropic(SHAPE, sd**2)
    c_in, c_out = base.scales(ab)
    s = torch.exp(ve_log_sigma(ab))
    torch.testing.assert_close(c_in * ab.sqrt(), 1.0 / torch.sqrt(s**2 + sd**2))  # c_in seen from x_VE
    torch.testing.assert_close(s * c_out, s * sd / torch.sqrt(s**2 + sd**2))  # the F coefficient of D_VE
    # The skip part: x_VE - s E_G[eps | x_t] = c_skip x_VE.
    x_ve = torch.randn(4, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for t in (0, 100, 500, 999):
        a = float(ab[t])
        skip = x_ve - s[t] * base.eps(math.sqrt(a) * x_ve, a)
        torch.testing.assert_close(skip, sd**2 / (s[t] ** 2 + sd**2) * x_ve)


@pytest.mark.parametrize("t", [10, 100, 400])
def test_scales_make_input_and_target_unit_on_gaussian_data(t):
    """On samples of the base Gaussian, c_in x_t has unit second moment per pixel and the network's
    target F = (eps - E_G[eps | x_t]) / c_out has unit variance per pixel (steps 2-3)."""
    b = _ppca()
    U, lam = b.basis.double(), b.eigvals.double()
    S = U @ torch.diag(lam) @ U.T + b.residual_var * (torch.eye(D, dtype=torch.float64) - U @ U.T)
    g = torch.Generator().manual_seed(1)
    n = 40000
    x0 = b.mean + torch.randn(n, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(S).T
    eps = torch.randn(n, D, generator=g, dtype=torch.float64)
    ab = _schedule().alpha_bar
    a = float(ab[t])
    xt = (math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).reshape(n, *SHAPE)
    c_in, c_out = b.scales(ab)
    assert abs(float((c_in[t] * xt).square().mean()) - 1.0) < 0.02
    target = (eps.reshape(n, *SHAPE) - b.eps(xt, a)) / c_out[t]
    assert abs(float(target.square().mean()) - 1.0) < 0.02
    # And the scale is not trivially 1: at this level the Gaussian explains part of eps.
    assert float(c_out[t]) < 0.99


def test_scales_shrink_with_noise_where_the_gaussian_knows_the_answer():
    ab = _schedule().alpha_bar
    c_in, c_out = _ppca().scales(ab)
    assert c_in.shape == c_out.shape == (1000,) and c_in.dtype == torch.float64
    assert bool((c_out[1:] <= c_out[:-1] + 1e-12).all()) and float(c_out[-1]) < 0.05 and float(c_out[0]) > 0.5
    assert GaussianBase(torch.zeros(D), torch.zeros(D, 0), torch.zeros(0), 0.1, SHAPE).scales(ab) is None
    with pytest.raises(ValueError, match="precondition"):
        GaussianBase(torch.zeros(D), torch.zeros(D, 0), torch.zeros(0), 0.1, SHAPE, 0, "karras")


def test_lognormal_levels_follow_edms_distribution():
    log_sigma = ve_log_sigma(_schedule().alpha_bar)
    assert bool((log_sigma[1:] > log_sigma[:-1]).all())
    g = torch.Generator().manual_seed(3)
    t = lognormal_timesteps(log_sigma, 200000, g)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= 999
    for lo, hi in ((0, 0), (1, 49), (50, 149), (150, 399), (400, 999)):
        want = expected_level_share(log_sigma, lo, hi)
        got = float(((t >= lo) & (t <= hi)).double().mean())
        assert abs(got - want) < 0.005, (lo, hi, got, want)
    # Most draws land where EDM puts them (s in ~[0.09, 1.0]: t ~ 25..250), few at high noise.
    assert expected_level_share(log_sigma, 25, 250) > 0.55 and expected_level_share(log_sigma, 500, 999) < 0.03
    again = lognormal_timesteps(log_sigma, 200000, torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    # A float32 grid (MPS has no float64) draws its own stream from the same distribution.
    t32 = lognormal_timesteps(log_sigma.float(), 200000, torch.Generator().manual_seed(4))
    got = float(((t32 >= 50) & (t32 <= 149)).double().mean())
    assert abs(got - expected_level_share(log_sigma, 50, 149)) < 0.005


def test_model_applies_the_scales_and_folders_round_trip(tmp_path):
    """eps = E_G + c_out r(c_in x, t) in the adapter; precondition survives save/load; a config
    written before the field existed reads as none (the shipped prior's folder is unchanged)."""
    from diffusers import UNet2DModel

    from odedit.models import GaussianResidualEps, UNetEps

    unet = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4).eval()
    net = UNetEps(unet, _schedule())
    b = _ppca()
    b.save(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "config.json").read_text())["kind"] == "ppca-edm"  # older odedit refuses it
    loaded = GaussianBase.load(tmp_path / "g")
    assert loaded.precondition == "edm"
    model = GaussianResidualEps(net, loaded.to("cpu"))
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    c_in, c_out = loaded.scales(_schedule().alpha_bar)
    with torch.no_grad():
        for t in (3, 250, 900):
            ab = _schedule().alpha_bar_at(t)
            want = loaded.eps(x, ab) + float(c_out[t]) * net(x * float(c_in[t]), t)
            torch.testing.assert_close(model(x, t), want)
            unscaled = loaded.eps(x, ab) + net(x, t)
            assert not torch.allclose(model(x, t), unscaled)
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    cfg["kind"] = "ppca"  # every folder written before preconditioning existed
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    assert GaussianBase.load(tmp_path / "g").precondition == "none"
    cfg["kind"] = "ppca-karras"
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="kind"):
        GaussianBase.load(tmp_path / "g")
    plain = GaussianBase(b.mean, b.basis, b.eigvals, b.residual_var, SHAPE)
    plain.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["kind"] == "ppca"


def test_training_scores_the_eps_that_inference_computes():
    """The loop's prediction (odedit.training.losses.model_eps) equals GaussianResidualEps for the same
    network and base, with and without EDM scaling, and the scaling changes it (a non-zero head)."""
    from dataclasses import replace

    from diffusers import UNet2DModel

    from odedit.models import GaussianResidualEps, UNetEps
    from odedit.training.losses import model_eps

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4).eval()
    sched = _schedule()
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(6))
    outs = {}
    for pre in ("none", "edm"):
        b = replace(_ppca(), precondition=pre)
        scales = b.scales(sched.alpha_bar)
        scales = None if scales is None else tuple(c.float() for c in scales)
        with torch.no_grad():
            for t in (7, 300):
                got = model_eps(unet, x, torch.full((3,), t), b, sched.alpha_bar, scales)
                want = GaussianResidualEps(UNetEps(unet, sched), b)(x, t)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                outs[pre, t] = got
    assert not torch.allclose(outs["none", 300], outs["edm", 300])


def test_edm_scales_handle_rank_zero_and_full_rank():
    ab = _schedule().alpha_bar
    b = _ppca()
    # Spreading the off-basis variance over explicit eigenvalues changes nothing.
    full_lam = torch.cat([b.eigvals, torch.full((D - b.rank,), b.residual_var, dtype=torch.float64)])
    a = edm_scales(ab, b.mean, b.eigvals, b.residual_var, D)
    c = edm_scales(ab, b.mean, full_lam, 0.0, D)
    torch.testing.assert_close(a[0], c[0])
    torch.testing.assert_close(a[1], c[1])
