"""Optional network metrics (LPIPS, FID): lazy imports, no downloads unless allowed."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import numpy as np
import torch

from ._common import ArrayLike, _as_nchw, _pair_float64
from .distribution import frechet_distance, gaussian_stats



class MetricUnavailable(Exception):
    """A network metric cannot run here; ``reason`` says why (package or weights)."""

    def __init__(self, metric: str, reason: str):
        super().__init__(f"{metric} is unavailable: {reason}")
        self.metric = metric
        self.reason = reason


_EXTRA_HINT = "install the optional extra: pip install 'odedit[metrics]'"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# torchvision ImageNet backbones used by lpips (cached by torch.hub under checkpoints/)
LPIPS_BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
_MODEL_CACHE: dict = {}


def _hub_checkpoint(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _not_installed(module: str, pip_name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return f"package '{pip_name}' is not installed ({_EXTRA_HINT})" if spec is None else None


def _import_or_reason(module: str, pip_name: str) -> tuple[Any, str | None]:
    reason = _not_installed(module, pip_name)
    if reason:
        return None, reason
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # broken install, e.g. a torchvision built for another torch
        return None, f"package '{pip_name}' is installed but failed to import: {type(exc).__name__}: {exc}"


def _check_lpips(net: str) -> tuple[Any, str | None]:
    if net not in LPIPS_BACKBONE_URLS:
        raise ValueError(f"net must be one of {sorted(LPIPS_BACKBONE_URLS)}, got {net!r}")
    reason = _not_installed("lpips", "lpips")
    if reason:
        return None, reason
    _, reason = _import_or_reason("torchvision", "torchvision")
    if reason:
        return None, f"lpips needs torchvision for its {net} backbone: {reason}"
    mod, reason = _import_or_reason("lpips", "lpips")
    if reason:
        return None, reason
    lin = os.path.join(os.path.dirname(getattr(mod, "__file__", "") or ""), "weights", "v0.1", f"{net}.pth")
    if not os.path.isfile(lin):
        return mod, f"lpips linear-layer weights not found in the package ({lin})"
    ckpt = _hub_checkpoint(LPIPS_BACKBONE_URLS[net])
    if not os.path.isfile(ckpt):
        return mod, (f"torchvision {net} backbone weights are not cached at {ckpt} "
                     f"(would need a download from {LPIPS_BACKBONE_URLS[net]})")
    return mod, None


def _check_fid() -> tuple[Any, str | None]:
    reason = _not_installed("pytorch_fid", "pytorch-fid")
    if reason:
        return None, reason
    _, reason = _import_or_reason("torchvision", "torchvision")
    if reason:
        return None, f"pytorch-fid needs torchvision: {reason}"
    mod, reason = _import_or_reason("pytorch_fid", "pytorch-fid")
    if reason:
        return None, reason
    ckpt = _hub_checkpoint(FID_WEIGHTS_URL)
    if not os.path.isfile(ckpt):
        return mod, f"FID Inception weights are not cached at {ckpt} (would need a download from {FID_WEIGHTS_URL})"
    return mod, None


def available_network_metrics() -> dict[str, str | None]:
    """``{"lpips": reason or None, "fid": reason or None}``; None means usable.

    Checks, without downloading anything: the packages (and torchvision) import,
    lpips' bundled linear weights exist, and the pretrained weights (torchvision
    AlexNet for LPIPS, pt_inception for FID) are in the torch hub cache
    (``torch.hub.get_dir()/checkpoints``, ~/.cache/torch/hub/checkpoints by default).
    """
    return {"lpips": _check_lpips("alex")[1], "fid": _check_fid()[1]}


def _load_or_unavailable(metric: str, reason: str | None, allow_download: bool, build):
    """Build a network; weights-missing reasons become errors unless downloads are allowed."""
    if reason is not None and not (allow_download and "not cached" in reason):
        if "not cached" in reason:
            reason += "; pass allow_download=True to let it download"
        raise MetricUnavailable(metric, reason)
    try:
        return build()
    except Exception as exc:
        why = "weights could not be downloaded" if reason else "model construction failed"
        raise MetricUnavailable(metric, f"{why}: {type(exc).__name__}: {exc}") from exc


def lpips_distance(
    x: ArrayLike,
    y: ArrayLike,
    device: str | torch.device | None = None,
    *,
    net: str = "alex",
    allow_download: bool = False,
    batch_size: int = 32,
) -> torch.Tensor:
    """LPIPS v0.1 (Zhang et al. 2018) per image pair, float64 tensor (N,) on CPU.

    ``x``, ``y``: (N, 3, H, W) float in [0, 1] (rescaled to [-1, 1] for lpips).
    ``net``: 'alex' (the usual choice), 'vgg' or 'squeeze'. Raises
    :class:`MetricUnavailable` if lpips/torchvision are missing or the backbone
    weights are not cached (and ``allow_download`` is False, or downloading fails).
    """
    mod, reason = _check_lpips(net)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = ("lpips", net, str(dev))
    if key not in _MODEL_CACHE:
        def build():
            return mod.LPIPS(net=net, version="0.1", verbose=False).eval().to(dev)
        _MODEL_CACHE[key] = _load_or_unavailable("lpips", reason, allow_download, build)
    model = _MODEL_CACHE[key]
    xt, yt = _pair_float64(x, y)
    out = []
    with torch.no_grad():
        for s in range(0, xt.shape[0], batch_size):
            a = xt[s : s + batch_size].to(dev, torch.float32) * 2 - 1
            b = yt[s : s + batch_size].to(dev, torch.float32) * 2 - 1
            out.append(model(a, b).reshape(-1).to("cpu", torch.float64))
    return torch.cat(out)


def fid_features(
    images: ArrayLike,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 50,
    allow_download: bool = False,
) -> np.ndarray:
    """2048-d pool3 features of pytorch-fid's FID Inception, float64 (N, 2048).

    ``images``: (N, 3, H, W) float in [0, 1]; pytorch-fid resizes to 299x299
    (bilinear) and rescales to [-1, 1] itself. Raises :class:`MetricUnavailable`
    if pytorch-fid/torchvision are missing or the pt_inception weights are not
    cached (and ``allow_download`` is False, or downloading fails).
    """
    _, reason = _check_fid()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = ("fid", str(dev))
    if key not in _MODEL_CACHE:
        def build():
            inception = importlib.import_module("pytorch_fid.inception")
            block = inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
            return inception.InceptionV3([block]).eval().to(dev)
        _MODEL_CACHE[key] = _load_or_unavailable("fid", reason, allow_download, build)
    model = _MODEL_CACHE[key]
    x = _as_nchw(images, "images")
    feats = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            pred = model(x[s : s + batch_size].to(dev, torch.float32))[0]
            feats.append(pred.reshape(pred.shape[0], -1).to("cpu", torch.float64).numpy())
    return np.concatenate(feats, axis=0)


def fid(
    images_a: Any,
    images_b: Any,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 50,
    allow_download: bool = False,
) -> float:
    """FID between two image sets ((N, 3, H, W) float in [0, 1]).

    Either argument may instead be precomputed reference statistics ``(mu, sigma)``
    (e.g. from :func:`gaussian_stats` of :func:`fid_features`). Uses
    :func:`frechet_distance` (eigh method). Note FID is strongly biased for small
    sets (use thousands of images for comparable numbers). Raises
    :class:`MetricUnavailable` as :func:`fid_features`.
    """
    def stats(v):
        if isinstance(v, tuple) and len(v) == 2:
            return v
        return gaussian_stats(fid_features(v, device, batch_size=batch_size, allow_download=allow_download))

    mu1, s1 = stats(images_a)
    mu2, s2 = stats(images_b)
    return frechet_distance(mu1, s1, mu2, s2)


