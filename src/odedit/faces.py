"""Whole photos in, whole photos out: detect -> align -> (restore) -> upsample -> paste back.

The restoring itself is not here: :func:`cut_faces` gives the aligned model-frame crops,
the caller restores them with any restorer (batched with other photos' faces), and
:func:`paste_faces` upsamples the restored frames (ODEdit+) and blends them back.

Shapes: photos (H, W, 3) uint8 RGB; crops and restored frames (size, size, 3) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from odedit import align
from odedit.detect import MIN_PHOTO_SIDE, Detection, too_small_for_detection
from odedit.imageio import resize_to
from odedit.upsample import LanczosUpsampler, Upsampler, needed_factor

FACE_MODES = ("auto", "aligned")


@dataclass(frozen=True)
class AlignedFace:
    """One detected face cut to the model frame.

    Attributes:
        detection: the detector's output (photo pixel coordinates).
        matrix: 2x3 float64, photo -> model frame (``size`` px).
        crop: (size, size, 3) uint8, the face in the model frame.
        residual: RMS keypoint distance from the template after the fit (canonical px).
    """

    detection: Detection
    matrix: np.ndarray
    crop: np.ndarray
    residual: float

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    def to_dict(self) -> dict:
        d = self.detection.to_dict()
        d["matrix"] = [[round(float(v), 6) for v in row] for row in self.matrix]
        d["frame_corners"] = [[round(float(x), 1), round(float(y), 1)] for x, y in align.frame_corners_in_photo(self.matrix, self.size)]
        d["template_residual_px"] = round(float(self.residual), 2)
        return d


def uses_detection(mode: str, shape: tuple[int, ...], size: int) -> bool:
    """``aligned``: never detect. ``auto``: detect unless the input already is model-sized."""
    if mode not in FACE_MODES:
        raise ValueError(f"faces mode must be one of {FACE_MODES}, got {mode!r}")
    return mode == "auto" and tuple(shape[:2]) != (size, size)


def cut_faces(
    photo: np.ndarray,
    detections: Sequence[Detection],
    size: int,
    template: Optional[align.Template] = None,
) -> list[AlignedFace]:
    """Align each detection to the template and warp it to a ``size`` x ``size`` crop."""
    template = template or align.load_template()
    faces = []
    for det in detections:
        m = align.photo_to_frame(det.keypoints, template, size)
        crop = align.warp_affine(photo, m, (size, size), mode="bicubic", padding="reflection")
        crop = np.clip(np.round(crop), 0, 255).astype(np.uint8)
        sim = align.compose(align.invert(align.squash_matrix(size)), m)
        residual = align.keypoint_residual(sim, det.keypoints, template.points, template.use)
        faces.append(AlignedFace(det, m, crop, residual))
    return faces


def paste_faces(
    photo: np.ndarray,
    faces: Sequence[AlignedFace],
    restored: Sequence[np.ndarray],
    upsampler: Optional[Upsampler] = None,
) -> tuple[np.ndarray, list[int]]:
    """Upsample each restored frame to photo scale and blend it in (feathered mask).

    Returns the new photo and the upsampling factor asked for each face.
    """
    if len(faces) != len(restored):
        raise ValueError(f"{len(faces)} faces but {len(restored)} restored frames")
    upsampler = upsampler or LanczosUpsampler()
    out = np.asarray(photo, dtype=np.uint8)
    factors = []
    for face, frame in zip(faces, restored):
        factor = needed_factor(align.scale_of(face.matrix))
        big = upsampler.upsample([np.asarray(frame, dtype=np.uint8)], factor)[0] if factor > 1 else frame
        want = frame.shape[0] * factor
        if big.shape[0] < want:  # e.g. a fixed x4 model asked for x10: Lanczos for the rest
            big = resize_to(big, want, want)
        out = align.paste_back(out, big, face.matrix, face.size)
        factors.append(factor)
    return out, factors


@dataclass
class PhotoJob:
    """A photo cut into model-sized crops, waiting for their restorations.

    Attributes:
        photo: (H, W, 3) uint8, the input as read.
        crops: (size, size, 3) uint8 each; one per detected face, or the one fitted crop.
        seeds: one restoration seed per crop.
        faces: the detected faces (possibly none), or None for an aligned crop.
        faces_left_out: faces the detector found beyond ``max_faces`` (the lowest scores).
        no_face_reason: set when the photo was not searched (under the detector's minimum size).
    """

    photo: np.ndarray
    crops: list
    seeds: list
    faces: Optional[list] = None
    faces_left_out: int = 0  # detected faces beyond max_faces, not restored
    no_face_reason: Optional[str] = None  # why no face was looked for (a photo too small)

    @property
    def mode(self) -> str:
        return "aligned" if self.faces is None else "faces"


def plan_photo(
    photo: np.ndarray,
    size: int,
    seeds,
    *,
    faces_mode: str = "auto",
    detector=None,
    max_faces: Optional[int] = 10,
    fit: str = "stretch",
) -> PhotoJob:
    """Step 1 of the pipeline: the crops to restore (detect + align, or fit an aligned crop).

    Args:
        photo: (H, W, 3) uint8.
        seeds: ``f(crop_index) -> int``.
        detector: a :class:`odedit.detect.FaceDetector`, needed when detection is used.
    """
    from odedit.imageio import fit_square

    if not uses_detection(faces_mode, photo.shape, size):
        return PhotoJob(photo, [fit_square(photo, size, fit)], [seeds(0)], None)
    if too_small_for_detection(photo.shape):
        h, w = photo.shape[:2]
        reason = f"{w}x{h} px, under the {MIN_PHOTO_SIDE} px a side that face detection needs"
        return PhotoJob(photo, [], [], [], no_face_reason=reason)
    if detector is None:
        raise ValueError("faces_mode 'auto' on a whole photo needs a detector")
    found = detector.detect(photo)  # all of them, best first: those beyond max_faces are counted
    kept = found if max_faces is None else found[:max_faces]
    faces = cut_faces(photo, kept, size)
    return PhotoJob(photo, [f.crop for f in faces], [seeds(i) for i in range(len(faces))], faces,
                    faces_left_out=len(found) - len(kept))


def finish_photo(
    job: PhotoJob,
    restored: Sequence[np.ndarray],
    upsampler=None,
    *,
    keep_size: bool = False,
    fit: str = "stretch",
) -> tuple[np.ndarray, dict]:
    """Step 3 of the pipeline: the output image and what happened to it.

    Args:
        restored: (size, size, 3) uint8 per crop of ``job``, in order.
        upsampler: an :class:`Upsampler`, or a callable returning one (called only when a face
            is pasted, so a detector-only run never loads an upsampling model); None = Lanczos.
        keep_size: an aligned crop goes back to the input's own size (``unfit_square``).
    Returns:
        (result, info): the whole photo with the faces pasted back (the photo unchanged when
        none was found: ``info['status'] == 'no_face_copied_unchanged'``, with
        ``no_face_reason`` when the photo was too small to search), or the restored crop. For
        whole photos ``info['faces_left_out']`` counts the faces found beyond ``max_faces``.
    """
    if len(restored) != len(job.crops):
        raise ValueError(f"{len(job.crops)} crops but {len(restored)} restorations")
    if job.faces is None:
        result = np.asarray(restored[0], dtype=np.uint8)
        if keep_size:
            from odedit.imageio import unfit_square

            result = unfit_square(result, job.photo, fit)
        return result, {"mode": "aligned", "status": "restored", "seed": job.seeds[0]}
    if not job.faces:
        info = {"mode": "faces", "status": "no_face_copied_unchanged", "faces": [], "faces_left_out": 0}
        if job.no_face_reason:
            info["no_face_reason"] = job.no_face_reason
        return np.asarray(job.photo, dtype=np.uint8).copy(), info
    up = upsampler if upsampler is None or hasattr(upsampler, "upsample") else upsampler()
    result, factors = paste_faces(job.photo, job.faces, list(restored), up)
    info = {
        "mode": "faces",
        "status": "restored",
        "faces": [{**f.to_dict(), "seed": s, "upsample_factor": k} for f, s, k in zip(job.faces, job.seeds, factors)],
        "faces_left_out": job.faces_left_out,
    }
    return result, info


def restore_photo(
    photo: np.ndarray,
    restore_batch,
    size: int,
    seeds,
    *,
    faces_mode: str = "auto",
    detector=None,
    max_faces: Optional[int] = 10,
    upsampler: Optional[Upsampler] = None,
    fit: str = "stretch",
) -> tuple[np.ndarray, dict]:
    """One photo through the whole pipeline: :func:`plan_photo`, restore, :func:`finish_photo`.

    The web app's path; the CLI runs the same two steps but batches crops across files.

    Args:
        photo: (H, W, 3) uint8.
        restore_batch: ``f(crops uint8 (B, size, size, 3), seeds list[int]) -> uint8 (B, size, size, 3)``.
        seeds: ``f(face_index) -> int``.
        detector: a :class:`odedit.detect.FaceDetector`, needed when detection is used.
    Returns:
        (result, info) as :func:`finish_photo`.
    """
    job = plan_photo(photo, size, seeds, faces_mode=faces_mode, detector=detector, max_faces=max_faces, fit=fit)
    restored = list(restore_batch(np.stack(job.crops), job.seeds)) if job.crops else []
    return finish_photo(job, restored, upsampler, fit=fit)
