"""The Gaussian base: its denoiser against the dense closed form, the PPCA fit against an exact
eigendecomposition, optimality on Gaussian data, files, the residual model and its loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

from odedit.gaussian import GaussianBase, fit_ppca, gaussian_eps

SHAPE = (3, 4, 4)  # D = 48: small enough for dense linear algebra in float64
D = math.prod(SHAPE)


def _random_ppca(k: int, seed: int = 0) -> GaussianBase:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    lam = torch.linspace(2.0, 0.05, k, dtype=torch.float64)
    mean = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    return GaussianBase(mean, U, lam, 0.01, SHAPE)  # float64: U exactly orthonormal


def _dense_cov(b: GaussianBase) -> torch.Tensor:
    U, lam = b.basis.double(), b.eigvals.double()
    return U @ torch.diag(lam) @ U.T + b.residual_var * (torch.eye(D, dtype=torch.float64) - U @ U.T)


@pytest.mark.parametrize("k", [1, 5, D])
@pytest.mark.parametrize("ab", [0.999, 0.5, 0.01])
def test_denoiser_equals_the_dense_posterior_mean(k, ab):
    b = _random_ppca(k)
    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    S = _dense_cov(b)
    sig2 = 1.0 - ab
    r = x.reshape(4, D) - math.sqrt(ab) * b.mean.double()
    want = math.sqrt(sig2) * torch.linalg.solve(ab * S + sig2 * torch.eye(D, dtype=torch.float64), r.T).T
    got = gaussian_eps(x, ab, b.mean.double(), b.basis.double(), b.eigvals.double(), b.residual_var)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.reshape(4, D), want, rtol=1e-9, atol=1e-9)
    # A per-sample alpha_bar (training) gives each row its own level.
    abs_ = torch.tensor([ab, 0.3, ab, 0.9], dtype=torch.float64)
    rows = gaussian_eps(x, abs_, b.mean.double(), b.basis.double(), b.eigvals.double(), b.residual_var)
    torch.testing.assert_close(rows[0], got[0])
    torch.testing.assert_close(rows[2], got[2])
    assert not torch.allclose(rows[1], got[1])


def test_denoiser_is_optimal_on_gaussian_data():
    """On samples of the Gaussian itself, the eps-MSE equals the posterior variance's trace,
    and any other linear rescaling of the estimate does worse."""
    b = _random_ppca(6)
    g = torch.Generator().manual_seed(2)
    n, ab = 20000, 0.3
    L = torch.linalg.cholesky(_dense_cov(b))
    x0 = b.mean.double() + torch.randn(n, D, generator=g, dtype=torch.float64) @ L.T
    eps = torch.randn(n, D, generator=g, dtype=torch.float64)
    xt = (math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps).reshape(n, *SHAPE)
    est = b.eps(xt.float(), ab).double().reshape(n, D)
    mse = (est - eps).square().sum(1).mean()
    # Posterior covariance of eps: I - sig2 (ab S + sig2 I)^-1; its trace is the least MSE.
    sig2 = 1 - ab
    post = torch.eye(D, dtype=torch.float64) - sig2 * torch.linalg.inv(ab * _dense_cov(b) + sig2 * torch.eye(D, dtype=torch.float64))
    assert float(mse) == pytest.approx(float(torch.trace(post)), rel=0.02)
    for scale in (0.9, 1.1):
        assert float((scale * est - eps).square().sum(1).mean()) > float(mse)


def test_fit_recovers_the_eigendecomposition():
    g = torch.Generator().manual_seed(3)
    truth = _random_ppca(8, seed=4)
    L = torch.linalg.cholesky(_dense_cov(truth))
    x = (truth.mean.double() + torch.randn(4000, D, generator=g, dtype=torch.float64) @ L.T).float()
    fit = fit_ppca(x.reshape(-1, *SHAPE), 8, generator=torch.Generator().manual_seed(0))
    C = torch.cov(x.double().T)
    evals, evecs = torch.linalg.eigh(C)
    evals, evecs = evals.flip(0), evecs.flip(1)
    torch.testing.assert_close(fit.eigvals.double(), evals[:8], rtol=1e-4, atol=1e-6)
    # Same subspace: the projector onto the fitted basis equals the exact one.
    P_fit = fit.basis.double() @ fit.basis.double().T
    P_true = evecs[:, :8] @ evecs[:, :8].T
    assert float((P_fit - P_true).abs().max()) < 1e-3
    assert fit.residual_var == pytest.approx(float(evals[8:].mean()), rel=1e-4)
    torch.testing.assert_close(fit.mean, x.mean(0), rtol=0, atol=1e-6)
    # Truncating moves the dropped variance into the rest, total variance preserved.
    t4 = fit.truncated(4)
    total = lambda b: float(b.eigvals.double().sum()) + b.residual_var * (D - b.rank)  # noqa: E731
    assert total(t4) == pytest.approx(total(fit), rel=1e-9)
    with pytest.raises(ValueError, match="rank"):
        fit_ppca(x.reshape(-1, *SHAPE), D, generator=None)


def test_save_load_round_trip_and_malformed_folders(tmp_path):
    b = _random_ppca(5)
    b.save(tmp_path / "g")
    c = GaussianBase.load(tmp_path / "g")
    assert c.shape == SHAPE and c.rank == 5 and c.residual_var == b.residual_var
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    # fp16 storage of the basis: the denoiser moves by far less than the noise it removes.
    assert float((c.eps(x, 0.5) - b.eps(x, 0.5)).abs().max()) < 2e-3
    (tmp_path / "g" / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="cannot read the Gaussian base"):
        GaussianBase.load(tmp_path / "g")
    b.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    cfg["shape"] = [3, 8, 8]
    (tmp_path / "h" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="inconsistent"):
        GaussianBase.load(tmp_path / "h")


def _tiny_folder(tmp_path, base):
    from odedit.training.base import zero_output_layer
    from odedit.unets import build_unet, save_model
    from odedit.models import write_checksums

    torch.manual_seed(0)
    unet = build_unet("tiny", sample_size=4)
    save_model(unet, tmp_path / "m")
    plain = tmp_path / "m"
    write_checksums(plain)
    zero_output_layer(unet)
    save_model(unet, tmp_path / "r")
    if base is not None:
        base.save(tmp_path / "r" / "gaussian")
    write_checksums(tmp_path / "r")
    return plain, tmp_path / "r"


def test_model_folders_with_a_base_load_as_gaussian_plus_residual(tmp_path):
    from odedit.models import GaussianResidualEps, ModelLoadError, UNetEps, load_model

    b = _random_ppca(5)
    plain, resid = _tiny_folder(tmp_path, b)
    assert isinstance(load_model(plain), UNetEps)  # plain diffusers folders load as before
    m = load_model(resid)
    assert isinstance(m, GaussianResidualEps) and m.sample_size == 4
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (0, 500, 999):  # zero residual: exactly the Gaussian's denoiser
            torch.testing.assert_close(m(x, t), m.base.eps(x, m.schedule.alpha_bar_at(t)))
    # The base is in the checksums: a changed base file is refused.
    f = resid / "gaussian" / "gaussian.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(resid)


def test_base_must_match_the_network(tmp_path):
    from odedit.models import ModelLoadError, load_model
    from odedit.models import write_checksums

    wrong = GaussianBase(torch.zeros(12), torch.eye(12)[:, :2], torch.ones(2), 0.1, (3, 2, 2))
    _, resid = _tiny_folder(tmp_path, wrong)
    write_checksums(resid)
    with pytest.raises(ModelLoadError, match="Gaussian base is for images"):
        load_model(resid)


def test_stored_precision_round_trips_bit_for_bit(tmp_path):
    b = _random_ppca(5).as_stored()
    b.save(tmp_path / "a")
    c = GaussianBase.load(tmp_path / "a")
    for name in ("mean", "basis", "eigvals"):
        assert torch.equal(getattr(b, name), getattr(c, name)), name
    c.save(tmp_path / "b")
    assert (tmp_path / "a" / "gaussian.safetensors").read_bytes() == (tmp_path / "b" / "gaussian.safetensors").read_bytes()
    # fp16 rounding leaves the basis orthonormal to ~1e-3 at this D (1e-5 at the faces' 12,288).
    eye = torch.eye(5, dtype=torch.float64)
    assert float((c.basis.double().T @ c.basis.double() - eye).abs().max()) < 2e-3


def test_ship_script_carries_the_base(tmp_path):
    """scripts/ship_default_model.py installs a residual prior with its Gaussian (else it would
    ship a bare residual network that loads as a plain eps model)."""
    import subprocess
    import sys
    from pathlib import Path

    from odedit.models import GaussianResidualEps, load_model

    _, resid = _tiny_folder(tmp_path, _random_ppca(5).as_stored())
    script = Path(__file__).resolve().parents[1] / "scripts" / "ship_default_model.py"
    r = subprocess.run([sys.executable, str(script), str(resid), "--dest", str(tmp_path / "shipped")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = load_model(tmp_path / "shipped")
    assert isinstance(m, GaussianResidualEps) and m.base.rank == 5
