"""Tests of ``odedit bench`` with a tiny random UNet and synthetic faces (CPU, no network)."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import threading
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from odedit import bench as B
from odedit import metrics as M
from odedit.cli import bench as bench_cli
from odedit.cli.common import CLIError
from odedit.corruptions import choose_corruption, corrupt
from odedit.imageio import fit_square, load_image_uint8
from odedit.restorers import DEFAULT_STEP_SIZE
from odedit.unets import build_unet, save_model

N_IMAGES = 6
SIZE = 16
FAST = ["--steps", "6", "--presets", "light", "--langevin-steps", "2", "--device", "cpu", "--quiet"]
EPS = f"eps{DEFAULT_STEP_SIZE:g}"  # the library's default step size, not the paper's: the names carry it
ODEDIT = f"odedit-light-steps6-k2-{EPS}"  # 2 * 6 + 4 levels * 2 = 20 model calls
SDEDIT = "sdedit-0.5-steps6"
UNAVAILABLE = {"lpips": "disabled in the tests (no weights)", "fid": "disabled in the tests (no weights)"}
ID_UNAVAILABLE = "disabled in the tests (see test_identity_column_when_the_extra_is_installed)"


def _no_network_metrics(mp) -> None:
    mp.setattr(M, "available_network_metrics", lambda: dict(UNAVAILABLE))
    mp.setattr(M, "identity_unavailable", lambda: ID_UNAVAILABLE)  # the optional dlib identity metric


@pytest.fixture(autouse=True)
def no_network_metrics(monkeypatch):
    _no_network_metrics(monkeypatch)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 16-px batches run faster on one thread, and the CPUs are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _face(i: int) -> np.ndarray:
    """A smooth 24x20 'face': skin-toned ellipse, two eyes, a mouth, a gradient background."""
    h, w = 24, 20
    yy, xx = np.mgrid[:h, :w].astype(float)
    img = np.stack([40 + 6 * i + 4 * yy, 60 + 3 * xx, np.full((h, w), 120.0 - 5 * i)], axis=-1)
    face = ((yy - 12) / 9) ** 2 + ((xx - 10) / 7) ** 2 < 1
    img[face] = [200 - 5 * i, 160, 130 + 4 * i]
    for ex in (7, 13):
        img[(yy - 10) ** 2 + (xx - ex) ** 2 < 2] = [30, 30, 40]
    img[(np.abs(yy - 16) < 1) & (np.abs(xx - 10) < 3)] = [150, 40, 50]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(build_unet("tiny", SIZE), path)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """The synthetic faces as a folder of PNGs and as a zip of the same files."""
    root = tmp_path_factory.mktemp("faces")
    folder = root / "png"
    folder.mkdir()
    with zipfile.ZipFile(root / "faces.zip", "w", zipfile.ZIP_STORED) as zf:
        for i in range(N_IMAGES):
            path = folder / f"{162771 + i:06d}.png"
            Image.fromarray(_face(i)).save(path)
            zf.write(path, arcname=path.name)
    return {"folder": folder, "zip": root / "faces.zip"}


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bench_cli.add_parser(sub)
    return parser.parse_args(["bench", *argv])


def run_bench(argv, monkeypatch=None):
    """Run the CLI; returns the BenchStats of the (single) process."""
    captured = {}
    real = B.run_benchmark

    def spy(settings, ctx=None):
        captured["stats"] = real(settings, ctx)
        return captured["stats"]

    mp = monkeypatch or pytest.MonkeyPatch()
    mp.setattr(B, "run_benchmark", spy)
    try:
        args = parse(argv)
        assert args.run(args) == 0
    finally:
        if monkeypatch is None:
            mp.undo()
    return captured["stats"]


def read_results(out):
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full_run(tiny_model, faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    argv = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out),
            "--methods", "source,odedit,sdedit", *FAST]
    with pytest.MonkeyPatch.context() as mp:
        _no_network_metrics(mp)
        stats = run_bench(argv, mp)
    return {"out": out, "argv": argv, "stats": stats}


# ---- the main run ----------------------------------------------------------------------------------


def test_results_csv_has_every_image_method_metric(full_run):
    out, stats = full_run["out"], full_run["stats"]
    assert stats.images == N_IMAGES and stats.processed == 3 * N_IMAGES and stats.skipped == 0
    assert stats.methods == ["source", ODEDIT, SDEDIT]
    rows = read_results(out)
    assert list(rows[0]) == ["image", "corruption", "method", "metric", "value"]
    per_image = Counter((r["image"], r["method"], r["metric"]) for r in rows if r["image"] != "*")
    keys = [f"{162771 + i:06d}" for i in range(N_IMAGES)]
    for k in keys:
        for m in stats.methods:
            for metric in ("psnr", "ssim", "nfe", "seconds"):
                assert per_image[(k, m, metric)] == 1, (k, m, metric)
    assert not any(r["metric"] == "lpips" for r in rows)  # unavailable: not invented
    set_rows = {(r["method"], r["metric"]): float(r["value"]) for r in rows if r["image"] == "*"}
    for m in stats.methods:
        assert np.isfinite(set_rows[(m, "swd")]) and (m, f"swd_{SIZE}") in set_rows
    nfe = {r["method"]: int(r["value"]) for r in rows if r["metric"] == "nfe"}
    assert nfe == {"source": 0, ODEDIT: 20, SDEDIT: 3}
    # the corruption column agrees with the manifest of the degraded set
    with open(out / "images" / "degraded" / "manifest.csv", newline="") as fh:
        manifest = {r["file"][:-4]: r for r in csv.DictReader(fh)}
    assert sorted(manifest) == keys
    for r in rows:
        if r["image"] != "*":
            assert r["corruption"] == manifest[r["image"]]["corruption"]
            assert manifest[r["image"]]["severity"] == "4"


def test_source_psnr_is_psnr_of_clean_vs_degraded_reproduced_independently(full_run, faces):
    out = full_run["out"]
    rows = read_results(out)
    with open(out / "images" / "degraded" / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    for entry in manifest:
        key = entry["file"][:-4]
        clean = fit_square(load_image_uint8(faces["folder"] / f"{key}.png"), SIZE, "stretch")
        # reproducible from the seed and the file name alone
        assert int(entry["seed"]) == B.corruption_seed(0, key)
        name = choose_corruption(np.random.default_rng(B.corruption_choice_seed(0, key)))
        assert name == entry["corruption"]
        degraded = corrupt(clean, name, 4, np.random.default_rng(int(entry["seed"])))
        np.testing.assert_array_equal(degraded, load_image_uint8(out / "images" / "degraded" / f"{key}.png"))
        to_unit = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1)[None].double() / 255  # noqa: E731
        expected_psnr = float(M.psnr(to_unit(degraded), to_unit(clean))[0])
        expected_ssim = float(M.ssim(to_unit(degraded), to_unit(clean))[0])
        got = {r["metric"]: float(r["value"]) for r in rows if r["image"] == key and r["method"] == "source"}
        assert got["psnr"] == pytest.approx(expected_psnr, rel=1e-12)
        assert got["ssim"] == pytest.approx(expected_ssim, rel=1e-12)


def test_degraded_set_is_what_odedit_corrupt_makes_of_the_clean_set(full_run, tmp_path):
    """Same seeds as `odedit corrupt --corruption random`: the two commands agree."""
    from odedit.cli import corrupt as corrupt_cli

    parser = argparse.ArgumentParser()
    corrupt_cli.add_parser(parser.add_subparsers())
    out = full_run["out"]
    args = parser.parse_args(["corrupt", str(out / "images" / "clean"), "-o", str(tmp_path), "--corruption",
                              "random", "--severity", "4", "--seed", "0"])
    assert args.run(args) == 0
    for p in sorted((out / "images" / "clean").glob("*.png")):
        np.testing.assert_array_equal(load_image_uint8(tmp_path / p.name),
                                      load_image_uint8(out / "images" / "degraded" / p.name))
    assert (tmp_path / "manifest.csv").read_text() == (out / "images" / "degraded" / "manifest.csv").read_text()


def test_summary_table_with_na_reasons(full_run):
    text = (full_run["out"] / "summary.md").read_text()
    assert "| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | SWD ↓ | FID ↓ | NFE / image | s / image |" in text
    for m in ("source", ODEDIT, SDEDIT):
        line = next(line for line in text.splitlines() if line.startswith(f"| {m} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == "n/a" and cells[5] == "n/a"  # LPIPS, FID
        assert "±" in cells[1] and "±" in cells[2]  # mean ± stderr
    assert f"LPIPS n/a: {UNAVAILABLE['lpips']}" in text
    assert f"FID n/a: {UNAVAILABLE['fid']}" in text
    assert f"ID (identity similarity) not measured: {ID_UNAVAILABLE}" in text  # a note, no column
    assert "ID ↑" not in text
    assert "identity" not in {r["metric"] for r in read_results(full_run["out"])}
    assert full_run["stats"].summary["unavailable"]["identity"] == ID_UNAVAILABLE
    assert "## Per corruption: PSNR" in text and "## Per corruption: SSIM" in text
    assert "the clean images of this benchmark" in text  # which reference was used


def test_identity_column_when_the_extra_is_installed(tmp_path, monkeypatch, faces, tiny_model):
    """With dlib and face-recognition-models installed, the table gains an ID column (mean
    cosine similarity of dlib descriptors to the clean face), results.csv an identity row per
    image and method, and a per-corruption ID table; values are cached by content."""
    pytest.importorskip("dlib")
    from odedit.metrics import identity

    if identity.identity_unavailable():
        pytest.skip(identity.identity_unavailable())
    monkeypatch.setattr(M, "identity_unavailable", identity.identity_unavailable)
    out = tmp_path / "out"
    argv = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--methods", "source,sdedit",
            "--strengths", "0.5", *FAST]
    stats = run_bench(argv, monkeypatch)
    text = (out / "summary.md").read_text()
    assert "| method | PSNR ↑ | SSIM ↑ | LPIPS ↓ | ID ↑ | SWD ↓ | FID ↓ | NFE / image | s / image |" in text
    assert "not measured" not in text and "## Per corruption: ID ↑" in text
    rows = [r for r in read_results(out) if r["metric"] == "identity"]
    assert len(rows) == 2 * N_IMAGES
    for name in ("source", SDEDIT):
        vals = [float(r["value"]) for r in rows if r["method"] == name]
        assert all(-1 <= v <= 1 for v in vals)
        mean, _ = stats.summary["methods"][name]["identity"]
        assert mean == pytest.approx(np.mean(vals))
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert f"{mean:.3f} ±" in line.split("|")[5]
    # the source's value is the metric itself on the saved images
    keys = sorted(p.stem for p in faces["folder"].iterdir())
    clean = np.stack([load_image_uint8(out / "images" / "clean" / f"{k}.png") for k in keys])
    deg = np.stack([load_image_uint8(out / "images" / "degraded" / f"{k}.png") for k in keys])
    np.testing.assert_allclose([float(r["value"]) for r in rows if r["method"] == "source"],
                               identity.identity_similarity(deg, clean), rtol=0, atol=1e-15)
    # a rerun (tables only) reads the cached values and computes nothing
    assert len(list((out / "records" / "_identity").glob("*.json"))) == 2
    monkeypatch.setattr(M, "identity_scores", lambda *a, **k: pytest.fail("recomputed a cached set"))
    before = read_results(out)
    run_bench(argv, monkeypatch)
    assert read_results(out) == before


def test_grid_has_one_row_per_method_plus_degraded_and_clean(full_run):
    grid = np.asarray(Image.open(full_run["out"] / "grid.png"))
    rows = 4  # degraded, odedit, sdedit, clean (source = degraded is not repeated)
    assert grid.shape[0] == rows * (SIZE + 2) + 2
    assert grid.shape[1] >= N_IMAGES * (SIZE + 2) + 2
    # the last tile of the top row is the last degraded image
    deg = load_image_uint8(full_run["out"] / "images" / "degraded" / f"{162771 + N_IMAGES - 1:06d}.png")
    right = grid.shape[1] - 2
    np.testing.assert_array_equal(grid[2 : 2 + SIZE, right - SIZE : right], deg)


def test_bench_json_records_settings_seeds_model_command_time(full_run, tiny_model):
    meta = json.loads((full_run["out"] / "bench.json").read_text())
    assert meta["settings"]["seed"] == 0 and meta["settings"]["severity"] == 4
    assert meta["settings"]["model"] == str(tiny_model.resolve())
    assert len(meta["settings"]["model_sha256"]) == 64
    assert meta["image_size"] == SIZE
    assert "base_seed" in meta["seeds"]
    assert meta["methods"][ODEDIT]["config"]["langevin_steps"] == 2
    run = meta["runs"][-1]
    assert run["status"] == "complete" and run["wall_seconds"] > 0 and isinstance(run["command"], list)
    rec = json.loads((full_run["out"] / "records" / ODEDIT / "162771.json").read_text())
    assert rec["seed"] == B.restore_seed(0, "162771") and rec["nfe"] == 20 and rec["seconds"] >= 0


def test_bench_images_equal_odedit_restore_of_the_degraded_folder(full_run, tiny_model, tmp_path):
    """Sample 0 uses `odedit restore`'s per-file seed: the two commands agree. The bench measures
    the method itself, so restore's crop gate and colour match are off here."""
    from odedit.cli import restore as restore_cli

    parser = argparse.ArgumentParser()
    restore_cli.add_parser(parser.add_subparsers())
    deg = full_run["out"] / "images" / "degraded"
    args = parser.parse_args(["restore", str(deg), "-o", str(tmp_path), "--model", str(tiny_model),
                              "--steps", "6", "--preset", "light", "--langevin-steps", "2", "--device", "cpu",
                              "--quiet", "--batch-size", "16", "--fidelity", "0", "--no-match-colour"])
    assert args.run(args) == 0
    for p in sorted(deg.glob("*.png")):
        a = load_image_uint8(tmp_path / p.name).astype(int)
        b = load_image_uint8(full_run["out"] / "images" / ODEDIT / p.name).astype(int)
        assert np.abs(a - b).max() <= 1


