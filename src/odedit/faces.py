"""Whole photos in, whole photos out: detect -> align -> (restore) -> upsample -> paste back.

The restoring itself is not here: :func:`plan_photo` cuts a photo into aligned model-frame
crops (:func:`cut_faces`, with each face's outline, :mod:`odedit.facemask`), the caller restores
them with any restorer (:class:`odedit.pipeline.Pipeline` batches them with other photos'
faces), and :func:`finish_photo` upsamples the restored frames (ODEdit+) and blends the faces
back (:func:`paste_faces`; only the face, by default).

Shapes: photos (H, W, 3) uint8 RGB; crops and restored frames (size, size, 3) uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from odedit import align, facemask
from odedit import fidelity as fidelity_mod
from odedit.detect import MIN_PHOTO_SIDE, Detection, too_small_for_detection
from odedit.imageio import resize_to
from odedit.upsample import LanczosUpsampler, Upsampler, needed_factor

FACE_MODES = ("auto", "aligned")
# What of the restored frame goes back into the photo: "face", the face only (its outline from
# the face mesh or the keypoint ellipse, :mod:`odedit.facemask`); "frame", the whole frame
# (hair and background too) with a feathered border (:func:`odedit.align.feather_mask`).
PASTE_MASKS = ("face", "frame")


@dataclass(frozen=True)
class AlignedFace:
    """One detected face cut to the model frame.

    Attributes:
        detection: the detector's output (photo pixel coordinates).
        matrix: 2x3 float64, photo -> model frame (``size`` px).
        crop: (size, size, 3) uint8, the face in the model frame.
        residual: RMS keypoint distance from the template after the fit (canonical px).
        outline: (K, 2) the face's outline in frame coordinates (:func:`odedit.facemask.face_outline`),
            or None (then the keypoint ellipse is used when a face mask is asked for).
        outline_source: ``face_mesh`` | ``keypoint_ellipse`` (None with no outline).
    """

    detection: Detection
    matrix: np.ndarray
    crop: np.ndarray
    residual: float
    outline: Optional[np.ndarray] = None
    outline_source: Optional[str] = None

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
    mesh: Optional[facemask.FaceMesh] = None,
    outlines: bool = True,
) -> list[AlignedFace]:
    """Align each detection to the template and warp it to a ``size`` x ``size`` crop.

    With ``outlines`` each face also gets its outline for the paste-back mask, from ``mesh``
    (a :class:`odedit.facemask.FaceMesh`) or, without one or when it fails, the keypoint ellipse.
    """
    template = template or align.load_template()
    faces = []
    for det in detections:
        m = align.photo_to_frame(det.keypoints, template, size)
        crop = align.warp_affine(photo, m, (size, size), mode="bicubic", padding="reflection")
        crop = np.clip(np.round(crop), 0, 255).astype(np.uint8)
        sim = align.compose(align.invert(align.squash_matrix(size)), m)
        residual = align.keypoint_residual(sim, det.keypoints, template.points, template.use)
        outline, source = facemask.face_outline(photo, m, size, det.keypoints, mesh) if outlines else (None, None)
        faces.append(AlignedFace(det, m, crop, residual, outline, source))
    return faces


def paste_mask(face: AlignedFace, resolution: int, kind: str = "face") -> tuple[np.ndarray, dict]:
    """The paste-back mask of ``face`` at ``resolution`` px (face coordinates) and its record.

    ``kind``: ``face`` (:func:`odedit.facemask.face_mask` of the face's outline; the keypoint
    ellipse when it has none) or ``frame`` (:func:`odedit.align.feather_mask`, the whole frame).
    The record: ``paste_mask`` (the kind), ``mask_source`` (for ``face``: ``face_mesh`` |
    ``keypoint_ellipse``) and ``mask_area_fraction`` (the mask's mean: its share of the frame).
    """
    if kind not in PASTE_MASKS:
        raise ValueError(f"paste mask must be one of {PASTE_MASKS}, got {kind!r}")
    if kind == "frame":
        mask = align.feather_mask((resolution, resolution))
        info = {"paste_mask": "frame"}
    else:
        outline, source = face.outline, face.outline_source
        if outline is None:
            outline, source = facemask.keypoint_ellipse(face.detection.keypoints, face.matrix), "keypoint_ellipse"
        mask = facemask.face_mask(outline, face.size, resolution)
        info = {"paste_mask": "face", "mask_source": source}
    info["mask_area_fraction"] = round(facemask.mask_area_fraction(mask), 4)
    return mask, info


def paste_faces(
    photo: np.ndarray,
    faces: Sequence[AlignedFace],
    restored: Sequence[np.ndarray],
    upsampler: Optional[Upsampler] = None,
    mask: str = "face",
    progress: Optional[Callable[[int, int], None]] = None,
    masks_info: Optional[list] = None,
    fidelity: float = fidelity_mod.DEFAULT_FIDELITY,
    match_colour: bool = fidelity_mod.DEFAULT_MATCH_COLOUR,
    low_band: str = fidelity_mod.DEFAULT_LOW_BAND,
    low_margin: float = fidelity_mod.LOW_MARGIN,
) -> tuple[np.ndarray, list[int]]:
    """Upsample each restored frame to photo scale and blend it in with a feathered mask.

    Args:
        mask: ``face`` (default): the face only, hair, background and clothes keep the photo's
            pixels exactly; ``frame``: the whole frame (see :func:`paste_mask`).
        fidelity: w in [0, 1], how much of the input the face keeps where the restoration's
            change is not explained by the input's noise (:func:`odedit.fidelity.keep_input`;
            0 = the upsampled restoration alone): its detail finer than the model frame where
            it is signal, and, with ``low_band`` on, its coarse band too.
        match_colour: move the pasted face's mean colour to the input's
            (:func:`odedit.fidelity.match_colour`).
        low_band, low_margin: the noise gate of both bands (:func:`odedit.fidelity.restoration_share`):
            ``local`` (default), ``global`` or ``off``.
        progress: ``progress(i, n)`` before face ``i`` of ``n`` is upsampled and pasted.
        masks_info: when given, each face's mask record (:func:`paste_mask`) is appended, with
            ``restoration_kept``: the mask-mean share of the restoration's coarse change kept
            (1 when no refinement ran; see :func:`odedit.fidelity.keep_input`).
    Returns the new photo and the upsampling factor asked for each face.
    """
    if len(faces) != len(restored):
        raise ValueError(f"{len(faces)} faces but {len(restored)} restored frames")
    if mask not in PASTE_MASKS:
        raise ValueError(f"paste mask must be one of {PASTE_MASKS}, got {mask!r}")
    _refiner(1.0, fidelity, match_colour, low_band, low_margin, {})  # settings checked before any face
    upsampler = upsampler or LanczosUpsampler()
    out = np.asarray(photo, dtype=np.uint8)
    factors = []
    for i, (face, frame) in enumerate(zip(faces, restored)):
        if progress is not None:
            progress(i, len(faces))
        factor = needed_factor(align.scale_of(face.matrix))
        want = frame.shape[0] * factor
        big = _upsample_to(frame, upsampler, factor, want, want)
        alpha, info = paste_mask(face, big.shape[0], mask)
        stats: dict = {}
        refine = _refiner(1.0 / align.scale_of(face.matrix), fidelity, match_colour, low_band, low_margin, stats)
        out = align.paste_back(out, big, face.matrix, face.size, mask=alpha, refine=refine)
        factors.append(factor)
        if masks_info is not None:
            masks_info.append({**info, "restoration_kept": round(stats.get("restoration_kept", 1.0), 4)})
    return out, factors


def _refiner(factor: float, fidelity: float, match_colour: bool, low_band: str, low_margin: float, stats: dict):
    """The photo-space step of :func:`paste_faces` / :func:`finish_aligned` for one face (None when
    there is none; the settings are checked either way); it records the share of the restoration's
    coarse change kept in ``stats``."""
    if low_band not in fidelity_mod.LOW_BANDS:
        raise ValueError(f"low band mode must be one of {fidelity_mod.LOW_BANDS}, got {low_band!r}")
    if not 0.0 <= fidelity <= 1.0:
        raise ValueError(f"fidelity must be in [0, 1], got {fidelity}")
    if fidelity == 0.0 and not match_colour:
        return None

    def refine(face_region: np.ndarray, photo_region: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        return fidelity_mod.keep_input(face_region, photo_region, factor, fidelity, mask=alpha,
                                       colour=match_colour, low_band=low_band, low_margin=low_margin, stats=stats)

    return refine


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
        paste_mask: how the faces go back (:data:`PASTE_MASKS`).
    """

    photo: np.ndarray
    crops: list
    seeds: list
    faces: Optional[list] = None
    faces_left_out: int = 0  # detected faces beyond max_faces, not restored
    no_face_reason: Optional[str] = None  # why no face was looked for (a photo too small)
    paste_mask: str = "face"

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
    paste_mask: str = "face",
    mesh=None,
) -> PhotoJob:
    """Step 1 of the pipeline: the crops to restore (detect + align, or fit an aligned crop).

    Args:
        photo: (H, W, 3) uint8.
        seeds: ``f(crop_index) -> int``.
        detector: a :class:`odedit.detect.FaceDetector`, needed when detection is used.
        paste_mask: ``face`` | ``frame`` (:data:`PASTE_MASKS`), used by :func:`finish_photo`.
        mesh: a :class:`odedit.facemask.FaceMesh` for the faces' outlines (``face`` mask), or a
            callable returning one (or False), called only when there are faces to outline. None:
            one is opened for this photo and closed again where mediapipe has it (else the
            keypoint ellipse); ``False``: the keypoint ellipse.
    """
    from odedit.imageio import fit_square

    if paste_mask not in PASTE_MASKS:
        raise ValueError(f"paste mask must be one of {PASTE_MASKS}, got {paste_mask!r}")
    if not uses_detection(faces_mode, photo.shape, size):
        return PhotoJob(photo, [fit_square(photo, size, fit)], [seeds(0)], None)
    if too_small_for_detection(photo.shape):
        h, w = photo.shape[:2]
        reason = f"{w}x{h} px, under the {MIN_PHOTO_SIDE} px a side that face detection needs"
        return PhotoJob(photo, [], [], [], no_face_reason=reason, paste_mask=paste_mask)
    if detector is None:
        raise ValueError("faces_mode 'auto' on a whole photo needs a detector")
    found = detector.detect(photo)  # all of them, best first: those beyond max_faces are counted
    kept = found if max_faces is None else found[:max_faces]
    want_outlines = paste_mask == "face"
    if callable(mesh):  # a factory: a mesh is needed only for faces to outline
        mesh = (mesh() or False) if want_outlines and kept else False
    own_mesh = facemask.mesh_or_none() if want_outlines and kept and mesh is None else None
    use_mesh = own_mesh if own_mesh is not None else (mesh if mesh is not False else None)
    try:
        faces = cut_faces(photo, kept, size, mesh=use_mesh, outlines=want_outlines)
    finally:
        if own_mesh is not None:
            own_mesh.close()
    return PhotoJob(photo, [f.crop for f in faces], [seeds(i) for i in range(len(faces))], faces,
                    faces_left_out=len(found) - len(kept), paste_mask=paste_mask)


