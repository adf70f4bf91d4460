"""Summary statistics of per-image metric values."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch

from ._common import ArrayLike



def mean_and_stderr(values: Iterable[float] | ArrayLike) -> tuple[float, float]:
    """Mean and standard error of the mean, as Python floats.

    stderr = sample standard deviation (ddof=1) / sqrt(n); n = 1 gives a NaN
    stderr. Accepts lists, numpy arrays and tensors (flattened); raises
    ValueError for an empty input. NaN/inf values propagate.
    """
    if isinstance(values, torch.Tensor):
        v = values.detach().cpu().to(torch.float64).numpy().ravel()
    else:
        v = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("mean_and_stderr needs at least one value")
    mean = float(v.mean())
    if n == 1:
        return mean, math.nan
    return mean, float(v.std(ddof=1) / math.sqrt(n))
