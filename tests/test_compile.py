"""torch.compile of the network (``--compile``): the same eps contract, the same results."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from odedit.models import compile_model

pytestmark = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on CPU needs a C++ compiler",
)


def test_compiled_model_keeps_the_contract_and_the_values(single_thread):
    from diffusers import UNet2DModel

    from odedit.models import UNetEps
    from odedit.schedule import NoiseSchedule

    torch.manual_seed(0)  # a one-block UNet: compiling the 16 px test UNet takes minutes on 2 cores
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                       down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), norm_num_groups=4)
    model = UNetEps(unet.eval().requires_grad_(False), NoiseSchedule.linear())
    fast = compile_model(model)
    assert fast.schedule is model.schedule and fast.sample_size == model.sample_size
    assert fast.in_channels == model.in_channels and fast.dtype == model.dtype
    g = torch.Generator().manual_seed(0)
    # one shape: each new shape compiles again (~60 s cold on 2 cores), and re-compiling for a new
    # batch size is torch.compile's own job (dynamic=None), not odedit's
    for t in (10, 700):
        x = torch.randn(2, 3, 8, 8, generator=g)
        with torch.no_grad():
            ref, out = model(x, t), fast(x, t)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max())
        assert not torch.equal(out, fast(x, t + 100))  # the timestep reaches the compiled network


def test_restore_cli_compile_flag_compiles_and_is_recorded(tiny_unet_dir, tmp_path, monkeypatch, single_thread):
    """The flag reaches compile_model and the sidecar (the compiled values are tested above;
    compiling again here would only cost CI minutes)."""
    import odedit.models
    from test_cli_restore import FAST, run_cli

    calls = []

    def spy(model):
        calls.append(model)
        return model

    monkeypatch.setattr(odedit.models, "compile_model", spy)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / "f.png")
    for flag in ([], ["--compile"]):
        out = tmp_path / f"out{len(flag)}"
        assert run_cli([str(src), "-o", str(out), "--model", str(tiny_unet_dir), *FAST, *flag]) == 0
        (run,) = json.loads((out / "restore.json").read_text())["runs"].values()
        assert run["compile"] is bool(flag)
        assert len(calls) == len(flag)
