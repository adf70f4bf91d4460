"""Training: data loading, the loop (loss goes down), exact resume, weights, export, CLI errors.

All runs use the ``tiny`` UNet at 16x16 on 32 synthetic blob images, on the CPU, with
one torch thread (the test machine's cores are shared; oversubscribed threads make
tiny ops 10-40x slower).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from odedit.data import DatasetError, EpochStream, load_dataset
from odedit.training import TrainConfig, TrainError, denoising_loss, latest_checkpoint, lr_at, train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blob(rng, size=32):
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    colour = rng.uniform(0, 1, 3)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.3)
    m = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
    return ((m * colour + (1 - m) * (1 - colour)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for i in range(32):
        Image.fromarray(blob(rng)).save(folder / f"b{i:02d}.png")
    return folder


def config(data, out, **kw):
    base = dict(
        data=None if data is None else str(data),
        out=str(out),
        config="tiny",
        resolution=16,
        batch_size=8,
        lr=2e-3,
        warmup_steps=5,
        log_every=1,
        sample_every=0,
        checkpoint_every=0,
        checkpoint_minutes=0,
        cpu=True,
        progress=False,
        workers=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def trained(blobs, tmp_path_factory):
    """One 40-step run shared by several tests."""
    out = tmp_path_factory.mktemp("run")
    result = train(config(blobs, out, steps=40, sample_every=20, sample_steps=5, num_samples=4), log=quiet)
    return out, result


# ---- data ---------------------------------------------------------------------------------


def test_zip_and_folder_give_the_same_images_bad_files_skipped(blobs, tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(blobs.iterdir()):
            zf.write(p, f"faces/{p.name}")
        zf.writestr("faces/broken.jpg", b"not a jpeg")
        zf.writestr("faces/notes.txt", b"ignored: not an image extension")
        zf.writestr("__MACOSX/faces/._b00.png", b"resource fork")
    from_zip = load_dataset(archive, 16, workers=2)
    from_dir = load_dataset(blobs, 16, workers=1)
    assert from_zip.images.shape == (32, 16, 16, 3) and from_zip.images.dtype == np.uint8
    assert np.array_equal(from_zip.images, from_dir.images)
    assert [n for n, _ in from_zip.skipped] == ["faces/broken.jpg"]
    assert from_zip.summary()["skipped"] == 1


def test_fit_modes_on_non_square_images(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :10] = 255  # a white band on the left, outside the central square
    Image.fromarray(img).save(tmp_path / "wide.png")
    stretch = load_dataset(tmp_path, 16, fit="stretch").images[0]
    crop = load_dataset(tmp_path, 16, fit="crop").images[0]
    assert stretch.shape == crop.shape == (16, 16, 3)
    assert stretch[:, 0].min() > 200 and crop.max() < 30


def test_empty_missing_and_all_bad_datasets_fail_clearly(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="contains no image files"):
        load_dataset(tmp_path / "empty", 16)
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        for i in range(3):
            zf.writestr(f"x{i}.jpg", b"garbage")
    with pytest.raises(DatasetError, match="all 3 image files were skipped"):
        load_dataset(bad, 16)
    (tmp_path / "plain.bin").write_bytes(b"xx")
    with pytest.raises(DatasetError, match="neither a folder nor a .zip"):
        load_dataset(tmp_path / "plain.bin", 16)


def test_epoch_stream_is_a_pure_function_of_position():
    s = EpochStream(10, seed=3)
    idx, flips = s.take(0, 30)
    for e in range(3):  # each epoch is a permutation
        assert sorted(idx[10 * e : 10 * (e + 1)]) == list(range(10))
    idx2, flips2 = EpochStream(10, seed=3).take(7, 9)  # straddles an epoch boundary, fresh object
    assert np.array_equal(idx2, idx[7:16]) and np.array_equal(flips2, flips[7:16])
    assert flips.any() and not flips.all()
    assert not EpochStream(10, seed=3, flip=False).take(0, 30)[1].any()
    assert not np.array_equal(EpochStream(10, seed=4).take(0, 10)[0], idx[:10])


def test_lr_schedule():
    assert lr_at(0, 1.0, 4) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4) == 1.0 and lr_at(100, 1.0, 4) == 1.0
    assert lr_at(4, 1.0, 4, "cosine", 104) == pytest.approx(1.0)
    assert lr_at(104, 1.0, 4, "cosine", 104) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(54, 1.0, 4, "linear", 104) == pytest.approx(0.5)
    # a cool-down over the last 20 steps only: constant before it, linear to 0 within it
    assert lr_at(83, 1.0, 4, "linear", 104, decay_steps=20) == 1.0
    assert lr_at(94, 1.0, 4, "linear", 104, decay_steps=20) == pytest.approx(0.5)
    assert lr_at(104, 1.0, 4, "cosine", 104, decay_steps=20) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(54, 1.0, 4, "linear", 104, decay_steps=500) == pytest.approx(0.5)  # never before warm-up ends
    with pytest.raises(TrainError, match="--lr-schedule linear or cosine"):
        TrainConfig(data="d", steps=10, decay_steps=5).validate()
    with pytest.raises(TrainError, match="decay steps"):
        TrainConfig(data="d", steps=10, lr_schedule="linear", decay_steps=0).validate()


# ---- the loop -----------------------------------------------------------------------------


def test_loss_goes_down_and_outputs_are_written(trained, blobs):
    out, result = trained
    assert result.step == 40 and result.stopped_by == "steps" and result.images_seen == 320
    losses = [r["loss"] for r in result.records]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4])
    # Same problems (fixed noise, timesteps spread over 0..T-1) before and after training.
    from odedit.models import load_model
    from odedit.unets import build_unet

    x0 = torch.from_numpy(load_dataset(blobs, 16).images[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.manual_seed(0)  # train() initialises with set_seed(seed=0)
    before = denoising_loss(build_unet("tiny", 16), x0, load_model(out / "model").schedule)
    after = denoising_loss(load_model(out / "model").unet, x0, load_model(out / "model").schedule)
    assert after < 0.7 * before
    # Run folder contents.
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 41))
    assert set(log[0]) == {"step", "loss", "loss_ema", "lr", "images_per_s", "elapsed_s"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000020.png", "step_000040.png"]
    assert Image.open(out / "samples" / "step_000040.png").size == (2 * 18 + 2, 2 * 18 + 2)
    meta = json.loads((out / "train_config.json").read_text())
    assert meta["resolved"]["config"] == "tiny" and meta["resolved"]["dataset"]["images"] == 32
    assert (out / "model" / "checksums.json").is_file()
    assert latest_checkpoint(out).name == "step_0000040"


def test_exported_model_loads_and_restores(trained, blobs):
    from odedit.models import load_model
    from odedit.restorers import ODEdit, ODEditConfig

    out, _ = trained
    model = load_model(out / "model")
    assert model.sample_size == 16 and model.prediction_type == "epsilon"
    restorer = ODEdit(model, ODEditConfig.from_preset("light", steps=10))
    img = torch.from_numpy(load_dataset(blobs, 16).images[:2]).permute(0, 3, 1, 2).float() / 255
    restored = restorer.restore(img, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert restored.shape == img.shape and torch.isfinite(restored).all()
    assert 0.0 <= float(restored.min()) and float(restored.max()) <= 1.0


def _weights(ckpt):
    return load_file(str(ckpt / "model.safetensors"))


def test_resume_continues_exactly(blobs, tmp_path):
    straight = train(config(blobs, tmp_path / "a", steps=8, checkpoint_every=4), log=quiet)
    first = train(config(blobs, tmp_path / "b", steps=4), log=quiet)
    assert first.step == 4
    # The step-4 checkpoints of both runs are the same state.
    for k, v in _weights(tmp_path / "a" / "checkpoints" / "step_0000004").items():
        assert torch.equal(v, _weights(first.checkpoint)[k]), k
    # A checkpoint exists: continuing without --resume is refused.
    with pytest.raises(TrainError, match="--resume"):
        train(config(blobs, tmp_path / "b", steps=8), log=quiet)
    resumed = train(config(None, tmp_path / "b", steps=8, resume=True), log=quiet)  # data: the saved path
    assert (resumed.start_step, resumed.step, resumed.images_seen) == (4, 8, 64)
    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(str(tmp_path / "a" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    ema_b = load_file(str(tmp_path / "b" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    losses_a = [r["loss"] for r in straight.records]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == list(range(1, 9))
    assert [r["loss"] for r in log_b] == losses_a
    # Only the newest checkpoints are kept; resuming at the end just re-exports.
    again = train(config(blobs, tmp_path / "b", steps=8, resume=True), log=quiet)
    assert (again.start_step, again.step) == (8, 8)


def test_resume_from_weights_starts_fresh_from_trained_weights(trained, blobs, tmp_path):
    out, scratch = trained
    result = train(
        config(blobs, tmp_path / "ft", steps=4, resume_from_weights=str(out / "model"), export_fp16=True),
        log=quiet,
    )
    assert (result.start_step, result.step) == (0, 4)
    # Starts from the trained weights: far below the from-scratch start.
    assert result.records[0]["loss"] < 0.7 * scratch.records[0]["loss"]
    weights = load_file(str(tmp_path / "ft" / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    from odedit.models import load_model

    assert load_model(tmp_path / "ft" / "model").sample_size == 16
    # Another --resolution continues the same weights there (progressive training), it is no error.
    train(config(blobs, tmp_path / "ft2", steps=1, resume_from_weights=str(out / "model"), resolution=24), log=quiet)
    assert load_model(tmp_path / "ft2" / "model").sample_size == 24


def test_minutes_grad_accum_and_bf16(blobs, tmp_path):
    r = train(config(blobs, tmp_path / "m", steps=None, minutes=1e-4), log=quiet)
    assert r.stopped_by == "minutes" and (tmp_path / "m" / "model" / "unet").is_dir()
    r = train(config(blobs, tmp_path / "g", steps=2, grad_accum=2, mixed_precision="bf16", export_raw=True), log=quiet)
    assert r.step == 2 and r.images_seen == 32 and np.isfinite(r.records[-1]["loss"])
    assert (tmp_path / "g" / "model_raw" / "unet").is_dir()


# ---- CLI ------------------------------------------------------------------------------------


def cli(argv):
    from odedit.cli import main

    return main(argv)


def test_cli_trains_and_reports_data_errors(blobs, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["train", "--out", str(out), "--config", "tiny", "--resolution", "16", "--batch-size", "4"]
    assert cli([*argv, "--data", str(blobs), "--steps", "3", "--sample-every", "2", "--sample-steps", "2",
                "--num-samples", "4", "--cpu", "--quiet", "--workers", "1"]) == 0
    assert (out / "model" / "unet" / "config.json").is_file()
    assert (out / "samples" / "step_000002.png").is_file()

    capsys.readouterr()
    fresh = ["train", "--out", str(tmp_path / "fresh"), "--config", "tiny", "--resolution", "16", "--cpu", "--quiet"]
    assert cli([*fresh, "--data", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("a.png", b"x")
        zf.writestr("b.jpg", b"y")
    assert cli([*fresh, "--data", str(bad), "--steps", "1"]) == 2
    assert "all 2 image files were skipped" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["train", "--out", str(tmp_path / "y"), "--data", str(tmp_path / "empty"), "--steps", "1"]) == 2
    assert "no image files" in capsys.readouterr().err
    assert cli(["train", "--out", str(tmp_path / "z"), "--data", str(blobs)]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli([*argv, "--data", str(blobs), "--steps", "4", "--cpu", "--quiet"]) == 2  # checkpoints exist
    assert "--resume" in capsys.readouterr().err
    # --resume keeps the run's settings unless given again (here: only --steps and --lr change).
    assert cli(["train", "--out", str(out), "--resume", "--steps", "5", "--lr", "7e-4", "--cpu", "--quiet"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["batch_size"] == 4 and saved["config"]["sample_every"] == 2
    assert saved["config"]["lr"] == 7e-4 and saved["config"]["steps"] == 5
    assert saved["resolved"]["start_step"] == 3
    # a cool-down branch of the constant-lr run: linear to 0 over its last 2 steps (log: lr of step - 1)
    assert cli(["train", "--out", str(out), "--resume", "--steps", "7", "--lr-schedule", "linear",
                "--decay-steps", "2", "--warmup-steps", "1", "--log-every", "1", "--cpu", "--quiet"]) == 0  # fmt: skip
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    assert lrs[6] == pytest.approx(7e-4) and lrs[7] == pytest.approx(3.5e-4)
    assert json.loads((out / "train_config.json").read_text())["config"]["decay_steps"] == 2
    # going on at a constant rate after the branch: the old decay window is not inherited
    assert cli(["train", "--out", str(out), "--resume", "--steps", "8", "--lr-schedule", "constant",
                "--log-every", "1", "--cpu", "--quiet"]) == 0  # fmt: skip
    saved = json.loads((out / "train_config.json").read_text())["config"]
    assert saved["decay_steps"] is None and saved["lr_schedule"] == "constant"


def test_default_preconditioning_is_edm_for_new_bases_only(blobs, tmp_path):
    """New CLI runs get the recipe study's winner (a Gaussian base with EDM preconditioning); a warm
    start from a model whose base was trained without it keeps that base as it is (not zeroed);
    --gaussian-rank 0 stays a plain eps network."""
    from odedit.models import GaussianResidualEps, UNetEps, load_model

    common = ["--config", "tiny", "--resolution", "16", "--batch-size", "4", "--cpu", "--quiet", "--workers", "1",
              "--sample-every", "0", "--data", str(blobs)]
    assert cli(["train", "--out", str(tmp_path / "new"), "--steps", "1", "--gaussian-rank", "8", *common]) == 0
    assert load_model(tmp_path / "new" / "model").base.precondition == "edm"
    assert cli(["train", "--out", str(tmp_path / "plain"), "--steps", "1", "--gaussian-rank", "0", *common]) == 0
    assert isinstance(load_model(tmp_path / "plain" / "model"), UNetEps)
    # The API's default for a new base is the same; a plain-residual base is asked for explicitly.
    train(config(blobs, tmp_path / "api", steps=0, gaussian_rank=8), log=quiet)
    assert load_model(tmp_path / "api" / "model").base.precondition == "edm"
    resolved = json.loads((tmp_path / "api" / "train_config.json").read_text())["resolved"]
    assert (resolved["precondition"], resolved["noise_levels"]) == ("edm", "lognormal")
    train(config(blobs, tmp_path / "old", steps=2, gaussian_rank=8, precondition="none"), log=quiet)
    old = load_model(tmp_path / "old" / "model")
    assert old.base.precondition == "none"
    warm = ["train", "--out", str(tmp_path / "warm"), "--steps", "0", "--resume-from-weights",
            str(tmp_path / "old" / "model"), *common]
    assert cli(warm) == 0
    kept = load_model(tmp_path / "warm" / "model")
    assert isinstance(kept, GaussianResidualEps) and kept.base.precondition == "none"
    torch.testing.assert_close(kept.unet.conv_out.weight, old.unet.conv_out.weight)  # not zeroed
    assert cli([*warm[:2], str(tmp_path / "warm2"), *warm[3:], "--precondition", "edm"]) == 0
    switched = load_model(tmp_path / "warm2" / "model")
    assert switched.base.precondition == "edm" and float(switched.unet.conv_out.weight.abs().max()) == 0.0
    # A run made before the flag existed (no "precondition" in its train_config.json, min-SNR on) resumes as it was.
    assert cli(["train", "--out", str(tmp_path / "snr"), "--steps", "1", "--gaussian-rank", "8",
                "--min-snr-gamma", "5", *common]) == 0
    assert load_model(tmp_path / "snr" / "model").base.precondition == "none"  # min-SNR asks for the plain residual
    saved = json.loads((tmp_path / "snr" / "train_config.json").read_text())
    del saved["config"]["precondition"]
    (tmp_path / "snr" / "train_config.json").write_text(json.dumps(saved))
    assert cli(["train", "--out", str(tmp_path / "snr"), "--resume", "--steps", "2", "--cpu", "--quiet"]) == 0
    assert load_model(tmp_path / "snr" / "model").base.precondition == "none"


# ---- short-run settings: min-SNR weighting, EMA warm-up ----------------------------------------


def test_min_snr_weights_follow_the_formula():
    from odedit.schedule import NoiseSchedule
    from odedit.training import min_snr_weights, weighted_eps_loss

    sched = NoiseSchedule.linear()
    w = min_snr_weights(sched, 5.0)
    ab = sched.alpha_bar
    snr = ab / (1 - ab)
    assert w.shape == (1000,) and w.dtype == torch.float32
    torch.testing.assert_close(w.double(), torch.where(snr > 5, 5 / snr, torch.ones_like(snr)), rtol=1e-6, atol=0)
    assert w[0] < 0.01 and w[-1] == 1.0
    # weighted loss: per-sample MSE times w[t]; None = plain MSE
    pred, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    per = (pred - noise).square().flatten(1).mean(1)
    torch.testing.assert_close(weighted_eps_loss(pred, noise, t, w), (w[t] * per).mean())
    torch.testing.assert_close(weighted_eps_loss(pred, noise, t, None), per.mean())


def test_ema_power_and_min_snr_train_and_are_recorded(blobs, tmp_path):
    from diffusers.training_utils import EMAModel

    r = train(config(blobs, tmp_path / "e", steps=3, ema_power=2 / 3, min_snr_gamma=5.0), log=quiet)
    assert r.step == 3 and np.isfinite(r.records[-1]["loss"])
    info = json.loads((tmp_path / "e" / "model" / "odedit_train.json").read_text())
    assert info["ema_power"] == 2 / 3 and info["min_snr_gamma"] == 5.0
    # the trainer's own EMA state in the checkpoint carries the warm-up setting
    ckpt = latest_checkpoint(tmp_path / "e")
    state = torch.load(next(ckpt.glob("custom_checkpoint_0.pkl")), weights_only=False)
    assert state["use_ema_warmup"] is True and state["power"] == 2 / 3
    ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.9999, use_ema_warmup=True, power=2 / 3)
    assert abs(ema.get_decay(1000) - (1 - (1 + 999) ** (-2 / 3))) < 1e-12  # 1 - (1 + n)^-p
    # min-SNR changes the optimised loss: same seed, same data, different logged loss
    plain = train(config(blobs, tmp_path / "p", steps=3, ema_power=2 / 3), log=quiet)
    assert plain.records[0]["loss"] != r.records[0]["loss"]
    with pytest.raises(TrainError, match="power"):
        config(blobs, tmp_path / "x", steps=1, ema_power=1.5).validate()
    with pytest.raises(TrainError, match="gamma"):
        config(blobs, tmp_path / "x", steps=1, min_snr_gamma=0.0).validate()


# ---- the Gaussian base --------------------------------------------------------------------


def test_gaussian_base_run_starts_at_the_gaussian_and_resumes(trained, blobs, tmp_path):
    from odedit.gaussian import GaussianBase
    from odedit.models import GaussianResidualEps, load_model

    _, scratch = trained
    run = train(config(blobs, tmp_path / "gb", steps=4, checkpoint_every=2, gaussian_rank=8, precondition="none"),
                log=quiet)
    base = GaussianBase.load(tmp_path / "gb" / "gaussian")
    assert base.rank == 8 and base.shape == (3, 16, 16) and base.num_images == 64  # 32 faces + mirrors
    # The zeroed head: the first loss is the Gaussian's, far below a fresh network's.
    assert run.records[0]["loss"] < 0.5 * scratch.records[0]["loss"]
    model = load_model(tmp_path / "gb" / "model")
    assert isinstance(model, GaussianResidualEps) and model.base.rank == 8
    assert json.loads((tmp_path / "gb" / "model" / "odedit_train.json").read_text())["gaussian_rank"] == 8
    # Resuming keeps the run's base (no new fit: --gaussian-rank is not needed again).
    more = train(config(None, tmp_path / "gb", steps=6, resume=True), log=quiet)
    assert (more.start_step, more.step) == (4, 6)
    assert isinstance(load_model(tmp_path / "gb" / "model"), GaussianResidualEps)


@pytest.mark.parametrize("precondition", [None, "none"])  # None: a new base gets edm
def test_warm_start_from_a_plain_model_zeroes_the_head(trained, blobs, tmp_path, precondition):
    from odedit.models import load_model

    out, _ = trained
    warm = config(blobs, tmp_path / "w", steps=0, resume_from_weights=str(out / "model"), gaussian_rank=6,
                  precondition=precondition)  # fmt: skip
    train(warm, log=quiet)
    model = load_model(tmp_path / "w" / "model")
    assert model.base.precondition == (precondition or "edm")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (5, 400, 900):
            torch.testing.assert_close(model(x, t), model.base.eps(x, model.schedule.alpha_bar_at(t)))
    # A model that has a base passes it on: the new run is a residual on the same base.
    train(config(blobs, tmp_path / "w2", steps=1, resume_from_weights=str(tmp_path / "w" / "model")), log=quiet)
    again = load_model(tmp_path / "w2" / "model")
    torch.testing.assert_close(again.base.basis, model.base.basis)


def test_edm_preconditioning_trains_resumes_and_exports(blobs, tmp_path, monkeypatch):
    """--precondition edm: log-normal levels (drawn through odedit.precond), a model folder that
    loads with its scales, a resume that draws what an uninterrupted run draws, and with a PPCA
    base a first model that is exactly the Gaussian."""
    import odedit.training.loop as loop
    from odedit.models import GaussianResidualEps, load_model

    drawn = []
    real = loop.lognormal_timesteps

    def spy(log_sigma, n, generator, *a, **kw):
        t = real(log_sigma, n, generator, *a, **kw)
        drawn.append(t)
        return t

    monkeypatch.setattr(loop, "lognormal_timesteps", spy)
    first = train(config(blobs, tmp_path / "e", steps=3, checkpoint_every=3, precondition="edm"), log=quiet)
    assert len(drawn) == 3 and all(t.shape == (8,) for t in drawn)
    model = load_model(tmp_path / "e" / "model")
    assert isinstance(model, GaussianResidualEps)
    assert (model.base.rank, model.base.precondition, model.base.residual_var) == (0, "edm", 0.25)
    assert json.loads((tmp_path / "e" / "model" / "odedit_train.json").read_text())["precondition"] == "edm"
    more = train(config(None, tmp_path / "e", steps=5, resume=True), log=quiet)
    whole = train(config(blobs, tmp_path / "w", steps=5, precondition="edm"), log=quiet)
    assert [r["loss"] for r in first.records + more.records] == [r["loss"] for r in whole.records]
    drawn.clear()
    train(config(blobs, tmp_path / "plain", steps=1), log=quiet)
    assert drawn == []  # the uniform levels of the DDPM loss without it
    train(config(blobs, tmp_path / "edm-uniform", steps=1, precondition="edm", noise_levels="uniform"), log=quiet)
    assert drawn == []  # the levels are their own choice ...
    logn = train(config(blobs, tmp_path / "lognormal", steps=2, noise_levels="lognormal"), log=quiet)
    assert len(drawn) == 2  # ... also for a plain eps network
    assert json.loads((tmp_path / "lognormal" / "model" / "odedit_train.json").read_text())["noise_levels"] == "lognormal"
    assert logn.records[0]["loss"] != train(config(blobs, tmp_path / "u", steps=1), log=quiet).records[0]["loss"]
    # R3: the PPCA base with EDM's scaling; the zeroed head makes the untrained model the Gaussian.
    train(config(blobs, tmp_path / "g", steps=0, gaussian_rank=8, precondition="edm"), log=quiet)
    g = load_model(tmp_path / "g" / "model")
    assert (g.base.rank, g.base.precondition) == (8, "edm")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (5, 400):
            torch.testing.assert_close(g(x, t), g.base.eps(x, g.schedule.alpha_bar_at(t)))
    with pytest.raises(TrainError, match="min-snr"):
        config(blobs, tmp_path / "x", steps=1, precondition="edm", min_snr_gamma=5.0).validate()
    with pytest.raises(TrainError, match="precondition"):
        config(blobs, tmp_path / "x", steps=1, precondition="karras").validate()
    # A run's preconditioning is fixed: asking another on resume, or min-SNR on an inherited edm base, is refused.
    with pytest.raises(TrainError, match="run being resumed"):
        train(config(None, tmp_path / "e", steps=6, resume=True, precondition="none"), log=quiet)
    with pytest.raises(TrainError, match="min-snr"):
        train(config(blobs, tmp_path / "snr", steps=1, resume_from_weights=str(tmp_path / "e" / "model"),
                     min_snr_gamma=5.0), log=quiet)
    with pytest.raises(TrainError, match="noise levels"):
        config(blobs, tmp_path / "x", steps=1, noise_levels="beta").validate()
    with pytest.raises(TrainError, match="sigma_data"):
        config(blobs, tmp_path / "x", steps=1, precondition="edm", sigma_data=0.0).validate()


def test_progressive_run_continues_at_a_higher_resolution(blobs, tmp_path):
    """A 16 px run's model continues at 24 px (--resume-from-weights with --resolution): the weights
    carry over, the base is refitted at the new size with the same rank and preconditioning, and the
    network is not zeroed (it stays a residual)."""
    from odedit.models import load_model

    train(config(blobs, tmp_path / "lo", steps=2, gaussian_rank=8, precondition="edm"), log=quiet)
    low = load_model(tmp_path / "lo" / "model")
    said = []
    train(config(blobs, tmp_path / "hi", steps=0, resolution=24, resume_from_weights=str(tmp_path / "lo" / "model"),
                 precondition="edm"), log=said.append)
    high = load_model(tmp_path / "hi" / "model")
    assert high.sample_size == 24 and high.base.shape == (3, 24, 24)
    assert (high.base.rank, high.base.precondition) == (8, "edm")
    assert any("fitting one for (3, 24, 24)" in m for m in said)
    for name, p in low.unet.state_dict().items():
        torch.testing.assert_close(high.unet.state_dict()[name], p, msg=name)  # the head was not zeroed


def test_run_and_model_folders_with_250_byte_names(blobs, tmp_path):
    """Run and model folders whose names are near the 255-byte limit: every temp name of a run
    (JSON, log, checkpoint and model-folder staging, the replaced folder's holder) is short
    (odedit.atomic), so training, checkpoints, resume and exports work, and no temp is left."""
    from odedit.models import load_model
    from odedit.training import export_model
    from odedit.atomic import write_json_atomic
    from odedit.training.checkpoints import _truncate_log
    from odedit.unets import DEFAULT_SCHEDULER_CONFIG, build_unet

    run = tmp_path / ("R" * 250)
    train(config(blobs, run, steps=1, checkpoint_every=1), log=quiet)
    resumed = train(config(None, run, steps=2, checkpoint_every=1, resume=True), log=quiet)  # replaces model/
    assert (resumed.start_step, resumed.step, latest_checkpoint(run).name) == (1, 2, "step_0000002")
    assert load_model(run / "model").sample_size == 16
    model = tmp_path / ("M" * 250)
    for step in (1, 2):  # a new model folder, then one replacing it
        export_model(build_unet("tiny", 16), model, DEFAULT_SCHEDULER_CONFIG, info={"step": step})
    assert json.loads((model / "odedit_train.json").read_text()) == {"step": 2}
    assert load_model(model).sample_size == 16
    sidecar, log = tmp_path / ("J" * 245 + ".json"), tmp_path / ("L" * 244 + ".jsonl")
    write_json_atomic(sidecar, {"a": 1})
    log.write_text('{"step": 1}\n{"step": 2}\n')
    _truncate_log(log, 1)
    assert json.loads(sidecar.read_text()) == {"a": 1} and log.read_text() == '{"step": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (run, model, sidecar, log))
    assert [p.name for p in run.rglob(".*")] == []


def test_two_cpu_processes_under_torchrun_form_one_run(blobs, tmp_path):
    """`torchrun --nproc_per_node 2 ... odedit train` on CPUs trains one run in a gloo group (each
    process its own slice of every global batch), not two runs racing into one folder; its
    checkpoint resumes in one process with the same global batch."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    common = ["--config", "tiny", "--resolution", "16", "--gaussian-rank", "4", "--sample-every", "0",
              "--checkpoint-every", "1", "--workers", "1", "--warmup-steps", "1", "--quiet"]
    run = tmp_path / "ddp"
    proc = _torchrun(["--data", str(blobs), "--out", str(run), "--steps", "3", "--batch-size", "4", *common], env)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        _end(proc)
    assert proc.returncode == 0, err[-3000:]
    info = json.loads((run / "model" / "odedit_train.json").read_text())
    assert (info["step"], info["images_seen"]) == (3, 3 * 2 * 4)
    assert (latest_checkpoint(run) / "random_states_1.pkl").is_file()  # the second process checkpointed
    # one process, --batch-size not given again: the global batch of 8 is kept (not 4)
    assert cli(["train", "--out", str(run), "--resume", "--steps", "4", "--cpu", "--quiet"]) == 0
    assert json.loads((run / "model" / "odedit_train.json").read_text())["images_seen"] == 4 * 8
    saved = json.loads((run / "train_config.json").read_text())
    assert (saved["config"]["batch_size"], saved["resolved"]["global_batch"]) == (8, 8)