def finish_photo(
    job: PhotoJob,
    restored: Sequence[np.ndarray],
    upsampler=None,
    *,
    keep_size: bool = False,
    fit: str = "stretch",
    progress: Optional[Callable[[int, int], None]] = None,
    fidelity: float = fidelity_mod.DEFAULT_FIDELITY,
    match_colour: bool = fidelity_mod.DEFAULT_MATCH_COLOUR,
    low_band: str = fidelity_mod.DEFAULT_LOW_BAND,
) -> tuple[np.ndarray, dict]:
    """Step 3 of the pipeline: the output image and what happened to it.

    Args:
        restored: (size, size, 3) uint8 per crop of ``job``, in order.
        upsampler: an :class:`Upsampler`, or a callable returning one (called only when a face
            is pasted, so a detector-only run never loads an upsampling model); None = Lanczos.
        keep_size: an aligned crop goes back to the input's own size (``unfit_square``).
        progress: ``progress(i, n)`` before face ``i`` of ``n`` is pasted back.
        fidelity, match_colour, low_band: see :func:`paste_faces`.
    Returns:
        (result, info): the whole photo with the faces pasted back (the photo unchanged when
        none was found: ``info['status'] == 'no_face_copied_unchanged'``, with
        ``no_face_reason`` when the photo was too small to search), or the aligned crop's output
        (:func:`finish_aligned`). For
        whole photos ``info['faces_left_out']`` counts the faces found beyond ``max_faces``,
        and each face's entry says how it was pasted (:func:`paste_mask`'s record).
    """
    if len(restored) != len(job.crops):
        raise ValueError(f"{len(job.crops)} crops but {len(restored)} restorations")
    if job.faces is None:
        return finish_aligned(job, restored[0], upsampler, keep_size=keep_size, fit=fit, fidelity=fidelity,
                              match_colour=match_colour, low_band=low_band)
    if not job.faces:
        info = {"mode": "faces", "status": "no_face_copied_unchanged", "faces": [], "faces_left_out": 0}
        if job.no_face_reason:
            info["no_face_reason"] = job.no_face_reason
        return np.asarray(job.photo, dtype=np.uint8).copy(), info
    up = _resolve_upsampler(upsampler)
    masks: list = []
    result, factors = paste_faces(job.photo, job.faces, list(restored), up, mask=job.paste_mask, progress=progress,
                                  masks_info=masks, fidelity=fidelity, match_colour=match_colour,
                                  low_band=low_band)
    info = {
        "mode": "faces",
        "status": "restored",
        "faces": [{**f.to_dict(), "seed": s, "upsample_factor": k, **mi, "fidelity": fidelity,
                   "match_colour": match_colour, "low_band": low_band} for f, s, k, mi in zip(job.faces, job.seeds, factors, masks)],
        "faces_left_out": job.faces_left_out,
    }
    return result, info


