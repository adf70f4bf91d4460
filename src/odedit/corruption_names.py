"""Names of the corruptions (standard library only, so the CLI can parse flags without numpy)."""

#: The 19 ImageNet-C corruptions, in the order of the paper's table.
IMAGENET_C: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "gaussian_blur",
    "snow",
    "frost",
    "fog",
    "spatter",
    "brightness",
    "contrast",
    "saturate",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)

#: The two masking corruptions (masked pixels are unknown to the restoration method).
MASKING: tuple[str, ...] = ("masking_random_color", "masking_vline_random_color")

#: Every corruption name accepted by :func:`odedit.corruptions.corrupt` (what ``random`` draws from).
CORRUPTIONS: tuple[str, ...] = IMAGENET_C + MASKING