# ---- resume, mismatch, limit, zip, manifest ------------------------------------------------


def test_resume_skips_finished_images_and_redoes_missing_ones(full_run, monkeypatch):
    out = full_run["out"]
    pngs = sorted((out / "images" / ODEDIT).glob("*.png"))
    mtimes = {p: p.stat().st_mtime_ns for p in pngs}
    stats = run_bench(full_run["argv"], monkeypatch)
    assert stats.processed == 0 and stats.skipped == 3 * N_IMAGES
    assert {p: p.stat().st_mtime_ns for p in pngs} == mtimes
    # a lost record (interrupted run) is recomputed, nothing else
    (out / "records" / SDEDIT / "162773.json").unlink()
    stats = run_bench(full_run["argv"], monkeypatch)
    assert stats.processed == 1 and stats.skipped == 3 * N_IMAGES - 1
    assert {p: p.stat().st_mtime_ns for p in pngs} == mtimes


def test_compile_flag_compiles_is_recorded_and_keeps_resuming(full_run, monkeypatch):
    """--compile changes speed, not results (tests/test_compile.py): a folder made without it
    resumes with it, and bench.json records which run compiled."""
    import odedit.models

    calls = []
    monkeypatch.setattr(odedit.models, "compile_model", lambda m: calls.append(m) or m)
    stats = run_bench([*full_run["argv"], "--compile"], monkeypatch)
    assert len(calls) == 1 and stats.processed == 0
    runs = json.loads((full_run["out"] / "bench.json").read_text())["runs"]
    assert runs[-1]["compile"] is True and runs[0]["compile"] is False