def finish_aligned(
    job: PhotoJob,
    frame: np.ndarray,
    upsampler=None,
    *,
    keep_size: bool = False,
    fit: str = "stretch",
    fidelity: float = fidelity_mod.DEFAULT_FIDELITY,
    match_colour: bool = fidelity_mod.DEFAULT_MATCH_COLOUR,
    low_band: str = fidelity_mod.DEFAULT_LOW_BAND,
) -> tuple[np.ndarray, dict]:
    """An aligned crop's output: its restoration, gated like a pasted face (the whole crop is the face).

    The restoration keeps its change only where the input's noise explains it, and at the input's
    size (``keep_size``) the input's detail finer than the model frame where it is signal
    (:func:`odedit.fidelity.keep_input`): so a blurred or clean crop does not come back worse
    than it went in. ``fidelity`` 0 and no ``match_colour`` give the restoration as it is.

    Args:
        frame: (size, size, 3) uint8, the restored crop. job: its :class:`PhotoJob` (no faces).
        upsampler: as in :func:`finish_photo`; used only with ``keep_size`` (None = Lanczos).
    Returns:
        (result, info): (size, size, 3) uint8, or the input's (H, W, 3) with ``keep_size``; info
        records the settings and ``restoration_kept`` (the share of the coarse change kept).
    """
    from odedit.imageio import fit_region, unfit_square

    stats: dict = {}
    refine = _refiner(1.0, fidelity, match_colour, low_band, fidelity_mod.LOW_MARGIN, stats)  # checks first
    frame = np.asarray(frame, dtype=np.uint8)
    size = frame.shape[0]
    target = np.asarray(job.crops[0], dtype=np.uint8)  # the input at the model's size
    factor, need = 1.0, 1
    if keep_size:
        top, left, rh, rw = fit_region(job.photo.shape, fit)
        target = np.asarray(job.photo, dtype=np.uint8)[top : top + rh, left : left + rw]
        need = needed_factor(size / max(rh, rw))
        frame = _upsample_to(frame, _resolve_upsampler(upsampler), need, rw, rh)
        factor = min(rh, rw) / size  # photo px per frame px along the shorter side (the stricter split)
        refine = _refiner(factor, fidelity, match_colour, low_band, fidelity_mod.LOW_MARGIN, stats)
    if refine is not None:
        whole = np.ones(target.shape[:2], dtype=np.float32)
        frame = np.clip(np.rint(refine(frame.astype(np.float32), target, whole)), 0, 255).astype(np.uint8)
    result = unfit_square(frame, job.photo, fit) if keep_size else frame
    info = {"mode": "aligned", "status": "restored", "seed": job.seeds[0], "fidelity": fidelity,
            "match_colour": match_colour, "low_band": low_band,
            "restoration_kept": round(stats.get("restoration_kept", 1.0), 4), "upsample_factor": need}
    return result, info


def _resolve_upsampler(upsampler) -> Optional[Upsampler]:
    """An :class:`Upsampler`, or None, from one or from a factory returning one (called now)."""
    return upsampler if upsampler is None or hasattr(upsampler, "upsample") else upsampler()


def _upsample_to(frame: np.ndarray, upsampler: Optional[Upsampler], factor: int, width: int, height: int) -> np.ndarray:
    """``frame`` magnified by ``factor`` (None: Lanczos), then Lanczos-resized to exactly (height,
    width) where the upsampler's output differs (e.g. a fixed x4 model asked for x10, or an aligned
    crop's own size): (H, W, 3) uint8 in, (height, width, 3) uint8 out."""
    if factor > 1:
        frame = (upsampler or LanczosUpsampler()).upsample([np.asarray(frame, dtype=np.uint8)], factor)[0]
    return resize_to(frame, width, height)