def test_resume_keeps_the_global_batch_over_another_number_of_processes(tmp_path, monkeypatch):
    """resolve_settings: a run saved with 2 processes x 16 resumes as 1 x 32, 4 x 8 (or 2 x 8 with two
    micro-batches); an explicit --batch-size wins; a global batch that does not split is refused."""
    from types import SimpleNamespace

    from odedit.cli.common import CLIError
    from odedit.cli.train import INHERITED, resolve_settings

    def saved(resolved):
        (tmp_path / "train_config.json").write_text(json.dumps(
            {"config": {"batch_size": 16, "grad_accum": 1, "lr": 1e-3}, "resolved": resolved}))

    def settings(world, **flags):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        args = SimpleNamespace(out=str(tmp_path), resume=True, **{k: flags.get(k) for k in INHERITED})
        s = resolve_settings(args)
        return s["batch_size"], s.get("grad_accum", 1)

    saved({"global_batch": 32, "processes": 2})
    assert settings(1) == (32, 1)
    assert settings(2) == (16, 1)
    assert settings(4) == (8, 1)
    assert settings(4, grad_accum=2) == (4, 2)
    assert settings(2, grad_accum=2) == (16, 2)  # same processes: more micro-batches, a larger batch
    assert settings(1, batch_size=8) == (8, 1)
    with pytest.raises(CLIError, match="does not split over 3 process"):
        settings(3)
    for bad in ("0", "-2", "two"):
        with pytest.raises(CLIError, match="WORLD_SIZE"):
            settings(bad)
    saved({})  # a run folder from before the global batch was recorded: the saved batch
    assert settings(1) == (16, 1)
    (tmp_path / "train_config.json").write_text(json.dumps({"config": {"batch_size": 16}, "resolved": [1]}))
    with pytest.raises(CLIError, match="cannot read"):
        settings(1)


