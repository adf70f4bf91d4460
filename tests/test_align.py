"""Face-alignment geometry without a detector: similarity fits, warps, paste-back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odedit import align
from odedit.upsample import LanczosUpsampler, needed_factor


def similarity(scale, angle, tx, ty):
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def smooth_image(h, w, seed=0):
    """A band-limited RGB image (low-frequency sinusoids), values in 0..255 float."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(-1, 1, 2) * 2 * math.pi / 40.0
            out[..., c] += rng.uniform(10, 30) * np.sin(fx * xs + fy * ys + rng.uniform(0, 6))
    return out + 128.0


def test_fit_similarity_recovers_exact_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (6, 2))
    m = similarity(0.37, 0.4, 12.0, -3.0)
    got = align.fit_similarity(src, align.apply(m, src))
    np.testing.assert_allclose(got, m, atol=1e-10)


def test_fit_similarity_never_reflects_and_is_least_squares():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 50, (5, 2))
    dst = src * np.array([-1.0, 1.0])  # a mirror image: the best proper similarity is no reflection
    m = align.fit_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    noisy = align.apply(similarity(2.0, -0.3, 5, 7), src) + rng.normal(0, 0.5, src.shape)
    best = align.fit_similarity(src, noisy)
    best_err = ((align.apply(best, src) - noisy) ** 2).sum()
    for _ in range(50):  # no nearby similarity fits better
        d = rng.normal(0, 1e-3, 4)
        s = math.hypot(best[0, 0], best[1, 0]) * (1 + d[0])
        a = math.atan2(best[1, 0], best[0, 0]) + d[1]
        other = similarity(s, a, best[0, 2] + d[2], best[1, 2] + d[3])
        assert ((align.apply(other, src) - noisy) ** 2).sum() >= best_err - 1e-9


def test_fit_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError, match="coincide"):
        align.fit_similarity(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="K >= 2"):
        align.fit_similarity(np.ones((1, 2)), np.zeros((1, 2)))


def test_compose_invert_apply_agree():
    a, b = similarity(1.5, 0.2, 3, 4), np.array([[0.5, 0.1, -2.0], [0.0, 2.0, 1.0]])
    pts = np.random.default_rng(3).uniform(-10, 10, (7, 2))
    np.testing.assert_allclose(align.apply(align.compose(a, b), pts), align.apply(a, align.apply(b, pts)), atol=1e-12)
    np.testing.assert_allclose(align.apply(align.invert(a), align.apply(a, pts)), pts, atol=1e-12)
    assert align.scale_of(a) == pytest.approx(1.5)


def test_warp_translation_by_whole_pixels_is_exact():
    img = np.random.default_rng(4).integers(0, 256, (20, 30, 3)).astype(np.float32)
    m = np.array([[1.0, 0.0, -5.0], [0.0, 1.0, -3.0]])  # output pixel (x, y) = input (x + 5, y + 3)
    out = align.warp_affine(img, m, (10, 8), mode="bicubic")
    np.testing.assert_allclose(out, img[3:11, 5:15], atol=1e-3)


def test_warp_matches_the_analytic_image_under_rotation_and_scale():
    """Bicubic resampling of a band-limited image: close to the continuous function."""
    h = w = 96
    img = smooth_image(h, w)
    m = similarity(0.8, 0.3, 10.0, -8.0)
    out = align.warp_affine(img, m, (60, 60), mode="bicubic", antialias=False)
    # expected: evaluate the same sinusoids at the preimage of each output pixel centre
    ys, xs = np.mgrid[0:60, 0:60] + 0.5
    p = align.apply(align.invert(m), np.stack([xs.ravel(), ys.ravel()], 1))
    inside = (p[:, 0] > 3) & (p[:, 0] < w - 3) & (p[:, 1] > 3) & (p[:, 1] < h - 3)
    ref = np.stack(
        [np.interp(0, [0], [0]) + _bilinear_ref(img[..., c], p) for c in range(3)], 1
    )
    err = np.abs(out.reshape(-1, 3)[inside] - ref[inside])
    assert err.max() < 1.0  # grey levels


def _bilinear_ref(channel, p):
    """Exact bilinear interpolation of ``channel`` at continuous points (pixel centres at +0.5)."""
    x, y = p[:, 0] - 0.5, p[:, 1] - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    h, w = channel.shape
    x0c, x1c = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
    y0c, y1c = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
    return (
        channel[y0c, x0c] * (1 - fx) * (1 - fy)
        + channel[y0c, x1c] * fx * (1 - fy)
        + channel[y1c, x0c] * (1 - fx) * fy
        + channel[y1c, x1c] * fx * fy
    )


def test_warp_then_inverse_warp_round_trip():
    img = smooth_image(80, 80, seed=5)
    m = similarity(1.3, -0.5, 20.0, 15.0)  # enlarge: no information lost
    there = align.warp_affine(img, m, (150, 150), mode="bicubic")
    back = align.warp_affine(there, align.invert(m), (80, 80), mode="bicubic")
    # compare where the forward warp covered the image
    ys, xs = np.mgrid[0:80, 0:80] + 0.5
    q = align.apply(m, np.stack([xs.ravel(), ys.ravel()], 1))
    inside = ((q > 4) & (q < 146)).all(1).reshape(80, 80)
    assert inside.mean() > 0.5
    err = np.abs(back - img)[inside]
    assert err.max() < 1.5 and err.mean() < 0.3


