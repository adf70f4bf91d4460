"""Identity similarity of a restored face to its clean face (optional extra ``odedit[identity]``).

Face-restoration papers report how well a restoration keeps the person's identity as the
cosine similarity of face-recognition embeddings of the restored and the ground-truth face
("IDS", ArcFace), or as its angle ("Deg."). Offline we use dlib's face-recognition ResNet
(``dlib_face_recognition_resnet_model_v1.dat``, 128-D descriptors, 99.38% on LFW) and its
5-point landmark model (``shape_predictor_5_face_landmarks.dat``), both shipped by the PyPI
package ``face-recognition-models``; ``dlib-bin`` provides dlib wheels. Nothing is
downloaded; both are imported lazily, and :func:`identity_unavailable` says why the metric
cannot run (like :func:`odedit.metrics.available_network_metrics`).

Protocol for the aligned CelebA-style crops the benchmark measures (faces fill a fixed part
of the frame, often at 64x64):

1. Images are measured at their own resolution (``size=None``, the default); ``size=S``
   first upscales both to S x S (Lanczos, :func:`odedit.imageio.resize_to`). On CelebA-64
   val faces the native 64 px separated same-person from different-person pairs better than
   a 4x (256 px) or 2x Lanczos upscale (docs/benchmark.md), and costs less (dlib's chip
   extraction interpolates the face to 150x150 either way).
2. The 5-point shape predictor runs on the CLEAN image inside the fixed rectangle
   :data:`FACE_BOX` (fractions of the width and height). The rectangle is what dlib's own
   frontal face detector finds on CelebA-64 val crops upscaled to 256 px: (65, 93, 189, 217)
   for 173 of the 268 faces it detected among the first 300 val images (the rest are a few
   pixels away); it is specific to the CelebA framing (whole 178x218 frame stretched to a
   square). A fixed rectangle never "misses" a face, so every pair gets a descriptor.
3. The same clean landmarks place the 150x150 chip (dlib's alignment, padding 0.25) in BOTH
   images of a pair; the descriptor of each chip is ``compute_face_descriptor(img, shape)``
   (no jitter: deterministic).

Why the clean image's landmarks for both: the two images of a pair are pixel-aligned
versions of the same crop, so one set of landmarks puts the same part of both in the chip.
Landmarks found on a degraded or badly restored image (noise, masks, blur, artefacts) drift
or fail, and the score would then mix landmark errors into the identity measure (and a
restoration could be compared on a chip cut from somewhere else). A restoration that moves
facial features is still penalised: its features are not where the clean landmarks put the
chip. (``landmarks="own"`` fits landmarks on each image separately, for comparison.)

Outputs (:class:`IdentityScores`): per pair the cosine similarity of the two descriptors
(1 = same direction; the "IDS" of papers, here with dlib's network rather than ArcFace, so
values are not comparable with ArcFace numbers), the angle in degrees ("Deg.") and the
Euclidean distance, dlib's own measure, with which dlib calls two faces the same person
below :data:`DLIB_SAME_PERSON_DISTANCE` = 0.6. A pair dlib cannot process (it raises, or a
descriptor is not finite or has zero norm) gets NaN in every field and is counted in
``IdentityScores.failed``; nothing is dropped silently: callers report the count (the
benchmark writes it under its table).

Inputs follow the other metrics of :mod:`odedit.metrics`: float (N, 3, H, W) (or (3, H, W))
tensors or arrays in [0, 1]; also uint8 (N, H, W, 3) (or (H, W, 3)) RGB arrays as the
benchmark and :mod:`odedit.corruptions` hold images. Both images of a pair must have the
same size. Validation on CelebA-64 val faces: docs/benchmark.md, section "Identity".

Cost: dlib-bin's wheels are built without BLAS, so one descriptor takes ~0.1-0.2 s of one
core, and dlib holds the GIL (threads do not help). ``workers=N`` spreads large sets over N
processes (spawned once, then reused; each loads the models once); the values do not
depend on it.
"""

from __future__ import annotations

