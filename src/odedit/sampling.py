"""Unconditional samples from a diffusion prior: x_T ~ N(0, I), then the DDIM ODE down.

Used to watch a prior form during training (``odedit train`` sample grids) and by
``odedit sample``. Each image owns one generator (``odedit.rng``), so a sample
depends only on its seed, not on the batch size or the other images in the batch.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from odedit.models import EpsModel
from odedit.ode import X0Transform
from odedit.rng import generators_for, randn_per_image
from odedit.schedule import timestep_grid
from odedit.solvers import decode

__all__ = ["ddim_sample", "sample_chunks", "sample_grid", "sample_seeds", "to_uint8", "grid_image", "default_ncols"]


def _model_device(model: EpsModel, fallback: torch.device) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    unet = getattr(model, "unet", None)
    if unet is not None:
        return next(unet.parameters()).device
    return fallback


@torch.no_grad()
def ddim_sample(
    model: EpsModel,
    generators: Sequence[torch.Generator],
    steps: int = 100,
    batch_size: Optional[int] = None,
    x0_transform: Optional[X0Transform] = None,
    callback: Optional[Callable[[int], None]] = None,
    solver: str = "ddim",
) -> torch.Tensor:
    """Draw one sample per generator with deterministic DDIM (eta = 0) or another ODE solver.

    x_T is drawn from each image's generator at the top level of the ``steps``-step
    grid (:func:`odedit.schedule.timestep_grid`), then decoded to the image with
    :func:`odedit.solvers.decode` and the named solver. The noise is drawn on each generator's own device and
    moved to the model: CPU generators give the same x_T whatever the model's device.

    Args:
        model: the ``eps(x, t)`` contract (e.g. :class:`odedit.models.UNetEps`).
        generators: one ``torch.Generator`` per sample.
        steps: DDIM steps N (model calls per sample), 1..T.
        batch_size: samples per model call (default: all at once).
        x0_transform: optional map on predicted x0 inside each step (see ``odedit.ode``).
        callback: ``callback(k)`` after every model call on a chunk of k samples.
        solver: a key of :data:`odedit.solvers.SOLVERS`, ``steps`` model calls either way.
    Returns:
        float32 tensor (B, C, H, W) on the model's device, clamped to [-1, 1].
    """
    gens = list(generators)
    if not gens:
        raise ValueError("ddim_sample needs at least one generator")
    grid = timestep_grid(model.schedule.num_train_timesteps, steps)
    size, channels = int(model.sample_size), int(model.in_channels)
    device = _model_device(model, gens[0].device)
    chunk = len(gens) if batch_size is None else max(1, int(batch_size))
    out = []
    for start in range(0, len(gens), chunk):
        part = gens[start : start + chunk]
        # All generators of a chunk must share a device to stack their draws.
        if len({g.device for g in part}) == 1:
            g_dev = part[0].device
            like = torch.empty(len(part), channels, size, size, device=g_dev, dtype=torch.float32)
            x = randn_per_image(like, part).to(device)
        else:
            x = torch.cat(
                [
                    randn_per_image(torch.empty(1, channels, size, size, device=g.device), [g]).to(device)
                    for g in part
                ]
            )
        step_cb = None if callback is None else (lambda _n, k=len(part): callback(k))
        x = decode(model, x, grid, None, -1, x0_transform, step_cb, solver=solver)
        out.append(x.float().clamp_(-1.0, 1.0))
    return torch.cat(out)


def sample_chunks(
    model: EpsModel,
    seeds: Sequence[int],
    steps: int = 100,
    batch_size: int = 16,
    callback: Optional[Callable[[int], None]] = None,
    solver: str = "ddim",
) -> Iterator[np.ndarray]:
    """DDIM samples of ``seeds`` (one CPU generator each, as ``odedit sample``), ``batch_size``
    at a time; each chunk is yielded as uint8 (B, H, W, 3) on the host, so memory stays
    bounded by the batch. ``callback`` as in :func:`ddim_sample`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(seeds), batch_size):
        part = seeds[start : start + batch_size]
        yield to_uint8(
            ddim_sample(model, generators_for(part, "cpu"), steps=steps, callback=callback, solver=solver)
        )


def sample_seeds(seed: int, n: int) -> list[int]:
    """The per-image seeds ``seed, seed + 1, ..., seed + n - 1`` used by ``odedit sample``."""
    return [int(seed) + i for i in range(int(n))]


def to_uint8(samples: torch.Tensor) -> np.ndarray:
    """Model-space (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3)."""
    from odedit.imageio import model_to_unit, unit_to_uint8

    return unit_to_uint8(model_to_unit(samples))


def default_ncols(n: int) -> int:
    """Columns of a near-square grid of n images."""
    return max(1, math.ceil(math.sqrt(n)))


def grid_image(samples: torch.Tensor, ncols: Optional[int] = None, pad: int = 2) -> np.ndarray:
    """Tile model-space samples into one uint8 (H, W, 3) grid image."""
    from odedit.imageio import make_grid

    images = to_uint8(samples)
    return make_grid(images, ncols or default_ncols(len(images)), pad=pad)


def sample_grid(
    model: EpsModel,
    n: int = 16,
    seed: int = 0,
    steps: int = 50,
    batch_size: Optional[int] = None,
    ncols: Optional[int] = None,
) -> np.ndarray:
    """n samples with seeds ``seed .. seed + n - 1`` (CPU generators) as a uint8 grid."""
    gens = generators_for(sample_seeds(seed, n), "cpu")
    return grid_image(ddim_sample(model, gens, steps=steps, batch_size=batch_size), ncols)
