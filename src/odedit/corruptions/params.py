"""Names and per-severity parameter tables of the corruptions (see the package docstring)."""

from __future__ import annotations

import numpy as np

from odedit.corruption_names import CORRUPTIONS, IMAGENET_C, MASKING

__all__ = [
    "IMAGENET_C",
    "MASKING",
    "CORRUPTIONS",
    "DETERMINISTIC",
    "SEVERITIES",
    "MASKING_FRACTIONS",
    "REFERENCE_SIZE",
    "PARAMS",
]

# ---------------------------------------------------------------------------------------
# Names and parameter tables
# ---------------------------------------------------------------------------------------


#: Corruptions that use no randomness (the same output whatever the generator).
DETERMINISTIC: frozenset[str] = frozenset(
    {"defocus_blur", "zoom_blur", "gaussian_blur", "brightness", "contrast", "saturate", "pixelate", "jpeg_compression"}
)

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Masking probability p for severity 1..5.
MASKING_FRACTIONS: dict[int, float] = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}

#: The image size the published parameter tables were made for.
REFERENCE_SIZE = 224

_E = 244  # the elastic table's constant (the reference code's comment: "should have been 224")

#: Per-severity parameters (index 0 = severity 1), exactly as published for 224 px.
PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std of N(0, c) added, [0,1] scale
    "shot_noise": (60, 25, 12, 5, 3),  # Poisson(x * c) / c
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # salt & pepper amount
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),  # x + x * N(0, c)
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, alias blur
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # sigma, delta, iters
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": (
        tuple(np.arange(1, 1.11, 0.01)),
        tuple(np.arange(1, 1.16, 0.01)),
        tuple(np.arange(1, 1.21, 0.02)),
        tuple(np.arange(1, 1.26, 0.02)),
        tuple(np.arange(1, 1.31, 0.03)),
    ),
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma
    "snow": (  # loc, scale, zoom, threshold, blur radius, blur sigma, image weight
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image weight, frost weight
    "fog": ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)),  # strength, wibble decay
    "spatter": (  # loc, scale, sigma, threshold, intensity/sigma, mud?
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor around the per-channel mean
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # S * a + b
    "elastic_transform": (  # alpha, sigma, affine jitter (reference pixels)
        (_E * 2, _E * 0.7, _E * 0.1),
        (_E * 2, _E * 0.08, _E * 0.2),
        (_E * 0.05, _E * 0.01, _E * 0.02),
        (_E * 0.07, _E * 0.01, _E * 0.02),
        (_E * 0.12, _E * 0.01, _E * 0.02),
    ),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # output size fraction
    "jpeg_compression": (25, 18, 15, 10, 7),  # quality
    "masking_random_color": tuple(MASKING_FRACTIONS[k] for k in SEVERITIES),
    "masking_vline_random_color": tuple(MASKING_FRACTIONS[k] for k in SEVERITIES),
}
