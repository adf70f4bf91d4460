"""The embedded default prior as shipped: fp16 safetensors, checksummed, <= 45 MB, loads, works."""

from __future__ import annotations

import json

import pytest
import torch

from odedit import models

pytestmark = pytest.mark.skipif(not models.default_model_available(), reason="no embedded prior in this checkout")


def test_shipped_files_are_fp16_checksummed_and_small():
    from safetensors import safe_open

    root = models.DEFAULT_MODEL_DIR
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 45 * 2**20
    sums = json.loads((root / models.CHECKSUM_FILE).read_text())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {models.CHECKSUM_FILE}
    assert set(sums) == files  # every shipped file is covered
    models.verify_checksums(root)
    weights = [p for p in root.rglob("*.safetensors") if p.parent.name != "gaussian"]
    assert weights
    for w in weights:
        with safe_open(str(w), framework="pt") as fh:
            assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    gauss = root / "gaussian" / "gaussian.safetensors"
    if gauss.is_file():  # the Gaussian base: its basis (the bulk) in fp16, mean and eigenvalues float32
        with safe_open(str(gauss), framework="pt") as fh:
            assert fh.get_tensor("basis").dtype == torch.float16
    info = json.loads((root / "odedit_train.json").read_text())
    assert info["weights"] in ("ema", "raw") and info["images_seen"] > 0


def test_default_prior_loads_and_predicts_finite_eps():
    model = models.load_model(None)
    assert model.sample_size == 64 and model.prediction_type == "epsilon"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps = model(x, 500)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    # on pure noise at the top level a trained prior predicts (nearly) the noise itself
    with torch.no_grad():
        top = model(x, 999)
    assert float((top - x).square().mean()) < 0.1
