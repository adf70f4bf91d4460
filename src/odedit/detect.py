"""Face detection: the adapter around mediapipe's bundled BlazeFace detector.

mediapipe 0.10.14 ships its face-detection models inside the wheel, so detection works
offline (newer mediapipe releases no longer bundle them). It is an optional extra,
``pip install 'odedit[faces]'``, imported lazily.

Output contract: :class:`Detection` with pixel coordinates in the photo (see
:mod:`odedit.align` for the coordinate convention) and six keypoints in the order of
:data:`KEYPOINT_NAMES`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")
MEDIAPIPE_VERSION = "0.10.14"
SMOOTH_RADIUS = 2.0  # px, Gaussian blur of the retry on noisy photos
# Scores on the smoothed retry: real faces under gaussian noise severity 3-5 scored 0.76-0.95
# (8 portraits); smoothed uniform noise once scored 0.57. The retry keeps scores >= this.
RETRY_MIN_SCORE = 0.7
# Photos whose shorter side is under this are not searched for faces. BlazeFace sees the photo
# scaled to its 128/192 px input: under 32 px that is a 4-6x enlargement of a few hundred
# pixels, such a face has too little detail for the prior to restore, and its box (a few px)
# too few pixels for the noise check below. Measured on seeded uniform noise (20 images a
# size): 35-45% of the 8-24 px images gave a "face" (scores 0.50-0.65), 5-20% at 32-48 px,
# where the noise check rejects them. Face crops that small can be restored with --faces aligned.
MIN_PHOTO_SIDE = 32
# Noise check on each detection (also those of the smoothed retry, judged on the photo itself):
# the correlation of adjacent pixels (grey) inside its box. Pixel noise is uncorrelated: at most
# 0.15 over ~160 false detections in uniform, normal and salt-and-pepper noise images of
# 32-512 px. A face is smooth: 0.37 at 10 px wide even inside a noise background, 0.50 at 12 px
# on its own, 0.74+ under gaussian/shot noise severity 2, 0.33-0.42 under severity 5 (found by
# the retry). Not caught: noise with grains of several pixels (e.g. noise enlarged 2x), whose
# adjacent pixels are alike.
MIN_NEIGHBOUR_CORRELATION = 0.25
INSTALL_HINT = "pip install 'odedit[faces]'  (mediapipe==0.10.14, which bundles the detector offline)"


class DetectorUnavailable(RuntimeError):
    """The optional face detector (mediapipe) is not installed or cannot load."""


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        score: detector confidence in [0, 1].
        box: (x0, y0, x1, y1) float pixel coordinates in the photo.
        keypoints: (6, 2) float64 (x, y) pixel coordinates, :data:`KEYPOINT_NAMES` order.
    """

    score: float
    box: tuple[float, float, float, float]
    keypoints: np.ndarray
    smoothed: bool = False  # found on the smoothed retry (see FaceDetector.detect)

    def to_dict(self) -> dict:
        return {
            "score": round(float(self.score), 4),
            "found_on": "smoothed copy" if self.smoothed else "photo",
            "box": [round(float(v), 2) for v in self.box],
            "keypoints": {n: [round(float(x), 2), round(float(y), 2)] for n, (x, y) in zip(KEYPOINT_NAMES, self.keypoints)},
        }


def too_small_for_detection(shape: tuple[int, ...]) -> bool:
    """True when a photo of this (H, W, ...) shape is under MIN_PHOTO_SIDE px a side."""
    return min(shape[:2]) < MIN_PHOTO_SIDE


def neighbour_correlation(image: np.ndarray, box) -> float:
    """Correlation of horizontally and vertically adjacent pixels (grey) inside ``box``
    (clipped to the image): near 0 for pixel noise, near 1 for a smooth photo; 0 for a box
    with no pixels or no variation."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    region = np.asarray(image[y0:y1, x0:x1], dtype=np.float64).mean(axis=2)
    a = np.concatenate([region[:, 1:].ravel(), region[1:].ravel()])
    b = np.concatenate([region[:, :-1].ravel(), region[:-1].ravel()])
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def looks_like_noise(image: np.ndarray, box) -> bool:
    """True when the pixels in ``box`` are noise, not a face (see MIN_NEIGHBOUR_CORRELATION)."""
    return neighbour_correlation(image, box) < MIN_NEIGHBOUR_CORRELATION


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_detections(detections: list[Detection], iou: float = 0.4) -> list[Detection]:
    """Non-maximum suppression: keep the best-scoring of overlapping boxes, best first."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.score):
        if all(_iou(d.box, k.box) < iou for k in kept):
            kept.append(d)
    return kept


