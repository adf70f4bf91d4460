"""Per-level denoising errors against closed forms (Gaussian data) and exact limits."""

from __future__ import annotations

import pytest
import torch

from odedit.analytic import GaussianPrior
from odedit.prior_eval import denoising_errors
from odedit.schedule import NoiseSchedule


def test_gaussian_prior_reaches_the_posterior_variance_bound():
    # For x0 ~ N(mu, s^2 I) the exact eps gives the Bayes-optimal x0 estimate, whose
    # MSE ratio to doing nothing is ab s^2 / (ab s^2 + 1 - ab).
    s = 0.4
    prior = GaussianPrior(mean=0.1, std=s, sample_size=16)
    x0 = prior.sample([torch.Generator().manual_seed(i) for i in range(64)], dtype=torch.float32)
    rows = denoising_errors(prior, x0, (10, 100, 250, 500, 750), torch.Generator().manual_seed(0), batch_size=16)
    for row in rows:
        ab = row["alpha_bar"]
        expected = ab * s * s / (ab * s * s + 1 - ab)
        assert abs(row["ratio"] - expected) < 0.03 * expected + 1e-4, (row, expected)
        assert abs(row["mse_nothing"] - (1 - ab) / ab) < 0.03 * (1 - ab) / ab
    ratios = [r["ratio"] for r in rows]
    assert ratios == sorted(ratios, reverse=True)  # more noise: denoising helps more


class Zero:
    """Predicts eps = 0, i.e. returns x_t / sqrt(ab): exactly "doing nothing"."""

    schedule = NoiseSchedule.linear()
    sample_size, in_channels = 8, 3

    def __call__(self, x, t):
        return torch.zeros_like(x)


def test_doing_nothing_has_ratio_one_and_results_are_reproducible():
    x0 = torch.rand(10, 3, 8, 8) * 2 - 1
    a = denoising_errors(Zero(), x0, (0, 999), torch.Generator().manual_seed(3), batch_size=4)
    b = denoising_errors(Zero(), x0, (0, 999), torch.Generator().manual_seed(3), batch_size=7)
    assert [r["ratio"] for r in a] == [1.0, 1.0]
    for ra, rb in zip(a, b):  # batch size changes nothing but float64 summation order
        assert ra["t"] == rb["t"] and ra["mse_x0"] == pytest.approx(rb["mse_x0"], rel=1e-12)


def test_out_of_range_timestep_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        denoising_errors(Zero(), torch.zeros(1, 3, 8, 8), (1000,))
