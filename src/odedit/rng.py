"""Explicit, per-image randomness.

Every image owns one ``torch.Generator``; noise for a batch is the stack of each
image's own draws, so a result never depends on the batch size or on which other
images share the batch.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def generators_for(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, seeded with that image's seed, on ``device``."""
    device = torch.device(device)
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn_per_image(
    like: torch.Tensor,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (B, ...); row b drawn from generators[b].

    The generators must live on ``like.device``; nothing is copied between devices.
    """
    if len(generators) != like.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} for a batch of {like.shape[0]}")
    shape = like.shape[1:]
    return torch.stack(
        [torch.randn(shape, generator=g, device=like.device, dtype=like.dtype) for g in generators]
    )


def restore_seed(base_seed: int, name: str) -> int:
    """Per-image restoration seed from the base seed and the file name (``odedit restore``):
    the same image gets the same noise whatever else is in the batch or the folder."""
    digest = hashlib.sha256(_name_bytes(f"{int(base_seed)}:{name}")).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def face_seed(base_seed: int, name: str, index: int = 0) -> int:
    """The seed rule of ``odedit restore`` and the web app: the seed of face ``index`` of the
    photo (or crop) called ``name``. Face 0 gets the file's own seed (:func:`restore_seed`, as
    an aligned crop of that name would), face *i* the seed of ``NAME#faceI``; so a result
    never depends on the batch, the other files or the order of the faces' restoration."""
    return restore_seed(base_seed, name if index == 0 else f"{name}#face{index}")


def corrupt_seed(base_seed: int, file_name: str, purpose: str = "corrupt") -> int:
    """A 63-bit corruption seed from the base seed and the output file name (``odedit corrupt``)."""
    digest = hashlib.sha256(_name_bytes(f"odedit-corrupt/{purpose}/{int(base_seed)}/{file_name}")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _name_bytes(text: str) -> bytes:
    """UTF-8 bytes of a string holding a file name; names that are not valid UTF-8 (kept by
    Python as lone surrogates) map back to their raw bytes instead of raising. Valid names
    encode exactly as ``str.encode()``, so their seeds are unchanged."""
    return text.encode("utf-8", "surrogateescape")