import atexit
import importlib.util
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .network import MetricUnavailable

EXTRA_HINT = "install the optional extra: pip install 'odedit[identity]'"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's threshold on the Euclidean distance of descriptors
DEFAULT_SIZE = None  # None: measure images as they are; S: upscale to S x S first (Lanczos)
# Where dlib's frontal detector puts the face in an aligned CelebA crop (left, top, right,
# bottom as fractions of width and height): (65, 93, 189, 217) at 256 px.
FACE_BOX = (65 / 256, 93 / 256, 189 / 256, 217 / 256)
LANDMARK_SOURCES = ("clean", "own")


@dataclass(frozen=True)
class IdentityModel:
    """dlib's loaded networks (state only): the 5-point shape predictor and the
    face-recognition ResNet, with the files they came from."""

    predictor: Any
    encoder: Any
    landmark_file: str
    recognition_file: str


@dataclass(frozen=True)
class IdentityScores:
    """Per-pair results of :func:`identity_scores`, float64 arrays of shape (N,).

    ``cosine``: cosine similarity of the 128-D descriptors; ``degrees``: their angle;
    ``distance``: Euclidean distance (dlib's measure; < 0.6 = same person for dlib).
    NaN where a pair could not be measured; ``failed`` counts those pairs.
    """

    cosine: np.ndarray
    degrees: np.ndarray
    distance: np.ndarray

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(~np.isfinite(self.cosine)))


_MODEL: dict = {}


