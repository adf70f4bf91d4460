"""The prepared GPU-machine call (scripts/device_session.sh) end to end on the CPU.

A session with a GPU gets one ~10-minute call, so the script must not fail on a renamed flag
or a packing mistake. The first test runs every phase with the tiny UNet at 16x16 on
synthetic images (the probe, the resumed run with its linear cool-down, the scores of the new
and the baseline prior, the bench with both, restore timing in two dtypes), packs the prior in
several small parts, unpacks the results with scripts/device_unpack.sh (also with a part
missing) and installs the model with scripts/ship_default_model.py into a temporary folder.
The second one plans ten times more steps than the box holds: the deadline must stop the run
(SIGTERM), the model must still be exported and packed, and the script must report a planned
cut-off, not a failure. scripts/device_data.py's lossless packing of the training zip is
checked byte for byte.
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


def _session(tmp_path, baseline=None, **settings):
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
        WEIGHTS="", BASELINE=str(baseline or ""), TRAIN_BATCH="4", PROBE_STEPS="2", MAX_STEPS="5",
        TRAIN_EXTRA="--resolution 16 --workers 1", DENOISE_N="4", QUALITY_N="4", QUALITY_STEPS="2",
        QUALITY_BATCH="4", LIMIT="2", BENCH_BATCH="2", BENCH_EXTRA="--steps 3 --langevin-steps 1",
        TIMING_BATCHES="1", TIMING_EXTRA="--grids ddim:3 --sdedit-steps 3", AFTER_SECONDS="150",
        TOTAL_SECONDS="400", OMP_NUM_THREADS="1",
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


def test_device_session_dry_run(tmp_path, tiny_unet_dir):
    rc, log, out = _session(tmp_path, baseline=tiny_unet_dir, PART_SIZE="200K")
    assert rc == 0, log[-3000:]
    for phase in ("train-probe", "train", "denoising", "quality-new", "quality-base", "bench-new", "bench-base",
                  "timing-float32", "timing-bfloat16"):
        assert f"{phase}: ok" in log, log[-3000:]
    parts = sorted(out.glob("prior.tar.part-*"))
    assert len(parts) >= 2  # the tiny model in 200 KB parts: reassembly is exercised

    dest = tmp_path / "unpacked"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert un.returncode == 0, un.stderr
    assert "new: SWD x1e3 samples-val" in un.stdout and "base: SWD x1e3 samples-val" in un.stdout
    records = [json.loads(line) for line in (dest / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 5  # the probe's 2 steps, then resumed to MAX_STEPS
    config = json.loads((dest / "train_config.json").read_text())["config"]
    assert config["lr_schedule"] == "linear" and config["steps"] == 5 and config["decay_steps"] >= 1
    denoising = json.loads((dest / "scores" / "denoising.json").read_text())
    assert [m["model"] for m in denoising["models"]][1] == str(tiny_unet_dir)
    for which in ("new", "base"):
        quality = json.loads((dest / "scores" / f"quality_{which}" / "quality.json").read_text())
        assert quality["n"] == 4 and quality["swd_samples_val"]["mean"] >= 0
        bench = dest / f"bench_{which}"
        with open(bench / "results.csv", newline="") as fh:
            methods = {row["method"] for row in csv.DictReader(fh)}
        assert "source" in methods, methods  # and the default (fast) and the paper's light:
        assert all(any(m.startswith(p) for m in methods) for p in ("odedit-fast", "odedit-light")), methods
        for m in ("odedit-fast*", "odedit-light*"):  # the images and records benchmarks/aligned_gate_score.py reads
            assert len(list((bench / "images").glob(f"{m}/*.png"))) == 2
            assert len(list((bench / "records").glob(f"{m}/*.json"))) == 2
    for which in ("new", "base"):
        assert len(list((dest / f"bench_{which}" / "images" / "clean").glob("*.png"))) == 2
    for dtype in ("float32", "bfloat16"):
        rows = [r for r in (dest / "scores" / f"timing_{dtype}.md").read_text().splitlines() if r.startswith("| 1 |")]
        assert len(rows) == 3, rows  # ODEdit light, fast, SDEdit at batch 1

    # a lost part: the other results are still unpacked, and the failure is reported
    parts[-1].unlink()
    dest2 = tmp_path / "partial"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest2)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert un.returncode == 1 and "prior archive" in un.stderr
    assert (dest2 / "bench_new" / "summary.md").is_file() and (dest2 / "scores" / "denoising.json").is_file()

    ship = subprocess.run([sys.executable, "scripts/ship_default_model.py", str(dest / "model"), "--dest",
                           str(tmp_path / "shipped")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert ship.returncode == 0, ship.stderr
    from odedit.models import load_local

    model = load_local(tmp_path / "shipped")
    assert model.sample_size == 16


def test_device_session_deadline_stops_training_and_keeps_the_model(tmp_path):
    # ten times the steps the box holds and no --minutes stop of its own before the box's end:
    # the resumed run must be stopped by the deadline (SIGTERM)
    rc, log, out = _session(tmp_path, MAX_STEPS="0", FILL_PERCENT="1000", TOTAL_SECONDS="200", AFTER_SECONDS="100",
                            TRAIN_EXTRA="--resolution 16 --workers 1 --minutes 10")
    assert "phase 1b" in log and "train: cut off by the deadline" in log, log[-3000:]
    assert rc == 0 and "FAILED" not in log, log[-3000:]
    assert sorted(out.glob("prior.tar.part-*")), log[-3000:]
    dest = tmp_path / "unpacked"
    un = subprocess.run(["bash", "scripts/device_unpack.sh", str(out), str(dest)], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert (dest / "model" / "unet").is_dir(), un.stderr
    records = [json.loads(line) for line in (dest / "log.jsonl").read_text().splitlines()]
    config = json.loads((dest / "train_config.json").read_text())["config"]
    assert 2 < records[-1]["step"] < config["steps"]  # past the probe, short of the planned steps


def test_device_data_pack_round_trip_is_byte_identical(tmp_path):
    data = tmp_path / "faces.zip"
    _zip_of_faces(data, 5, 0)
    with zipfile.ZipFile(data, "a") as zf:  # a file whose header differs is stored whole
        zf.writestr("zzz.png", b"not a jpeg at all")
    jpegs = tmp_path / "jpegs.zip"  # the real data are JPEGs sharing one header
    with zipfile.ZipFile(jpegs, "w") as zf:
        for i in range(4):
            from io import BytesIO

            buf = BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buf, format="JPEG", quality=90)
            zf.writestr(f"{i:03d}.jpg", buf.getvalue())
        zf.writestr("odd.bin", b"\xff\xd8 broken")
    for src in (data, jpegs):
        packed, back = tmp_path / f"{src.stem}.jpgs", tmp_path / f"{src.stem}_back.zip"
        for cmd, a, b in (("pack", src, packed), ("unpack", packed, back)):
            run = subprocess.run([sys.executable, "scripts/device_data.py", cmd, str(a), str(b)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
        with zipfile.ZipFile(src) as za, zipfile.ZipFile(back) as zb:
            assert sorted(za.namelist()) == zb.namelist()
            assert all(za.read(n) == zb.read(n) for n in zb.namelist())
    assert packed.stat().st_size < jpegs.stat().st_size  # the shared JPEG header is stored once
    blob = bytearray(packed.read_bytes())
    blob[-1] ^= 0xFF  # damage: the digest check refuses it, and no zip is left behind
    packed.write_bytes(bytes(blob))
    run = subprocess.run([sys.executable, "scripts/device_data.py", "unpack", str(packed), str(tmp_path / "bad.zip")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "digest" in run.stderr and not (tmp_path / "bad.zip").exists()


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
