"""Shared fixtures: a tiny random UNet saved in odedit's layout, and exact Gaussian priors."""

from __future__ import annotations

import math

import pytest
import torch

from odedit.analytic import GaussianPrior
from odedit.schedule import NoiseSchedule


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    """PSNR in dB of a against b for the given data range (2 for [-1, 1], 1 for [0, 1])."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


@pytest.fixture()
def single_thread():
    """Run a test on one intra-op thread (restored afterwards).

    The tiny networks gain nothing from two threads, and on a shared, oversubscribed machine
    OpenMP's spinning threads make each forward pass tens of times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    """A freshly initialised ``tiny`` UNet2DModel (16x16, 3 channels) saved with save_model."""
    from odedit.unets import build_unet, save_model

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("models") / "tiny16"
    save_model(build_unet("tiny", 16), path)
    return path


@pytest.fixture(scope="session")
def tiny_unet(tiny_unet_dir):
    """The tiny UNet loaded through the eps contract (odedit.models.UNetEps, float32, CPU)."""
    from odedit.models import load_model

    return load_model(tiny_unet_dir)


@pytest.fixture(scope="session")
def linear_schedule():
    return NoiseSchedule.linear()


@pytest.fixture(scope="session")
def gaussian_prior(linear_schedule):
    """Exact prior N(mu, 0.5^2 I) on 3x16x16 images with a non-constant mean in [-0.5, 0.5]."""
    g = torch.Generator().manual_seed(7)
    mu = torch.rand((3, 16, 16), generator=g, dtype=torch.float64) - 0.5
    return GaussianPrior(mu, 0.5, linear_schedule)
