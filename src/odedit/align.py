"""Face alignment geometry: similarity fits, affine warps, feathered paste-back.

Notation and conventions:
    photo         uint8 or float numpy array (H, W, C) of the whole input picture.
    frame         the prior's square model frame, ``size`` x ``size`` pixels. The prior was
                  trained on CelebA's *aligned* 178x218 frames squashed to size x size, so a
                  face is aligned by a similarity transform into the canonical 178x218 frame
                  (:data:`CANONICAL_FRAME`) followed by that fixed squash.
    coordinates   continuous pixel coordinates (x, y): pixel (i, j) covers [j, j+1) x [i, i+1)
                  and its centre is (j + 0.5, i + 0.5); a W-pixel row spans [0, W].
    M             a 2x3 float64 affine matrix mapping photo coordinates p to frame
                  coordinates q = M[:, :2] @ p + M[:, 2].
    template      (K, 2) float64 keypoints in canonical-frame coordinates (see
                  :func:`load_template`), the mean of the detector's keypoints on aligned
                  CelebA frames (``scripts/face_template.py``).

Everything here is pure numpy/torch on arrays; nothing depends on the detector.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Optional, Sequence

import numpy as np

CANONICAL_FRAME = (178, 218)  # (width, height) of CelebA's aligned frames
TEMPLATE_FILE = "face_template.json"


@dataclass(frozen=True)
class Template:
    """Mean keypoints of aligned CelebA frames, in canonical-frame pixel coordinates.

    Attributes:
        points: (K, 2) float64, (x, y) in the 178x218 frame.
        names: the K keypoint names, in the detector's order.
        use: indices of the keypoints the similarity fit uses.
        spread: (K,) float64 RMS distance of the data's keypoints from the mean, same units.
    """

    points: np.ndarray
    names: tuple[str, ...]
    use: tuple[int, ...]
    spread: np.ndarray

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) != len(self.names):
            raise ValueError(f"template points must be (K, 2) with K names, got {pts.shape}")
        if len(self.use) < 2 or any(not 0 <= i < len(pts) for i in self.use):
            raise ValueError(f"template 'use' must name >= 2 of the {len(pts)} keypoints, got {self.use}")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "spread", np.asarray(self.spread, dtype=np.float64))


def load_template(path=None) -> Template:
    """The packaged template (``odedit/assets/face_template.json``) or one from ``path``."""
    if path is None:
        text = resources.files("odedit").joinpath("assets", TEMPLATE_FILE).read_text()
    else:
        with open(path) as fh:
            text = fh.read()
    data = json.loads(text)
    return Template(
        points=np.asarray(data["points"], dtype=np.float64),
        names=tuple(data["names"]),
        use=tuple(int(i) for i in data["use"]),
        spread=np.asarray(data["spread"], dtype=np.float64),
    )


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    Umeyama (1991), eq. 40-42. ``src``, ``dst``: (K, 2) float, K >= 2, not all src equal.
    Returns the 2x3 float64 matrix M with dst ~= M[:, :2] @ src + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (K, 2) point sets with K >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    if not var_s > 1e-12:
        raise ValueError("source points coincide: no similarity transform is defined")
    cov = d_c.T @ s_c / len(src)  # (2, 2), Sigma_xy of Umeyama
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(d) @ sign) / var_s)
    lin = scale * rot
    return np.concatenate([lin, (mu_d - lin @ mu_s)[:, None]], axis=1)


def squash_matrix(size: int, frame: tuple[int, int] = CANONICAL_FRAME) -> np.ndarray:
    """2x3 matrix from canonical-frame coordinates to a ``size`` x ``size`` model frame."""
    return np.array([[size / frame[0], 0.0, 0.0], [0.0, size / frame[1], 0.0]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer`` after ``inner`` (apply inner first)."""
    return (_h(outer) @ _h(inner))[:2]


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (ValueError if singular)."""
    lin = np.asarray(m, dtype=np.float64)[:, :2]
    if abs(np.linalg.det(lin)) < 1e-15:
        raise ValueError("affine matrix is singular")
    return np.linalg.inv(_h(m))[:2]


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (K, 2) points with a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(m, dtype=np.float64)[:, :2].T + np.asarray(m, dtype=np.float64)[:, 2]


def scale_of(m: np.ndarray) -> float:
    """Geometric-mean scale of a 2x3 affine (output pixels per input pixel)."""
    return math.sqrt(abs(float(np.linalg.det(np.asarray(m, dtype=np.float64)[:, :2]))))


def photo_to_frame(keypoints: np.ndarray, template: Template, size: int) -> np.ndarray:
    """2x3 M mapping photo coordinates into the ``size`` model frame, from detected keypoints.

    ``keypoints``: (K, 2) photo pixel coordinates, in the template's keypoint order.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.shape != template.points.shape:
        raise ValueError(f"expected {template.points.shape} keypoints, got {kp.shape}")
    use = list(template.use)
    sim = fit_similarity(kp[use], template.points[use])
    return compose(squash_matrix(size), sim)


