"""Noise corruptions: gaussian, shot, impulse and speckle noise."""

from __future__ import annotations

import numpy as np

from odedit.corruptions._plumbing import _stack
from odedit.corruptions.params import PARAMS


# ---------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------


def _gaussian_noise(x, sev, rngs):
    c = PARAMS["gaussian_noise"][sev - 1]
    return x + _stack(rngs, lambda g: g.normal(0.0, c, x.shape[1:]))


def _shot_noise(x, sev, rngs):
    c = PARAMS["shot_noise"][sev - 1]
    return np.stack([g.poisson(xi * c) for g, xi in zip(rngs, x)]) / c


def _impulse_noise(x, sev, rngs):
    amount = PARAMS["impulse_noise"][sev - 1]
    flips = _stack(rngs, lambda g: g.random((2,) + x.shape[1:]))
    flipped = flips[:, 0] < amount
    salt = flips[:, 1] < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


def _speckle_noise(x, sev, rngs):
    c = PARAMS["speckle_noise"][sev - 1]
    return x + x * _stack(rngs, lambda g: g.normal(0.0, c, x.shape[1:]))
