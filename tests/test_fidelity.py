"""odedit.fidelity: the two-band split that keeps the input's fine detail, and colour matching."""

from __future__ import annotations

import numpy as np
import pytest

from odedit import fidelity as F


def _smooth_image(h=96, w=96, seed=0):
    """A band-limited 'photo': a few low-frequency sinusoids per channel, 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5), rng.uniform(0, 6.3)
            out[..., c] += 20 * np.sin(2 * np.pi * (fy * y + fx * x) + ph)
    return (out + 128).astype(np.float32)


def _detailed_image(h=96, w=96, seed=0):
    """Smooth image plus fine texture (period 6-7 px): detail a 4x smaller frame cannot hold."""
    base = _smooth_image(h, w, seed)
    y, x = np.mgrid[0:h, 0:w]
    texture = 15 * np.sin(2 * np.pi * x / 6.3) * np.sin(2 * np.pi * y / 6.9)
    return base + texture[..., None].astype(np.float32)


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((np.asarray(a, np.float64) - b) ** 2))


def test_lowpass_keeps_constants_and_is_identity_at_factor_one():
    const = np.full((40, 50, 3), 77.0, np.float32)
    assert np.allclose(F.lowpass(const, 4.0), 77.0, atol=1e-3)
    img = _detailed_image()
    assert np.array_equal(F.lowpass(img, 1.0), img)
    assert F.lowpass(img, 1.0) is not img


def test_lowpass_removes_the_fine_band_only():
    smooth, detailed = _smooth_image(), _detailed_image()
    low = F.lowpass(detailed, 4.0)
    assert _psnr(low, smooth) > _psnr(detailed, smooth) + 6  # the texture is gone
    assert _psnr(F.lowpass(smooth, 4.0), smooth) > 35  # the smooth part stays


@pytest.mark.parametrize("sigma", [5.0, 20.0])
def test_noise_sigma_recovers_white_noise_level(sigma):
    rng = np.random.default_rng(3)
    img = _smooth_image(128, 128) + rng.normal(0, sigma, (128, 128, 3)).astype(np.float32)
    assert F.noise_sigma(img) == pytest.approx(sigma, rel=0.1)


def test_noise_sigma_of_a_smooth_image_is_small():
    assert F.noise_sigma(_smooth_image(128, 128)) < 0.5


def test_noise_share_of_fine_band_matches_the_ideal_split():
    for k in (2.0, 4.0, 8.0):
        beta = F.noise_share_of_fine_band((128, 128), k)
        ideal = 1 - 1 / k**2
        assert 0.8 * ideal < beta < 1.05  # real filters pass a bit more than the ideal low band
    assert F.noise_share_of_fine_band((64, 64), 1.0) == 0.0


def test_weight_zero_or_small_faces_return_the_restoration():
    r, p = _smooth_image(), _detailed_image()
    assert np.array_equal(F.keep_input(r, p, 4.0, 0.0, colour=False, low_band="off"), r)
    assert np.array_equal(F.keep_input(r, p, 1.0, 1.0, colour=False, low_band="off"), r)
    with pytest.raises(ValueError, match="shape|differ"):
        F.keep_input(r[:10], p, 4.0, 1.0, colour=False, low_band="off")
    with pytest.raises(ValueError, match="weight"):
        F.detail_gain(p, 1.0, 0.5, 4.0, 1.5)


def test_a_clean_input_gets_its_detail_back():
    """Restored = the input's low band (a perfect restoration at frame resolution): with w = 1
    the result is close to the input (the fine band is the input's), with w = 0 it is not."""
    clean = _detailed_image()
    restored = F.lowpass(clean, 4.0)
    kept = F.keep_input(restored, clean, 4.0, 1.0, colour=False, low_band="off")
    assert _psnr(kept, clean) > _psnr(restored, clean) + 10
    assert _psnr(kept, clean) > 35


def test_a_noisy_input_keeps_little_of_its_fine_band():
    """Fine band of pure noise: the Wiener gain closes, the result stays near the restoration."""
    clean = _smooth_image(128, 128)
    noisy = clean + np.random.default_rng(5).normal(0, 25, clean.shape).astype(np.float32)
    restored = F.lowpass(clean, 4.0)
    kept = F.keep_input(restored, noisy, 4.0, 1.0, colour=False, low_band="off")
    naive = restored + (noisy - F.lowpass(noisy, 4.0)) - (restored - F.lowpass(restored, 4.0))
    assert _psnr(kept, clean) > _psnr(naive, clean) + 5
    assert _psnr(kept, clean) > _psnr(noisy, clean) + 10


def test_match_colour_moves_the_masked_mean_only():
    r = _smooth_image()
    p = r + np.array([10.0, -5.0, 3.0], np.float32)
    mask = np.zeros(r.shape[:2], np.float32)
    mask[20:60, 30:70] = 1.0
    out = F.match_colour(r, p, mask)
    inside = mask > 0
    assert np.allclose(out[inside].mean(0), p[inside].mean(0), atol=1e-3)
    assert np.allclose(out - r, np.array([10.0, -5.0, 3.0]), atol=1e-3)  # a shift, no structure change
    assert np.array_equal(F.match_colour(r, p, np.zeros_like(mask)), r)


def test_paste_faces_with_fidelity_changes_only_pixels_inside_the_mask():
    """Whole-photo path: a face frame larger than the model (factor > 1) pasted with fidelity 1
    and colour matching leaves every pixel outside the paste mask bit-identical."""
    from odedit import align
    from odedit.detect import Detection
    from odedit.faces import cut_faces, paste_faces, paste_mask

    rng = np.random.default_rng(0)
    photo = np.clip(_detailed_image(300, 300) + rng.normal(0, 3, (300, 300, 3)), 0, 255).astype(np.uint8)
    tpl = align.load_template()
    kp = align.apply(np.array([[0.9, 0.0, 30.0], [0.0, 0.9, 20.0]]), tpl.points)
    (face,) = cut_faces(photo, [Detection(1.0, (0, 0, 1, 1), kp)], 16, tpl, outlines=False)
    assert 1.0 / align.scale_of(face.matrix) > 2  # the frame spans several photo px per frame px
    restored = [np.full((16, 16, 3), 140, np.uint8)]
    plain, _ = paste_faces(photo, [face], restored, fidelity=0.0)
    kept, _ = paste_faces(photo, [face], restored, fidelity=1.0, match_colour=True)
    # the mask in photo space: paste white with the same mask onto black
    from odedit.upsample import needed_factor

    r = 16 * needed_factor(align.scale_of(face.matrix))
    alpha, _ = paste_mask(face, r)
    inside = align.paste_back(np.zeros_like(photo), np.full((r, r, 3), 255, np.uint8), face.matrix, 16, mask=alpha)[..., 0] > 0
    assert np.array_equal(kept[~inside], photo[~inside])
    assert np.abs(kept[inside].astype(int) - plain[inside]).mean() > 1.0  # the fine band came back
    with pytest.raises(ValueError, match="fidelity"):
        paste_faces(photo, [face], restored, fidelity=2.0)


# --- the coarse band: keep the restoration's change only where the input's noise explains it ---


def _prior_error(h=96, w=96, seed=7, amp=12.0):
    """A smooth change a weak prior makes to a clean face (coarse band, frame resolution)."""
    return _smooth_image(h, w, seed) - 128 + amp * np.sin(np.mgrid[0:h, 0:w][1] / 9.0)[..., None]


@pytest.mark.parametrize("low_band", ["global", "local"])
@pytest.mark.parametrize("factor", [1.0, 4.0])
def test_a_clean_input_comes_back_almost_unchanged(low_band, factor):
    """Clean input, restoration = input + the prior's own error: with w = 1 the gate refuses the
    change (no noise explains it), so the result is close to the input; with 'off' it is not."""
    clean = _detailed_image()
    restored = clean + _prior_error()
    mask = np.ones(clean.shape[:2], np.float32)
    stats, stats_off = {}, {}
    kept = F.keep_input(restored, clean, factor, 1.0, mask=mask, colour=False, low_band=low_band, stats=stats)
    off = F.keep_input(restored, clean, factor, 1.0, mask=mask, colour=False, low_band="off", stats=stats_off)
    assert _psnr(kept, clean) > 40
    assert _psnr(kept, clean) > _psnr(off, clean) + 10
    assert stats["restoration_kept"] < 0.1 and stats_off["restoration_kept"] == 1.0


@pytest.mark.parametrize("low_band", ["global", "local"])
@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_a_noisy_input_keeps_the_restorations_denoising(low_band, factor):
    """Noisy input, restoration = the clean face (a perfect denoiser): the change is all noise,
    so the gate keeps it: the result is far nearer the clean face than the input is."""
    clean = _smooth_image(128, 128)
    noisy = clean + np.random.default_rng(5).normal(0, 25, clean.shape).astype(np.float32)
    mask = np.ones(clean.shape[:2], np.float32)
    stats = {}
    kept = F.keep_input(clean, noisy, factor, 1.0, mask=mask, colour=False, low_band=low_band, stats=stats)
    assert _psnr(kept, clean) > _psnr(noisy, clean) + 8
    assert stats["restoration_kept"] > 0.7


def test_keep_input_weight_zero_is_the_colour_matched_restoration():
    r, p = _smooth_image(), _detailed_image() + 9.0
    mask = np.ones(r.shape[:2], np.float32)
    assert np.array_equal(F.keep_input(r, p, 4.0, 0.0, mask=mask, colour=False), r)
    assert np.allclose(F.keep_input(r, p, 4.0, 0.0, mask=mask, colour=True), F.match_colour(r, p, mask))
    with pytest.raises(ValueError, match="low band mode"):
        F.keep_input(r, p, 4.0, 1.0, mask=mask, low_band="sometimes")
    with pytest.raises(ValueError, match="fidelity"):
        F.keep_input(r, p, 4.0, 1.5, mask=mask)


def test_keep_input_with_the_gate_off_is_the_fine_band_split():
    """low_band='off' reduces to F = R + G (D(P) - D(R)) (the session-8 default, colour aside)."""
    clean = _detailed_image()
    restored = F.lowpass(clean, 4.0) + _prior_error()
    a = F.keep_input(restored, clean, 4.0, 1.0, mask=None, colour=False, low_band="off")
    fine_p, fine_r = clean - F.lowpass(clean, 4.0), restored - F.lowpass(restored, 4.0)
    sigma = F.above_floor(F.noise_sigma(clean))  # keep_input's noise level: above the estimator's floor
    g = F.detail_gain(fine_p, sigma, F.noise_share_of_fine_band(clean.shape[:2], 4.0), 4.0, 1.0)
    assert np.allclose(a, restored + g * (fine_p - fine_r), atol=1e-3)


@pytest.mark.parametrize("amount", [0.03, 0.15])
def test_noise_sigma_sees_salt_and_pepper_impulses(amount):
    """Impulse noise (values thrown to 0 or 255, as ImageNet-C's impulse_noise): the median-based
    estimate alone reads almost clean; with the impulses' variance it is the noise's true std."""
    rng = np.random.default_rng(5)
    clean = _smooth_image(128, 128)
    noisy = clean.copy()
    hit = rng.random(noisy.shape) < amount
    noisy[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0.0, 255.0)
    true = float(np.std(noisy.astype(np.float64) - clean))
    assert F.noise_sigma(noisy) == pytest.approx(true, rel=0.15)
    assert F.impulse_variance(noisy) > 0.5 * true**2
    mask = np.zeros(noisy.shape[:2], bool)
    mask[:, :64] = True  # impulses measured over the mask only: the same density there
    assert F.noise_sigma(noisy, mask.astype(np.float32)) == pytest.approx(true, rel=0.15)


def test_saturated_areas_are_not_impulses():
    """Blown highlights and black areas wider than a few pixels (their 3x3 median is saturated
    too) add nothing, bit for bit: the estimate is Donoho's alone."""
    img = _smooth_image(128, 128)
    img[10:40, 10:50] = 255.0
    img[80:120, 60:100] = 0.0
    yy, xx = np.mgrid[0:128, 0:128]
    img[(yy - 64) ** 2 + (xx - 20) ** 2 < 15**2] = 255.0  # a disc: a staircase edge
    assert F.impulse_variance(img) == 0.0
    assert F.impulse_variance(_smooth_image(128, 128)) == 0.0  # no value at the ends: no filtering
    assert F.noise_sigma(img) < 0.5
    specks = _smooth_image(128, 128)
    specks[np.arange(5, 125, 10), np.arange(5, 125, 10)] = 0.0  # 12 black pixels (0.07 %): features
    assert F.impulse_variance(specks) == 0.0
    specks[::4, ::4] = 255.0  # every 16th pixel white (6 %): noise
    assert F.impulse_variance(specks) > 0.0


def _with_vertical_lines(clean, share, seed=3):
    """The masking corruption's lines: ``share`` of the columns, each one random colour, full height."""
    rng = np.random.default_rng(seed)
    out = clean.copy()
    cols = rng.choice(clean.shape[1], size=int(round(share * clean.shape[1])), replace=False)
    out[:, cols] = rng.integers(0, 256, (cols.size, 3)).astype(np.float32)[None]
    return out


@pytest.mark.parametrize("share", [0.1, 0.4])
def test_noise_sigma_sees_lines_of_one_colour(share):
    """Vertical lines cancel in Donoho's diagonal band whatever their contrast; with the lines'
    variance the estimate is the corruption's true std, and a mask limits where it is measured."""
    clean = _smooth_image(64, 64)
    lined = _with_vertical_lines(clean, share)
    true = float(np.std(lined.astype(np.float64) - clean))
    assert F.noise_sigma(lined) == pytest.approx(true, rel=0.1)
    rows = F.line_variance(np.ascontiguousarray(lined.transpose(1, 0, 2)))  # the same lines, as rows
    assert rows == pytest.approx(F.line_variance(lined), rel=1e-9)
    mask = np.zeros(lined.shape[:2], np.float32)
    mask[:, :32] = 1.0
    inside = float(np.std(lined[:, :32].astype(np.float64) - clean[:, :32]))
    assert F.noise_sigma(lined, mask) == pytest.approx(inside, rel=0.25)


def test_flat_bands_edges_and_clipping_are_not_lines():
    """What is one colour down a region without being a line adds nothing: a flat band of
    background (a run of many columns), a flat strip at the edge, columns clipped to white, a few
    lines under the minimum share; a photo-like image has none."""
    img = _smooth_image(64, 64)
    assert F.line_variance(img) == 0.0
    band = img.copy()
    band[:, 20:40] = 90.0  # 20 flat columns side by side
    band[:, :6] = 30.0  # a flat strip at the left edge
    band[:, 50:52] = 255.0  # blown out
    assert F.line_variance(band) == 0.0
    few = img.copy()
    few[:, 30] = (250.0, 10.0, 10.0)  # one column of 64 (1.6 %): under LINE_MIN_SHARE
    assert F.line_variance(few) == 0.0
    few[:, [10, 50]] = (10.0, 250.0, 10.0)  # three (4.7 %) still under 5 %; four are lines
    assert F.line_variance(few) == 0.0
    few[:, 40] = (10.0, 10.0, 250.0)
    assert F.line_variance(few) > 0.0


def test_the_gate_keeps_a_restoration_that_removes_lines(monkeypatch):
    """The masking corruption's lines and a restoration that removed them: without the line term
    the gate read the crop as clean and gave the lines back (session 18: vline faces 15.1 dB by
    the method, 12.1 after the gate); with it the restoration is kept."""
    clean = _smooth_image(64, 64)
    lined = _with_vertical_lines(clean, 0.4)
    restored = clean + np.random.default_rng(1).normal(0, 2.0, clean.shape).astype(np.float32)
    kept = F.keep_input(restored, lined, 1.0, colour=False)
    assert _psnr(kept, clean) > _psnr(lined, clean) + 8.0
    monkeypatch.setattr(F, "line_variance", lambda region, mask=None: 0.0)
    refused = F.keep_input(restored, lined, 1.0, colour=False)
    assert _psnr(refused, clean) < _psnr(lined, clean) + 2.0


@pytest.mark.parametrize("low_band", ["global", "local"])
def test_detail_the_input_lacks_is_not_taken_from_the_restoration(low_band):
    """A blurred input (smooth, with a little sensor noise) and a restoration that invents fine
    texture: the input's fine band is weak, so the Wiener gain alone reads it as noise and would
    take the restoration's; the gate keeps only as much of that change as the input's fine-band
    noise explains (session 15: 80 px blurred faces came back 0.4 dB worse without it)."""
    clean = _smooth_image(128, 128)
    blurred = clean + np.random.default_rng(3).normal(0, 2.0, clean.shape).astype(np.float32)
    y, x = np.mgrid[0:128, 0:128]
    invented = (12 * np.sin(2 * np.pi * x / 3.1) * np.sin(2 * np.pi * y / 3.7))[..., None].astype(np.float32)
    restored = clean + invented
    mask = np.ones(clean.shape[:2], np.float32)
    kept = F.keep_input(restored, blurred, 2.0, 1.0, mask=mask, colour=False, low_band=low_band)
    off = F.keep_input(restored, blurred, 2.0, 1.0, mask=mask, colour=False, low_band="off")
    assert _psnr(kept, clean) > _psnr(off, clean) + 6
    assert _psnr(kept, clean) > _psnr(blurred, clean) - 1.0


def test_above_floor_subtracts_the_noise_free_reading_in_quadrature():
    assert F.above_floor(0.74) == 0.0 and F.above_floor(1.48) == 0.0  # the estimator's first readings
    assert F.above_floor(2.5) == pytest.approx(2.0)
    assert F.above_floor(20.0) == pytest.approx(np.sqrt(400.0 - F.NOISE_FLOOR**2))
    assert F.above_floor(3.0, 0.0) == 3.0
    with pytest.raises(ValueError, match="floor"):
        F.above_floor(3.0, -1.0)


def test_a_blurred_photo_is_kept_whole_when_only_the_round_trip_changed_it():
    # a blurred, textured 8-bit face region whose noise estimate is the estimator's floor (1.48),
    # and a "restoration" that is only its round trip through a 51 px frame: nothing to keep
    from scipy.ndimage import gaussian_filter

    from odedit.imageio import resize_to

    tex = np.random.default_rng(0).uniform(0, 255, (128, 128, 3))
    p = np.clip(np.round(gaussian_filter(tex, (2.5, 2.5, 0)) * 4 - 382), 0, 255).astype(np.uint8)
    assert 0.0 < F.noise_sigma(p) <= F.NOISE_FLOOR
    r = resize_to(resize_to(p, 51, 51), 128, 128).astype(np.float32)
    assert np.abs(r - p).mean() > 0.5  # the round trip does change it
    kept = F.keep_input(r, p, 128 / 51, 1.0, colour=False)
    assert np.array_equal(np.round(kept), p)
    raw = F.keep_input(r, p, 128 / 51, 1.0, colour=False, noise_floor=0.0)
    assert np.abs(np.round(raw) - p).max() >= 2  # without the floor the texture read as noise
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 12, p.shape), 0, 255).astype(np.uint8)
    denoised = F.keep_input(r, noisy, 128 / 51, 1.0, colour=False)  # real noise is still removed
    assert np.abs(denoised - p).mean() < 0.7 * np.abs(noisy.astype(np.float32) - p).mean()