def warp_affine(
    image: np.ndarray,
    m: np.ndarray,
    out_size: tuple[int, int],
    *,
    mode: str = "bicubic",
    padding: str = "border",
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``image`` into an output grid: out(q) = image(M^-1 q).

    Args:
        image: (H, W, C) numpy, uint8 or float; float32 results, not clamped (bicubic can
            overshoot by a few percent; the uint8 conversion clamps).
        m: 2x3 affine, image coordinates -> output coordinates.
        out_size: (width, height) of the output.
        mode: ``bicubic`` | ``bilinear`` | ``nearest`` (torch ``grid_sample``).
        padding: ``border`` (replicate edge pixels) | ``reflection`` | ``zeros``.
        antialias: when M shrinks (scale < 1), first resize the needed region of the image
            by M's scale with antialiased filtering, so the warp itself runs at ~1:1 and
            does not alias.
    Returns:
        (height, width, C) float32.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W, C), got shape {arr.shape}")
    out_w, out_h = int(out_size[0]), int(out_size[1])
    m = np.asarray(m, dtype=np.float64)
    h, w = arr.shape[:2]
    # 1. Crop the image to the preimage of the output rectangle (plus a filter margin).
    inv = invert(m)
    corners = apply(inv, np.array([[0, 0], [out_w, 0], [0, out_h], [out_w, out_h]], dtype=np.float64))
    scale = scale_of(m)
    margin = 4.0 + 4.0 / max(scale, 1e-6)
    x0 = int(max(0, math.floor(corners[:, 0].min() - margin)))
    y0 = int(max(0, math.floor(corners[:, 1].min() - margin)))
    x1 = int(min(w, math.ceil(corners[:, 0].max() + margin)))
    y1 = int(min(h, math.ceil(corners[:, 1].max() + margin)))
    if x1 <= x0 or y1 <= y0:  # output lies wholly outside the image
        x0, y0, x1, y1 = 0, 0, w, h
    src = torch.from_numpy(np.array(arr[y0:y1, x0:x1], dtype=np.float32))  # a copy: inputs may be read-only
    src = src.permute(2, 0, 1)[None]  # (1, C, h', w')
    m = compose(m, np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]]))  # crop coords -> output
    # 2. Antialiased pre-shrink when the warp minifies.
    if antialias and scale < 0.999:
        ch, cw = src.shape[-2:]
        nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
        src = F.interpolate(src, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        m = compose(m, np.array([[cw / nw, 0.0, 0.0], [0.0, ch / nh, 0.0]]))
    # 3. Sample: output pixel centres -> source coordinates -> grid_sample's [-1, 1].
    inv = invert(m)
    sh, sw = src.shape[-2:]
    ys, xs = np.meshgrid(np.arange(out_h) + 0.5, np.arange(out_w) + 0.5, indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)
    p = apply(inv, pts)
    grid = np.stack([2.0 * p[:, 0] / sw - 1.0, 2.0 * p[:, 1] / sh - 1.0], axis=1).reshape(1, out_h, out_w, 2)
    grid_t = torch.from_numpy(grid).to(torch.float32)
    out = F.grid_sample(src, grid_t, mode=mode, padding_mode=padding, align_corners=False)
    return out[0].permute(1, 2, 0).numpy()


def feather_mask(size: tuple[int, int], inset: float = 0.02, width: float = 0.12) -> np.ndarray:
    """A (height, width) float32 mask in [0, 1]: 1 inside, smoothly 0 at the frame's border.

    ``inset`` and ``width`` are fractions of the shorter side: the mask is exactly 0 within
    ``inset`` of the border and rises with a smoothstep over ``width``.
    """
    fw, fh = int(size[0]), int(size[1])
    if not (0 <= inset and width > 0 and inset + width <= 0.5):
        raise ValueError(f"need 0 <= inset, 0 < width and inset + width <= 0.5, got {inset}, {width}")
    side = min(fw, fh)
    ys = np.arange(fh) + 0.5
    xs = np.arange(fw) + 0.5
    dist = np.minimum.outer(np.minimum(ys, fh - ys), np.minimum(xs, fw - xs))
    u = np.clip((dist - inset * side) / (width * side), 0.0, 1.0)
    return (u * u * (3.0 - 2.0 * u)).astype(np.float32)


def paste_back(
    photo: np.ndarray,
    face: np.ndarray,
    m: np.ndarray,
    frame_size: int,
    mask: Optional[np.ndarray] = None,
    refine: Optional[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = None,
) -> np.ndarray:
    """Blend a restored face frame back into the photo; returns a new uint8 photo.

    Args:
        photo: (H, W, 3) uint8.
        face: (r, r, 3) uint8 or float in 0..255, the frame at any resolution r (the model's
            ``frame_size`` or an upscaled version of it).
        m: 2x3 photo -> model frame (``frame_size`` pixels) matrix used to cut the face.
        mask: (r, r) float in [0, 1] in face coordinates; default :func:`feather_mask`.
        refine: ``refine(face_region, photo_region, alpha) -> face_region``, applied to the face
            once it is warped into photo space, before blending (float32 (h, w, 3) 0..255 regions
            of the frame's bounding box, alpha (h, w)): e.g. :func:`odedit.fidelity.keep_input`.
    Pixels where the warped mask is 0 (everything outside the face frame) are returned
    bit-identical to ``photo``.
    """
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3:
        raise ValueError(f"photo must be (H, W, 3) uint8, got {photo.dtype} {photo.shape}")
    r = face.shape[0]
    if face.shape[:2] != (r, r):
        raise ValueError(f"face must be square, got {face.shape}")
    if mask is None:
        mask = feather_mask((r, r))
    to_face = compose(np.array([[r / frame_size, 0.0, 0.0], [0.0, r / frame_size, 0.0]]), m)
    to_photo = invert(to_face)
    h, w = photo.shape[:2]
    # Only the bounding box of the frame's image in the photo is touched.
    corners = apply(to_photo, np.array([[0, 0], [r, 0], [0, r], [r, r]], dtype=np.float64))
    x0 = int(max(0, math.floor(corners[:, 0].min())))
    y0 = int(max(0, math.floor(corners[:, 1].min())))
    x1 = int(min(w, math.ceil(corners[:, 0].max())))
    y1 = int(min(h, math.ceil(corners[:, 1].max())))
    out = photo.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    face_to_box = compose(shift, to_photo)
    stacked = np.concatenate([np.asarray(face, dtype=np.float32), np.asarray(mask, dtype=np.float32)[..., None]], 2)
    warped = warp_affine(stacked, face_to_box, (x1 - x0, y1 - y0), mode="bilinear", padding="zeros")
    alpha = np.clip(warped[..., 3:], 0.0, 1.0)
    region = out[y0:y1, x0:x1].astype(np.float32)
    face_region = warped[..., :3]
    if refine is not None:
        face_region = refine(face_region, region, alpha[..., 0])
    blended = region + alpha * (face_region - region)
    out[y0:y1, x0:x1] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def frame_corners_in_photo(m: np.ndarray, frame_size: int) -> np.ndarray:
    """(4, 2) photo coordinates of the model frame's corners (TL, TR, BR, BL)."""
    s = float(frame_size)
    return apply(invert(m), np.array([[0, 0], [s, 0], [s, s], [0, s]], dtype=np.float64))


def _h(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"affine matrix must be 2x3, got {m.shape}")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def keypoint_residual(m: np.ndarray, keypoints: np.ndarray, targets: np.ndarray, use: Sequence[int]) -> float:
    """RMS distance between mapped ``keypoints[use]`` and ``targets[use]`` (target units)."""
    use = list(use)
    d = apply(m, np.asarray(keypoints)[use]) - np.asarray(targets)[use]
    return float(np.sqrt((d**2).sum(1).mean()))
