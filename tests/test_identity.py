"""Identity similarity (odedit.metrics.identity): dlib face-recognition descriptors of a
restored face against its clean face. Needs the extra odedit[identity] (skipped without it);
faces from the repository's own samples (never ../shared)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from odedit import metrics as M
from odedit.imageio import load_image_uint8, resize_to
from odedit.metrics import identity as I

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = [*sorted((ROOT / "src" / "odedit" / "assets" / "samples").glob("*.jpg")),
           ROOT / "tests" / "data" / "face_00234.jpg"]


def _needs_dlib():
    pytest.importorskip("dlib")
    reason = I.identity_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Four different people, 64x64 uint8 (N, H, W, 3), as the benchmark measures them."""
    assert len(SAMPLES) >= 4
    return np.stack([resize_to(load_image_uint8(p), 64, 64) for p in SAMPLES[:4]])


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(np.round(gaussian_filter(x.astype(float), (0, sigma, sigma, 0))), 0, 255).astype(np.uint8)


def test_a_face_with_itself_is_one_and_beats_a_blurred_copy_which_beats_another_person(faces):
    _needs_dlib()
    same = I.identity_scores(faces, faces)
    np.testing.assert_allclose(same.cosine, 1.0, atol=1e-9)
    np.testing.assert_allclose(same.distance, 0.0, atol=1e-6)
    assert same.failed == 0
    other = np.roll(faces, 1, axis=0)  # face i against face i-1: always a different person
    diff = I.identity_scores(faces, other, landmarks="own")
    blurred = I.identity_scores(_blur(faces, 0.7), faces)
    assert np.all(np.isfinite(diff.cosine)) and np.all(np.isfinite(blurred.cosine))
    assert np.all(diff.cosine < 0.95)  # dlib's descriptors of different people: cosine ~0.83-0.89 here
    assert np.all(blurred.cosine > 0.97)
    assert blurred.cosine.min() > diff.cosine.max()
    # dlib's own rule: below 0.6 Euclidean distance = the same person
    assert np.all(blurred.distance < I.DLIB_SAME_PERSON_DISTANCE)
    assert np.all(diff.distance > blurred.distance.max())
    # the angle is the cosine's
    np.testing.assert_allclose(np.cos(np.radians(diff.degrees)), diff.cosine, atol=1e-12)
    np.testing.assert_array_equal(M.identity_similarity(_blur(faces, 0.7), faces), blurred.cosine)
    np.testing.assert_array_equal(M.identity_distance(_blur(faces, 0.7), faces), blurred.distance)


def test_float_nchw_input_in_the_metrics_convention_equals_uint8_nhwc(faces):
    _needs_dlib()
    blurred = _blur(faces, 1.0)
    as_unit = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float64) / 255.0  # noqa: E731
    a = I.identity_similarity(blurred, faces)
    b = I.identity_similarity(as_unit(blurred), as_unit(faces))
    np.testing.assert_array_equal(a, b)
    one = I.identity_similarity(blurred[0], faces[0])  # a single (H, W, 3) image is a batch of one
    assert one.shape == (1,) and one[0] == a[0]
    with pytest.raises(ValueError, match="same shape"):
        I.identity_similarity(faces[:2], faces[:3])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        I.identity_similarity(faces.astype(np.float32), faces.astype(np.float32))  # float NHWC: ambiguous, refused


def test_clean_landmarks_place_both_chips_and_own_landmarks_are_an_option(faces):
    _needs_dlib()
    noisy = np.clip(faces + np.random.default_rng(0).normal(0, 25, faces.shape), 0, 255).astype(np.uint8)
    lm_clean = I.face_landmarks(faces)
    assert lm_clean.shape == (4, 5, 2)
    box = np.array(I.FACE_BOX) * 64
    assert np.all((lm_clean[..., 0] > box[0] - 8) & (lm_clean[..., 0] < box[2] + 8))
    clean_desc = I.identity_descriptors(faces)
    # "clean": the restored image's chip comes from the clean image's landmarks
    want = I.scores_from_descriptors(I.identity_descriptors(noisy, faces), clean_desc).cosine
    np.testing.assert_array_equal(I.identity_similarity(noisy, faces), want)
    np.testing.assert_array_equal(I.identity_similarity(noisy, faces, clean_descriptors=clean_desc), want)
    own = I.scores_from_descriptors(I.identity_descriptors(noisy), clean_desc).cosine
    np.testing.assert_array_equal(I.identity_similarity(noisy, faces, landmarks="own"), own)
    with pytest.raises(ValueError, match="landmarks"):
        I.identity_similarity(noisy, faces, landmarks="detector")