class FaceDetector:
    """mediapipe's face detector, both ranges: short (faces within ~2 m) and full range.

    ``detect`` runs both models and merges their boxes, so a close-up portrait and a group
    photo with small faces are both covered. Holds the two loaded graphs; call ``close``
    (or use as a context manager) to free them.
    """

    def __init__(self, min_score: float = 0.5):
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        self.min_score = float(min_score)
        mp = _import_mediapipe()
        fd = mp.solutions.face_detection
        with quiet_native_stderr():
            self._models = [fd.FaceDetection(model_selection=sel, min_detection_confidence=self.min_score) for sel in (0, 1)]
            warm_up(self._models)

    def detect(self, image: np.ndarray, max_faces: Optional[int] = None) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB photo, best score first, at most ``max_faces``.

        BlazeFace misses faces under heavy pixel noise (measured on 8 CelebA-HQ portraits at
        384 px: gaussian_noise severity 3 -> 0 of 8 found). When nothing is found, detection is
        retried once on a Gaussian-smoothed copy (radius SMOOTH_RADIUS px), which finds all 8 at
        gaussian/shot noise severity 3-4 and impulse noise 3; the keypoints keep their places.
        The retry keeps only scores >= RETRY_MIN_SCORE.

        Photos under MIN_PHOTO_SIDE px a side give no faces, and a detection whose box holds
        pixel noise rather than a smooth image (:func:`looks_like_noise`) is dropped.
        """
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape}")
        if too_small_for_detection(image.shape):
            return []
        found = [d for d in self._detect_once(image) if not looks_like_noise(image, d.box)]
        if not found:
            from PIL import Image, ImageFilter

            smooth = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(SMOOTH_RADIUS)))
            floor = max(self.min_score, RETRY_MIN_SCORE)  # smoothing can turn noise into a weak "face"
            found = [replace(d, smoothed=True) for d in self._detect_once(smooth) if d.score >= floor]
            found = [d for d in found if not looks_like_noise(image, d.box)]  # judged on the photo itself
        kept = merge_detections(found)
        return kept if max_faces is None else kept[:max_faces]

    def _detect_once(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        found: list[Detection] = []
        for model in self._models:
            with quiet_native_stderr():
                result = model.process(image)
            for det in result.detections or []:
                loc = det.location_data
                bb = loc.relative_bounding_box
                kps = np.array([[k.x * w, k.y * h] for k in loc.relative_keypoints], dtype=np.float64)
                if kps.shape != (len(KEYPOINT_NAMES), 2):
                    continue  # not the six-keypoint BlazeFace output
                box = (bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h)
                found.append(Detection(float(det.score[0]), tuple(float(v) for v in box), kps))
        return found

    def close(self) -> None:
        for model in self._models:
            model.close()
        self._models = []

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# mediapipe's native start-up chatter on stderr (fd 2), written by its C++ code and graph
# threads while a graph opens (on the first ``process``): TFLite's "INFO: Created TensorFlow
# Lite XNNPACK delegate for CPU.", absl's "WARNING: All log messages before
# absl::InitializeLog() is called are written to STDERR" and absl INFO/WARNING lines such as
# "W0000 ... inference_feedback_manager.cc:114] Feedback manager requires a model with a single
# signature inference...". GLOG_minloglevel / TF_CPP_MIN_LOG_LEVEL do not reach them (0.10.14
# logs through absl before absl::InitializeLog), so :func:`quiet_native_stderr` filters them.
NATIVE_NOISE = re.compile(
    r"^(INFO: Created TensorFlow Lite .*delegate"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] )"
)


@contextlib.contextmanager
def quiet_native_stderr():
    """Drop mediapipe's start-up chatter (:data:`NATIVE_NOISE`) from what native code writes to
    stderr inside the block; every other line (absl errors ``E...``/``F...``, Python warnings)
    is written to ``sys.stderr`` afterwards, also when the block raises. fd 2 goes to a
    temporary file for the block's duration and is always restored."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    try:
        tmp = tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        yield
        return
    try:
        os.dup2(tmp.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own writes inside the block: into the file, in order
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", errors="replace")
        tmp.close()
        kept = [line for line in text.splitlines(keepends=True) if not NATIVE_NOISE.match(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def warm_up(graphs) -> None:
    """Run each mediapipe solution once on a blank image: its graph threads open the models
    (and log) now, inside the caller's :func:`quiet_native_stderr`, not later at random."""
    blank = np.full((128, 128, 3), 128, np.uint8)
    for graph in graphs:
        graph.process(blank)


def _import_mediapipe():
    os.environ.setdefault("GLOG_minloglevel", "2")  # mediapipe's C++ logging to stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # protobuf warns on every graph run that mediapipe 0.10.14 uses a deprecated call; it is
    # not ours to fix and says nothing about the user's input.
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)
    try:
        import mediapipe as mp
    except ImportError as err:
        raise DetectorUnavailable(f"face detection needs mediapipe ({err}); install it with: {INSTALL_HINT}") from None
    if not hasattr(mp, "solutions") or not hasattr(mp.solutions, "face_detection"):
        raise DetectorUnavailable(
            f"mediapipe {getattr(mp, '__version__', '?')} does not bundle the face detector; {INSTALL_HINT}"
        )
    return mp


def detector_available() -> bool:
    """True when mediapipe with the bundled face detector can be imported."""
    try:
        _import_mediapipe()
    except DetectorUnavailable:
        return False
    return True
