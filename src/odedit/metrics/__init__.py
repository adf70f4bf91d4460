"""Image-quality metrics: PSNR, SSIM, Frechet distance, sliced Wasserstein (SWD),
plus optional network metrics (LPIPS, FID) and a summary helper.

Modules: ``pixel`` (PSNR, SSIM: one value per image), ``distribution`` (set-level
distances: Frechet, SWD), ``network`` (LPIPS, FID), ``stats`` (mean and standard
error). Everything public is importable from ``odedit.metrics``.

Conventions shared by the pixel metrics (unless a function says otherwise)::

    images   float tensor (N, C, H, W), values in [0, data_range] (default [0, 1]);
             numpy arrays are accepted and converted with ``torch.as_tensor``;
             a single (C, H, W) image is treated as a batch of one.
    result   per-image float64 tensor of shape (N,), on the device of the input.

All reductions are computed in float64. The only randomness (SWD) is drawn from an
explicit ``numpy.random.Generator`` (or an int seed turned into one).

The network metrics (:func:`lpips_distance`, :func:`fid_features`, :func:`fid`) need
the optional extra ``odedit[metrics]`` (``lpips``, ``pytorch-fid``, which pull in
torchvision) and their pretrained weights. They import lazily and raise
:class:`MetricUnavailable` with a reason instead of crashing; by default they never
download anything (``allow_download=False``). :func:`available_network_metrics` says
what is usable without downloading.

The identity metric (:func:`identity_similarity`: cosine similarity of dlib
face-recognition descriptors of a restored face and its clean face, also the Euclidean
distance and the angle, :func:`identity_scores`) needs the optional extra
``odedit[identity]`` (``dlib-bin``, ``face-recognition-models``); it imports dlib lazily,
and :func:`identity_unavailable` says why it cannot run (module ``identity``).
"""

from __future__ import annotations

from .distribution import (
    LaplacianDescriptors,
    frechet_distance,
    gaussian_stats,
    laplacian_descriptors,
    laplacian_pyramid,
    sliced_wasserstein,
    swd,
    swd_from_descriptors,
)
from .identity import (
    IdentityModel,
    IdentityScores,
    identity_descriptors,
    identity_distance,
    identity_scores,
    identity_similarity,
    identity_unavailable,
    load_identity_model,
)
from .network import MetricUnavailable, available_network_metrics, fid, fid_features, lpips_distance
from .pixel import psnr, ssim
from .stats import mean_and_stderr

__all__ = [
    "psnr",
    "ssim",
    "frechet_distance",
    "gaussian_stats",
    "LaplacianDescriptors",
    "laplacian_pyramid",
    "laplacian_descriptors",
    "sliced_wasserstein",
    "swd_from_descriptors",
    "swd",
    "MetricUnavailable",
    "available_network_metrics",
    "lpips_distance",
    "fid_features",
    "fid",
    "IdentityModel",
    "IdentityScores",
    "identity_unavailable",
    "load_identity_model",
    "identity_descriptors",
    "identity_scores",
    "identity_similarity",
    "identity_distance",
    "mean_and_stderr",
]

