"""The prepared GPU-machine call (scripts/device_session.sh) end to end on the CPU.

A future session with a GPU gets one ~10-minute call, so the script must not fail on a
renamed flag or a packing mistake. The first test runs every phase with the tiny UNet at
16x16 on synthetic images (train a few steps, sample-quality figures, the three bench
stages), packs the prior in several small parts, unpacks the results with
scripts/device_unpack.sh (also with a part missing) and installs the model with
scripts/ship_default_model.py into a temporary folder. The second one gives training more
minutes than the deadline allows: the deadline must stop it (SIGTERM), the model must still
be exported and packed, and the script must report a planned cut-off, not a failure.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")


def _zip_of_faces(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            c = rng.uniform(0, 1, 3)
            m = np.exp(-((xx - 0.5) ** 2 + (yy - rng.uniform(0.4, 0.6)) ** 2) / 0.05)[..., None]
            img = ((m * c + (1 - m) * (1 - c)) * 255).astype(np.uint8)
            from io import BytesIO

            buf = BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            zf.writestr(f"{i:06d}.png", buf.getvalue())


def _session(tmp_path, **settings):
    """Run scripts/device_session.sh on synthetic data; returns (exit status, log, OUT)."""
    data = tmp_path / "data"
    data.mkdir()
    _zip_of_faces(data / "train.zip", 24, 0)
    _zip_of_faces(data / "val.zip", 6, 1)
    out = tmp_path / "OUT"
    out.mkdir()
    env = dict(
        os.environ,
        OUT=str(out), DATA=str(data), PYTHON=sys.executable, SKIP_WHEELS="1", DEVICE="cpu", CONFIG="tiny",
        TRAIN_MINUTES="5", TRAIN_BATCH="4", TRAIN_EXTRA="--steps 3 --resolution 16 --workers 1",
        QUALITY_N="4", QUALITY_STEPS="2", QUALITY_BATCH="4", LIMIT="2", BENCH_BATCH="2",
        BENCH_EXTRA="--steps 3 --langevin-steps 1", TOTAL_SECONDS="400", OMP_NUM_THREADS="1",
    )
    env.update(settings)
    run = subprocess.run(["bash", "scripts/device_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    log = (out / "session.log").read_text() if (out / "session.log").exists() else ""
    assert "done:" in log, (run.stdout + run.stderr)[-3000:]  # the log is complete (tee flushed)
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8, names  # the device returns at most 8 files
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    return run.returncode, log, out


def test_device_session_dry_run(tmp_path):
    rc, log, out = _session(tmp_path, PART_SIZE="200K")
    assert rc == 0, log[-3000:]
    for phase in ("train", "quality", "bench-stage-1", "bench-stage-2", "bench-stage-3"):
        assert f"{phase}: ok" in log, log[-3000:]
    parts = sorted(out.glob("prior.tar.part-*"))
    assert len(parts) >= 2  # the tiny model in 200 KB parts: reassembly is exercised

    dest = tmp_path / "unpacked"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert un.returncode == 0, un.stderr
    assert "SWD x1e3 samples-val" in un.stdout
    quality = json.loads((dest / "quality" / "quality.json").read_text())
    assert quality["n"] == 4 and quality["swd_train_val"]["mean"] >= 0 and quality["swd_samples_val"]["mean"] >= 0
    assert (dest / "quality" / "samples.png").is_file()
    summary = (dest / "bench" / "summary.md").read_text()
    with open(dest / "bench" / "results.csv", newline="") as fh:
        methods = {row["method"] for row in csv.DictReader(fh)}
    # stage 3 (ablations) reached the tables: the no-Langevin ablation and NFE-matched SDEdit
    assert any(m.startswith("odedit-nolangevin") for m in methods), methods
    assert any("-nfe" in m for m in methods), methods
    assert "source" in methods and "odedit-nolangevin" in summary.replace("`", "")

    # a lost part: the other results are still unpacked, and the failure is reported
    parts[-1].unlink()
    dest2 = tmp_path / "partial"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest2)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert un.returncode == 1 and "prior archive" in un.stderr
    assert (dest2 / "bench" / "summary.md").is_file() and (dest2 / "quality" / "quality.json").is_file()

    ship = subprocess.run([sys.executable, "scripts/ship_default_model.py", str(dest / "model"), "--dest",
                           str(tmp_path / "shipped")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert ship.returncode == 0, ship.stderr
    from odedit.models import load_local

    model = load_local(tmp_path / "shipped")
    assert model.sample_size == 16


def test_device_session_deadline_stops_training_and_keeps_the_model(tmp_path):
    # 10 minutes of training asked for, 175 s in all: phase 1 gets about 175 - 150 - start-up = 20 s
    rc, log, out = _session(tmp_path, TRAIN_MINUTES="10", TRAIN_EXTRA="--resolution 16 --workers 1",
                            TOTAL_SECONDS="175")
    assert "train: cut off by the deadline" in log, log[-3000:]
    assert rc == 0 and "FAILED" not in log, log[-3000:]
    assert sorted(out.glob("prior.tar.part-*")), log[-3000:]
    dest = tmp_path / "unpacked"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert (dest / "model" / "unet").is_dir(), un.stderr
    info = json.loads((dest / "train_config.json").read_text())
    assert info  # the run's resolved configuration came back with the weights


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA refusal")
def test_device_session_refuses_to_train_on_the_cpu_by_mistake(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, SKIP_WHEELS="1", DEVICE="cuda",
               DATA=str(tmp_path / "nothing"))
    run = subprocess.run(["bash", "scripts/device_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    log = (out / "session.log").read_text()
    assert run.returncode == 1 and "no CUDA device" in log and "preflight" in log, log
    assert "phase 1" not in log
