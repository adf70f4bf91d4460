"""Image files in and out, and every range conversion of the project, in one place.

Conventions:
    uint8 image   numpy array (H, W, 3), RGB, values 0..255
    unit tensor   torch float32 (B, 3, H, W) or (3, H, W), values in [0, 1]
    model space   torch float (B, 3, H, W), values in [-1, 1] (= 2 * unit - 1)

Loading converts any Pillow mode to RGB: alpha is composited over white, greyscale
(8- or 16-bit) is replicated to 3 channels, 16-bit data are scaled to 8 bits, palette
and CMYK are converted, EXIF orientation is applied. Resizing to the model's square
resolution: the central square crop of the image is taken (faces are centred in
aligned photos) and resized with Lanczos (antialiased) filtering.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from odedit.atomic import atomic_open, remove_stale_temps  # noqa: F401 (re-exported)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MAX_PIXELS = 100_000_000  # refuse absurd images (decompression bombs) with a clear error
MIN_SIDE = 8  # smaller than this is not a photo of a face
# What Pillow's decoders raise on corrupt data: OSError/SyntaxError/ValueError by design, and
# the others from plugins reading past a damaged header (found by scripts/fuzz_images.py;
# regression inputs in tests/data/fuzz/).
DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, IndexError, EOFError, KeyError, TypeError, struct.error, ZeroDivisionError,
)


class ImageError(ValueError):
    """An input file is not a usable image; the message names the file."""


def list_images(inputs: Iterable[os.PathLike | str]) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted, de-duplicated file list.

    Folders contribute files with an image extension; files named explicitly are
    kept whatever their extension (they fail later with a clear message if unreadable).
    Raises FileNotFoundError for a missing path and ImageError for an empty folder.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(f"folder {str(path)!r} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def pil_to_uint8(img) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 RGB (see module docstring for the rules)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.round(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_image_uint8(path: os.PathLike | str) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB. Raises ImageError with the file named.

    Refused, each with its own message: empty files, files Pillow cannot identify, truncated
    or corrupt data, images over :data:`MAX_PIXELS` (checked from the header, before any
    pixel is decoded: decompression bombs), images under :data:`MIN_SIDE` pixels a side, and
    animated images (several frames: which one would be restored is not clear).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty")
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"{path}: image is {img.width}x{img.height}, larger than the {MAX_PIXELS:,}-pixel limit"
                )
            if min(img.width, img.height) < MIN_SIDE:
                raise ImageError(f"{path}: image is {img.width}x{img.height}, smaller than {MIN_SIDE} pixels a side")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ImageError(
                    f"{path}: animated image with {frames} frames; odedit restores still images (extract a frame first)"
                )
            img.load()
            return pil_to_uint8(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{path}: image is too large to decode safely ({err})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except DECODE_ERRORS as err:
        raise ImageError(f"{path}: cannot read image ({err.__class__.__name__}: {err})") from None


def fit_region(shape: tuple, mode: str = "stretch") -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of an (H, W, ...) image that :func:`fit_square`
    brings to the model's square: the whole frame (``stretch``) or its central square (``crop``)."""
    h, w = int(shape[0]), int(shape[1])
    if mode == "stretch":
        return 0, 0, h, w
    if mode == "crop":
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side, side
    raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Central square crop, then Lanczos resize to (size, size). uint8 in, uint8 out."""
    from PIL import Image

    top, left, side, _ = fit_region(image.shape, "crop")
    crop = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS), dtype=np.uint8)


FIT_MODES = ("stretch", "crop")


def fit_square(image: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Bring a uint8 (H, W, 3) image to (size, size, 3) uint8.

    ``stretch`` resizes the whole frame (aspect ratio not kept; this is how the
    CelebA-64 training data were made from 178x218 frames); ``crop`` takes the
    central square first. Lanczos filtering either way.
    """
    if mode == "stretch":
        return resize_to(image, size, size)
    if mode == "crop":
        return resize_square(image, size)
    raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")


def unfit_square(result: np.ndarray, original: np.ndarray, mode: str = "stretch") -> np.ndarray:
    """Undo :func:`fit_square` for ``--keep-size``: back to the original's (H, W).

    ``stretch``: resize to (H, W). ``crop``: resize to the crop's side and paste it
    into a copy of the original, whose borders outside the crop stay as they were.
    """
    h, w = original.shape[:2]
    if mode == "stretch":
        return resize_to(result, w, h)
    if mode == "crop":
        top, left, side, _ = fit_region(original.shape, "crop")
        out = np.array(original, dtype=np.uint8, copy=True)
        out[top : top + side, left : left + side] = resize_to(result, side, side)
        return out
    raise ValueError(f"unknown fit mode {mode!r}; expected one of {FIT_MODES}")


def resize_to(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Plain Lanczos resize of a uint8 (H, W, 3) image to (height, width)."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS), dtype=np.uint8)


def uint8_to_unit(images: np.ndarray | Sequence[np.ndarray]):
    """(H, W, 3) or (B, H, W, 3) uint8 -> float32 tensor (3, H, W) / (B, 3, H, W) in [0, 1]."""
    import torch

    arr = np.asarray(images)
    t = torch.from_numpy(np.array(arr, dtype=np.uint8)).to(torch.float32) / 255.0  # copy: inputs may be read-only
    return t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)


def unit_to_uint8(images) -> np.ndarray:
    """Float tensor in [0, 1] (3, H, W) / (B, 3, H, W) -> uint8 (H, W, 3) / (B, H, W, 3).

    Values are clamped to [0, 1] and rounded: this is the one place images leave float.
    """
    t = images.detach().float().clamp(0.0, 1.0).mul(255.0).round().to("cpu")
    t = t.permute(1, 2, 0) if t.ndim == 3 else t.permute(0, 2, 3, 1)
    return t.numpy().astype(np.uint8)


def unit_to_model(images):
    """[0, 1] -> [-1, 1] model space."""
    return images * 2.0 - 1.0


def model_to_unit(x):
    """[-1, 1] model space -> [0, 1] (not clamped)."""
    return (x + 1.0) / 2.0


def save_png_atomic(path: os.PathLike | str, image: np.ndarray) -> None:
    """Write a uint8 (H, W, 3) image as PNG atomically (:mod:`odedit.atomic`: a short temp name
    in the same folder, mode 0666 less the umask, then a rename)."""
    from PIL import Image

    with atomic_open(path, "wb") as fh:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(fh, format="PNG")


def make_grid(images: np.ndarray, ncols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile (B, H, W, 3) uint8 images into one uint8 image with ``ncols`` columns."""
    images = np.asarray(images, dtype=np.uint8)
    b, h, w, c = images.shape
    nrows = -(-b // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid
