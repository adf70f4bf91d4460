"""Tests of odedit.metrics: hand-computed values and independent reference formulas."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.stats
import torch

from odedit import metrics as M


def _images(n: int, seed: int, size: int = 64) -> np.ndarray:
    """Float32 (n, 3, size, size) in [0, 1]: smooth random fields plus a straight edge."""
    rng = np.random.default_rng(seed)
    x = scipy.ndimage.gaussian_filter(rng.standard_normal((n, 3, size, size)), sigma=(0, 0, 3, 3))
    x = x / x.std() * 0.15 + 0.5
    yy, xx = np.mgrid[:size, :size] - size / 2
    for i in range(n):
        a, b, c = rng.uniform(-1, 1, 3)
        x[i] += 0.2 * ((a * xx + b * yy) > 5 * c)
    return np.clip(x, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _images(12, seed=1)


# ---------------------------------------------------------------------------------- PSNR


def test_psnr_constant_offset_and_range():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    for d in (0.1, 0.01):
        p = M.psnr(x, x + d)
        assert p.dtype == torch.float64 and p.shape == (3,)
        assert torch.allclose(p, torch.full((3,), 20 * math.log10(1 / d), dtype=torch.float64), atol=1e-4)
    p255 = M.psnr(x * 255, x * 255 + 2.55, data_range=255)
    assert torch.allclose(p255, torch.full((3,), 40.0, dtype=torch.float64), atol=1e-4)
    assert torch.isinf(M.psnr(x, x)).all()
    assert M.psnr(x[0].numpy(), x[0].numpy() + 0.1).shape == (1,)  # numpy, single image


# ---------------------------------------------------------------------------------- SSIM


def _ssim_reference(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Straight loop over every 11x11 window of a (C, H, W) pair, weighted moments."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for c in range(x.shape[0]):
        vals = []
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                px, py = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def test_ssim_matches_loop_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 16, 18))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    got = M.ssim(torch.from_numpy(x), torch.from_numpy(y))
    ref = [_ssim_reference(x[i], y[i], 1.0) for i in range(2)]
    assert got.dtype == torch.float64 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    # data_range scales the constants: same value on the 0..255 scale
    np.testing.assert_allclose(M.ssim(x * 255, y * 255, data_range=255).numpy(), ref, rtol=1e-10)


def test_ssim_conv2d_path_matches(monkeypatch):
    x = torch.rand(3, 3, 20, 27, generator=torch.Generator().manual_seed(2))
    y = (x + 0.1 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    fast = M.ssim(x, y)
    monkeypatch.setattr(M.pixel, "_SSIM_SCIPY_ON_CPU", False)  # the path used on GPUs
    np.testing.assert_allclose(M.ssim(x, y).numpy(), fast.numpy(), rtol=1e-12)


def test_ssim_identity_symmetry_and_noise(faces):
    x = torch.from_numpy(faces[:4])
    assert torch.allclose(M.ssim(x, x), torch.ones(4, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.02, 0.05, 0.1, 0.2)]
    vals = [M.ssim(x, n).mean().item() for n in noisy]
    assert all(a > b for a, b in zip(vals, vals[1:])) and vals[0] < 1
    assert torch.allclose(M.ssim(x, noisy[1]), M.ssim(noisy[1], x), atol=1e-12)
    assert torch.allclose(M.ssim(x, noisy[1], chunk=1), M.ssim(x, noisy[1]), atol=1e-12)
    with pytest.raises(ValueError):
        M.ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_ssim_matches_skimage_if_installed():
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3, 20, 20))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    ref = skm.structural_similarity(x, y, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
    assert M.ssim(x, y).item() == pytest.approx(ref, abs=1e-8)


# ---------------------------------------------------------------------------------- Frechet


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    s = a @ a.T + np.eye(5)
    mu = rng.standard_normal(5)
    assert M.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # diagonal covariances
    va, vb = rng.uniform(0.1, 2, 4), rng.uniform(0.1, 2, 4)
    m1, m2 = np.zeros(4), np.array([1.0, -2.0, 0.5, 0.0])
    expect = np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2) + 1 + 4 + 0.25
    assert M.frechet_distance(m1, np.diag(va), m2, np.diag(vb)) == pytest.approx(expect, rel=1e-10)
    # 1-D, scalars: (m1-m2)^2 + (s1-s2)^2 with standard deviations s
    assert M.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4.0 + 1.0, rel=1e-12)
    # commuting: same eigenvectors
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    ea, eb = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    d = M.frechet_distance(np.zeros(6), q @ np.diag(ea) @ q.T, np.ones(6), q @ np.diag(eb) @ q.T)
    assert d == pytest.approx(6 + np.sum((np.sqrt(ea) - np.sqrt(eb)) ** 2), rel=1e-9)


def test_frechet_non_commuting_2d_and_methods():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    s1, s2 = a @ a.T + 0.1 * np.eye(2), b @ b.T + 0.1 * np.eye(2)
    # 2x2: Tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expect = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    for method in ("eigh", "sqrtm"):
        assert M.frechet_distance([0, 0], s1, [0, 0], s2, method=method) == pytest.approx(expect, rel=1e-8)
    # higher dimension, rank-deficient covariances (fewer samples than dims, as in small-set FID)
    f1, f2 = rng.standard_normal((20, 32)), rng.standard_normal((20, 32)) + 0.3
    (m1, c1), (m2, c2) = M.gaussian_stats(f1), M.gaussian_stats(torch.from_numpy(f2))
    np.testing.assert_allclose(c1, np.cov(f1, rowvar=False))
    d_eigh = M.frechet_distance(m1, c1, m2, c2)
    d_sqrtm = M.frechet_distance(m1, c1, m2, c2, method="sqrtm")
    assert math.isfinite(d_eigh) and d_eigh > 0
    assert d_eigh == pytest.approx(d_sqrtm, rel=1e-5)


# ---------------------------------------------------------------------------------- SWD


def test_laplacian_pyramid_matches_original_formulation():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    k2 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32)[None, None] / 256.0

    def down(t):
        return scipy.ndimage.convolve(t, k2, mode="mirror")[:, :, ::2, ::2]

    def up(t):
        r = np.zeros((t.shape[0], t.shape[1], 2 * t.shape[2], 2 * t.shape[3]), t.dtype)
        r[:, :, ::2, ::2] = t
        return scipy.ndimage.convolve(r, k2 * 4, mode="mirror")

    ref = [x]
    for _ in range(2):
        ref.append(down(ref[-1]))
        ref[-2] = ref[-2] - up(ref[-1])
    got = M.laplacian_pyramid(x, 3)
    assert [g.shape[2] for g in got] == [32, 16, 8]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, atol=1e-3)
    rec = got[-1]
    for level in got[-2::-1]:
        rec = up(rec) + level
    np.testing.assert_allclose(rec, x, atol=1e-3)


def test_patch_sampling_positions():
    n, c, h, w, k = 3, 2, 10, 12, 50
    idx = np.indices((n, c, h, w))
    level = (idx[0] * 1e6 + idx[1] * 1e4 + idx[2] * 100 + idx[3]).astype(np.float64)
    d = M.distribution._sample_patches(level, k, 7, np.random.default_rng(0))
    assert d.shape == (n * k, c, 7, 7)
    assert np.array_equal(d[:, 0, 0, 0] // 1e6, np.repeat(np.arange(n), k))
    np.testing.assert_array_equal(d - d[:, :, :1, :1], np.broadcast_to(idx[2, 0, 0, :7, :7] * 100 + idx[3, 0, 0, :7, :7], d.shape))
    ys, xs = (d[:, 0, 3, 3] % 1e4) // 100, d[:, 0, 3, 3] % 100
    assert ys.min() >= 3 and ys.max() <= h - 4 and xs.min() >= 3 and xs.max() <= w - 4


def test_swd_self_zero_symmetry_and_uint8(faces):
    da = M.laplacian_descriptors(faces, np.random.default_rng(0))
    assert da.resolutions == [64, 32, 16] and da.num_descriptors == 12 * 128
    assert da.levels[0].shape == (12 * 128, 3, 7, 7) and da.levels[0].dtype == np.float32
    same = M.laplacian_descriptors(faces, 0)  # int seed == Generator(0)
    r = M.swd_from_descriptors(da, same, 1)
    assert r["levels"] == [0.0, 0.0, 0.0] and r["mean"] == 0.0
    other = M.laplacian_descriptors(_images(12, seed=2), 0)
    ab, ba = M.swd_from_descriptors(da, other, 5), M.swd_from_descriptors(other, da, 5)
    np.testing.assert_allclose(ab["levels"], ba["levels"], rtol=1e-6)
    # uint8 (N, H, W, C) convenience: same descriptors (up to rounding) as float / 255
    u8 = np.round(faces * 255).astype(np.uint8)
    du = M.laplacian_descriptors(u8.transpose(0, 2, 3, 1), 0)
    dq = M.laplacian_descriptors(torch.from_numpy(u8.astype(np.float32) / 255), 0)
    for a, b in zip(du.levels, dq.levels):
        np.testing.assert_allclose(a, b, atol=1e-3)
    # batching and concat give the same descriptors when N is a multiple of batch_size
    rng = np.random.default_rng(0)
    joined = M.laplacian_descriptors(faces[:6], rng).concat(M.laplacian_descriptors(faces[6:], rng))
    for a, b in zip(M.laplacian_descriptors(faces, 0, batch_size=6).levels, joined.levels):
        np.testing.assert_array_equal(a, b)


def test_swd_grows_with_noise_and_blur(faces):
    ref = M.laplacian_descriptors(faces, 0)  # fixed reference set, computed once
    kw = dict(descriptors_per_image=128)
    g = np.random.default_rng(7)
    noise = g.standard_normal(faces.shape).astype(np.float32)
    by_noise = [M.swd(ref, np.clip(faces + s * noise, 0, 1), 1, **kw)["mean"] for s in (0.0, 0.02, 0.08, 0.3)]
    by_blur = [M.swd(ref, scipy.ndimage.gaussian_filter(faces, (0, 0, s, s)), 1, **kw)["mean"] for s in (0.7, 1.5, 4)]
    assert all(a < b for a, b in zip(by_noise, by_noise[1:])), by_noise
    assert all(a < b for a, b in zip(by_blur, by_blur[1:])), by_blur
    assert by_noise[-1] > 1.5 * by_noise[0]
    # per-set standardisation (as in the original): a global affine intensity change is invisible
    r = M.swd(faces, 0.5 * faces + 0.25, 3)
    r_same = M.swd(faces, faces, 3)
    np.testing.assert_allclose(r["levels"], r_same["levels"], rtol=1e-3)


def test_sliced_wasserstein_unequal_sizes():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(40), rng.standard_normal(25) + 0.5
    assert M.distribution._w1_sorted(np.sort(a), np.sort(b)) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)
    c = rng.standard_normal(40)
    assert M.distribution._w1_sorted(np.sort(a), np.sort(c)) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(c))), rel=1e-10)
    # 1-D points: every direction is +-1, so SWD is the plain W1
    d = M.sliced_wasserstein(a[:, None], b[:, None], 0, dirs=3, repeats=2)
    assert d == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-5)
    res = M.swd(_images(3, seed=4, size=32), _images(5, seed=5, size=32), 0, descriptors_per_image=16)
    assert len(res["levels"]) == 2 and all(v > 0 for v in res["levels"])


# ---------------------------------------------------------------------------------- network metrics


@pytest.fixture
def no_metric_packages(monkeypatch):
    for name in ("lpips", "pytorch_fid", "pytorch_fid.inception"):
        monkeypatch.setitem(sys.modules, name, None)  # makes import fail, find_spec -> None


def test_network_metrics_unavailable_when_packages_missing(no_metric_packages):
    avail = M.available_network_metrics()
    assert set(avail) == {"lpips", "fid"}
    assert "'lpips' is not installed" in avail["lpips"]
    assert "'pytorch-fid' is not installed" in avail["fid"]
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(M.MetricUnavailable) as e:
        M.lpips_distance(x, x)
    assert e.value.metric == "lpips" and "'lpips' is not installed" in e.value.reason
    with pytest.raises(M.MetricUnavailable) as e:
        M.fid(x, x)
    assert e.value.metric == "fid" and "'pytorch-fid' is not installed" in e.value.reason


def test_fid_unavailable_when_weights_not_cached(monkeypatch, tmp_path):
    for name in ("torchvision", "pytorch_fid"):  # importable stand-ins with a spec
        fake = types.ModuleType(name)
        fake.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, fake)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reason = M.available_network_metrics()["fid"]
    assert "not cached" in reason and "pt_inception-2015-12-05-6726825d.pth" in reason and str(tmp_path) in reason
    with pytest.raises(M.MetricUnavailable, match="allow_download"):
        M.fid_features(torch.rand(2, 3, 32, 32))


# ---------------------------------------------------------------------------------- summaries


def test_mean_and_stderr():
    m, s = M.mean_and_stderr([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    assert M.mean_and_stderr(torch.tensor([2.0, 4.0])) == (3.0, pytest.approx(1.0))
    m1, s1 = M.mean_and_stderr(np.array([5.0]))
    assert m1 == 5.0 and math.isnan(s1)
    with pytest.raises(ValueError):
        M.mean_and_stderr([])


def test_swd_threads_match_the_sequential_definition(faces):
    """Threaded levels x rounds give exactly the original's sequential loop, whatever the workers."""
    da = M.laplacian_descriptors(faces, 0)
    db = M.laplacian_descriptors(_images(12, seed=3), 1)
    rng = np.random.default_rng(9)
    expected = []
    for la, lb in zip(da.levels, db.levels):  # the original: per level, per round, fresh directions
        fa, fb = M.distribution._finalize(la), M.distribution._finalize(lb)
        rounds = []
        for _ in range(4):
            d = rng.standard_normal((fa.shape[1], 128))
            d = (d / np.sqrt(np.sum(d * d, axis=0, keepdims=True))).astype(np.float32)
            rounds.append(np.mean(np.abs(np.sort(fa @ d, axis=0).astype(np.float64) - np.sort(fb @ d, axis=0))))
        expected.append(1e3 * np.mean(rounds))
    for workers in (1, 3, None):
        r = M.swd_from_descriptors(da, db, np.random.default_rng(9), workers=workers)
        assert r["levels"] == pytest.approx(expected, rel=1e-12), workers
        assert r["mean"] == pytest.approx(np.mean(expected), rel=1e-12)
    a, b = M.distribution._finalize(da.levels[0]), M.distribution._finalize(db.levels[0])
    assert M.sliced_wasserstein(a, b, 2, workers=1) == M.sliced_wasserstein(a, b, 2, workers=4)