def test_antialias_prevents_aliasing_when_shrinking():
    """A fine checkerboard shrunk 8x must become flat grey, not a moire pattern."""
    board = ((np.indices((256, 256)).sum(0) % 2) * 255.0)[..., None].repeat(3, 2)
    m = np.array([[0.125, 0.0, -0.0625], [0.0, 0.125, -0.0625]])  # samples land on pixel centres
    good = align.warp_affine(board, m, (32, 32), antialias=True)
    bad = align.warp_affine(board, m, (32, 32), antialias=False)
    assert np.abs(good - 127.5).max() < 3.0
    assert np.abs(bad - 127.5).max() > 50.0


def test_feather_mask_range_and_shape():
    mask = align.feather_mask((64, 48), inset=0.05, width=0.2)
    assert mask.shape == (48, 64) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert (mask[0] == 0).all() and (mask[:, 0] == 0).all() and (mask[:, -1] == 0).all()
    assert mask[24, 32] == 1.0
    # monotone from the border inwards along the middle row
    row = mask[24, :32]
    assert (np.diff(row) >= 0).all()
    with pytest.raises(ValueError):
        align.feather_mask((10, 10), inset=0.3, width=0.3)


def test_paste_back_of_the_unchanged_crop_restores_the_photo():
    """Cut a frame at scale 1, paste it back: interior reproduced, exterior bit-identical."""
    photo = np.clip(np.round(smooth_image(120, 160, seed=6)), 0, 255).astype(np.uint8)
    m = similarity(1.0, 0.25, -30.0, -10.0)  # photo -> 64 px frame, rotated
    crop = np.clip(np.round(align.warp_affine(photo, m, (64, 64))), 0, 255).astype(np.uint8)
    out = align.paste_back(photo, crop, m, 64)
    corners = align.frame_corners_in_photo(m, 64)
    # outside the frame's bounding box: untouched
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    outside = np.ones(photo.shape[:2], bool)
    outside[max(0, y0) : y1, max(0, x0) : x1] = False
    assert np.array_equal(out[outside], photo[outside])
    # inside: two resamplings of a smooth image
    mask_photo = align.warp_affine(align.feather_mask((64, 64))[..., None], align.invert(m), (160, 120), padding="zeros")
    inner = mask_photo[..., 0] > 0.99
    assert inner.sum() > 1000
    assert np.abs(out.astype(int) - photo.astype(int))[inner].max() <= 2


def test_paste_back_blends_a_new_face_with_the_mask():
    photo = np.full((100, 100, 3), 50, np.uint8)
    face = np.full((64, 64, 3), 250, np.uint8)
    m = np.array([[1.0, 0.0, -18.0], [0.0, 1.0, -18.0]])  # frame covers photo [18, 82)
    out = align.paste_back(photo, face, m, 64).astype(int)
    assert out[50, 50, 0] == 250  # centre: the face
    assert out[5, 5, 0] == 50 and out[18, 50, 0] == 50  # outside and on the frame border: the photo
    ramp = out[50, 18:50, 0]
    assert (np.diff(ramp) >= 0).all() and 50 < ramp[5] < 250  # feather: 2% inset, 12% ramp


def test_paste_back_from_an_upscaled_frame_uses_the_same_geometry():
    photo = np.clip(np.round(smooth_image(200, 200, seed=7)), 0, 255).astype(np.uint8)
    m = similarity(0.25, 0.1, 5.0, 3.0)  # the frame covers ~256 photo px
    crop = np.clip(np.round(align.warp_affine(photo, m, (64, 64))), 0, 255).astype(np.uint8)
    factor = needed_factor(align.scale_of(m))
    assert factor == 4
    big = LanczosUpsampler().upsample([crop], factor)[0]
    assert big.shape == (256, 256, 3)
    out = align.paste_back(photo, big, m, 64)
    mask_photo = align.warp_affine(align.feather_mask((64, 64))[..., None], align.invert(m), (200, 200), padding="zeros")
    inner = mask_photo[..., 0] > 0.99
    # the smooth photo survives a 4x down + Lanczos up round trip within a few grey levels
    assert np.abs(out.astype(int) - photo.astype(int))[inner].mean() < 2.0


def test_needed_factor():
    assert needed_factor(1.0) == 1 and needed_factor(2.0) == 1
    assert needed_factor(0.1) == 10 and needed_factor(0.11) == 10
    assert needed_factor(1e-4) == 16
    with pytest.raises(ValueError):
        needed_factor(0.0)


def test_packaged_template_is_a_face_in_the_canonical_frame():
    tpl = align.load_template()
    w, h = align.CANONICAL_FRAME
    assert tpl.points.shape == (6, 2)
    pts = dict(zip(tpl.names, tpl.points))
    assert pts["right_eye"][0] < pts["nose_tip"][0] < pts["left_eye"][0]  # subject's right eye is image-left
    assert pts["right_eye"][1] < pts["nose_tip"][1] < pts["mouth_center"][1]
    assert ((tpl.points > 0) & (tpl.points < [w, h])).all()
    # the template fitted to itself is the canonical squash
    m = align.photo_to_frame(tpl.points, tpl, 64)
    np.testing.assert_allclose(m, align.squash_matrix(64), atol=1e-9)