def _models_dir() -> Optional[str]:
    """The folder of face_recognition_models' weight files, found without importing the
    package (its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer has)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "models")


def identity_unavailable() -> Optional[str]:
    """None if the identity metric can run here, else why not (missing package or file).

    Checks, without loading the networks: ``dlib`` imports and face_recognition_models'
    two weight files exist."""
    try:
        found = importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"package 'dlib-bin' (dlib) is not installed ({EXTRA_HINT})"
    folder = _models_dir()
    if folder is None:
        return f"package 'face-recognition-models' is not installed ({EXTRA_HINT})"
    for name in (LANDMARK_MODEL, RECOGNITION_MODEL):
        if not os.path.isfile(os.path.join(folder, name)):
            return f"face-recognition-models has no {name} in {folder} (reinstall it: {EXTRA_HINT})"
    try:
        import dlib  # noqa: F401
    except Exception as exc:  # a broken install
        return f"package 'dlib' is installed but failed to import: {type(exc).__name__}: {exc}"
    return None


def load_identity_model() -> IdentityModel:
    """dlib's shape predictor and face-recognition network, loaded once per process.
    Raises :class:`MetricUnavailable` with the reason if they cannot be loaded."""
    if "model" not in _MODEL:
        reason = identity_unavailable()
        if reason:
            raise MetricUnavailable("identity", reason)
        import dlib

        folder = _models_dir()
        lm, rec = os.path.join(folder, LANDMARK_MODEL), os.path.join(folder, RECOGNITION_MODEL)
        try:
            _MODEL["model"] = IdentityModel(dlib.shape_predictor(lm), dlib.face_recognition_model_v1(rec), lm, rec)
        except RuntimeError as exc:
            raise MetricUnavailable("identity", f"dlib could not load its models: {exc}") from exc
    return _MODEL["model"]


def _as_hwc_uint8(x: Any, name: str) -> np.ndarray:
    """(N, H, W, 3) uint8 from uint8 (N, H, W, 3) / (H, W, 3), or float (N, 3, H, W) /
    (3, H, W) in [0, 1] (a torch tensor or a numpy array)."""
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x)
    if a.dtype == np.uint8:
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"{name}: uint8 images must be (N, H, W, 3) RGB, got shape {a.shape}")
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1] != 3:
        raise ValueError(f"{name}: float images must be (N, 3, H, W) in [0, 1], got shape {a.shape}")
    a = np.nan_to_num(a.astype(np.float64), nan=0.0)
    return np.ascontiguousarray(np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def _rescaled(image: np.ndarray, size: Optional[int]) -> np.ndarray:
    if size is None:
        return image
    from odedit.imageio import resize_to

    return np.ascontiguousarray(resize_to(image, int(size), int(size)))


def _box(image: np.ndarray):
    import dlib

    h, w = image.shape[:2]
    left, top, right, bottom = FACE_BOX
    return dlib.rectangle(int(round(left * w)), int(round(top * h)), int(round(right * w)) - 1,
                          int(round(bottom * h)) - 1)


def face_landmarks(images: Any, size: Optional[int] = DEFAULT_SIZE, model: Optional[IdentityModel] = None) -> np.ndarray:
    """The 5 landmarks dlib finds in :data:`FACE_BOX` of each image (after upscaling to
    ``size`` if given), float64 (N, 5, 2) as (x, y) in pixels of the measured image. For
    checks and figures; :func:`identity_descriptors` finds them the same way."""
    model = model or load_identity_model()
    imgs = _as_hwc_uint8(images, "images")
    out = np.empty((len(imgs), 5, 2))
    for i, im in enumerate(imgs):
        im = _rescaled(im, size)
        shape = model.predictor(im, _box(im))
        out[i] = [(shape.part(j).x, shape.part(j).y) for j in range(shape.num_parts)]
    return out


def _descriptor(model: IdentityModel, image: np.ndarray, shape) -> np.ndarray:
    try:
        d = np.asarray(model.encoder.compute_face_descriptor(image, shape), dtype=np.float64)
    except RuntimeError:
        return np.full(128, np.nan)
    return d if d.shape == (128,) else np.full(128, np.nan)


def _descriptors(model: IdentityModel, imgs: np.ndarray, refs: Optional[np.ndarray],
                 size: Optional[int]) -> np.ndarray:
    out = np.empty((len(imgs), 128))
    for i, im in enumerate(imgs):
        im = _rescaled(im, size)
        ref = im if refs is None else _rescaled(refs[i], size)
        try:
            shape = model.predictor(ref, _box(ref))
        except RuntimeError:
            out[i] = np.nan
            continue
        out[i] = _descriptor(model, im, shape)
    return out


def _worker_descriptors(imgs: np.ndarray, refs: Optional[np.ndarray], size: Optional[int]) -> np.ndarray:
    """One chunk in a worker process (the models are loaded once per process)."""
    return _descriptors(load_identity_model(), imgs, refs, size)


_POOLS: dict = {}
MIN_IMAGES_PER_WORKER = 16


def _pool(workers: int):
    """A process pool of ``workers`` spawned processes, made once and reused (spawn: the
    caller may hold CUDA or thread pools, which a fork would copy)."""
    if workers not in _POOLS:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _POOLS[workers]


@atexit.register
def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def identity_descriptors(
    images: Any,
    landmarks_from: Any = None,
    *,
    size: Optional[int] = DEFAULT_SIZE,
    model: Optional[IdentityModel] = None,
    workers: int = 1,
) -> np.ndarray:
    """dlib's 128-D face descriptors, float64 (N, 128); a row of NaN where dlib failed.

    ``landmarks_from``: images of the same size whose landmarks place the chips (the clean
    images of pairs); None = each image's own landmarks. ``workers`` > 1: split the images
    over that many worker processes (at least :data:`MIN_IMAGES_PER_WORKER` images each;
    same values)."""
    model = model or load_identity_model()
    imgs = _as_hwc_uint8(images, "images")
    refs = None if landmarks_from is None else _as_hwc_uint8(landmarks_from, "landmarks_from")
    if refs is not None and refs.shape != imgs.shape:
        raise ValueError(f"images and landmarks_from must have the same shape, got {imgs.shape} and {refs.shape}")
    workers = max(1, min(int(workers), len(imgs) // MIN_IMAGES_PER_WORKER))
    if workers == 1:
        return _descriptors(model, imgs, refs, size)
    bounds = np.linspace(0, len(imgs), 4 * workers + 1).astype(int)  # a few chunks per worker
    pool = _pool(workers)
    futures = [pool.submit(_worker_descriptors, imgs[a:b], None if refs is None else refs[a:b], size)
               for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return np.concatenate([f.result() for f in futures])


def scores_from_descriptors(a: np.ndarray, b: np.ndarray) -> IdentityScores:
    """Cosine similarity, angle (degrees) and Euclidean distance of descriptor pairs
    (rows of ``a`` and ``b``); NaN where a row is not finite or has zero norm."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = np.isfinite(na) & np.isfinite(nb) & (na > 0) & (nb > 0)
    cos = np.full(len(a), np.nan)
    dist = np.full(len(a), np.nan)
    cos[ok] = np.clip(np.einsum("ij,ij->i", a[ok], b[ok]) / (na[ok] * nb[ok]), -1.0, 1.0)
    dist[ok] = np.linalg.norm(a[ok] - b[ok], axis=1)
    return IdentityScores(cosine=cos, degrees=np.degrees(np.arccos(cos)), distance=dist)