def test_upscaled_measurement_also_separates_same_from_different(faces):
    _needs_dlib()
    blurred = I.identity_similarity(_blur(faces, 0.7), faces, size=128)
    diff = I.identity_similarity(faces, np.roll(faces, 1, axis=0), size=128, landmarks="own")
    assert blurred.min() > diff.max()


def test_images_without_a_face_do_not_crash(faces):
    _needs_dlib()
    flat = np.full_like(faces[:2], 128)
    noise = np.random.default_rng(1).integers(0, 256, faces[:2].shape, dtype=np.uint8)
    s = I.identity_scores(noise, flat)
    assert s.cosine.shape == (2,) and s.failed == int(np.count_nonzero(np.isnan(s.cosine)))
    tiny = I.identity_scores(faces[:, ::4, ::4], faces[:, ::4, ::4])  # 16 px
    assert tiny.cosine.shape == (4,)


class _FailingEncoder:
    def compute_face_descriptor(self, image, shape):
        if image.mean() > 100:
            raise RuntimeError("dlib could not process this chip")
        return np.zeros(128) if image.mean() > 50 else np.ones(128)


def test_failures_are_nan_and_counted_never_dropped(faces):
    _needs_dlib()
    real = I.load_identity_model()
    model = I.IdentityModel(real.predictor, _FailingEncoder(), real.landmark_file, real.recognition_file)
    imgs = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (10, 10, 80, 200)])
    clean = np.full_like(imgs, 10)
    s = I.identity_scores(imgs, clean, model=model)
    # raising -> NaN; a zero descriptor -> NaN (no direction); the rest measured
    assert s.failed == 2
    np.testing.assert_array_equal(np.isnan(s.cosine), [False, False, True, True])
    np.testing.assert_array_equal(np.isnan(s.distance), [False, False, True, True])
    assert s.cosine[0] == pytest.approx(1.0)


def test_scores_from_descriptors_and_roc_auc():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    b = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    s = I.scores_from_descriptors(a, b)
    np.testing.assert_allclose(s.cosine[:2], [1.0, 0.0])
    np.testing.assert_allclose(s.degrees[:2], [0.0, 90.0])
    np.testing.assert_allclose(s.distance[:2], [0.0, np.sqrt(5)])
    assert s.failed == 2 and np.isnan(s.cosine[2:]).all()
    assert I.roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert I.roc_auc([0.5], [0.5]) == 0.5
    assert I.roc_auc([0.1, 0.9], [0.5, float("nan")]) == 0.5
    assert np.isnan(I.roc_auc([], [0.1]))


def test_unavailable_without_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # find_spec -> None, import fails
    monkeypatch.setattr(I, "_MODEL", {})
    reason = M.identity_unavailable()
    assert "'dlib-bin'" in reason and "odedit[identity]" in reason
    with pytest.raises(M.MetricUnavailable) as e:
        M.identity_similarity(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
    assert e.value.metric == "identity" and e.value.reason == reason


def test_unavailable_without_the_weights_package(monkeypatch):
    pytest.importorskip("dlib")
    monkeypatch.setattr(I, "_models_dir", lambda: None)
    assert "'face-recognition-models' is not installed" in I.identity_unavailable()
    monkeypatch.setattr(I, "_models_dir", lambda: "/nonexistent")
    assert I.LANDMARK_MODEL in I.identity_unavailable()


def test_worker_processes_give_the_same_values(faces, monkeypatch):
    _needs_dlib()
    monkeypatch.setattr(I, "MIN_IMAGES_PER_WORKER", 1)
    blurred = _blur(faces, 0.7)
    one = I.identity_descriptors(blurred, faces)
    two = I.identity_descriptors(blurred, faces, workers=2)
    np.testing.assert_array_equal(one, two)
