"""Face masks for the paste-back: only the face goes back into the photo.

The restored frame holds face, hair and background, but only the face should replace the
photo's pixels: the paste-back (:func:`odedit.align.paste_back`) blends with a mask that is 1
on the face, falls smoothly to 0 at its outline and is 0 on hair, background and clothes, so
those keep the input's pixels exactly.

The face's outline is a polygon in model-frame coordinates (see :mod:`odedit.align`):

1. **face mesh** (default): mediapipe's face mesh (bundled in mediapipe 0.10.14, offline), run
   on the aligned frame cut from the photo at :data:`MESH_RESOLUTION` px; its 36-point face
   oval (``FACEMESH_FACE_OVAL``: jaw, cheeks and the forehead up to about the hairline).
2. **keypoint ellipse** (fallback, when the mesh finds no face or a doubtful one): an ellipse
   from the detector's eyes, nose and mouth (:func:`keypoint_ellipse`), fitted to the mesh's
   ovals of 403 CelebA faces (``scripts/face_mask_calibrate.py``: mean IoU 0.84 with the oval).

The mask (:func:`face_mask`) is 0 up to :data:`DILATE` outside the outline and rises with a
smoothstep over :data:`FEATHER` (fractions of the outline's size, the square root of its
area), then is clamped to the frame's own feather mask (:func:`odedit.align.feather_mask`), so
nothing outside the frame can change.

The polygon and mask functions are pure numpy; :class:`FaceMesh` needs mediapipe (the
``faces`` extra) and is imported lazily.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from odedit import align

# mediapipe's FACEMESH_FACE_OVAL edges chained into one loop, from the top of the forehead
# (landmark 10) down the image-left side, the chin (152) and up the image-right side.
OVAL_LANDMARKS = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148,
                  152, 377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)
# The mesh runs on the model frame cut from the photo at this many px a side (the face then
# spans ~120 px; the mesh's landmark model works at 192 px around the face). On the 8
# CelebA-HQ portraits resized to 1024/256/128/64/48 px the oval moved by < 1.5 model px between
# 192 and 256 px crops and between photo sizes; 5 of 400 CelebA val frames (64 px) gave none
# (before the smoothed retry below).
MESH_RESOLUTION = 256
# When the mesh finds no face in the crop, it runs once more on the crop smoothed with this
# Gaussian radius (px at MESH_RESOLUTION).
MESH_RETRY_BLUR = 2.0
# Ramp of the mask, fractions of the outline's size (sqrt of its area; ~27 px in a 64 px frame):
# 0 from DILATE outside the outline, 1 from FEATHER - DILATE inside it.
FEATHER = 0.10
DILATE = 0.02
# Keypoint ellipse, in the face's own axes (x along the eye line, y down; origin the eyes'
# midpoint; d = eyes-to-mouth distance along y, e = distance between the eyes, n = the nose's
# x): centre (-1.04 n, 0.40 d), semi-axes (0.465 d + 0.536 e, 0.935 d + 0.305 e). Least squares
# on the bounding boxes of the mesh ovals of 403 faces (8 CelebA-HQ portraits, 395 CelebA val).
ELLIPSE = {"nose_shift": -1.04, "centre_y": 0.40, "a_d": 0.465, "a_e": 0.536, "b_d": 0.935, "b_e": 0.305}
MASK_SOURCES = ("face_mesh", "keypoint_ellipse")


# ---- polygons ------------------------------------------------------------------------------------


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon ((K, 2) vertices, either orientation)."""
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_signed_distance(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance of each (N, 2) point to the polygon's outline: positive inside, negative
    outside (even-odd rule), in the points' units."""
    poly = np.asarray(polygon, dtype=np.float64)
    pts = np.asarray(points, dtype=np.float64)
    if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
        raise ValueError(f"polygon must be (K >= 3, 2), got {poly.shape}")
    px, py = pts[:, 0], pts[:, 1]
    best = np.full(len(pts), np.inf)
    inside = np.zeros(len(pts), dtype=bool)
    for (ax, ay), (bx, by) in zip(poly, np.roll(poly, -1, axis=0)):
        ex, ey = bx - ax, by - ay
        length2 = ex * ex + ey * ey
        t = np.zeros_like(px) if length2 == 0 else np.clip(((px - ax) * ex + (py - ay) * ey) / length2, 0.0, 1.0)
        best = np.minimum(best, (px - ax - t * ex) ** 2 + (py - ay - t * ey) ** 2)
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = ax + (py - ay) * ex / (by - ay)
        inside ^= crosses & (px < x_cross)
    dist = np.sqrt(best)
    return np.where(inside, dist, -dist)


def fill_polygon(polygon: np.ndarray, shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """(H, W) bool: pixel centres inside ``polygon``, given in units of ``scale`` pixels (a
    polygon in a 64 px frame rasterised at 256 px: ``scale=4``)."""
    h, w = int(shape[0]), int(shape[1])
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / scale, (np.arange(w) + 0.5) / scale, indexing="ij")
    d = polygon_signed_distance(polygon, np.stack([xs.ravel(), ys.ravel()], 1))
    return (d > 0).reshape(h, w)


def smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def face_mask(
    polygon: np.ndarray,
    frame_size: int,
    resolution: Optional[int] = None,
    *,
    feather: float = FEATHER,
    dilate: float = DILATE,
) -> np.ndarray:
    """The paste-back mask of a face outline, in face coordinates.

    Args:
        polygon: (K, 2) the face's outline in model-frame coordinates (``frame_size`` px).
        resolution: side of the mask in px (the restored frame's, e.g. after upsampling);
            default ``frame_size``.
        feather, dilate: the ramp, fractions of the outline's size (sqrt of its area): 0 from
            ``dilate`` outside the outline, rising with a smoothstep to 1 at ``feather - dilate``
            inside it.
    Returns:
        (resolution, resolution) float32 in [0, 1], at most :func:`odedit.align.feather_mask`
        (0 at the frame's border) everywhere.
    """
    r = int(resolution or frame_size)
    if not (feather > 0 and 0 <= dilate < feather):
        raise ValueError(f"need feather > 0 and 0 <= dilate < feather, got {feather}, {dilate}")
    poly = np.asarray(polygon, dtype=np.float64)
    size = math.sqrt(polygon_area(poly))
    mask = np.zeros((r, r), dtype=np.float32)
    if size <= 0:
        return mask
    outer, width = dilate * size, feather * size
    scale = r / float(frame_size)  # mask px per frame px
    # only the outline's box (plus the dilation) can be non-zero
    lo = np.floor((poly.min(0) - outer) * scale - 1).astype(int).clip(0, r)
    hi = np.ceil((poly.max(0) + outer) * scale + 1).astype(int).clip(0, r)
    if (hi <= lo).any():
        return mask
    ys, xs = np.meshgrid((np.arange(lo[1], hi[1]) + 0.5) / scale, (np.arange(lo[0], hi[0]) + 0.5) / scale, indexing="ij")
    d = polygon_signed_distance(poly, np.stack([xs.ravel(), ys.ravel()], 1)).reshape(xs.shape)
    mask[lo[1] : hi[1], lo[0] : hi[0]] = smoothstep((d + outer) / width)
    return np.minimum(mask, align.feather_mask((r, r)))


# ---- the keypoint ellipse (fallback) -------------------------------------------------------------


def keypoint_ellipse(keypoints: np.ndarray, m: Optional[np.ndarray] = None, n: int = 36) -> np.ndarray:
    """(n, 2) polygon of the face ellipse predicted from the detector's keypoints.

    Args:
        keypoints: (6, 2) in :data:`odedit.detect.KEYPOINT_NAMES` order (eyes, nose, mouth,
            ears; the ears are not used), photo coordinates.
        m: 2x3 photo -> model frame; the polygon is returned in frame coordinates (the ellipse
            is built in the photo, where the face has its own proportions). None: photo
            coordinates.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    right_eye, left_eye, nose, mouth = kp[0], kp[1], kp[2], kp[3]
    mid = (right_eye + left_eye) / 2
    u = left_eye - right_eye
    e = float(np.linalg.norm(u))
    if e <= 0:
        raise ValueError("the eye keypoints coincide")
    u /= e
    v = np.array([-u[1], u[0]])  # down the face
    d = float((mouth - mid) @ v)
    if d <= 0:  # a mouth above the eyes: take the usual proportion
        d = 0.9 * e
    k = ELLIPSE
    centre = mid + k["nose_shift"] * float((nose - mid) @ u) * u + k["centre_y"] * d * v
    a = k["a_d"] * d + k["a_e"] * e
    b = k["b_d"] * d + k["b_e"] * e
    t = 2 * np.pi * np.arange(n) / n
    pts = centre + np.outer(a * np.sin(t), u) + np.outer(-b * np.cos(t), v)  # from the top, like the oval
    return pts if m is None else align.apply(m, pts)


def template_ellipse(size: int, template: Optional[align.Template] = None, n: int = 36) -> np.ndarray:
    """The keypoint ellipse of the template face in a ``size`` px model frame: the face's
    outline in an aligned crop, where no photo (and no detection) exists. The pipeline does not
    paste aligned crops (the whole crop is the face: :func:`odedit.faces.finish_aligned`); this is
    for showing the face region."""
    template = template or align.load_template()
    return keypoint_ellipse(template.points, align.squash_matrix(size), n)


# ---- the face mesh -------------------------------------------------------------------------------


class FaceMesh:
    """mediapipe's face mesh (static images), loaded lazily; ``ovals(image)`` gives the face
    outlines it finds. Raises :class:`odedit.detect.DetectorUnavailable` without mediapipe.
    Call ``close`` (or use as a context manager) to free the graph."""

    def __init__(self, max_faces: int = 3, min_score: float = 0.5):
        from odedit.detect import _import_mediapipe, quiet_native_stderr, warm_up

        mp = _import_mediapipe()
        if not hasattr(mp.solutions, "face_mesh"):
            from odedit.detect import INSTALL_HINT, DetectorUnavailable

            raise DetectorUnavailable(f"mediapipe {getattr(mp, '__version__', '?')} has no face mesh; {INSTALL_HINT}")
        self._quiet = quiet_native_stderr
        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False, min_detection_confidence=min_score
            )
            warm_up([self._mesh])

    def ovals(self, image: np.ndarray) -> list[np.ndarray]:
        """(36, 2) face outlines (:data:`OVAL_LANDMARKS`) in the pixel coordinates of an
        (H, W, 3) uint8 RGB image, one per face found."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        h, w = image.shape[:2]
        with self._quiet():
            result = self._mesh.process(image)
        out = []
        for face in result.multi_face_landmarks or []:
            lm = face.landmark
            out.append(np.array([[lm[i].x * w, lm[i].y * h] for i in OVAL_LANDMARKS], dtype=np.float64))
        return out

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> "FaceMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mesh_or_none() -> Optional[FaceMesh]:
    """A :class:`FaceMesh`, or None where mediapipe (or its face mesh) is missing."""
    from odedit.detect import DetectorUnavailable

    try:
        return FaceMesh()
    except DetectorUnavailable:
        return None


def plausible_oval(oval: np.ndarray, keypoints_in_frame: np.ndarray, ellipse: np.ndarray) -> bool:
    """A mesh oval belongs to the detected face: it holds the detector's eyes and mouth, and
    its area is within a factor 2 of the keypoint ellipse's."""
    inside = polygon_signed_distance(oval, np.asarray(keypoints_in_frame)[:4]) > 0
    ratio = polygon_area(oval) / max(polygon_area(ellipse), 1e-9)
    return bool(inside[[0, 1, 3]].all() and 0.5 <= ratio <= 2.0)


def face_outline(
    photo: np.ndarray,
    m: np.ndarray,
    frame_size: int,
    keypoints: np.ndarray,
    mesh: Optional[FaceMesh] = None,
) -> tuple[np.ndarray, str]:
    """The face's outline in model-frame coordinates and where it came from.

    Runs ``mesh`` on the frame cut from ``photo`` at :data:`MESH_RESOLUTION` px and keeps the
    first oval that :func:`plausible_oval` accepts; otherwise (no mesh, no face found, a
    doubtful one) the keypoint ellipse.

    Returns:
        ((K, 2) polygon in frame coordinates, ``"face_mesh"`` | ``"keypoint_ellipse"``).
    """
    ellipse = keypoint_ellipse(keypoints, m)
    if mesh is None:
        return ellipse, "keypoint_ellipse"
    res = MESH_RESOLUTION
    zoom = np.array([[res / frame_size, 0.0, 0.0], [0.0, res / frame_size, 0.0]])
    crop = align.warp_affine(photo, align.compose(zoom, m), (res, res), mode="bicubic", padding="reflection")
    crop = np.clip(np.round(crop), 0, 255).astype(np.uint8)
    kp_frame = align.apply(m, keypoints)
    for attempt in (crop, None):
        if attempt is None:  # heavy pixel noise hides the face from the mesh: once more, smoothed
            from PIL import Image, ImageFilter

            attempt = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(MESH_RETRY_BLUR)))
        for oval in mesh.ovals(attempt):
            oval = oval * (frame_size / res)
            if plausible_oval(oval, kp_frame, ellipse):
                return oval, "face_mesh"
    return ellipse, "keypoint_ellipse"


def mask_area_fraction(mask: np.ndarray) -> float:
    """The mask's (soft) area as a fraction of the frame."""
    return float(np.asarray(mask, dtype=np.float64).mean())

