"""The Gaussian base of a training run: fitted once from the training faces, kept in the run folder.

A run with a base trains the network as a residual on top of the closed-form Gaussian denoiser
(:class:`odedit.models.GaussianResidualEps`): the loss is || eps - (E_G[eps | x_t] + r_theta) ||^2.
Where the base comes from, in order:

1. a resumed run: ``OUT/gaussian/`` (written when the run started);
2. ``--resume-from-weights`` of a model that has one: that model's base (its network is a residual);
3. ``--gaussian-rank K`` > 0: a new fit (PPCA of the training faces and, with flips on, their
   mirror images; :func:`odedit.gaussian.fit_ppca`, seeded by ``--seed``);
4. ``--precondition edm`` without a rank: EDM's isotropic N(0, sigma_data^2 I).

The base carries ``--precondition`` (:mod:`odedit.precond`; not given: the base it comes from
keeps its own, a new base gets edm, or none with ``--min-snr-gamma``: :func:`new_base_precondition`).
A network that was not a residual of that kind (fresh, warm-started from a plain eps model, or from
a base with the other preconditioning) gets its output convolution zeroed, so the untrained model
is exactly the Gaussian's denoiser and the trunk's features are kept.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from odedit.data import ImageArrayDataset, batch_to_model_space
from odedit.gaussian import GAUSSIAN_DIR, GaussianBase, fit_ppca
from odedit.training.config import TrainConfig, TrainError

__all__ = ["new_base_precondition", "resolve_gaussian_base", "zero_output_layer"]


def zero_output_layer(unet) -> None:
    """Zero the final convolution of a diffusers UNet2DModel (``conv_out``): its output becomes 0."""
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        if unet.conv_out.bias is not None:
            unet.conv_out.bias.zero_()


def _fit(cfg: TrainConfig, dataset: ImageArrayDataset, rank: int, say: Callable[[str], None]) -> GaussianBase:
    x = batch_to_model_space(torch.from_numpy(dataset.images))
    if cfg.flip:
        x = torch.cat([x, x.flip(-1)])
    most = min(x.shape[0], x[0].numel()) - 1
    if most < 1:
        raise TrainError("a Gaussian base needs at least 2 training images; pass --gaussian-rank 0")
    if rank > most:
        say(f"note: --gaussian-rank {rank} lowered to {most}: the data has only {x.shape[0]} images")
        rank = most
    t0 = time.monotonic()
    base = fit_ppca(x, rank, generator=torch.Generator().manual_seed(int(cfg.seed)))
    say(f"Gaussian base: rank {rank} PPCA of {x.shape[0]} images in {time.monotonic() - t0:.0f} s "
        f"(rest variance {base.residual_var:.2e})")
    return base


def new_base_precondition(cfg: TrainConfig) -> str:
    """The preconditioning of a newly fitted base: the one asked for, else "edm" (the recipe study's
    winner, docs/training.md), except with min-SNR weighting, which is a loss weighting of its own
    and gets the plain residual ("none")."""
    if cfg.precondition is not None:
        return cfg.precondition
    return "none" if cfg.min_snr_gamma is not None else "edm"


def resolve_gaussian_base(
    cfg: TrainConfig,
    out: Path,
    resumed: bool,
    weights_base: Optional[GaussianBase],
    unet,
    dataset: ImageArrayDataset,
    main: bool,
    say: Callable[[str], None],
) -> Optional[GaussianBase]:
    """The run's base (CPU tensors) or None; saved to ``out/gaussian`` by the main process."""
    folder = out / GAUSSIAN_DIR
    if resumed:
        if not folder.is_dir():
            return None  # a run started without a base stays without one
        try:
            base = GaussianBase.load(folder)
        except ValueError as err:
            raise TrainError(f"cannot resume: {err}") from None
        if cfg.precondition not in (None, base.precondition):
            raise TrainError(
                f"--precondition {cfg.precondition}: the run being resumed trains with {base.precondition!r}; "
                "use another --out (with --resume-from-weights) to change it"
            )
        return base
    rank = cfg.gaussian_rank
    want = (int(unet.config.in_channels), int(dataset.resolution), int(dataset.resolution))
    if weights_base is not None:
        base = weights_base
        if tuple(base.shape) != want:  # a progressive run at a new resolution: the same kind of base, refitted
            say(f"note: the weights' base is for images {tuple(base.shape)}; fitting one for {want} "
                "(the network stays a residual)")
            base = (GaussianBase.isotropic(want, base.residual_var, base.precondition) if base.rank == 0 else
                    replace(_fit(cfg, dataset, base.rank, say).as_stored(), precondition=base.precondition))
        if rank not in (None, base.rank):
            say(f"note: --gaussian-rank {rank} ignored: the weights carry a rank-{base.rank} base")
        if cfg.precondition not in (None, base.precondition):
            say(f"note: the weights' base was trained with precondition {base.precondition!r}, this run uses "
                f"{cfg.precondition!r}: the network's output layer starts at zero")
            base = replace(base, precondition=cfg.precondition)
            zero_output_layer(unet)
    elif rank:
        base = replace(_fit(cfg, dataset, int(rank), say).as_stored(), precondition=new_base_precondition(cfg))
        zero_output_layer(unet)
    elif cfg.precondition == "edm":
        base = GaussianBase.isotropic(want, cfg.sigma_data**2, "edm")
        zero_output_layer(unet)
    else:
        return None
    if tuple(base.shape) != want:
        raise TrainError(f"the Gaussian base is for images {tuple(base.shape)}, the network for {want}")
    if main:
        base.save(folder)
    return base