def identity_scores(
    restored: Any,
    clean: Any,
    *,
    size: Optional[int] = DEFAULT_SIZE,
    landmarks: str = "clean",
    clean_descriptors: Optional[np.ndarray] = None,
    model: Optional[IdentityModel] = None,
    workers: int = 1,
) -> IdentityScores:
    """Identity scores of each restored image against its clean image (see the module
    docstring for the protocol).

    Args:
        restored, clean: N image pairs of the same size (float (N, 3, H, W) in [0, 1] or
            uint8 (N, H, W, 3)).
        size: None (default): measure the images as they are; S: upscale both to S x S first.
        landmarks: ``"clean"`` (default): the clean image's landmarks place the chip in
            both images; ``"own"``: each image uses its own landmarks.
        clean_descriptors: :func:`identity_descriptors` of ``clean`` made with the same
            ``size`` (saves recomputing them when several restorations share the clean set).
        workers: worker processes for large sets (see :func:`identity_descriptors`).
    Raises :class:`MetricUnavailable` if dlib or the weights are missing.
    """
    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got {landmarks!r}")
    model = model or load_identity_model()
    r, c = _as_hwc_uint8(restored, "restored"), _as_hwc_uint8(clean, "clean")
    if r.shape != c.shape:
        raise ValueError(f"restored and clean must have the same shape, got {r.shape} and {c.shape}")
    if clean_descriptors is None:
        clean_descriptors = identity_descriptors(c, size=size, model=model, workers=workers)
    elif np.shape(clean_descriptors) != (len(c), 128):
        raise ValueError(f"clean_descriptors must have shape ({len(c)}, 128), got {np.shape(clean_descriptors)}")
    dr = identity_descriptors(r, c if landmarks == "clean" else None, size=size, model=model, workers=workers)
    return scores_from_descriptors(dr, clean_descriptors)


def identity_similarity(restored: Any, clean: Any, **kwargs) -> np.ndarray:
    """Cosine similarity of dlib face descriptors per (restored, clean) pair, float64 (N,);
    NaN where dlib could not measure a pair. Keywords as :func:`identity_scores`."""
    return identity_scores(restored, clean, **kwargs).cosine


def identity_distance(restored: Any, clean: Any, **kwargs) -> np.ndarray:
    """Euclidean distance of dlib face descriptors per pair, float64 (N,) (dlib's own
    measure: below :data:`DLIB_SAME_PERSON_DISTANCE` = 0.6 dlib calls it the same person)."""
    return identity_scores(restored, clean, **kwargs).distance


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of scores that should be higher for ``positive`` (ties
    count one half): the probability that a random positive outscores a random negative."""
    p = np.asarray([v for v in positive if math.isfinite(v)], dtype=np.float64)
    n = np.asarray([v for v in negative if math.isfinite(v)], dtype=np.float64)
    if not len(p) or not len(n):
        return float("nan")
    greater = (p[:, None] > n[None, :]).sum()
    ties = (p[:, None] == n[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(p) * len(n)))