def _stop_on_second_batch(monkeypatch, exc: BaseException) -> None:
    """Make the benchmark's second restoration batch raise ``exc`` (as Ctrl-C or a crash would)."""
    real, calls = B.protocol._restore_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(B.protocol, "_restore_batch", flaky)


def test_interrupted_run_is_recorded_as_such_and_resumes(tiny_model, faces, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM, below) mid-run: the finished batch is kept, bench.json says the run
    was interrupted after how long and how much, and the next run computes only the rest."""
    out = tmp_path / "o"
    argv = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--methods", "odedit",
            "--limit", "4", "--batch-size", "2", *FAST]
    with monkeypatch.context() as mp:
        _stop_on_second_batch(mp, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            run_bench(argv, mp)
    run = json.loads((out / "bench.json").read_text())["runs"][-1]
    assert run["status"] == "interrupted" and run["wall_seconds"] > 0
    assert run["processed_by_main_process"] == 2 and run["skipped_by_main_process"] == 0
    assert sorted(p.stem for p in (out / "records" / ODEDIT).glob("*.json")) == ["162771", "162772"]
    assert not (out / "summary.md").exists()  # no table of a half-done run
    stats = run_bench(argv, monkeypatch)
    assert stats.processed == 2 and stats.skipped == 2
    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "complete"]


def test_failed_run_is_recorded_with_its_error_and_the_error_propagates(tiny_model, faces, tmp_path, monkeypatch):
    out = tmp_path / "o"
    argv = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--methods", "odedit",
            "--limit", "4", "--batch-size", "2", *FAST]
    _stop_on_second_batch(monkeypatch, RuntimeError("out of memory, say"))
    with pytest.raises(RuntimeError, match="out of memory, say"):
        run_bench(argv, monkeypatch)
    run = json.loads((out / "bench.json").read_text())["runs"][-1]
    assert run["status"] == "failed: RuntimeError: out of memory, say"
    assert run["processed_by_main_process"] == 2


def test_sigterm_becomes_keyboard_interrupt_only_inside_the_block():
    import os
    import signal
    import time

    from odedit.cli.common import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
            pytest.fail("SIGTERM did not interrupt")
    assert signal.getsignal(signal.SIGTERM) is before


def test_bench_json_names_the_code_that_ran(full_run):
    import odedit
    from odedit.provenance import code_identity

    run = json.loads((full_run["out"] / "bench.json").read_text())["runs"][0]
    assert run["odedit_version"] == odedit.__version__
    assert run["git_commit"] == code_identity()["git_commit"]  # this checkout's HEAD, or None outside git
    assert run["git_commit"] is None or len(run["git_commit"]) == 40


def test_settings_mismatch_is_an_error_unless_overwrite(full_run, tmp_path, monkeypatch, faces, tiny_model):
    out = tmp_path / "o"
    base = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out),
            "--methods", "source", "--limit", "2", *FAST]
    run_bench(base, monkeypatch)
    with pytest.raises(CLIError, match="different settings.*seed.*--overwrite"):
        run_bench([*base, "--seed", "1"], monkeypatch)
    with pytest.raises(CLIError, match="severity"):
        run_bench([*base, "--severity", "2"], monkeypatch)
    stats = run_bench([*base, "--seed", "1", "--overwrite"], monkeypatch)
    assert stats.processed == 2 and stats.skipped == 0
    assert json.loads((out / "bench.json").read_text())["settings"]["seed"] == 1
    # a folder that is not a benchmark is never written into or cleared
    other = tmp_path / "photos"
    (other / "images").mkdir(parents=True)
    (other / "images" / "keep.png").write_bytes(b"x")
    with pytest.raises(CLIError, match="not an odedit bench folder"):
        run_bench([*base[:4], "-o", str(other), *base[6:], "--overwrite"], monkeypatch)
    assert (other / "images" / "keep.png").exists()


def test_zip_input_limit_and_extending_the_limit(tmp_path, monkeypatch, faces, tiny_model, full_run):
    out = tmp_path / "z"
    base = ["--data", str(faces["zip"]), "--model", str(tiny_model), "-o", str(out),
            "--methods", "source,sdedit", *FAST]
    stats = run_bench([*base, "--limit", "3"], monkeypatch)
    assert stats.images == 3 and stats.processed == 6
    rows = read_results(out)
    assert sorted({r["image"] for r in rows} - {"*"}) == ["162771", "162772", "162773"]
    assert "odedit bench: 3 images" in (out / "summary.md").read_text()
    stats = run_bench([*base, "--limit", "5"], monkeypatch)
    assert stats.images == 5 and stats.processed == 4 and stats.skipped == 6
    # same images, same seeds: the zip gives the folder's degraded inputs and source metrics
    full = {(r["image"], r["metric"]): r["value"] for r in read_results(full_run["out"]) if r["method"] == "source"}
    for r in read_results(out):
        if r["method"] == "source" and r["metric"] in ("psnr", "ssim"):
            assert r["value"] == full[(r["image"], r["metric"])]


def test_swd_is_computed_once_per_set_and_the_cache_never_changes_a_value(tmp_path, monkeypatch, faces, tiny_model):
    out = tmp_path / "c"
    def argv(methods, limit=4):
        return ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--limit", str(limit),
                "--methods", methods, *FAST]

    calls = []
    real = M.swd_from_descriptors
    monkeypatch.setattr(M, "swd_from_descriptors", lambda *a, **k: calls.append(1) or real(*a, **k))

    def swd_rows():
        return {r["method"]: float(r["value"]) for r in read_results(out) if r["metric"] == "swd"}

    run_bench(argv("source"), monkeypatch)
    first = swd_rows()
    assert len(calls) == 1
    run_bench(argv("source,sdedit"), monkeypatch)  # a stage that adds a method
    assert len(calls) == 2 and swd_rows()["source"] == first["source"]
    both = swd_rows()
    run_bench(argv("source,sdedit"), monkeypatch)  # nothing new: tables only
    assert len(calls) == 2 and swd_rows() == both
    shutil.rmtree(out / "records" / B.SWD_CACHE_DIR)  # recomputed from scratch: the same numbers
    run_bench(argv("source,sdedit"), monkeypatch)
    assert len(calls) == 4 and swd_rows() == both
    run_bench(argv("source", limit=5), monkeypatch)
    assert len(calls) == 5  # another image set: a new value, not the cached one


def test_manifest_input(tmp_path, monkeypatch, faces, tiny_model):
    # a degraded folder + manifest.csv as `odedit corrupt` writes it (64-px files, fixed corruptions)
    deg = tmp_path / "degraded"
    deg.mkdir()
    chosen = {"162771": "gaussian_blur", "162772": "masking_random_color", "162774": "contrast"}
    with open(deg / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "corruption", "severity", "seed"])
        for i, (key, name) in enumerate(chosen.items()):
            clean = load_image_uint8(faces["folder"] / f"{key}.png")
            Image.fromarray(corrupt(clean, name, 3, np.random.default_rng(i))).save(deg / f"{key}.png")
            w.writerow([f"{key}.png", name, 3, i])
    out = tmp_path / "m"
    stats = run_bench(["--data", str(faces["zip"]), "--manifest", str(deg / "manifest.csv"), "--model",
                       str(tiny_model), "-o", str(out), "--methods", "source", *FAST], monkeypatch)
    assert stats.images == 3
    rows = [r for r in read_results(out) if r["metric"] == "psnr"]
    assert {r["image"]: r["corruption"] for r in rows} == chosen
    for r in rows:
        clean = fit_square(load_image_uint8(faces["folder"] / f"{r['image']}.png"), SIZE, "stretch")
        degraded = fit_square(load_image_uint8(deg / f"{r['image']}.png"), SIZE, "stretch")
        to_unit = lambda a: torch.from_numpy(a.copy()).permute(2, 0, 1)[None].double() / 255  # noqa: E731
        assert float(r["value"]) == pytest.approx(float(M.psnr(to_unit(degraded), to_unit(clean))[0]), rel=1e-12)
    rec = json.loads((out / "records" / "degraded" / "162772.json").read_text())
    assert rec["severity"] == 3 and rec["seed"] == 1
    # errors: a degraded image without a clean one; severity flags with a manifest
    with open(deg / "manifest.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["999999.png", "fog", 3, 7])
    with pytest.raises(CLIError, match="999999"):
        run_bench(["--data", str(faces["zip"]), "--manifest", str(deg / "manifest.csv"), "--model",
                   str(tiny_model), "-o", str(tmp_path / "m2"), "--methods", "source", *FAST], monkeypatch)
    with pytest.raises(CLIError, match="--manifest"):
        run_bench(["--data", str(faces["zip"]), "--manifest", str(deg / "manifest.csv"), "--severity", "4",
                   "-o", str(tmp_path / "m3"), *FAST], monkeypatch)


def test_oracle_best_of_is_labelled_and_never_worse_than_one_sample(tmp_path, monkeypatch, faces, tiny_model):
    out = tmp_path / "b"
    stats = run_bench(["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out),
                       "--methods", "sdedit", "--best-of", "2", "--limit", "3", *FAST], monkeypatch)
    oracle = f"{SDEDIT}-oracle-best2"
    assert stats.methods == [SDEDIT, oracle]
    psnr = {(r["method"], r["image"]): float(r["value"]) for r in read_results(out) if r["metric"] == "psnr"}
    for key in ("162771", "162772", "162773"):
        assert psnr[(oracle, key)] >= psnr[(SDEDIT, key)]
    nfe = {r["method"]: int(r["value"]) for r in read_results(out) if r["metric"] == "nfe"}
    assert nfe[oracle] == 2 * nfe[SDEDIT]
    text = (out / "summary.md").read_text()
    assert f"| {oracle} † |" in text and "oracle: best PSNR of 2 against the clean image" in text


def test_aligned_gate_score_reproduces_the_bench_and_scores_every_variant(full_run, tmp_path):
    """benchmarks/aligned_gate_score.py re-scores a bench's restorations through the crop gate: its
    "restored" row (the gate off) and its source row are the bench's own PSNR, SSIM and SWD (same
    images, same descriptors), and it reports every gated variant."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "aligned_gate_score.py"
    spec = importlib.util.spec_from_file_location("aligned_gate_score", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = tmp_path / "gate.json"
    assert script.main([str(full_run["out"]), ODEDIT, "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["n"] == N_IMAGES and len(got["rows"]) == 1 + len(script.VARIANTS)
    rows = read_results(full_run["out"])
    bench = {(r["method"], r["metric"]): float(r["value"]) for r in rows if r["image"] == "*"}
    per_image = lambda m, metric: np.mean([float(r["value"]) for r in rows  # noqa: E731
                                          if r["image"] != "*" and r["method"] == m and r["metric"] == metric])
    method_row = got["rows"][next(k for k in script.VARIANTS if k.startswith("restored"))]
    for label, m in (("source", "source"), (None, ODEDIT)):
        row = got["rows"][label] if label else method_row
        assert row["swd"] == pytest.approx(bench[(m, "swd")], rel=1e-9), m
        assert row["psnr"][0] == pytest.approx(per_image(m, "psnr"), abs=1e-6), m
        assert row["ssim"][0] == pytest.approx(per_image(m, "ssim"), abs=1e-6), m


# ---- processes ---------------------------------------------------------------------------------


def test_shard_assigns_disjoint_covering_subsets():
    items = list(range(10))
    parts = [B.shard(items, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items
    assert B.shard(items, 0, 1) == items
    with pytest.raises(ValueError):
        B.shard(items, 3, 3)


def test_two_processes_split_the_images_and_the_main_one_aggregates(tmp_path, faces, tiny_model, full_run):
    methods = B.build_methods(["source"])
    settings = B.BenchSettings(data=str(faces["folder"]), output=str(tmp_path / "p"), methods=methods,
                               model=str(tiny_model), device="cpu", progress=False)
    barrier = threading.Barrier(2, timeout=120)  # stands in for accelerate's wait_for_everyone
    results, errors = {}, []

    def process(index):
        try:
            results[index] = B.run_benchmark(settings, B.ProcessContext(index=index, num=2, wait=barrier.wait))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=process, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    main, other = results[0], results[1]
    assert other.processed == N_IMAGES // 2 and other.summary is None
    assert main.processed == N_IMAGES // 2 and main.summary is not None
    for i, key in enumerate(f"{162771 + i:06d}" for i in range(N_IMAGES)):  # image i went to process i % 2
        rec = json.loads((tmp_path / "p" / "records" / "source" / f"{key}.json").read_text())
        assert rec["process"] == i % 2 and rec["batch"] == 3
    rows = read_results(tmp_path / "p")
    full = {(r["image"], r["metric"]): r["value"] for r in read_results(full_run["out"])
            if r["method"] == "source" and r["image"] != "*"}
    got = {(r["image"], r["metric"]): r["value"] for r in rows if r["image"] != "*"}
    assert got == full


# ---- method sets --------------------------------------------------------------------------------


def test_method_names_encode_the_varied_settings():
    names = [m.name for m in B.build_methods(presets=["light", "medium"], step_sizes=[1e-6, 1e-5],
                                             strengths=[0.3, 0.5])]
    assert names == ["source", "odedit-light", "odedit-light-eps1e-05", "odedit-medium",
                     "odedit-medium-eps1e-05", "sdedit-0.3", "sdedit-0.5"]
    with pytest.raises(B.BenchError, match="preset"):
        B.build_methods(presets=["ultra"])
    # no presets given: restore's default preset, at its own settings
    from odedit.restorers import DEFAULT_PRESET, ODEditConfig

    (default,) = B.build_methods(["odedit"])
    assert default.name == f"odedit-{DEFAULT_PRESET}" and default.config == ODEditConfig.from_options()
    with pytest.raises(B.BenchError, match="unknown method"):
        B.build_methods(["odedit", "gfpgan"])


def test_ablation_set_and_nfe_matched_sdedit():
    methods = {m.name: m for m in B.build_methods(["source", "odedit"], presets=["medium"], ablations=True,
                                                  step_sizes=[1e-6], strengths=[0.3, 0.5, 0.7])}
    base = methods["odedit-medium"].config
    assert base.nfe == 400 and base.levels == (0, 25, 50, 75)
    assert methods["odedit-nolangevin"].config.total_langevin_steps == 0
    assert methods["odedit-nolangevin"].nfe == 200
    lv0 = methods["odedit-medium-lv0"].config
    assert lv0.levels == (0,) and lv0.total_langevin_steps == 200
    assert methods["odedit-medium-eps1e-05"].config.step_size == 1e-5
    assert methods["odedit-medium-eps0.0001"].config.step_size == 1e-4
    assert methods["odedit-medium-clip"].config.clip_inversion_x0
    # SDEdit with the NFE of odedit-medium, from the same t0 as plain SDEdit at that strength
    for strength, t0 in ((0.5, 490), (0.7, 690)):
        cfg = methods[f"sdedit-{strength}-nfe400"].config
        assert cfg.nfe == 400 and cfg.timesteps(1000)[0] == t0
        assert f"t0={t0}" in methods[f"sdedit-{strength}-nfe400"].note
    capped = methods["sdedit-0.3-nfe291"]  # t0 = 290: at most every timestep once
    assert capped.config.timesteps(1000) == list(range(290, -1, -1))
    assert "capped" in capped.note
    assert all(m.ablation for n, m in methods.items() if n not in ("source", "odedit-medium"))


def test_lowest_level_ablation_keeps_the_total_number_of_updates():
    methods = {m.name: m for m in B.build_methods(["odedit"], presets=["light"], ablations=True,
                                                  odedit_overrides={"steps": 6, "langevin_steps": 2})}
    lv0 = methods[f"odedit-light-steps6-lv0-k8-{EPS}"].config
    assert lv0.levels == (0,) and lv0.total_langevin_steps == 8 == methods[ODEDIT].config.total_langevin_steps


def test_separate_reference_set_adds_the_clean_floor(tmp_path, monkeypatch, faces, tiny_model):
    out = tmp_path / "r"
    stats = run_bench(["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--methods",
                       "source", "--limit", "3", "--reference", str(faces["zip"]), "--reference-limit", "5", *FAST],
                      monkeypatch)
    assert np.isfinite(stats.summary["floor"]["swd"])
    text = (out / "summary.md").read_text()
    assert "| clean (floor) |" in text and "(5 images)" in text


def test_sdedit_nfe_matched_hits_the_nfe_and_keeps_t0():
    from odedit.restorers import SDEditConfig

    for nfe in (1, 20, 112, 300, 400):
        for strength in (0.2, 0.35, 0.5, 0.75, 1.0):
            cfg = B.sdedit_nfe_matched(nfe, strength)
            plain_t0 = SDEditConfig(strength=strength).timesteps(1000)[0]
            path = cfg.timesteps(1000)
            assert path[0] == plain_t0
            assert cfg.nfe == len(path) == min(nfe, plain_t0 + 1)
            assert all(a > b for a, b in zip(path, path[1:])) and path[-1] == (0 if nfe > 1 else plain_t0)


def test_sdedit_steps_flag_keeps_sdedit_on_its_own_grid():
    from odedit.cli.bench import build_methods_from_args

    args = parse(["--data", "x", "-o", "y", "--steps", "20", "--solver", "dpm++2m", "--sdedit-steps", "100",
                  "--presets", "light", "--strengths", "0.5"])
    methods = {m.name: m for m in build_methods_from_args(args)}
    assert methods[f"odedit-light-steps20-{EPS}-dpmpp2m"].config.steps == 20
    assert methods["sdedit-0.5"].config.steps == 100 and methods["sdedit-0.5"].nfe == 50
    # without it, --steps is both methods' grid (the old behaviour)
    args = parse(["--data", "x", "-o", "y", "--steps", "20", "--strengths", "0.5"])
    assert {m.name: m for m in build_methods_from_args(args)}["sdedit-0.5-steps20"].config.steps == 20


def test_fast_preset_method_names():
    fast = [m.name for m in B.build_methods(["odedit"], presets=["fast"], ablations=True, strengths=[0.5])]
    assert fast[0] == "odedit-fast"  # its own steps/solver/eps carry no suffix
    assert "odedit-fast-eps1e-05" in fast and "odedit-fast-lv0" in fast
    # without Langevin no preset is left: the grid suffixes say how it differs from the paper's
    assert "odedit-nolangevin-steps20-dpmpp2m" in fast
    assert [m.nfe for m in B.build_methods(["odedit"], presets=["fast"])] == [80]


def test_results_report_summarises_every_stage_of_a_staged_folder(tmp_path, monkeypatch, faces, tiny_model):
    """Two invocations with settings one command line cannot combine (other grids) in one
    folder: each writes tables of its own methods only; scripts/results_report.py puts every
    recorded method in one table, with the values each stage measured."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_report", Path(__file__).parents[1] / "scripts" / "results_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    out = tmp_path / "staged"
    common = ["--data", str(faces["folder"]), "--model", str(tiny_model), "-o", str(out), "--device", "cpu", "--quiet"]
    _no_network_metrics(monkeypatch)
    run_bench([*common, "--methods", "source,odedit", "--presets", "light", "--steps", "6", "--langevin-steps", "2"], monkeypatch)
    first = {(r["image"], r["method"], r["metric"]): r["value"] for r in read_results(out)}
    run_bench([*common, "--methods", "odedit", "--presets", "light", "--steps", "4", "--langevin-steps", "1",
               "--solver", "dpm++2m"], monkeypatch)
    assert {r["method"] for r in read_results(out)} == {f"odedit-light-steps4-k1-{EPS}-dpmpp2m"}
    monkeypatch.setattr("sys.argv", ["results_report.py", str(out)])
    report.main()
    rows = read_results(out)
    assert {r["method"] for r in rows} == {"source", ODEDIT, f"odedit-light-steps4-k1-{EPS}-dpmpp2m"}
    for r in rows:  # the first stage's per-image values are unchanged
        if (r["image"], r["method"], r["metric"]) in first and r["image"] != "*":
            assert r["value"] == first[(r["image"], r["method"], r["metric"])]
    assert f"odedit-light-steps4-k1-{EPS}-dpmpp2m" in (out / "summary.md").read_text()


def test_whole_photo_cache_refuses_restorations_of_other_settings(tmp_path):
    """benchmarks/bench_whole_photo.py caches restorations by item name: a folder made with one
    step size (or dtype) must not silently take another's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_whole_photo", Path(__file__).parents[1] / "benchmarks" / "bench_whole_photo.py")
    wp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wp)
    from odedit.restorers import ODEditConfig

    a = {"config": ODEditConfig(step_size=2e-5).to_dict(), "dtype": "float32", "model": "embedded"}
    wp.check_settings(tmp_path, a)  # a new folder records its settings
    (tmp_path / "x_s128_clean0.pkl").write_bytes(b"")
    wp.check_settings(tmp_path, a)  # the same settings go on
    with pytest.raises(SystemExit, match="config differ"):
        wp.check_settings(tmp_path, {**a, "config": ODEditConfig(step_size=4e-5).to_dict()})
    with pytest.raises(SystemExit, match="dtype differ"):
        wp.check_settings(tmp_path, {**a, "dtype": "bf16"})
    (tmp_path / "restorer.json").unlink()
    with pytest.raises(SystemExit, match="unrecorded settings"):
        wp.check_settings(tmp_path, a)
