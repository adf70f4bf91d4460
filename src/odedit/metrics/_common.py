"""Input conversions and types shared by the metrics (private)."""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]
RngLike = Union[np.random.Generator, int]


def _as_nchw(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    return t


def _pair_float64(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = _as_nchw(x, "x"), _as_nchw(y, "y")
    if xt.shape != yt.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    yt = yt.to(xt.device)
    return xt.to(torch.float64), yt.to(torch.float64)


def _as_rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