def test_long_run_script_warm_starts_then_continues(trained, blobs, tmp_path):
    """scripts/long_run.sh: a run folder without a checkpoint is warm-started from WEIGHTS with the
    long run's settings (global batch 32 split over PROCS, lr LR); with one, it is continued; a global
    batch that does not split over PROCS is refused before anything runs."""
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "long_run.sh"
    run = tmp_path / "long"
    env = {**os.environ, "PROCS": "1", "DATA": str(blobs), "WEIGHTS": str(trained[0] / "model")}
    env.pop("WORLD_SIZE", None)
    extra = ["--resolution", "16", "--gaussian-rank", "4", "--quiet"]

    def go(*args, **more):
        return subprocess.run(["bash", str(script), *args], env={**env, **more}, capture_output=True, text=True,
                              timeout=300)

    first = go("5", str(run), "--steps", "1", *extra)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "warm start" in first.stdout
    saved = json.loads((run / "train_config.json").read_text())["config"]
    assert (saved["batch_size"], saved["lr"], saved["ema_power"], saved["resume_from_weights"]) == (
        32, 1e-4, 0.6667, str(trained[0] / "model"))  # LR's default since the GPU prior (session 17)
    second = go("5", str(run), "--steps", "2", "--quiet")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "continuing" in second.stdout
    assert json.loads((run / "model" / "odedit_train.json").read_text())["images_seen"] == 2 * 32
    refused = go("5", str(tmp_path / "other"), *extra, PROCS="3")
    assert refused.returncode == 2 and "does not split over 3" in refused.stderr
    assert not (tmp_path / "other").exists()


