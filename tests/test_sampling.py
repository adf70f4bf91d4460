"""DDIM sampling (odedit.sampling) and the ``odedit sample`` CLI, with a tiny random UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from odedit.models import default_model_available, load_model
from odedit.rng import generators_for
from odedit.sampling import ddim_sample, grid_image, sample_chunks, to_uint8


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def tiny_model(tiny_unet_dir):
    return tiny_unet_dir


def test_samples_depend_only_on_their_seed(tiny_model):
    model = load_model(tiny_model)
    all_at_once = ddim_sample(model, generators_for([0, 1, 2], "cpu"), steps=4)
    assert all_at_once.shape == (3, 3, 16, 16) and all_at_once.dtype == torch.float32
    assert float(all_at_once.abs().max()) <= 1.0
    one_by_one = ddim_sample(model, generators_for([0, 1, 2], "cpu"), steps=4, batch_size=1)
    assert torch.allclose(all_at_once, one_by_one, atol=1e-4)  # batched convs round differently
    other = ddim_sample(model, generators_for([5], "cpu"), steps=4)
    assert not torch.allclose(other[0], all_at_once[0])
    calls = []
    ddim_sample(model, generators_for([0, 1], "cpu"), steps=3, callback=calls.append)
    assert calls == [2, 2, 2]
    assert grid_image(all_at_once, ncols=3).shape == (16 + 4, 3 * 18 + 2, 3)


def test_sample_chunks_are_the_seeds_samples_in_batches(tiny_model):
    model = load_model(tiny_model)
    chunks = list(sample_chunks(model, [0, 1, 2], steps=3, batch_size=2))
    assert [c.shape for c in chunks] == [(2, 16, 16, 3), (1, 16, 16, 3)] and chunks[0].dtype == np.uint8
    whole = to_uint8(ddim_sample(model, generators_for([0, 1, 2], "cpu"), steps=3))
    assert np.abs(np.concatenate(chunks).astype(int) - whole).max() <= 1  # rounding of batched convs
    with pytest.raises(ValueError, match="batch_size"):
        next(sample_chunks(model, [0], batch_size=0))


def cli(argv):
    from odedit.cli import main

    return main(argv)


def test_sample_cli_writes_grid_and_individual_files(tiny_model, tmp_path):
    grid = tmp_path / "out" / "grid.png"
    ind = tmp_path / "each"
    argv = ["sample", "--model", str(tiny_model), "-n", "5", "-o", str(grid), "--steps", "3", "--quiet"]
    assert cli([*argv, "--batch-size", "2", "--individual", str(ind), "--device", "cpu"]) == 0
    img = np.asarray(Image.open(grid))
    assert img.shape == (2 * 18 + 2, 3 * 18 + 2, 3)  # 5 samples -> 3 columns x 2 rows, 2-px padding
    files = sorted(p.name for p in ind.iterdir())
    assert files == [f"sample_{i:04d}.png" for i in range(5)]
    # Batch size does not change the samples.
    grid2 = tmp_path / "grid2.png"
    assert cli([*argv[:5], "-o", str(grid2), "--steps", "3", "--quiet", "--batch-size", "5", "--ncols", "5"]) == 0
    first = np.asarray(Image.open(grid2))[2:18, 2:18]
    assert np.abs(first.astype(int) - np.asarray(Image.open(ind / "sample_0000.png")).astype(int)).max() <= 1


def test_sample_cli_errors(tiny_model, tmp_path, capsys):
    assert cli(["sample", "--model", str(tiny_model), "-o", str(tmp_path / "g.jpg"), "--quiet"]) == 2
    assert ".png" in capsys.readouterr().err
    assert cli(["sample", "--model", str(tmp_path / "nope" / "x" / "y"), "-o", str(tmp_path / "g.png")]) == 2
    assert "model" in capsys.readouterr().err
    if not default_model_available():
        assert cli(["sample", "-n", "1", "-o", str(tmp_path / "g.png"), "--quiet"]) == 2
        assert "ships no embedded default" in capsys.readouterr().err