def _torchrun(argv, env):
    """``odedit train --cpu ARGV`` as two processes under torchrun (output piped)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "odedit.cli", "train", "--cpu", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _end(proc) -> None:
    """Kill torchrun and its workers if a test left them running (killing torchrun alone would
    leave its workers training on, orphaned)."""
    import os
    import signal

    if proc.poll() is not None:
        return
    family, grew = {proc.pid}, True
    while grew:  # every descendant, found before any is killed
        more = {int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) in family}
        grew = not more <= family
        family |= more
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended meanwhile: nothing to kill
            pass
    proc.communicate()


def _parent(proc_dir) -> int:
    """The parent pid of the process whose /proc folder this is (0 if it has gone)."""
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


@pytest.mark.parametrize("target", ["torchrun", "one worker"])
def test_sigterm_stops_a_torchrun_run_with_a_checkpoint(blobs, tmp_path, target):
    """SIGTERM to torchrun (which passes it to every worker, kills them 30 s later and exits 1
    itself) or to one worker alone (torchrun then exits 0): all processes agree to stop at the same
    step, checkpoint and export."""
    import os
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    run = tmp_path / "sig"
    proc = _torchrun(["--data", str(blobs), "--out", str(run), "--steps", "1000000", "--batch-size", "4",
                      "--config", "tiny", "--resolution", "16", "--gaussian-rank", "4", "--sample-every", "0",
                      "--checkpoint-every", "0", "--checkpoint-minutes", "0", "--workers", "1", "--log-every", "1",
                      "--quiet"], env)
    try:
        deadline = time.monotonic() + 240
        while not ((run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        if target == "torchrun":
            proc.send_signal(signal.SIGTERM)
        else:  # the worker of rank 1 (not the main process): torchrun's child with RANK=1
            pids = [d.name for d in Path("/proc").iterdir() if d.name.isdigit() and _parent(d) == proc.pid]
            rank1 = [p for p in pids if b"\0RANK=1\0" in b"\0" + open(f"/proc/{p}/environ", "rb").read()]
            assert len(pids) == 2 and len(rank1) == 1, pids
            os.kill(int(rank1[0]), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        _end(proc)
    assert proc.returncode == (1 if target == "torchrun" else 0), err[-3000:]
    info = json.loads((run / "model" / "odedit_train.json").read_text())
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == f"step_{info['step']:07d}" and info["step"] >= 3
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == info["step"]
    assert (ckpt / "random_states_1.pkl").is_file()  # both processes saved this step
